"""What a daemon process asks of its runtime: the kernel scheduler's slice (``sched``,
``WGPY_SLICE``) and CPython's garbage collector (``gcpolicy``, ``WGPY_GC``).

Both daemons (WireGuard and VXLAN) apply them once set up. This package knows no protocol and
imports nothing of ours: it sits beside ``tunnel.io``, below the engines.
"""
