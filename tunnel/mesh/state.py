"""The agent's counters and its state file (read by ``mesh status`` and by the CNI plugin).

State file: ``/run/wg-py/mesh/IFACE.json`` (the directory is the agent's ``--state-dir``),
written atomically (a temporary file in the same directory, then ``rename``) after every
reconcile and every few seconds, and removed when the agent leaves cleanly. Format::

    {
      "network": "prod",                 # the network name
      "interface": "wgmesh0",
      "mode": "l3",                      # "l3" or "l2" (the network config's mode)
      "network_cidr": "10.50.0.0/16",
      "subnet": "10.50.3.0/24",          # this node's claimed subnet
      "address": "10.50.3.1",            # this node's tunnel address (first host of the subnet)
      "mtu": 1420,                       # the inner MTU of the interface
      "public_key": "<base64>",          # this node's key
      "nodes": [                         # every valid live node, this one included
        {"name": "n1", "public_key": "<base64>", "subnet": "10.50.4.0/24",
         "address": "10.50.4.1", "endpoints": ["192.0.2.4:51820"], "alive": true}
      ],
      "owned": {"peers": ["<base64>", ...], "routes": ["10.50.4.0/24", ...]},
      "counters": {...},                 # Counters.as_dict()
      "pid": 4711,
      "updated": 1733240000.5            # Unix time of this write
    }

``owned`` is what the agent installed on the interface: an agent restarted on an interface that
still runs (after a SIGKILL) adopts it, so it can later remove what its predecessor made and
nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = Path("/run/wg-py/mesh")


@dataclass
class Counters:
    """Plain counters of one agent (exported as JSON; a metrics exporter may read them)."""

    nodes_alive: int = 0
    reconciles: int = 0
    reconcile_failures: int = 0
    actions_applied: int = 0
    lease_regrants: int = 0
    claim_renewals: int = 0
    store_errors: Counter[str] = field(default_factory=Counter)
    watch_restarts: Counter[str] = field(default_factory=Counter)
    hostile_records: Counter[str] = field(default_factory=Counter)
    store_up: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes_alive": self.nodes_alive, "reconciles": self.reconciles,
            "reconcile_failures": self.reconcile_failures, "actions_applied": self.actions_applied,
            "lease_regrants": self.lease_regrants, "claim_renewals": self.claim_renewals,
            "store_errors": dict(self.store_errors), "watch_restarts": dict(self.watch_restarts),
            "hostile_records": dict(self.hostile_records), "store_up": self.store_up,
        }


def state_path(state_dir: Path, iface: str) -> Path:
    return state_dir / f"{iface}.json"


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as JSON to ``path`` atomically (readers see the old or the new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(state, out, sort_keys=True, indent=1)
            out.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file's content, or None if absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_state(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
