"""``python -m tunnel ARGS``: the ``wg-py`` command (``tunnel.cli.main``) without its script.

This is the way to run the WireGuard daemon from a checkout with everything the ``wg-py``
script gives it, the L2 overlay's UAPI handlers included (``python -m tunnel IFACE``);
``python -m tunnel.wireguard.daemon IFACE`` runs it without them (see that module's docstring).
"""

from __future__ import annotations

import sys

from tunnel.cli import main

if __name__ == "__main__":
    sys.exit(main())
