"""Fault points for crash tests: `POLARIS_FAULTS=after_commit:0.2,before_commit` makes the
process kill itself with SIGKILL at those points (with the given probability, default 1).

Points: before_commit (a builder ran, nothing committed), after_commit (committed, successors
not yet sent), mid_send (some successors sent, others not). Read once at import; costs one dict
lookup per point when unset.
"""

from __future__ import annotations

import os
import random
import signal


def _parse(spec: str) -> dict[str, float]:
    points: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, prob = part.partition(":")
        points[name] = float(prob) if prob else 1.0
    return points


_POINTS = _parse(os.environ.get("POLARIS_FAULTS", ""))


def point(name: str) -> None:
    """Die here, as a crash would, if this fault point is armed."""
    prob = _POINTS.get(name)
    if prob is not None and random.random() < prob:
        os.kill(os.getpid(), signal.SIGKILL)
