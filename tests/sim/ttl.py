"""Redis TTLs on the simulated clock.

Redis expires keys on wall time; the simulation lives on its own clock, which jumps. After every
step the world reports each key's absolute expiry (PEXPIRETIME) and remaining TTL: a key whose
expiry changed was given a TTL (EXPIRE) during that step, at the step's simulated time, so it
expires at `now + ceil(pttl)` seconds of simulated time (the TTLs the library sets are whole
seconds; the ceiling absorbs the wall-clock milliseconds spent since). PERSIST drops it. When the
clock advances, `expire` deletes what is due, as Redis would have.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import redis


class Expiry:
    """Keys with a TTL and when they expire in simulated time; and which ones expired."""

    def __init__(self) -> None:
        self._due: dict[str, tuple[int, float]] = {}  # key -> (PEXPIRETIME ms, sim expiry)
        self.expired: dict[str, float] = {}  # key -> sim time it last expired at

    def note(self, expiry: Mapping[str, tuple[int, int]], now: float) -> None:
        """Take in every key's (PEXPIRETIME, PTTL) as of simulated time `now`."""
        for k in [k for k in self._due if expiry.get(k, (-2, -2))[0] < 0]:
            del self._due[k]
        for k, (at, pttl) in sorted(expiry.items()):
            if at < 0:
                continue
            known = self._due.get(k)
            if known is None or known[0] != at:
                self._due[k] = (at, now + math.ceil(max(pttl, 0) / 1000))

    def expire(self, r: redis.Redis, now: float) -> list[str]:
        """Delete every key whose simulated expiry has come; returns them."""
        gone = sorted(k for k, (_, when) in self._due.items() if when <= now)
        if gone:
            r.delete(*gone)
        for k in gone:
            del self._due[k]
            self.expired[k] = now
        return gone

    def expired_since(self, k: str, since: float) -> bool:
        return self.expired.get(k, float("-inf")) >= since
