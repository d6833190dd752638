"""Build and run ``bench/aead_small.c``: small-message ChaCha20-Poly1305 latency, hot and after
the CPU idled, of the hand-written ``crypto/_chacha_small.h`` (when present), libsodium and
OpenSSL EVP.

    .venv/bin/python bench/aead_small.py [--rounds 200] [--idle-us 10000] [--json PATH]

Compiles with ``gcc -O3 -fwrapv`` (as setup.py builds the extensions here) into a temporary directory, runs it
(about ``rounds`` x 36 x ``idle_us`` of wall time), records ``/proc/loadavg`` before and after
(the machine may be shared) and prints one JSON document: ``{impl: {op: {size: [hot_ns,
cold_ns]}}}`` plus the load averages.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/aead_small.py")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--idle-us", type=int, default=10000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    defines = ["-DWITH_HANDWRITTEN"] if (ROOT / "crypto" / "_chacha_small.h").exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "aead_small"
        source = str(ROOT / "bench" / "aead_small.c")
        subprocess.run(["gcc", "-O3", "-fwrapv", *defines, "-I", str(ROOT / "crypto"), source,
                        "-lsodium", "-lcrypto", "-o", str(exe)], check=True, timeout=120)
        before = Path("/proc/loadavg").read_text().split()[:3]
        out = subprocess.run([str(exe), str(args.rounds), str(args.idle_us)], capture_output=True, text=True,
                             check=True, timeout=args.rounds * 36 * (args.idle_us / 1e6 + 0.01) + 120).stdout
        after = Path("/proc/loadavg").read_text().split()[:3]
    table: dict[str, dict[str, dict[str, list[int]]]] = {}
    for line in out.splitlines():
        impl, op, size, hot, cold = line.split()
        table.setdefault(impl, {}).setdefault(op, {})[size] = [int(hot), int(cold)]
    report = {"rounds": args.rounds, "idle_us": args.idle_us, "loadavg_before": before, "loadavg_after": after,
              "ns": table}
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
