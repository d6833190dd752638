"""``wg-py up|down NAME|FILE``: wg-quick's job for a userspace daemon, without wg-quick.

It reads the same files (``/etc/wireguard/NAME.conf`` or a path ending in ``NAME.conf``) with
:mod:`tunnel.wireguard.config` and does what Linux wg-quick does, in the same order:

up:   PreUp hooks; start the daemon (``wg-py IFACE``, which returns once its TUN device and UAPI
      socket exist); send the configuration as one UAPI ``set`` (``errno=0`` expected);
      addresses; MTU (explicit, else the largest route MTU towards the endpoints, else the
      default route's, else 1500; minus 80) and link up; DNS through resolvconf (skipped with a
      message when resolvconf is absent); one route per allowed IP, most specific first
      (``Table = off`` adds none; a number or name puts them in that table; ``auto``/unset uses
      the main table, and a /0 is wg-quick's default-route setup: fwmark = table (51820 or the
      first free one above), ``ip rule not fwmark T table T``, ``ip rule table main
      suppress_prefixlength 0``, the iptables raw/mangle rules and ``src_valid_mark``);
      PostUp hooks.
down: PreDown hooks; SaveConfig (the file is rewritten from the daemon's state plus the
      [Interface] extras); the default-route rules and firewall rules go; ``ip link del``
      (the daemon sees its device go and exits); DNS unset; PostDown hooks.

Everything is decided before anything runs: the file is parsed, host names in Endpoint are
resolved and the MTU/table facts gathered (:func:`gather_facts`), then :func:`plan_up` /
:func:`plan_down` return the steps as data (:class:`Step`), and :func:`execute` runs them,
echoing ``[#] ...`` to stderr as wg-quick does. A bad file is reported as ``FILE:LINE: reason``
with nothing created; if any step after the daemon started fails, the link is deleted again
(with the rules and DNS), so nothing is left half up.

The daemon program is ``$WG_PY_IMPLEMENTATION`` (split like a shell word list) if set, else the
``wg-py`` script next to this interpreter, else ``python -m tunnel`` (the same command without
its script; ``python -m tunnel.wireguard.daemon`` would lack the L2 overlay's handlers).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tunnel.wireguard import config as wgconfig
from tunnel.wireguard.config import AllowedIP, ConfigError, Endpoint, PeerConfig, WgQuickConfig
from tunnel.wireguard.uapi import parse_endpoint

UAPI_DIR = Path("/var/run/wireguard")
DEFAULT_TABLE = 51820
FIREWALL_COMMENT = "wg-quick(8) rule for {iface}"  # the marker wg-quick uses, so both clean up
DAEMON_TIMEOUT = 30.0
UAPI_TIMEOUT = 60.0

StepKind = Literal[
    "run", "hook", "daemon", "uapi", "note", "remove_firewall", "delete_rules", "wait_socket_gone"
]


class QuickError(RuntimeError):
    """A step failed; the message is what the user sees after ``wg-py up:``."""


# --- the UAPI client ------------------------------------------------------------------------


def uapi_socket(iface: str) -> Path:
    return UAPI_DIR / f"{iface}.sock"


def uapi_call(iface: str, request: str, timeout: float = UAPI_TIMEOUT) -> tuple[list[str], int]:
    """Send one request (``get=1\\n\\n`` or a whole ``set=1`` body) to IFACE's UAPI socket.

    Returns the reply lines before ``errno=`` and the errno (0: success, negative: refused).
    Raises OSError when the socket cannot be reached, QuickError on a reply without errno.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(uapi_socket(iface)))
        sock.sendall(request.encode())
        data = bytearray()
        while not (data.endswith(b"\n\n") and b"errno=" in data[-64:]):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    lines = data.decode(errors="replace").split("\n")
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("errno="):
            try:
                return lines[:i], int(lines[i][len("errno="):])
            except ValueError:
                break
    raise QuickError(f"{iface}: the UAPI reply has no errno")


def uapi_alive(iface: str) -> bool:
    try:
        return uapi_call(iface, "get=1\n\n", timeout=5.0)[1] == 0
    except (OSError, QuickError):
        return False


def config_from_uapi(lines: Sequence[str]) -> WgQuickConfig:
    """What ``wg showconf`` shows, from the lines of a ``get`` reply."""
    cfg = WgQuickConfig(wgconfig.InterfaceConfig())
    peer: PeerConfig | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "public_key":
            peer = PeerConfig(public_key=bytes.fromhex(value))
            cfg.peers.append(peer)
        elif peer is None:
            if key == "private_key":
                cfg.interface.private_key = bytes.fromhex(value)
            elif key == "listen_port" and int(value):
                cfg.interface.listen_port = int(value)
            elif key == "fwmark" and int(value):
                cfg.interface.fwmark = int(value)
        elif key == "preshared_key" and value.strip("0"):
            peer.preshared_key = bytes.fromhex(value)
        elif key == "endpoint":
            host, port = parse_endpoint(value)
            peer.endpoint = Endpoint(host, port)
        elif key == "persistent_keepalive_interval" and int(value):
            peer.persistent_keepalive = int(value)
        elif key == "allowed_ip":
            net = ipaddress.ip_network(value, strict=False)
            peer.allowed_ips.append(AllowedIP(net.network_address, net.prefixlen))
    return cfg


# --- facts and plans ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One thing to do. ``kind``:

    run     ``argv``, with ``stdin``; skipped if ``unless`` (a command) prints anything
    hook    ``script`` through ``bash -c`` (``%i`` already replaced)
    daemon  ``argv`` starts the daemon; then its UAPI socket must answer
    uapi    ``script`` is a request sent to the interface's socket; errno must be 0
    note    ``script`` is printed, nothing runs
    remove_firewall   delete the iptables rules marked for ``iface``
    delete_rules      delete the ``ip rule``s of table ``argv[0]`` and the suppress_prefixlength
                      rule, while ``ip rule show`` lists them (as wg-quick's del_if)
    wait_socket_gone  wait (bounded) for the daemon to remove its UAPI socket
    """

    kind: StepKind
    argv: tuple[str, ...] = ()
    script: str = ""
    stdin: str | None = None
    unless: tuple[str, ...] = ()
    iface: str = ""

    def describe(self) -> str:
        if self.kind in ("run", "daemon"):
            return " ".join(shlex.quote(a) for a in self.argv)
        if self.kind == "uapi":
            first = self.script.split("\n", 1)[0]
            return f"uapi {self.iface} {first} ({self.script.count(chr(10)) - 1} lines)"
        if self.kind in ("hook", "note"):
            return self.script
        return f"{self.kind} {self.iface}"


@dataclass(slots=True)
class Facts:
    """What the plans need from the system, gathered once before anything changes."""

    daemon: list[str]
    mtu: int = 1420  # the MTU to set
    endpoints: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    free_table: int = DEFAULT_TABLE  # first table >= 51820 without routes
    have_resolvconf: bool = False
    have_iptables: bool = False


def daemon_command() -> list[str]:
    """The program that runs ``PROGRAM IFACE`` (see the module docstring)."""
    env = os.environ.get("WG_PY_IMPLEMENTATION", "").strip()
    if env:
        return shlex.split(env)
    script = Path(sys.executable).parent / "wg-py"
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "tunnel"]  # the wg-py command: the daemon with its handlers


def substitute(hook: str, iface: str) -> str:
    """A hook's text with ``%i`` replaced by the interface name, as wg-quick expands it."""
    return hook.replace("%i", iface)


def route_entries(cfg: WgQuickConfig) -> list[str]:
    """The allowed IPs the daemon will hold after setconf, masked, most specific first."""
    owner: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
    for index, peer in enumerate(cfg.peers):
        mine = {net for net, who in owner.items() if who == index}
        for entry in peer.allowed_ips:
            net = ipaddress.ip_network(f"{entry.address}/{entry.cidr}", strict=False)
            if entry.remove:
                if net in mine:
                    mine.discard(net)
                    del owner[net]
            else:
                owner[net] = index
                mine.add(net)
    nets = sorted(owner, key=lambda n: (-n.prefixlen, n.version, int(n.network_address)))
    return [str(n) for n in nets]


def default_route_table(cfg: WgQuickConfig, facts: Facts) -> int | None:
    """The fwmark/table of wg-quick's default-route setup, or None when it is not used."""
    if cfg.interface.table not in (None, "auto"):
        return None
    if not any(r.endswith("/0") for r in route_entries(cfg)):
        return None
    return cfg.interface.fwmark or facts.free_table


def _family(prefix: str) -> str:
    return "-6" if ":" in prefix else "-4"


def _firewall_rules(iface: str, cfg: WgQuickConfig, family: str, table: int) -> str:
    marker = f'-m comment --comment "{FIREWALL_COMMENT.format(iface=iface)}"'
    version = 6 if family == "-6" else 4
    lines = ["*raw"]
    for addr in cfg.interface.addresses:
        if addr.version == version:
            lines.append(f"-I PREROUTING ! -i {iface} -d {addr.ip} -m addrtype "
                         f"! --src-type LOCAL -j DROP {marker}")
    lines += ["COMMIT", "*mangle",
              f"-I POSTROUTING -m mark --mark {table} -p udp -j CONNMARK --save-mark {marker}",
              f"-I PREROUTING -p udp -j CONNMARK --restore-mark {marker}", "COMMIT", ""]
    return "\n".join(lines)


def _route_steps(iface: str, cfg: WgQuickConfig, facts: Facts) -> list[Step]:
    table = cfg.interface.table
    if table == "off":
        return []
    steps: list[Step] = []
    default_table = default_route_table(cfg, facts)
    if default_table is not None and not cfg.interface.fwmark:
        steps.append(Step("uapi", script=f"set=1\nfwmark={default_table}\n\n", iface=iface))
    for prefix in route_entries(cfg):
        fam = _family(prefix)
        if table not in (None, "auto"):
            steps.append(Step("run", ("ip", fam, "route", "add", prefix, "dev", iface,
                                      "table", str(table))))
        elif prefix.endswith("/0") and default_table is not None:
            t = str(default_table)
            steps += [
                Step("run", ("ip", fam, "route", "add", prefix, "dev", iface, "table", t)),
                Step("run", ("ip", fam, "rule", "add", "not", "fwmark", t, "table", t)),
                Step("run", ("ip", fam, "rule", "add", "table", "main",
                             "suppress_prefixlength", "0")),
            ]
            if fam == "-4":
                steps.append(Step("run", ("sysctl", "-q", "net.ipv4.conf.all.src_valid_mark=1")))
            if facts.have_iptables:
                tool = "ip6tables-restore" if fam == "-6" else "iptables-restore"
                steps.append(Step("run", (tool, "-n"),
                                  stdin=_firewall_rules(iface, cfg, fam, default_table)))
            else:
                steps.append(Step("note", script="[!] iptables not found: no firewall rules"))
        else:
            steps.append(Step("run", ("ip", fam, "route", "add", prefix, "dev", iface),
                              unless=("ip", fam, "route", "show", "dev", iface, "match", prefix)))
    return steps


def _dns_text(cfg: WgQuickConfig) -> str:
    text = "".join(f"nameserver {d}\n" for d in cfg.interface.dns)
    if cfg.interface.dns_search:
        text += "search " + " ".join(cfg.interface.dns_search) + "\n"
    return text


def plan_up(iface: str, cfg: WgQuickConfig, facts: Facts) -> tuple[list[Step], int]:
    """The steps of ``up`` and the index of the daemon step (rollback is needed from there)."""
    steps = [Step("hook", script=substitute(h, iface)) for h in cfg.interface.pre_up]
    daemon_index = len(steps)
    steps.append(Step("daemon", (*facts.daemon, iface), iface=iface))

    def resolve(host: str, port: int) -> tuple[str, int]:
        return facts.endpoints[(host, port)]

    steps.append(Step("uapi", script=wgconfig.to_uapi_set(cfg, resolve), iface=iface))
    for addr in cfg.interface.addresses:
        steps.append(Step("run", ("ip", f"-{addr.version}", "address", "add", str(addr),
                                  "dev", iface)))
    steps.append(Step("run", ("ip", "link", "set", "mtu", str(facts.mtu), "up", "dev", iface)))
    if cfg.interface.dns:
        if facts.have_resolvconf:
            steps.append(Step("run", ("resolvconf", "-a", iface, "-m", "0", "-x"),
                              stdin=_dns_text(cfg)))
        else:
            servers = ", ".join(map(str, cfg.interface.dns))
            steps.append(Step("note", script=f"[!] resolvconf not found: DNS = {servers} "
                                             "is not applied"))
    steps += _route_steps(iface, cfg, facts)
    steps += [Step("hook", script=substitute(h, iface)) for h in cfg.interface.post_up]
    return steps, daemon_index


def plan_delete(iface: str, cfg: WgQuickConfig, table: int | None, facts: Facts) -> list[Step]:
    """wg-quick's del_if: DNS, firewall, the default-route rules, then the link itself.

    ``table`` is the fwmark of a default-route setup that is in place (None: there is none).
    """
    steps: list[Step] = []
    if cfg.interface.dns and facts.have_resolvconf:
        steps.append(Step("run", ("resolvconf", "-d", iface, "-f")))
    if table is not None:
        steps.append(Step("remove_firewall", iface=iface))
        steps.append(Step("delete_rules", argv=(str(table),), iface=iface))
    steps.append(Step("run", ("ip", "link", "delete", "dev", iface)))
    steps.append(Step("wait_socket_gone", iface=iface))
    return steps


def plan_down(iface: str, cfg: WgQuickConfig, table: int | None, facts: Facts) -> list[Step]:
    """PreDown, the link deletion (:func:`plan_delete`), PostDown. SaveConfig is done apart."""
    steps = [Step("hook", script=substitute(h, iface)) for h in cfg.interface.pre_down]
    steps += plan_delete(iface, cfg, table, facts)
    steps += [Step("hook", script=substitute(h, iface)) for h in cfg.interface.post_down]
    return steps


# --- gathering facts ------------------------------------------------------------------------

Runner = Callable[[Sequence[str]], str]


def _run_output(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    return done.stdout if done.returncode == 0 else ""


def resolve_endpoint(host: str, port: int) -> tuple[str, int]:
    """A host name to an IP literal (the first address getaddrinfo gives, as wg does)."""
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise QuickError(f"cannot resolve endpoint `{host}:{port}': {exc.strerror}") from None
    addr = infos[0][4][0]
    return str(ipaddress.ip_address(str(addr).split("%")[0])), port


def _mtu_of(route: str, run: Runner) -> int:
    match = re.search(r"\bmtu (\d+)", route)
    if match:
        return int(match.group(1))
    dev = re.search(r"\bdev (\S+)", route)
    if dev:
        link = re.search(r"\bmtu (\d+)", run(["ip", "link", "show", "dev", dev.group(1)]))
        if link:
            return int(link.group(1))
    return 0


def route_mtu(addresses: Sequence[str], run: Runner) -> int:
    """wg-quick's automatic MTU: the largest path MTU to the endpoints (else the default
    route's, else 1500), minus 80 for the outer IPv6 + UDP + WireGuard overhead."""
    mtu = max((_mtu_of(run(["ip", "route", "get", a]), run) for a in addresses), default=0)
    if mtu == 0:
        first = run(["ip", "route", "show", "default"]).split("\n", 1)[0]
        mtu = _mtu_of(first, run)
    return (mtu or 1500) - 80


def free_table(run: Runner) -> int:
    """The first routing table from 51820 on that holds no IPv4 or IPv6 route."""
    table = DEFAULT_TABLE
    while (run(["ip", "-4", "route", "show", "table", str(table)]).strip()
           or run(["ip", "-6", "route", "show", "table", str(table)]).strip()):
        table += 1
    return table


def gather_facts(
    cfg: WgQuickConfig,
    run: Runner = _run_output,
    resolve: Callable[[str, int], tuple[str, int]] = resolve_endpoint,
) -> Facts:
    """Resolve endpoints and look up the MTU and table facts (reads the system, changes none)."""
    facts = Facts(daemon=daemon_command())
    for peer in cfg.peers:
        if peer.endpoint is not None:
            key = (peer.endpoint.host, peer.endpoint.port)
            facts.endpoints[key] = key if peer.endpoint.is_literal else resolve(*key)
    if cfg.interface.mtu is not None:
        facts.mtu = cfg.interface.mtu
    else:
        facts.mtu = route_mtu([host for host, _ in facts.endpoints.values()], run)
    if cfg.interface.table in (None, "auto") and not cfg.interface.fwmark:
        if any(r.endswith("/0") for r in route_entries(cfg)):
            facts.free_table = free_table(run)
    facts.have_resolvconf = shutil.which("resolvconf") is not None
    facts.have_iptables = shutil.which("iptables-restore") is not None
    return facts


# --- execution ------------------------------------------------------------------------------


def _echo(text: str) -> None:
    print(f"[#] {text}", file=sys.stderr, flush=True)


def _start_daemon(step: Step) -> None:
    # The daemon's output goes through a file, not a pipe: a daemonized child would keep a
    # pipe open and a caller reading our output would wait for it forever.
    with tempfile.TemporaryFile() as log:
        try:
            done = subprocess.run(list(step.argv), stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=log, timeout=DAEMON_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise QuickError(f"cannot start {step.argv[0]}: {exc}") from None
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace"))
    if done.returncode != 0:
        raise QuickError(f"{step.argv[0]} exited with status {done.returncode}")
    deadline = time.monotonic() + 5.0
    while not uapi_alive(step.iface):
        if time.monotonic() > deadline:
            raise QuickError(f"{step.iface}: the daemon's UAPI socket does not answer")
        time.sleep(0.05)


def _remove_firewall(iface: str) -> None:
    marker = f'-m comment --comment "{FIREWALL_COMMENT.format(iface=iface)}"'
    for tool in ("iptables", "ip6tables"):
        if shutil.which(f"{tool}-save") is None:
            continue
        saved = _run_output([f"{tool}-save"])
        restore, found = [], False
        for line in saved.splitlines():
            if line.startswith("*") or line == "COMMIT":
                restore.append(line)
            elif line.startswith("-A ") and marker in line:
                restore.append("-D " + line[3:])
                found = True
        if found:
            _echo(f"{tool}-restore -n")
            subprocess.run([f"{tool}-restore", "-n"], input="\n".join(restore) + "\n",
                           text=True, timeout=10, check=False)


def _delete_rules(table: str) -> None:
    for fam in ("-4", "-6"):
        for needle, argv in (
            (f"lookup {table}", ("ip", fam, "rule", "delete", "table", table)),
            ("from all lookup main suppress_prefixlength 0",
             ("ip", fam, "rule", "delete", "table", "main", "suppress_prefixlength", "0")),
        ):
            for _ in range(64):  # bounded: each round removes one rule or stops
                if needle not in _run_output(["ip", fam, "rule", "show"]):
                    break
                _echo(" ".join(argv))
                if subprocess.run(argv, capture_output=True, timeout=10,
                                  check=False).returncode != 0:
                    break


def execute_step(step: Step, check: bool = True) -> None:
    """Run one step; raises QuickError if it fails and ``check`` is set."""
    if step.kind == "note":
        print(step.script, file=sys.stderr, flush=True)
        return
    if step.kind == "remove_firewall":
        _remove_firewall(step.iface)
        return
    if step.kind == "wait_socket_gone":
        deadline = time.monotonic() + 5.0
        while uapi_socket(step.iface).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    if step.kind == "delete_rules":
        _delete_rules(step.argv[0])
        return
    if step.kind == "run" and step.unless and _run_output(step.unless).strip():
        return
    _echo(step.describe())
    if step.kind == "daemon":
        _start_daemon(step)
        return
    if step.kind == "uapi":
        try:
            _, code = uapi_call(step.iface, step.script)
        except OSError as exc:
            raise QuickError(f"{step.iface}: UAPI: {exc}") from None
        if code != 0 and check:
            raise QuickError(f"{step.iface}: the daemon refused the configuration "
                             f"(errno={code})")
        return
    argv = ["bash", "-c", step.script] if step.kind == "hook" else list(step.argv)
    try:
        done = subprocess.run(argv, input=step.stdin, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        if check:
            raise QuickError(f"`{step.describe()}': {exc}") from None
        return
    if done.returncode != 0 and check:
        raise QuickError(f"`{step.describe()}' exited with status {done.returncode}")


def link_exists(iface: str) -> bool:
    done = subprocess.run(["ip", "link", "show", "dev", iface], capture_output=True,
                          timeout=10, check=False)
    return done.returncode == 0


def _installed_table(iface: str, cfg: WgQuickConfig) -> int | None:
    """The default-route fwmark/table currently set up for ``iface``, as del_if tests it."""
    if cfg.interface.table not in (None, "auto"):
        return None
    try:
        lines, code = uapi_call(iface, "get=1\n\n", timeout=10.0)
    except (OSError, QuickError):
        return None
    if code != 0:
        return None
    live = config_from_uapi(lines)
    if not live.interface.fwmark:
        return None
    if not any(a.cidr == 0 for p in live.peers for a in p.allowed_ips):
        return None
    return live.interface.fwmark


def up(cfg: WgQuickConfig, iface: str) -> None:
    if link_exists(iface) or uapi_alive(iface):
        raise QuickError(f"`{iface}' already exists")
    facts = gather_facts(cfg)
    steps, daemon_index = plan_up(iface, cfg, facts)
    index = 0
    try:
        while index < len(steps):
            execute_step(steps[index])
            index += 1
    except BaseException:
        if index >= daemon_index:
            table = default_route_table(cfg, facts)
            for step in plan_delete(iface, cfg, table, facts):
                execute_step(step, check=False)
        raise


def save_config(iface: str, cfg: WgQuickConfig, path: Path) -> None:
    """Rewrite ``path`` from the daemon's state plus the [Interface] extras, as wg-quick save."""
    lines, code = uapi_call(iface, "get=1\n\n")
    if code != 0:
        raise QuickError(f"{iface}: cannot read the configuration (errno={code})")
    live = config_from_uapi(lines)
    extras = cfg.interface
    live.interface.addresses = [
        ipaddress.ip_interface(m.group(1))
        for m in re.finditer(r"\binet6? (\S+) .*?scope (?!link)",
                             _run_output(["ip", "-o", "address", "show", "dev", iface]))
    ]
    live.interface.dns, live.interface.dns_search = extras.dns, extras.dns_search
    if extras.mtu is not None:
        match = re.search(r"\bmtu (\d+)", _run_output(["ip", "link", "show", "dev", iface]))
        live.interface.mtu = int(match.group(1)) if match else extras.mtu
    live.interface.table = extras.table
    live.interface.pre_up, live.interface.post_up = extras.pre_up, extras.post_up
    live.interface.pre_down, live.interface.post_down = extras.pre_down, extras.post_down
    live.interface.save_config = True
    _echo(f"save {path}")
    tmp = path.with_name(path.name + ".tmp")
    old = os.umask(0o077)
    try:
        tmp.write_text(wgconfig.format_config(live))
        os.replace(tmp, path)
    finally:
        os.umask(old)
        tmp.unlink(missing_ok=True)


def down(cfg: WgQuickConfig, iface: str, path: Path) -> None:
    if not uapi_socket(iface).exists():
        raise QuickError(f"`{iface}' is not a WireGuard interface")
    facts = gather_facts_for_down()
    table = _installed_table(iface, cfg)
    steps = plan_down(iface, cfg, table, facts)
    pre = len(cfg.interface.pre_down)
    for step in steps[:pre]:
        execute_step(step)
    if cfg.interface.save_config:
        save_config(iface, cfg, path)
    for step in steps[pre:]:
        execute_step(step)


def gather_facts_for_down() -> Facts:
    return Facts(daemon=daemon_command(), have_resolvconf=shutil.which("resolvconf") is not None,
                 have_iptables=shutil.which("iptables-restore") is not None)


def load(name_or_path: str) -> tuple[WgQuickConfig, str, Path]:
    """Resolve and parse the file; raises ConfigError (FILE:LINE) or QuickError."""
    try:
        path, iface = wgconfig.config_path(name_or_path)
    except ValueError as exc:
        raise QuickError(str(exc)) from None
    if not path.exists():
        raise QuickError(f"`{path}' does not exist")
    try:
        cfg = wgconfig.load_config(str(path))
    except OSError as exc:
        raise QuickError(f"`{path}': {exc.strerror}") from None
    cfg.name = iface
    return cfg, iface, path


def main(command: str, args: list[str]) -> int:
    """``wg-py up|down NAME|FILE``; the exit status."""
    if len(args) != 1 or command not in ("up", "down"):
        print(f"usage: wg-py {command} CONFIG-NAME|CONFIG-FILE", file=sys.stderr)
        return 1
    try:
        cfg, iface, path = load(args[0])
        if command == "up":
            up(cfg, iface)
        else:
            down(cfg, iface, path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except QuickError as exc:
        print(f"wg-py {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
