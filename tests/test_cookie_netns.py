# ruff: noqa: F811 - pytest fixtures imported from tests.netns are parameters here
"""The under-load path across implementations, both ways, in network namespaces.

1. wg-py under load answers wireguard-go's initiation with a cookie reply; wireguard-go consumes
   it, retries with mac2, and the handshake completes (ping through the tunnel).
2. wireguard-go under load answers wg-py's initiation with a cookie reply; wg-py consumes it,
   retries with mac2, and the handshake completes.

"Under load" is made from outside, with no test hook in either daemon: a flooder process in the
initiator's namespace (from its own port) sends forged initiations whose mac1 is valid (mac1
needs only the responder's public key) and nothing else is. wg-py counts as under load after
UNDER_LOAD_HANDSHAKES_PER_SECOND valid-mac1 messages within a second (tunnel/wireguard/device.py),
so a steady few hundred per second suffice. wireguard-go counts as under load while its
handshake queue is at least 1/8 full (128 of 1024, device/receive.go IsUnderLoad), so the
flooder sends bursts of a few hundred back to back. Every loop is bounded in count and time.

What proves the exchange: an AF_PACKET capture on the veth of the handshake messages between
the two daemons' ports. The test opens each captured cookie reply with the whitepaper oracle of
tests/test_cookie_oracle.py (the responder's public key and the mac1 of the message it answers),
then checks that the initiator's next initiation carries mac2 = MAC(cookie, msg_beta) and that a
response followed. Logs and counters agree: wg-py's ``statistics`` (drop:under_load_cookie_sent,
no drop:invalid_cookie_reply) and wireguard-go's verbose log lines for the cookie it sent or
received (and none about an invalid one).
"""

from __future__ import annotations

import ast
import json
import os
import signal
import struct
import sys
from pathlib import Path

import pytest

from crypto import keys
from tests.netns import (
    Lab,
    Node,
    configure,
    handshake_done,
    implementation,
    netns_factory,  # noqa: F401 - the fixture
    peer_section,
    requires_root_netns,
    wait_for,
)
from tests.test_cookie_oracle import o_mac1, o_mac2, o_open_reply

pytestmark = [pytest.mark.netns, requires_root_netns]

PORTS = (51821, 51822)

# Captures handshake messages (types 1-3) between the two daemons' ports on DEV until STOPFILE
# appears or SECONDS pass; writes them to OUT as JSON [src port, dst port, hex payload].
SNIFFER = r'''
import json, os, socket, struct, sys, time
dev, ports, stopfile, out, seconds = sys.argv[1], {int(p) for p in sys.argv[2].split(",")}, \
    sys.argv[3], sys.argv[4], float(sys.argv[5])
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
raw.bind((dev, 0))
raw.settimeout(0.1)
open(out + ".ready", "w").close()
seen = []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline and not os.path.exists(stopfile) and len(seen) < 10000:
    try:
        frame, addr = raw.recvfrom(70000)
    except socket.timeout:
        continue
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        continue
    ihl = (frame[14] & 0x0F) * 4
    udp = frame[14 + ihl:]
    sport, dport = struct.unpack("!HH", udp[:4])
    payload = udp[8:]
    if sport in ports and dport in ports and payload[:1] in (b"\x01", b"\x02", b"\x03"):
        seen.append([sport, dport, payload.hex()])
with open(out, "w") as f:
    json.dump(seen, f)
'''

# Sends forged initiations (valid mac1 for the public key PUB, random otherwise) to TARGET:PORT
# from its own port: BURST messages back to back every TICK seconds, until STOPFILE appears or
# SECONDS pass. Counts the cookie replies that come back and keeps PROGRESS up to date.
FLOODER = r'''
import hashlib, json, os, socket, sys, time
target, port, pub, burst, tick, stopfile, progress, seconds = sys.argv[1], int(sys.argv[2]), \
    bytes.fromhex(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7], \
    float(sys.argv[8])
key = hashlib.blake2s(b"mac1----" + pub, digest_size=32).digest()
def forged():
    body = b"\x01\x00\x00\x00" + os.urandom(112)
    return body + hashlib.blake2s(body, key=key, digest_size=16).digest() + bytes(16)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.connect((target, port))
sock.setblocking(False)
sent = replies = 0
deadline = time.monotonic() + seconds
def report():
    with open(progress + ".tmp", "w") as f:
        json.dump({"sent": sent, "cookie_replies": replies}, f)
    os.replace(progress + ".tmp", progress)
while time.monotonic() < deadline and not os.path.exists(stopfile):
    for _ in range(burst):
        try:
            sock.send(forged())
            sent += 1
        except BlockingIOError:
            break
        except OSError:
            pass
    end = time.monotonic() + tick
    while time.monotonic() < end:
        try:
            data = sock.recv(2048)
        except (BlockingIOError, ConnectionRefusedError):
            time.sleep(0.002)
            continue
        if len(data) == 64 and data[0] == 3:
            replies += 1
    report()
report()
'''


def start(lab: Lab, impl: str, ns: str, index: int, port: int) -> Node:
    """Like tests.netns.start_node, with verbose logs (LOG_LEVEL=verbose for both daemons)."""
    iface = lab.start_daemon(ns, implementation(impl), env={"LOG_LEVEL": "verbose"})
    return Node(lab, impl, ns, iface, index, keys.generate_private(), port,
                inner4=f"10.9.0.{index}", inner6=f"fd09::{index}")


def pair(lab: Lab, impl_a: str, impl_b: str) -> tuple[Node, Node]:
    ns_a, ns_b = lab.namespace("a"), lab.namespace("b")
    lab.veth(ns_a, ns_b, ["192.168.77.1/24"], ["192.168.77.2/24"])
    a = start(lab, impl_a, ns_a, 1, PORTS[0])
    b = start(lab, impl_b, ns_b, 2, PORTS[1])
    a.veth, b.veth = "veth0", "veth1"
    configure(a, peer_section(b, f"192.168.77.2:{b.port}"))
    configure(b, peer_section(a, f"192.168.77.1:{a.port}"))
    return a, b


def daemon_log(lab: Lab, node: Node) -> str:
    return lab.path(f"daemon-{node.iface}.log").read_text(errors="replace")


def stop_wg_py(lab: Lab, node: Node) -> dict[str, int]:
    """SIGTERM wg-py (the only process left in its namespace) and return the statistics it
    logs on the way out."""
    pids = lab.daemon_pids(node.ns)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGTERM)
    assert wait_for(lambda: "statistics:" in daemon_log(lab, node), 10.0), daemon_log(lab, node)
    line = next(x for x in daemon_log(lab, node).splitlines() if "statistics:" in x)
    stats: dict[str, int] = ast.literal_eval(line.split("statistics:", 1)[1].strip())
    return stats


def cookie_exchanges(captured: list[list[object]], initiator: Node, responder: Node) -> list[str]:
    """For each cookie reply responder -> initiator in the capture: open it with the oracle, then
    check the initiator's next initiation carries mac2 for that cookie. Returns what was seen."""
    responder_pub = keys.public_from_private(responder.private)
    messages = [(int(s), int(d), bytes.fromhex(str(h))) for s, d, h in captured]
    seen = []
    last_init: bytes | None = None
    for i, (sport, dport, msg) in enumerate(messages):
        if sport == initiator.port and msg[0] == 1:
            assert len(msg) == 148
            assert msg[-32:-16] == o_mac1(responder_pub, msg), "initiation with a bad mac1"
            last_init = msg
        if sport == responder.port and dport == initiator.port and msg[0] == 3:
            assert last_init is not None, "a cookie reply before any initiation"
            receiver, cookie = o_open_reply(responder_pub, msg, last_init[-32:-16])
            assert receiver == struct.unpack_from("<I", last_init, 4)[0]
            assert cookie is not None, "the oracle cannot open the cookie reply"
            later = [m for s, _, m in messages[i + 1:] if s == initiator.port and m[0] == 1]
            assert later, "no initiation after the cookie reply"
            assert later[0][-16:] == o_mac2(cookie, later[0]), "the retry's mac2 is not for the cookie"
            seen.append("cookie+mac2")
    return seen


def run_case(lab: Lab, responder: Node, initiator: Node, burst: int, tick: float
             ) -> tuple[list[list[object]], dict[str, int]]:
    """Flood the responder from a third namespace, wait until the flood earns cookie replies,
    then ping initiator -> responder through the tunnel. Returns the capture of the daemons'
    handshake messages on the initiator's veth (the flood never crosses it) and the flooder's
    counts."""
    flood_ns = lab.namespace("f")
    lab.veth(flood_ns, responder.ns, ["192.168.88.3/24"], ["192.168.88.1/24"],
             names=("veth8", "veth9"))
    sniffer, flooder = lab.path("sniffer.py"), lab.path("flooder.py")
    sniffer.write_text(SNIFFER)
    flooder.write_text(FLOODER)
    stop, capture, progress = lab.path("stop"), lab.path("capture.json"), lab.path("progress.json")
    sniff = lab.spawn(initiator.ns, [sys.executable, str(sniffer), initiator.veth,
                                     ",".join(map(str, PORTS)), str(stop), str(capture), "90"])
    assert wait_for(lambda: Path(str(capture) + ".ready").exists(), 10.0), sniff.output()
    responder_pub = keys.public_from_private(responder.private).hex()
    flood = lab.spawn(flood_ns, [sys.executable, str(flooder), "192.168.88.1", str(responder.port),
                                 responder_pub, str(burst), str(tick), str(stop), str(progress),
                                 "80"])

    def flood_answered() -> bool:
        try:
            return int(json.loads(progress.read_text())["cookie_replies"]) > 0
        except (OSError, ValueError):
            return False

    try:
        assert wait_for(flood_answered, 20.0), f"the responder never sent a cookie reply to the " \
            f"flood: {progress.read_text() if progress.exists() else 'no progress'} {flood.output()}"
        # The initiators retry after REKEY_TIMEOUT (5 s + jitter): allow a few rounds.
        reached = lab.wait_ping(initiator.ns, responder.inner4, timeout=45)
    finally:
        stop.touch()
        flood.wait(15)
        sniff.wait(15)
    flood_stats: dict[str, int] = json.loads(progress.read_text())
    print(f"\n[{responder.impl} under load] flood: {flood_stats}")
    captured: list[list[object]] = json.loads(capture.read_text())
    assert reached, f"no ping through the tunnel under load; captured types " \
        f"{[(s, d, str(h)[:2]) for s, d, h in captured]}\n{daemon_log(lab, responder)[-3000:]}"
    assert handshake_done(initiator, responder)
    return captured, flood_stats


def completed_after_cookie(captured: list[list[object]], initiator: Node, responder: Node) -> bool:
    """A response from the responder follows an initiation that carries mac2."""
    messages = [(int(s), bytes.fromhex(str(h))) for s, _, h in captured]
    mac2_at = [i for i, (s, m) in enumerate(messages)
               if s == initiator.port and m[0] == 1 and m[-16:] != bytes(16)]
    return bool(mac2_at) and any(s == responder.port and m[0] == 2
                                 for s, m in messages[mac2_at[0] + 1:])


def shapes(captured: list[list[object]]) -> list[tuple[object, object, str]]:
    return [(s, d, str(h)[:2]) for s, d, h in captured]


def test_wg_py_under_load_cookie_to_wireguard_go(netns_factory: Lab) -> None:
    lab = netns_factory
    a, b = pair(lab, "wg-py", "wireguard-go")  # a: wg-py responder, b: wireguard-go initiator
    # A few hundred valid-mac1 messages a second keep wg-py over its threshold.
    captured, flood = run_case(lab, a, b, burst=40, tick=0.1)
    seen = cookie_exchanges(captured, initiator=b, responder=a)
    assert seen, f"no cookie reply from wg-py to wireguard-go: {shapes(captured)}"
    assert completed_after_cookie(captured, initiator=b, responder=a), shapes(captured)
    go_log = daemon_log(lab, b)
    assert "Receiving cookie response from 192.168.77.1" in go_log, go_log[-2000:]
    assert "invalid cookie" not in go_log.lower(), go_log[-2000:]
    stats = stop_wg_py(lab, a)
    # wg-py counted every cookie reply it sent: to the flood and to wireguard-go.
    assert stats.get("drop:under_load_cookie_sent", 0) >= flood["cookie_replies"] + len(seen), stats
    assert "drop:invalid_cookie_reply" not in stats, stats


def test_wireguard_go_under_load_cookie_to_wg_py(netns_factory: Lab) -> None:
    lab = netns_factory
    a, b = pair(lab, "wg-py", "wireguard-go")  # a: wg-py initiator, b: wireguard-go responder
    # Bursts of a few hundred fill wireguard-go's handshake queue past 1/8 for a moment each.
    captured, _ = run_case(lab, b, a, burst=400, tick=0.05)
    seen = cookie_exchanges(captured, initiator=a, responder=b)
    assert seen, f"no cookie reply from wireguard-go to wg-py: {shapes(captured)}"
    assert completed_after_cookie(captured, initiator=a, responder=b), shapes(captured)
    go_log = daemon_log(lab, b)
    assert f"Sending cookie response for denied handshake message for 192.168.77.1:{a.port}" \
        in go_log, go_log[-2000:]
    stats = stop_wg_py(lab, a)
    assert "drop:invalid_cookie_reply" not in stats, stats
