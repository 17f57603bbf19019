"""Deterministic fault injection for kill/resume tests.

`ABPO_KILL_AT=<point>:<n>` makes the n-th call (1-based, counted in this process) of
`kill_point("<point>")` SIGKILL the process — no timing, so a test can kill a run mid-rollout,
mid-update or mid-checkpoint at exactly the same place every time.
"""

from __future__ import annotations

import collections
import os
import signal

_counts: collections.Counter = collections.Counter()


def kill_point(name: str) -> None:
    """Count a pass through the named point; die here if `ABPO_KILL_AT` asks for this pass."""
    spec = os.environ.get("ABPO_KILL_AT", "")
    if not spec:
        return
    _counts[name] += 1
    point, _, n = spec.partition(":")
    if point == name and _counts[name] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
