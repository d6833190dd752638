"""L2 over WireGuard in one process: a VXLAN endpoint inside the wg-py WireGuard daemon.

Imports ``tunnel.wireguard`` and ``tunnel.vxlan``; neither imports this package (the WireGuard
daemon gets its request handler from the command line, ``tunnel/cli.py``). Modules:
``endpoint.py`` (the endpoint and its hub on an interface), ``cli.py`` (``wg-py vxlan`` front:
``add ... dev WGIFACE``), ``_l2.pyx`` / ``l2_ref.py`` (the per-packet loops, native/pure twins;
``l2.py`` picks one). See docs/design.md, "L2 over WireGuard".
"""
