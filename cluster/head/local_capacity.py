"""What a local fleet can hold on this one machine.

Every local node is a real raylet with its agents: about 355 MB of resident memory each, measured
here with Ray 2.60 (`ps -o rss` over a node's processes after `ray start`), and the head about
1.3 GB. A spec that needs more than the machine has is refused before anything starts.
"""
from __future__ import annotations

import psutil

from rayfleet.errors import BadInput

NODE_BYTES = 400 * 2**20
HEAD_BYTES = 1400 * 2**20


def check_local_capacity(nodes: int, where: str, available: int | None = None) -> None:
    """BadInput if `nodes` local nodes plus a head would not fit in this machine's memory."""
    available = psutil.virtual_memory().available if available is None else available
    needed = HEAD_BYTES + nodes * NODE_BYTES
    if needed > available:
        most = max(0, (available - HEAD_BYTES) // NODE_BYTES)
        raise BadInput(f"{where}: {nodes} local nodes need about {needed / 2**30:.1f} GiB but this machine has "
                       f"{available / 2**30:.1f} GiB available; ask for at most {most} nodes in all")
