"""Build the Cython extensions of wg-py (everything else is declared in pyproject.toml).

Every ``*.pyx`` under ``crypto/`` and ``tunnel/`` becomes an extension module of the same dotted
name, linked against OpenSSL libcrypto (Debian: libssl-dev) and, where ``EXTRA_LIBRARIES``
says so, libsodium (Debian: libsodium-dev). ``WGPY_DEBUG=1`` builds with
``-O0 -g`` and Cython's bounds checks on.

Development: ``python setup.py build_ext --inplace`` puts the ``.so`` next to its ``.pyx``
(``make build`` does exactly that).
"""

from __future__ import annotations

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
DEBUG = os.environ.get("WGPY_DEBUG") == "1"
# Modules that link more than OpenSSL libcrypto (Debian: libsodium-dev for libsodium).
EXTRA_LIBRARIES = {"crypto/_screen.pyx": ["sodium"]}


def extensions() -> list[Extension]:
    sources = sorted(ROOT.glob("crypto/*.pyx")) + sorted(ROOT.glob("tunnel/**/*.pyx"))
    modules = []
    for pyx in sources:
        relative = pyx.relative_to(ROOT)
        modules.append(
            Extension(
                ".".join(relative.with_suffix("").parts),
                [relative.as_posix()],
                libraries=["crypto", *EXTRA_LIBRARIES.get(relative.as_posix(), [])],
                include_dirs=[str(ROOT / "include")],
                extra_compile_args=["-O0", "-g"] if DEBUG else [],
            )
        )
    directives: dict[str, object] = {"language_level": "3"}
    if DEBUG:
        directives.update(boundscheck=True, wraparound=True, initializedcheck=True)
    return cythonize(modules, compiler_directives=directives, quiet=True,
                     include_path=[str(ROOT), str(ROOT / "include")])


setup(ext_modules=extensions())
