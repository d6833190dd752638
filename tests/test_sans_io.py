"""The package boundaries: the sans-I/O core brings in no I/O module, and imports run one way.

Layers, lowest first: ``crypto`` <- ``tunnel.io`` (batch I/O both protocols share) and, beside it
and importing nothing of tunnel's, ``tunnel.runtime`` (the daemons' scheduler and GC policies) <- the
engines and their shells (``tunnel.wireguard``, ``tunnel.vxlan``) <- ``tunnel.mesh`` (the
overlay agent, which drives wg-py interfaces) <- ``tunnel.metrics`` (Prometheus; only the
daemons' start-up hook imports it from below) <- ``tunnel.ops`` (show,
top, service units) and ``tunnel.lab`` (namespaces, demo, bench) <- ``tunnel.cli``.
``tunnel.cni`` (the CNI plugin) stands apart: it reads the mesh agent's state file and imports
no other package of ours; nothing of ours but the CLI imports it. A module may import its own
layer and the ones below it, never one above. Imports are read statically from every source
file (``.py``, ``.pyx``, ``.pxi``, ``.pxd``, ``.pyi``), including those inside functions and
module names written as strings (the native/pure twins and the CLI load modules by name), so a
lazy import cannot hide a back edge.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CORE = [
    "crypto.primitives", "crypto.keys", "crypto.noise", "crypto.cookie", "crypto.tai64n",
    "crypto.backend", "crypto.transport", "crypto.replay", "crypto.constants", "crypto.native",
    "crypto.screen", "crypto._screen",
    "tunnel.wireguard.constants", "tunnel.wireguard.messages", "tunnel.wireguard.allowedips",
    "tunnel.wireguard.ratelimiter", "tunnel.wireguard.peer", "tunnel.wireguard.device",
    "tunnel.wireguard.output", "tunnel.wireguard.timers", "tunnel.io.endpoint", "tunnel.wireguard.uapi",
    "tunnel.wireguard.config", "tunnel.wireguard.datapath", "tunnel.wireguard.datapath_ref",
    "tunnel.wireguard._datapath", "tunnel.wireguard.uapi_session",
    "tunnel.vxlan.engine", "tunnel.vxlan.fdb", "tunnel.vxlan.counters", "tunnel.wireguard.stats",
    "tunnel.cni.spec", "tunnel.cni.mesh", "tunnel.cni.delegate",
    "tunnel.mesh.config", "tunnel.mesh.record", "tunnel.mesh.reconcile",
]

# Each rule: modules under the first prefix may not import modules under any of the others.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("crypto", ("tunnel",)),
    # the daemons' runtime policies (scheduler slice, GC): below the engines, beside tunnel.io
    ("tunnel.runtime", ("tunnel.io", "tunnel.wireguard", "tunnel.vxlan", "tunnel.overlay", "tunnel.mesh",
                        "tunnel.metrics", "tunnel.ops", "tunnel.lab", "tunnel.cli", "tunnel.demo", "tunnel.cni")),
    ("tunnel.io", ("tunnel.runtime", "tunnel.wireguard", "tunnel.vxlan", "tunnel.overlay", "tunnel.mesh",
                   "tunnel.metrics", "tunnel.ops", "tunnel.lab", "tunnel.cli", "tunnel.demo", "tunnel.cni")),
    ("tunnel.wireguard", ("tunnel.overlay", "tunnel.mesh", "tunnel.metrics", "tunnel.ops", "tunnel.lab", "tunnel.cli",
                          "tunnel.demo", "tunnel.cni")),
    ("tunnel.vxlan", ("tunnel.overlay", "tunnel.mesh", "tunnel.metrics", "tunnel.ops", "tunnel.lab", "tunnel.cli",
                      "tunnel.demo", "tunnel.cni")),
    # L2 over WireGuard: imports both engines' packages; neither imports it
    ("tunnel.overlay", ("tunnel.mesh", "tunnel.metrics", "tunnel.ops", "tunnel.lab", "tunnel.cli", "tunnel.demo",
                        "tunnel.cni")),
    ("tunnel.mesh", ("tunnel.metrics", "tunnel.ops", "tunnel.lab", "tunnel.cli", "tunnel.demo", "tunnel.cni")),
    ("tunnel.metrics", ("tunnel.ops", "tunnel.lab", "tunnel.cli", "tunnel.demo", "tunnel.cni")),
    ("tunnel.ops", ("tunnel.lab", "tunnel.cli", "tunnel.demo", "tunnel.cni")),
    ("tunnel.lab", ("tunnel.ops", "tunnel.cli", "tunnel.cni")),
    # The CNI plugin talks to the mesh only through the agent's state file: it stands beside
    # the engines, imports none of them (nor crypto), and none of them imports it.
    ("tunnel.cni", ("crypto", "tunnel.io", "tunnel.runtime", "tunnel.wireguard", "tunnel.vxlan", "tunnel.overlay",
                    "tunnel.mesh", "tunnel.metrics", "tunnel.ops", "tunnel.lab", "tunnel.cli", "tunnel.demo")),
]
# The one way up the layers: a daemon's start-up hook serves its metrics (module, package).
EXEMPT = {("tunnel.wireguard.daemon", "tunnel.metrics"), ("tunnel.vxlan.daemon", "tunnel.metrics"),
          ("tunnel.mesh.cli", "tunnel.metrics")}

SOURCES = ("*.py", "*.pyx", "*.pxi", "*.pxd", "*.pyi")
_MODULE_NAME = re.compile(r"^(crypto|tunnel)(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\s+([\w, ()]+)|c?import\s+([\w.]+))", re.M)


def module_of(path: Path, root: Path) -> str:
    """The dotted module a source file belongs to (an included ``.pxi`` counts as its directory's)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, level: int, name: str | None, importer: str, is_package: bool) -> str:
    if level == 0:
        return module
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base) if name is None else ".".join(base)


def imports_of(path: Path, root: Path) -> set[str]:
    """Every module name ``path`` imports or names as a string (``from a import b`` yields a and a.b)."""
    importer = module_of(path, root)
    is_package = path.stem == "__init__"
    text = path.read_text()
    found: set[str] = set()
    if path.suffix in (".py", ".pyi"):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", node.level, None, importer, is_package)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.match(node.value):
                found.add(node.value)
    else:
        for match in _CYTHON_IMPORT.finditer(text):
            if match.group(3):
                found.add(match.group(3))
            else:
                base = match.group(1)
                found.add(base)
                found.update(f"{base}.{n.strip()}" for n in match.group(2).strip("()").split(",") if n.strip())
        found.update(m.group(1) for m in re.finditer(r"[\"']((?:crypto|tunnel)(?:\.\w+)+)[\"']", text))
    return {name for name in found if name.split(".")[0] in ("crypto", "tunnel")}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    """``importer -> imported`` for every import in ``root``'s crypto/ and tunnel/ that breaks a rule."""
    bad = []
    for top in ("crypto", "tunnel"):
        for pattern in SOURCES:
            for path in sorted((root / top).rglob(pattern)):
                importer = module_of(path, root)
                for imported in sorted(imports_of(path, root)):
                    if any(importer == mod and _under(imported, pkg) for mod, pkg in EXEMPT):
                        continue
                    for layer, forbidden in RULES:
                        if _under(importer, layer) and any(_under(imported, f) for f in forbidden):
                            bad.append(f"{path.relative_to(root)}: {importer} -> {imported}")
    return bad


def test_imports_run_one_way() -> None:
    assert violations(ROOT) == []


def test_the_checker_sees_every_kind_of_back_edge(tmp_path: Path) -> None:
    """Each rule, broken in a scratch tree in each way an import can be written, is reported."""
    files = {
        "crypto/__init__.py": "",
        "crypto/bad_top.py": "from tunnel.wireguard.constants import DEFAULT_MTU\n",
        "crypto/bad_lazy.py": "def f():\n    import tunnel.io.tun\n",
        "crypto/good.py": "from crypto import primitives\nimport hashlib\n",
        "tunnel/__init__.py": "",
        "tunnel/io/__init__.py": "",
        "tunnel/io/bad_relative.py": "from ..wireguard import device\n",
        "tunnel/io/bad_string.py": "MODULE = 'tunnel.vxlan.engine'\n",
        "tunnel/io/bad_native.pyx": "from tunnel.wireguard.peer import Keypair\n",
        "tunnel/io/bad_cimport.pxi": "from tunnel.lab.netns cimport x\n",
        "tunnel/io/good.py": "from crypto.backend import HEADROOM\nfrom . import tun\n",
        "tunnel/wireguard/__init__.py": "",
        "tunnel/wireguard/bad_lab.py": "from tunnel.lab import netns\n",
        "tunnel/wireguard/good.py": "from tunnel.io.endpoint import Endpoint\n",
        "tunnel/wireguard/bad_metrics.py": "from tunnel.metrics import server\n",
        "tunnel/wireguard/daemon.py": "from tunnel.metrics import server\n",
        "tunnel/metrics/__init__.py": "",
        "tunnel/metrics/bad_ops.py": "from tunnel.ops import show\n",
        "tunnel/metrics/good.py": "from tunnel.wireguard.messages import Drop\n",
        "tunnel/vxlan/__init__.py": "",
        "tunnel/vxlan/bad_from_package.py": "from tunnel import lab\n",
        "tunnel/lab/__init__.py": "",
        "tunnel/lab/bad_cli.py": "import tunnel.cli\n",
        "tunnel/lab/good.py": "from tunnel.wireguard import quick\n",
        "tunnel/cni/__init__.py": "",
        "tunnel/cni/bad_engine.py": "from tunnel.wireguard import uapi\n",
        "tunnel/cni/bad_lazy_io.py": "def f():\n    import tunnel.io.udp\n",
        "tunnel/cni/good.py": "from tunnel.cni import spec\nimport json\n",
        "tunnel/vxlan/bad_cni.py": "MODULE = 'tunnel.cni.plugin'\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    reported = {line.split(":")[0] for line in violations(tmp_path)}
    expected = {name for name in files if "/bad_" in name}
    assert reported == expected


def test_core_imports_no_io_modules() -> None:
    code = (
        "import sys\n"
        f"for m in {CORE!r}: __import__(m)\n"
        "bad = sorted({'socket', 'asyncio', 'fcntl', 'selectors', 'uvloop'} & set(sys.modules))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("module", ["socket", "asyncio"])
def test_core_check_sees_an_io_import(module: str) -> None:
    """The subprocess check above reports an I/O module when one does come in."""
    code = f"import {module}\nimport sys\nprint(','.join(sorted({{'socket', 'asyncio'}} & set(sys.modules))))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert module in result.stdout
