"""Coverage-guided fuzz targets (atheris), one module per parser that reads outside input.

Each target module defines ``test_one_input(data: bytes) -> None`` (the libFuzzer callback:
raises only on a broken invariant) and ``seeds() -> list[bytes]`` (valid inputs the corpus
starts from). ``python -m fuzz.run TARGET`` fuzzes one target; ``make fuzz`` runs them all for
FUZZ_SECONDS each; tests/test_fuzz_targets.py runs every target on its seeds in ``make test``.
atheris instruments Python bytecode only: the Cython twins run (and can crash) under the fuzzer,
but their branches give no coverage feedback; the pure twins' do.
"""

TARGETS = ("wg_receive", "vxlan_engine", "uapi", "wg_quick", "vxlan_control", "mesh_record", "cni")
