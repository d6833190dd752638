"""``wg-py mesh init|join|status``: the mesh's commands.

``wg-py mesh init NETWORK CIDR [--subnet-len N] [--mode l3|l2] [--port PORT] [--keepalive S]
[--claim-grace S] [--mtu N] [--force]`` writes the network's config; an existing different
config is refused unless ``--force`` (an identical one is accepted as is).

``wg-py mesh join NETWORK IFACE --endpoint ADDR[:PORT] [--ttl S] [--keepalive S] [--name NAME]
[--key-file PATH] [--listen-port PORT] [--state-dir DIR] [--metrics ADDR:PORT]`` runs the agent in
the foreground until SIGTERM/SIGINT (see :mod:`tunnel.mesh.agent`). With ``--metrics`` (or
``WGPY_METRICS=ADDR:PORT``) it serves Prometheus metrics (``tunnel.metrics.mesh``) on
``http://ADDR:PORT/metrics``; a busy port is an error before joining. The interface daemon
the agent starts serves no metrics of its own (``WGPY_METRICS`` is taken out of its
environment). The private key is read from ``--key-file`` (default
``/var/lib/wg-py/mesh/IFACE.key``), created 0600 if absent, refused if group- or world-accessible;
it never enters the store.

``wg-py mesh status NETWORK [--json]`` lists the network's nodes from the store: each live node
and each claim whose node is not live (``alive: false``); with ``--json`` also the rejected keys
and, if an agent of this network runs here, its counters (``local``).

l2 mode is refused: VXLAN runs inside the WireGuard process (``wg-py vxlan add ... dev IFACE``),
but the mesh does not drive it yet.

Every command takes ``--etcd URL[,URL...]``, else ``ETCDCTL_ENDPOINTS``, else
``http://127.0.0.1:2379``; TLS from ``ETCDCTL_CACERT``/``ETCDCTL_CERT``/``ETCDCTL_KEY`` (or
``--cacert``/``--cert``/``--key``), user/password auth from ``ETCDCTL_USER`` (``user:password``,
or ``--user``). Exit status: 0 done, 1 error (message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crypto import keys
from tunnel.mesh.agent import DEFAULT_TTL, L2_REFUSED, Agent, AgentOptions, MeshError
from tunnel.mesh.backend import BackendError, WireGuardBackend
from tunnel.mesh.config import (
    DEFAULT_CLAIM_GRACE,
    DEFAULT_KEEPALIVE,
    DEFAULT_MTU,
    DEFAULT_PORT,
    ConfigError,
    Keys,
    NetworkConfig,
    check_network_name,
    first_host,
)
from tunnel.mesh.etcd import EtcdOptions, EtcdStore
from tunnel.mesh.record import build_view, encode_key, format_endpoint
from tunnel.mesh.state import DEFAULT_STATE_DIR, read_state
from tunnel.mesh.store import StoreError

log = logging.getLogger("tunnel.mesh")
DEFAULT_KEY_DIR = Path("/var/lib/wg-py/mesh")


def _store_options(args: argparse.Namespace) -> EtcdOptions:
    endpoints = args.etcd or os.environ.get("ETCDCTL_ENDPOINTS") or "http://127.0.0.1:2379"
    user_text = args.user or os.environ.get("ETCDCTL_USER")
    user = password = None
    if user_text:
        user, _, password = user_text.partition(":")
    return EtcdOptions(
        endpoints=tuple(e.strip() for e in endpoints.split(",") if e.strip()),
        cacert=args.cacert or os.environ.get("ETCDCTL_CACERT"),
        cert=args.cert or os.environ.get("ETCDCTL_CERT"),
        key=args.key or os.environ.get("ETCDCTL_KEY"),
        user=user, password=password,
    )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--etcd", help="etcd endpoints URL[,URL...] (else ETCDCTL_ENDPOINTS)")
    common.add_argument("--cacert", help="CA bundle for TLS (else ETCDCTL_CACERT)")
    common.add_argument("--cert", help="client certificate (else ETCDCTL_CERT)")
    common.add_argument("--key", help="client key (else ETCDCTL_KEY)")
    common.add_argument("--user", help="user:password (else ETCDCTL_USER)")
    parser = argparse.ArgumentParser(prog="wg-py mesh")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", parents=[common], help="write a network's config")
    init.add_argument("network")
    init.add_argument("cidr")
    init.add_argument("--subnet-len", type=int)
    init.add_argument("--mode", choices=("l3", "l2"), default="l3")
    init.add_argument("--port", type=int, default=DEFAULT_PORT)
    init.add_argument("--keepalive", type=int, default=DEFAULT_KEEPALIVE)
    init.add_argument("--claim-grace", type=int, default=DEFAULT_CLAIM_GRACE)
    init.add_argument("--mtu", type=int, default=DEFAULT_MTU)
    init.add_argument("--force", action="store_true")
    join = sub.add_parser("join", parents=[common], help="run the agent of this node")
    join.add_argument("network")
    join.add_argument("iface")
    join.add_argument("--endpoint", required=True, help="ADDR[:PORT] other nodes reach this one at")
    join.add_argument("--ttl", type=int, default=DEFAULT_TTL)
    join.add_argument("--keepalive", type=int)
    join.add_argument("--name", default=socket.gethostname())
    join.add_argument("--key-file", type=Path)
    join.add_argument("--listen-port", type=int)
    join.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    join.add_argument("--interval", type=float, default=10.0, help="periodic reconcile (seconds)")
    join.add_argument("--resync", type=float, default=60.0, help="periodic full re-list (seconds)")
    join.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics (else $WGPY_METRICS)")
    status = sub.add_parser("status", parents=[common], help="list the network's nodes")
    status.add_argument("network")
    status.add_argument("--json", action="store_true")
    status.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    return parser


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        check_network_name(args.network)
        if args.command == "init":
            return asyncio.run(_init(args))
        if args.command == "status":
            return asyncio.run(_status(args))
        return _join(args)
    except (ConfigError, MeshError, BackendError, ValueError, OSError) as exc:
        print(f"wg-py mesh {args.command}: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"wg-py mesh {args.command}: etcd: {exc}", file=sys.stderr)
        return 1


# -- init --------------------------------------------------------------------------------------


async def _init(args: argparse.Namespace) -> int:
    if args.mode == "l2":
        raise ConfigError(L2_REFUSED)
    try:
        network = ipaddress.ip_network(args.cidr, strict=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    subnet_len = args.subnet_len
    if subnet_len is None:
        subnet_len = 64 if network.version == 6 else max(24, min(network.prefixlen + 8, 28))
    config = NetworkConfig(network, subnet_len, args.mode, args.port, args.keepalive, args.claim_grace, args.mtu)
    store = EtcdStore(_store_options(args))
    key = Keys(args.network).config
    value = config.to_json().encode()
    if await store.create(key, value):
        print(f"network {args.network}: {config.network}, /{config.subnet_len} per node, {config.mode}")
        return 0
    existing = await store.get(key)
    if existing is not None:
        try:
            if NetworkConfig.from_json(existing.value) == config:
                print(f"network {args.network}: already configured the same way")
                return 0
        except ConfigError:
            pass
    if not args.force:
        current = existing.value.decode(errors="replace") if existing else "?"
        raise ConfigError(f"network {args.network} already has a different config ({current}); "
                          "use --force to overwrite it")
    await store.put(key, value)
    print(f"network {args.network}: config overwritten (--force); running agents keep their "
          "network and subnet length until restarted")
    return 0


# -- status ------------------------------------------------------------------------------------


async def _status(args: argparse.Namespace) -> int:
    store = EtcdStore(_store_options(args))
    names = Keys(args.network)
    config_kv = await store.get(names.config)
    if config_kv is None:
        raise ConfigError(f"network {args.network!r} has no config")
    config = NetworkConfig.from_json(config_kv.value)
    kvs, revision = await store.list(names.prefix)
    claims = {kv.key[len(names.claims):]: kv.value for kv in kvs if kv.key.startswith(names.claims)}
    records = {kv.key[len(names.nodes):]: (kv.value, kv.mod_revision) for kv in kvs if kv.key.startswith(names.nodes)}
    view = build_view(config, claims, records)
    nodes: list[dict[str, Any]] = []
    for node in view.nodes.values():
        nodes.append({"name": node.name, "public_key": encode_key(node.public_key), "subnet": str(node.subnet),
                      "address": str(node.address), "endpoints": [format_endpoint(e) for e in node.endpoints],
                      "alive": True})
    for claim in view.claims.values():
        if claim.public_key not in view.nodes:
            nodes.append({"name": claim.name, "public_key": encode_key(claim.public_key), "subnet": str(claim.subnet),
                          "address": str(first_host(claim.subnet)), "endpoints": [], "alive": False})
    nodes.sort(key=lambda n: ipaddress.ip_network(n["subnet"]).network_address)
    local = _local_states(args.state_dir, args.network)
    if args.json:
        out: dict[str, Any] = {"network": args.network, "config": json.loads(config.to_json()), "nodes": nodes,
                               "rejected": view.rejects, "revision": revision}
        if local:
            out["local"] = local
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    print(f"network {args.network}: {config.network}, /{config.subnet_len} per node, {config.mode}, "
          f"{sum(1 for n in nodes if n['alive'])} alive of {len(nodes)}")
    for entry in nodes:
        print(f"  {'alive' if entry['alive'] else 'gone '}  {entry['subnet']:<20} {entry['address']:<16} "
              f"{entry['name'] or '-':<16} {entry['public_key']}  {' '.join(entry['endpoints'])}")
    for key, reason in sorted(view.rejects.items()):
        print(f"  rejected {key}: {reason}")
    return 0


def _local_states(state_dir: Path, network: str) -> list[dict[str, Any]]:
    """The state files of agents of ``network`` on this machine (interface, counters, ...)."""
    found = []
    if state_dir.is_dir():
        for path in sorted(state_dir.glob("*.json")):
            state = read_state(path)
            if state and state.get("network") == network:
                found.append({k: state.get(k) for k in ("interface", "subnet", "address", "counters", "pid",
                                                        "updated")})
    return found


# -- join --------------------------------------------------------------------------------------


def load_private_key(path: Path) -> bytes:
    """Read a base64 private key from ``path``, or create it (0600) if it does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: the private key file must not be accessible by group or others "
                              f"(mode {stat.S_IMODE(mode):o}; chmod 600)") from None
        try:
            return keys.from_base64(path.read_text())
        except ValueError:
            raise ConfigError(f"{path}: not a base64 WireGuard private key") from None
    private = keys.generate_private()
    with os.fdopen(fd, "w") as out:
        out.write(keys.to_base64(private) + "\n")
    return private


def parse_endpoint_arg(text: str) -> tuple[str, int]:
    """``ADDR[:PORT]`` (IPv6 as ``[ADDR]:PORT`` or bare); port 0 means the listen port."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 0
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, 0
    addr = ipaddress.ip_address(host)
    if not 0 <= port <= 65535:
        raise ConfigError(f"endpoint port {port} out of range")
    return str(addr), port


def _setup_logging() -> None:
    level = getattr(logging, os.environ.get("LOG_LEVEL", "info").upper(), logging.INFO)
    logger = logging.getLogger("tunnel")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _join(args: argparse.Namespace) -> int:
    _setup_logging()
    if not 3 <= args.ttl <= 3600:
        raise ConfigError("--ttl must be between 3 and 3600 seconds")
    key_file = args.key_file or DEFAULT_KEY_DIR / f"{args.iface}.key"
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = load_private_key(key_file)
    options = AgentOptions(
        network=args.network, iface=args.iface, private_key=private, public_key=keys.public_from_private(private),
        endpoints=(parse_endpoint_arg(args.endpoint),), name=args.name, ttl=args.ttl, keepalive=args.keepalive,
        listen_port=args.listen_port, interval=args.interval, resync=args.resync, state_dir=args.state_dir,
    )
    from tunnel.metrics import MetricsError, open_server

    try:
        server = open_server(args.metrics)
    except MetricsError as exc:
        raise ConfigError(str(exc)) from None
    if server is not None and not args.metrics:
        # WGPY_METRICS named the agent's address: the interface daemon the agent starts must not
        # try to serve on it too (it would fail: the port is the agent's)
        os.environ.pop("WGPY_METRICS", None)
    try:
        return asyncio.run(_run_agent(args, options, server))
    finally:
        if server is not None:
            server.close()


async def _run_agent(args: argparse.Namespace, options: AgentOptions, server: Any = None) -> int:
    """Run the agent until SIGTERM/SIGINT; ``server``: a bound ``tunnel.metrics.MetricsServer`` or None."""
    store = EtcdStore(_store_options(args))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    probe = Agent(store, WireGuardBackend(options.iface, ipaddress.ip_network("0.0.0.0/32")), options)
    waiting = asyncio.ensure_future(probe._retry("reading the config", probe.load_config))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not waiting.done():
        waiting.cancel()
        return 0
    config = waiting.result()  # raises MeshError for a missing config or l2 mode
    agent = Agent(store, WireGuardBackend(options.iface, config.network), options)
    if server is not None:
        from tunnel.metrics import LoopCollector
        from tunnel.metrics.mesh import families

        server.start(loop, LoopCollector(agent.metrics_snapshot, families))
    log.info("%s: joining %s as %s (%s)", options.iface, options.network, options.name,
             keys.to_base64(options.public_key))
    await agent.run(stop)
    log.info("%s: left %s", options.iface, options.network)
    await store.close()
    return 0
