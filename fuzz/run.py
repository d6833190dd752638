"""Run one fuzz target: ``python -m fuzz.run TARGET [--seconds N] [--seeds-only] [-- libFuzzer args]``.

The seeds are written to ``.fuzz/seeds/TARGET`` (read-only for libFuzzer); new inputs go to
``.fuzz/corpus/TARGET``, kept between runs; crashes to ``.fuzz/crashes/TARGET-*``. With
``--seeds-only`` the target runs once on every seed and the corpus, without libFuzzer.
A crash file is replayed with ``python -m fuzz.run TARGET -- .fuzz/crashes/FILE``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import sys
from pathlib import Path

from fuzz import TARGETS

INSTRUMENTED = ["crypto", "tunnel", "fuzz", "tests", "json", "ipaddress", "base64", "binascii"]
ROOT = Path(__file__).resolve().parent.parent / ".fuzz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--seconds", type=int, default=60, help="libFuzzer -max_total_time")
    parser.add_argument("--seeds-only", action="store_true", help="run the seeds once, no fuzzing")
    parser.add_argument("rest", nargs="*", help="extra libFuzzer arguments (after --)")
    args = parser.parse_args(argv)
    if args.seeds_only:
        module = importlib.import_module(f"fuzz.{args.target}")
    else:
        import atheris  # the test extra installs it

        # Only our packages (and the stdlib parsers they lean on) get coverage instrumentation:
        # instrumenting everything loaded takes minutes.
        with atheris.instrument_imports(include=INSTRUMENTED):
            module = importlib.import_module(f"fuzz.{args.target}")
    seeds_dir = ROOT / "seeds" / args.target
    corpus_dir = ROOT / "corpus" / args.target
    crashes = ROOT / "crashes"
    for d in (seeds_dir, corpus_dir, crashes):
        d.mkdir(parents=True, exist_ok=True)
    for seed in module.seeds():
        (seeds_dir / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    if args.seeds_only:
        files = sorted(seeds_dir.iterdir()) + sorted(corpus_dir.iterdir())
        for f in files:
            module.test_one_input(f.read_bytes())
        print(f"{args.target}: {len(files)} inputs ok")
        return 0
    fuzzer_args = [sys.argv[0], f"-max_total_time={args.seconds}", "-rss_limit_mb=3072", "-timeout=20",
                   f"-artifact_prefix={crashes}/{args.target}-", "-print_final_stats=1"]
    dictionary = Path(__file__).resolve().parent / "dicts" / f"{args.target}.dict"
    if dictionary.exists():  # the parser's keywords, so mutations reach past the tokenizer
        fuzzer_args.append(f"-dict={dictionary}")
    replay = [a for a in args.rest if not a.startswith("-")]
    if replay:  # replay given files only
        fuzzer_args += args.rest
    else:
        fuzzer_args += args.rest + [str(corpus_dir), str(seeds_dir)]
    atheris.Setup(fuzzer_args, module.test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
