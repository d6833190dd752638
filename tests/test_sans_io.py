"""The sans-I/O core must not bring in sockets, asyncio or fcntl."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "crypto.primitives", "crypto.keys", "crypto.noise", "crypto.cookie", "crypto.tai64n",
    "crypto.backend", "crypto.transport", "crypto.replay",
    "tunnel.constants", "tunnel.messages", "tunnel.allowedips", "tunnel.ratelimiter",
    "tunnel.peer", "tunnel.device", "tunnel.output", "tunnel.timers", "tunnel.endpoint", "tunnel.uapi",
    "tunnel.config",
    "tunnel.datapath", "tunnel.datapath_ref", "tunnel._datapath", "tunnel.uapi_session", "crypto.native",
    "tunnel.vxlan.engine", "tunnel.vxlan.fdb",
]


def test_core_imports_no_io_modules() -> None:
    code = (
        "import sys\n"
        f"for m in {CORE!r}: __import__(m)\n"
        "bad = sorted({'socket', 'asyncio', 'fcntl', 'selectors', 'uvloop'} & set(sys.modules))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
