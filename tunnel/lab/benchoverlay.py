"""``wg-py bench``'s L2 overlay contenders (issue 12): a VXLAN inside a WireGuard pair.

:mod:`tunnel.lab.bench` first builds the WireGuard pair as for its WireGuard contenders (wg-py
for ``kvxlan-wgpy`` and ``wgpy-l2``, the contender's wireguard-go binary for
``kvxlan-wggo-VERSION``; tunnel addresses ``TUNNEL[0]``/``TUNNEL[1]``, MTU 1420), then
:func:`add_overlay` puts the VXLAN (VNI 42, port 4789) on each end, with the overlay
addresses ``OVERLAY[0]``/``OVERLAY[1]`` on its device ``vx0``:

``kvxlan-*``  the kernel's driver: ``ip link add vx0 type vxlan id 42 dstport 4789 local
              TUNNEL_ADDR remote PEER_TUNNEL_ADDR dev WGIFACE``, MTU 1370 (1420 - 50);
``wgpy-l2``   wg-py's one-process overlay: ``wg-py vxlan add vx0 id 42 dstport 4789 remote
              PEER_TUNNEL_ADDR dev WGIFACE`` (``local`` and the MTU are the daemon's defaults:
              the interface's address, 1370).

``wgpy-l2`` counts only if the command runs the VXLAN endpoint inside the WireGuard daemon:
if it fails (the daemon refuses it) or if it starts a process of its own in the namespace
(a separate VXLAN daemon, i.e. the two-process stack of a wg-py that lacks the one-process
overlay), :class:`Unavailable` says why and the run goes on without the contender
(:func:`one_process_verdict` decides, from plain data). Everything is removed with the lab's
namespaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from tunnel.lab.netns import Lab
from tunnel.wireguard import quick

VNI = "42"
VXLAN_PORT = "4789"
OVERLAY = ("10.202.0.1", "10.202.0.2")
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


class Unavailable(RuntimeError):
    """The contender cannot be built with this wg-py (the reason is the message); the run
    reports it as unavailable, not as a failure."""


def one_process_verdict(returncode: int, output: str, pids_before: Iterable[int],
                        pids_after: Iterable[int], iface: str) -> str | None:
    """Why ``wg-py vxlan add ... dev IFACE`` did not give a one-process overlay, or None if it
    did: it exited non-zero (``output``'s first non-empty line is the daemon's or the CLI's
    reason), or new processes appeared in the namespace (``pids_after`` beyond
    ``pids_before``: a separate VXLAN daemon)."""
    if returncode != 0:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        reason = lines[0] if lines else f"exit status {returncode}"
        return f"wg-py vxlan add ... dev {iface} was refused: {reason}"
    extra = sorted(set(pids_after) - set(pids_before))
    if extra:
        return (f"wg-py vxlan add ... dev {iface} started a separate process (pid "
                f"{', '.join(map(str, extra))}) instead of running the VXLAN endpoint inside "
                f"the WireGuard daemon: no one-process overlay in this wg-py")
    return None


def kernel_vxlan_argv(iface: str, local: str, remote: str, mtu: int) -> list[str]:
    """``ip link add vx0 type vxlan ...`` over the WireGuard interface ``iface``."""
    return ["ip", "link", "add", "vx0", "mtu", str(mtu), "type", "vxlan", "id", VNI, "dstport",
            VXLAN_PORT, "local", local, "remote", remote, "dev", iface]


def wgpy_l2_argv(iface: str, remote: str) -> list[str]:
    """``wg-py vxlan add vx0 ... dev IFACE``: the one-process overlay of issue 12."""
    return [*quick.daemon_command(), "vxlan", "add", "vx0", "id", VNI, "dstport", VXLAN_PORT,
            "remote", remote, "dev", iface]


def add_overlay(lab: Lab, kind: str, ends: Sequence[tuple[str, str]], tunnel: Sequence[str],
                wg_mtu: int, env: Mapping[str, str]) -> int:
    """Put the overlay ``kind`` (``kvxlan-wgpy``, ``kvxlan-wggo`` or ``wgpy-l2``) on both
    ``ends`` ((namespace, WireGuard interface) each, tunnel addresses ``tunnel``), with
    ``OVERLAY`` addresses on ``vx0``, up. Returns vx0's MTU on the first end. Raises
    :class:`Unavailable` for a ``wgpy-l2`` that is not one process, CommandError otherwise."""
    for i, (ns, iface) in enumerate(ends):
        remote = tunnel[1 - i]
        if kind == "wgpy-l2":
            before = lab.daemon_pids(ns)
            done = lab.run(ns, wgpy_l2_argv(iface, remote), check=False, env=env, timeout=30)
            after = lab.daemon_pids(ns)
            why = one_process_verdict(done.returncode, done.stderr + done.stdout, before, after,
                                      iface)
            if why is not None:
                if done.returncode == 0:  # stop the separate daemon now, not at the lab's end
                    lab.run(ns, [*quick.daemon_command(), "vxlan", "del", "vx0"], check=False,
                            env=env, timeout=15)
                raise Unavailable(why)
        else:
            lab.run(ns, kernel_vxlan_argv(iface, tunnel[i], remote, wg_mtu - VXLAN_OVERHEAD))
        lab.run(ns, ["ip", "addr", "add", f"{OVERLAY[i]}/24", "dev", "vx0"])
        lab.run(ns, ["ip", "link", "set", "vx0", "up"])
    return int(lab.run(ends[0][0], ["cat", "/sys/class/net/vx0/mtu"]).stdout.strip() or 0)
