"""``python -m tunnel.demo``: kept as the short name of the demo, which lives in :mod:`tunnel.lab.demo`."""

from __future__ import annotations

import sys

from tunnel.lab.demo import main

if __name__ == "__main__":
    sys.exit(main())
