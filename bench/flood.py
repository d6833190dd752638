"""A handshake flood against a WireGuard responder, and what its one legitimate peer sees.

    .venv/bin/python bench/flood.py [--victim wgpy|wggo|CMD] [--rate 120000] [--time 25]

Three namespaces (``tunnel.lab.netns.Lab``; removed on the way out, Ctrl-C included): the
*victim* runs the responder under test (``wgpy``: this checkout's daemon; ``wggo``: upstream
wireguard-go from ``../shared/bin`` beside the checkout; anything else: a command that takes the interface name,
as ``wireguard-go``); the *legit* namespace runs Debian's wireguard-go with the victim as its one
peer; the *attacker* namespace runs a flooder that sends forged handshake initiations with a
valid mac1 (it needs only the victim's public key) from 8 source ports at a fixed offered rate
for ``--time`` seconds, and counts the cookie replies it gets back. The messages (512) are
precomputed here. ``--flooder c`` (default): ``bench/flood_sender.c`` (compiled with gcc into the
lab's temporary directory) writes IPv4/UDP headers itself through a raw socket, so the source
ports alternate datagram by datagram, 64 per ``sendmmsg``: every datagram is its own flow at the
victim (no GRO coalescing), as from many senders. ``--flooder python``: this script with
``--flooder``, 64 datagrams per port per ``sendmmsg`` with UDP GSO through our batch I/O, which
the victim's GRO receives as one coalesced message per run: a much gentler flood.

After ``--warmup`` seconds of flood the legitimate peer starts pinging the victim's tunnel
address twice a second until the flood ends: its first ping triggers its first handshake, which
needs a cookie round (the victim is under load). Measured: when the first ping got through
(seconds after the first ping), pings answered, ``wg show`` response time inside the victim
(once a second), the victim's RSS and CPU share (once a second), the offered and achieved flood rate, the
cookie replies the attacker received, datagrams dropped by the kernel's input backlogs
(``/proc/net/softnet_stat``, the whole machine) and at the victim's socket (``/proc/net/udp``),
and ``/proc/loadavg`` before and after (the machine may be shared). Prints one JSON document;
``--json PATH`` also writes it. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crypto import keys  # noqa: E402
from crypto.constants import LABEL_MAC1  # noqa: E402
from crypto.primitives import hash_, mac  # noqa: E402
from tunnel.lab.netns import Lab  # noqa: E402
from tunnel.wireguard import quick  # noqa: E402

UPSTREAM = str(ROOT.parent / "shared" / "bin" / "wireguard-go-upstream")  # ../shared/bin beside the checkout
PORT = 51820
LEGIT_NET = ("10.77.1.1", "10.77.1.2")  # victim, legit (outer)
ATTACK_NET = ("10.77.2.1", "10.77.2.2")  # victim, attacker (outer)
INNER = ("10.99.0.1", "10.99.0.2")  # victim, legit (inside the tunnel)
BATCH = 64
POOL = 512


# ----------------------------------------------------------------------------- the flooder


def forged_initiations(victim_public: bytes, count: int) -> list[bytes]:
    """Initiations of random content with a valid mac1 for ``victim_public`` and no mac2."""
    mac1_key = hash_(LABEL_MAC1, victim_public)
    out = []
    for _ in range(count):
        body = b"\x01\x00\x00\x00" + os.urandom(112)
        out.append(body + mac(mac1_key, body) + bytes(16))
    return out


def flooder(target: str, port: int, public_hex: str, rate: float, seconds: float, ports: int) -> dict[str, Any]:
    """Send forged initiations to ``target:port`` at ``rate`` per second from ``ports`` sockets."""
    from tunnel.io.endpoint import Endpoint
    from tunnel.io.offload import select_io

    _, io = select_io()
    messages = forged_initiations(bytes.fromhex(public_hex), POOL)
    dest = Endpoint(target, port)
    socks, batches = [], []
    for _ in range(ports):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        socks.append(sock)
        batches.append(io.UdpBatch(sock.fileno(), gso=True, gro=False, make_source=Endpoint))
    plans = [[(messages[(k * BATCH + j) % POOL], dest) for j in range(BATCH)] for k in range(POOL // BATCH)]
    bufs = [bytearray(2048) for _ in range(BATCH)]
    lengths = [0] * BATCH
    sources: list[Any] = [dest] * BATCH
    sent = replies = 0
    start = time.monotonic()
    end = start + seconds
    turn = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * rate)
        if sent >= due:
            time.sleep(min(0.002, (sent - due + 1) / rate))
        else:
            batch = batches[turn % ports]
            sent += batch.send(plans[turn % len(plans)]) or 0
            turn += 1
        if turn % 16 == 0:
            for batch in batches:
                while True:
                    got = batch.recv(bufs, lengths, sources)
                    replies += sum(1 for i in range(got) if lengths[i] == 64 and bufs[i][0] == 3)
                    if got < BATCH:
                        break
    elapsed = time.monotonic() - start
    for batch, sock in zip(batches, socks, strict=True):
        batch.close()
        sock.close()
    return {"sent": sent, "seconds": elapsed, "achieved_rate": sent / elapsed, "cookie_replies": replies,
            "errors": [dict(b.errors) for b in batches]}


# ----------------------------------------------------------------------------- the scene


def victim_program(victim: str) -> list[str]:
    if victim == "wgpy":
        return quick.daemon_command()
    if victim == "wggo":
        return [UPSTREAM]
    return victim.split()


def rss_mib(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmRSS:\s+(\d+)", text)
    return int(found.group(1)) / 1024 if found else None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (all its threads) in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def softnet_dropped() -> int:
    """Packets the kernel dropped from its per-CPU input backlogs so far (all namespaces)."""
    total = 0
    for line in Path("/proc/net/softnet_stat").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1:
            total += int(fields[1], 16)
    return total


def udp_drops(lab: Lab, ns: str, port: int) -> int:
    """Datagrams dropped at the UDP sockets bound to ``port`` in ``ns`` (full receive buffer)."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        text = lab.run(ns, ["cat", table], check=False).stdout
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 12 and fields[1].rsplit(":", 1)[-1] == f"{port:04X}":
                total += int(fields[-1])
    return total


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def run(opts: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] = {"victim": opts.victim, "flooder": opts.flooder, "offered_rate": opts.rate,
                           "seconds": opts.time,
                           "ports": opts.ports, "loadavg_before": loadavg()}
    with Lab(prefix=f"wgf{os.getpid() % 100000}") as lab:
        victim, legit, attacker = lab.namespace("v"), lab.namespace("l"), lab.namespace("a")
        lab.veth(victim, legit, [f"{LEGIT_NET[0]}/24"], [f"{LEGIT_NET[1]}/24"], names=("vl0", "lv0"))
        lab.veth(victim, attacker, [f"{ATTACK_NET[0]}/24"], [f"{ATTACK_NET[1]}/24"], names=("va0", "av0"))
        priv_v, priv_l = keys.generate_private(), keys.generate_private()
        pub_v, pub_l = keys.public_from_private(priv_v), keys.public_from_private(priv_l)
        env = {"LOG_LEVEL": "error"}
        iface_v = lab.start_daemon(victim, victim_program(opts.victim), env=env)
        conf = lab.path("victim.conf")
        conf.write_text(f"[Interface]\nPrivateKey = {keys.to_base64(priv_v)}\nListenPort = {PORT}\n\n"
                        f"[Peer]\nPublicKey = {keys.to_base64(pub_l)}\nAllowedIPs = {INNER[1]}/32\n")
        lab.run(victim, ["wg", "setconf", iface_v, str(conf)])
        iface_l = lab.start_daemon(legit, ["wireguard-go"], env=env)
        conf = lab.path("legit.conf")
        conf.write_text(f"[Interface]\nPrivateKey = {keys.to_base64(priv_l)}\n\n"
                        f"[Peer]\nPublicKey = {keys.to_base64(pub_v)}\nAllowedIPs = {INNER[0]}/32\n"
                        f"Endpoint = {LEGIT_NET[0]}:{PORT}\n")
        lab.run(legit, ["wg", "setconf", iface_l, str(conf)])
        for ns, iface, addr in ((victim, iface_v, INNER[0]), (legit, iface_l, INNER[1])):
            lab.run(ns, ["ip", "addr", "add", f"{addr}/24", "dev", iface])
            lab.run(ns, ["ip", "link", "set", iface, "up"])
        pids = lab.daemon_pids(victim)
        doc["victim_pids"] = pids
        pid = pids[0] if pids else 0
        flood_json = lab.path("flood.json")
        if opts.flooder == "c":
            sender = lab.path("flood_sender")
            lab.run(None, ["gcc", "-O2", "-o", str(sender), str(Path(__file__).with_name("flood_sender.c"))])
            pool = lab.path("messages.bin")
            pool.write_bytes(b"".join(forged_initiations(pub_v, POOL)))
            flood = lab.spawn(attacker, [str(sender), ATTACK_NET[0], str(PORT), ATTACK_NET[1], "40000",
                                         str(opts.ports), str(opts.rate), str(opts.time), str(pool)])
        else:
            flood = lab.spawn(attacker, [
                sys.executable, str(Path(__file__).resolve()), "--flooder", ATTACK_NET[0], str(PORT), pub_v.hex(),
                str(opts.rate), str(opts.time), str(opts.ports), str(flood_json)])
        samples: list[dict[str, Any]] = []
        stop = threading.Event()

        def sample() -> None:
            start = time.monotonic()
            while not stop.is_set() and time.monotonic() - start < opts.time + 30:
                t0 = time.monotonic()
                try:
                    done = subprocess.run(["ip", "netns", "exec", victim, "wg", "show", iface_v], capture_output=True,
                                          text=True, timeout=10, check=False)
                    ok = done.returncode == 0
                except subprocess.TimeoutExpired:
                    ok = False
                took = time.monotonic() - t0
                samples.append({"t": round(t0 - start, 2), "wg_show_s": round(took, 4), "wg_show_ok": ok,
                                "rss_mib": rss_mib(pid), "cpu_s": cpu_seconds(pid)})
                stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        backlog_before = softnet_dropped()
        time.sleep(opts.warmup)
        ping_seconds = max(1, int(opts.time - opts.warmup - 1))
        ping_start = time.time()
        done = lab.run(legit, ["ping", "-D", "-n", "-i", "0.5", "-W", "1", "-w", str(ping_seconds), INNER[0]],
                       check=False, timeout=ping_seconds + 15)
        flood.wait(opts.time + 30)
        doc["dropped"] = {"kernel_backlog": softnet_dropped() - backlog_before,
                          "victim_socket": udp_drops(lab, victim, PORT)}
        stop.set()
        sampler.join(15)
        replies = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", done.stdout, re.M)]
        counts = re.search(r"(\d+) packets transmitted, (\d+) received", done.stdout)
        doc["ping"] = {
            "transmitted": int(counts.group(1)) if counts else 0,
            "received": int(counts.group(2)) if counts else 0,
            "first_reply_after_s": round(replies[0] - ping_start, 2) if replies else None,
        }
        if opts.flooder == "c":
            found = re.search(r"^\{.*\}$", flood.output(), re.M)
            doc["flood"] = json.loads(found.group(0)) if found else {"error": flood.output()}
        else:
            doc["flood"] = json.loads(flood_json.read_text()) if flood_json.exists() else {"error": flood.output()}
        shows = [s["wg_show_s"] for s in samples]
        rss = [s["rss_mib"] for s in samples if s["rss_mib"] is not None]
        doc["wg_show"] = {"max_s": max(shows, default=None), "failed": sum(1 for s in samples if not s["wg_show_ok"])}
        doc["rss_mib"] = {"first": rss[0] if rss else None, "max": max(rss, default=None),
                          "last": rss[-1] if rss else None}
        cpu = [(s["t"], s["cpu_s"]) for s in samples if s["cpu_s"] is not None]
        doc["victim_cpu_share"] = (round((cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0]), 2)
                                   if len(cpu) > 1 and cpu[-1][0] > cpu[0][0] else None)
        doc["samples"] = samples
        handshake = lab.run(legit, ["wg", "show", iface_l, "latest-handshakes"], check=False).stdout.split()
        doc["legit_handshake_done"] = len(handshake) == 2 and handshake[1] != "0"
    doc["loadavg_after"] = loadavg()
    return doc


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--flooder":
        target, port, public_hex, rate, seconds, ports, out = argv[1:8]
        result = flooder(target, int(port), public_hex, float(rate), float(seconds), int(ports))
        Path(out).write_text(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description="A forged-initiation flood against a WireGuard responder.")
    parser.add_argument("--victim", default="wgpy", help="wgpy, wggo (upstream) or a command taking IFACE")
    parser.add_argument("--rate", type=float, default=120_000, help="offered forged initiations per second")
    parser.add_argument("--time", type=float, default=25.0, help="flood duration in seconds (at most 60)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of flood before the legit peer starts")
    parser.add_argument("--ports", type=int, default=8, help="attacker source ports")
    parser.add_argument("--flooder", choices=("c", "python"), default="c",
                        help="c: bench/flood_sender.c, source ports interleaved per datagram (default); "
                             "python: 64 datagrams per port per sendmmsg with UDP GSO (gentler on the victim)")
    parser.add_argument("--json", help="also write the result here")
    opts = parser.parse_args(argv)
    opts.time = min(opts.time, 60.0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so Lab cleans up
    doc = run(opts)
    text = json.dumps(doc, indent=1)
    if opts.json:
        Path(opts.json).write_text(text)
    summary = {k: v for k, v in doc.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
