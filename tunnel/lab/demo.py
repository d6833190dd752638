"""``make demo`` (``python -m tunnel.lab.demo``): two namespaces joined by wg-py, traffic, a report.

What it does, all inside namespaces with a unique prefix, removed again on exit, failure or
Ctrl-C (:class:`tunnel.lab.netns.Lab`):

1. namespaces ``left`` and ``right`` joined by a veth (192.168.77.1/2 and fd77::1/2);
2. a wg-py daemon in each (``wg-py IFACE``, or ``$WG_PY_IMPLEMENTATION``), configured through
   its UAPI socket with freshly generated keys; addresses 10.9.0.1/2 and fd09::1/2, MTU 1420;
3. the handshake (a ping across), ping RTTs over the tunnel (IPv4 and IPv6);
4. a bounded iperf3 TCP run through the tunnel, then over the bare veth for comparison.

Options: ``--seconds N`` (iperf3 duration, default 5), ``--implementation PROGRAM``.
Exit status 0 when every step worked, 1 otherwise (2 when the system cannot run it).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from crypto import keys
from tunnel.lab.netns import CommandError, Lab, iperf3_bits_per_second, missing_requirements
from tunnel.wireguard import quick

PORTS = (51820, 51821)


def _say(text: str) -> None:
    print(text, flush=True)


def _configure(lab: Lab, ns: str, iface: str, private: bytes, port: int, peer_public: bytes,
               peer_endpoint: str, inner: tuple[str, str], peer_inner: tuple[str, str]) -> None:
    request = (
        f"set=1\nprivate_key={private.hex()}\nlisten_port={port}\nreplace_peers=true\n"
        f"public_key={peer_public.hex()}\nendpoint={peer_endpoint}\n"
        f"replace_allowed_ips=true\nallowed_ip={peer_inner[0]}/32\n"
        f"allowed_ip={peer_inner[1]}/128\n\n"
    )
    _, code = quick.uapi_call(iface, request)
    if code != 0:
        raise CommandError(f"{iface}: the daemon refused the configuration (errno={code})")
    lab.run(ns, ["ip", "addr", "add", f"{inner[0]}/24", "dev", iface])
    lab.run(ns, ["ip", "addr", "add", f"{inner[1]}/64", "dev", iface, "nodad"])
    lab.run(ns, ["ip", "link", "set", "mtu", "1420", "up", "dev", iface])


def _last_handshake(iface: str) -> float:
    lines, code = quick.uapi_call(iface, "get=1\n\n")
    for line in lines:
        if line.startswith("last_handshake_time_sec="):
            return float(line.split("=", 1)[1])
    return 0.0


def run(lab: Lab, program: list[str], seconds: float) -> bool:
    """The demo proper; True if everything worked. Raises CommandError on a broken step."""
    left, right = lab.namespace("l"), lab.namespace("r")
    lab.veth(left, right, ["192.168.77.1/24", "fd77::1/64"], ["192.168.77.2/24", "fd77::2/64"])
    _say(f"namespaces {left} and {right}, joined by a veth (192.168.77.0/24, fd77::/64)")
    private = [keys.generate_private(), keys.generate_private()]
    public = [keys.public_from_private(k) for k in private]
    ifaces = []
    for ns in (left, right):
        ifaces.append(lab.start_daemon(ns, program))
    _say(f"started `{' '.join(program)} IFACE' in each: {ifaces[0]} and {ifaces[1]}")
    inner = [("10.9.0.1", "fd09::1"), ("10.9.0.2", "fd09::2")]
    outer = ["192.168.77.1", "192.168.77.2"]
    for i, ns in enumerate((left, right)):
        j = 1 - i
        _configure(lab, ns, ifaces[i], private[i], PORTS[i], public[j],
                   f"{outer[j]}:{PORTS[j]}", inner[i], inner[j])
    _say("configured through the UAPI sockets (fresh keys, ports 51820/51821, MTU 1420)")

    ok = True
    started = time.monotonic()
    handshake = lab.wait_ping(left, inner[1][0], timeout=15)
    if handshake and _last_handshake(ifaces[0]) > 0:
        _say(f"handshake:     ok ({time.monotonic() - started:.2f} s to the first ping reply)")
    else:
        _say("handshake:     FAILED (no ping reply through the tunnel within 15 s)")
        return False
    for label, target in (("ping IPv4:", inner[1][0]), ("ping IPv6:", inner[1][1])):
        rtt = lab.ping(left, target, count=5)
        ok &= rtt is not None
        _say(f"{label:14} {'FAILED' if rtt is None else f'{rtt:.3f} ms average over 5'}")
    back = lab.ping(right, inner[0][0], count=3)
    ok &= back is not None
    _say(f"{'ping back:':14} {'FAILED' if back is None else f'{back:.3f} ms average over 3'}")

    for label, server_ns, client_ns, addr in (
        ("wg-py tunnel:", right, left, inner[1][0]),
        ("bare veth:", right, left, outer[1]),
    ):
        try:
            result = lab.iperf3(server_ns, client_ns, addr, seconds=seconds)
        except CommandError as exc:
            _say(f"{label:14} iperf3 FAILED: {exc}")
            ok = False
            continue
        bps = iperf3_bits_per_second(result)
        retrans = result["end"].get("sum_sent", {}).get("retransmits", 0)
        _say(f"{label:14} {bps / 1e9:.3f} Gbit/s (iperf3 TCP, {seconds:g} s, "
             f"{retrans} retransmits)")
    for i, iface in enumerate(ifaces):
        lines, _ = quick.uapi_call(iface, "get=1\n\n")
        rx = sum(int(x.split("=")[1]) for x in lines if x.startswith("rx_bytes="))
        tx = sum(int(x.split("=")[1]) for x in lines if x.startswith("tx_bytes="))
        _say(f"{iface}:{'':{max(0, 13 - len(iface))}} {rx} bytes received, {tx} bytes sent "
             f"({'left' if i == 0 else 'right'})")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunnel.lab.demo", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration (5)")
    parser.add_argument("--implementation", help="the daemon program (default: wg-py)")
    args = parser.parse_args(argv)
    reason = missing_requirements(("ip", "ping", "iperf3", "ss"))
    if reason:
        print(f"demo: {reason}", file=sys.stderr)
        return 2
    program = shlex.split(args.implementation) if args.implementation else quick.daemon_command()
    if shutil.which(program[0]) is None:
        print(f"demo: {program[0]} not found", file=sys.stderr)
        return 2

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started with SIGINT ignored
    _say("wg-py demo: two network namespaces, a WireGuard tunnel between them made by wg-py")
    lab = Lab()
    try:
        ok = run(lab, program, args.seconds)
    except KeyboardInterrupt:
        _say("interrupted")
        ok = False
    except (CommandError, OSError, quick.QuickError) as exc:
        _say(f"FAILED: {exc}")
        ok = False
    finally:
        lab.close()
        _say(f"cleaned up: namespaces {lab.prefix}*, their daemons and sockets removed")
    _say("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
