"""Faults at every boundary the Coordinator crosses, drawn from the world's random source.

- A write (`cas`, `begin`) may never reach Redis (StoreUnavailable before the call), or reach it
  and lose its reply (the real call is made, then StoreUnavailable): the Coordinator must retry
  or report, never double-apply nor lose the write.
- While a write is in flight, another process may act first (`interleave`): a sibling commits,
  a producer submits, an operator cancels. This is how the simulator, which runs one call at a
  time, produces the races of a real deployment.
- A process may die at a fault point (`polaris_celery.faults.point`: before and after a commit)
  or midway through sending a batch: `Crash`, a BaseException that the library cannot swallow,
  caught by the world at the action boundary.
- A builder may be told to fail (`flows.FATES`).
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import polaris_celery.faults as pc_faults
from polaris_celery.errors import StoreUnavailable
from polaris_celery.stores.redis import RedisStore


class Crash(BaseException):
    """The simulated process died here: its in-memory work and unsent messages are gone."""


@dataclass(frozen=True)
class FaultPlan:
    """Probabilities of each fault for one world (a seed draws them)."""

    lost_reply: float = 0.0  # a write applied, its reply lost
    refused: float = 0.0  # a write that never reached Redis
    crash: float = 0.0  # dying at a fault point
    send_crash: float = 0.0  # dying before sending one message of a batch
    builder_fails: float = 0.0  # an attempt told to raise
    interleave: float = 0.0  # another process acting while a write is in flight
    poison: float = 0.0  # a reconciler's look that raises (a bug, a corrupt document ...)

    @classmethod
    def draw(cls, rng: random.Random) -> FaultPlan:
        return cls(
            lost_reply=rng.choice((0.0, 0.05, 0.15)),
            refused=rng.choice((0.0, 0.0, 0.05, 0.2)),
            crash=rng.choice((0.0, 0.03, 0.1)),
            send_crash=rng.choice((0.0, 0.03, 0.1)),
            builder_fails=rng.choice((0.0, 0.0, 0.1, 0.25)),
            interleave=rng.choice((0.0, 0.15, 0.35)),
            poison=rng.choice((0.0, 0.0, 0.2)),
        )

    def __str__(self) -> str:
        parts = [f"{k}={v:g}" for k, v in vars(self).items() if v]
        return ", ".join(parts) or "none"


class Faults:
    """The faults of one world. `enabled` is switched off while the world quiesces."""

    def __init__(self, plan: FaultPlan, rng: random.Random) -> None:
        self.plan = plan
        self.rng = rng
        self.enabled = True
        self.fired: Counter[str] = Counter()
        #: Called with the store whose write is in flight, to let another process act.
        self.interleave: Callable[[SimStore], None] | None = None
        self.on_fire: Callable[[str], None] | None = None  # told of every fault, for traces

    def roll(self, kind: str) -> bool:
        p: float = getattr(self.plan, kind)
        if self.enabled and p > 0 and self.rng.random() < p:
            self.fired[kind] += 1
            if self.on_fire is not None:
                self.on_fire(kind)
            return True
        return False

    def point(self, name: str) -> None:
        """Replaces `polaris_celery.faults.point`: die here, sometimes."""
        if self.roll("crash"):
            raise Crash(name)

    def maybe_interleave(self, store: SimStore) -> None:
        if self.interleave is not None and self.roll("interleave"):
            self.interleave(store)


@contextlib.contextmanager
def crash_points(faults: Faults) -> Iterator[None]:
    """Arm the library's fault points with this world's faults for the duration."""
    with mock.patch.object(pc_faults, "point", faults.point):
        yield


class SimStore(RedisStore):
    """A RedisStore over the harness's server whose writes fail as a network would.

    It also notes which instances were read (`looked`), so a check can tell which instances a
    reconciler pass looked at. Signatures pass through untouched: the harness drives the
    Coordinator before and after changes to the store's methods.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.faults: Faults | None = None
        self.looked: list[str] = []
        self.poisoned: set[str] = set()  # instances a look of this store's failed on

    def cas(self, *args: Any, **kwargs: Any) -> Any:
        call = super().cas
        return self._write(lambda: call(*args, **kwargs))

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        call = super().begin
        return self._write(lambda: call(*args, **kwargs))

    def snapshot(self, *args: Any, **kwargs: Any) -> Any:
        member = getattr(args[0] if args else kwargs.get("k"), "member", None)
        if isinstance(member, str):
            self.looked.append(member)
        return super().snapshot(*args, **kwargs)

    def leases(self, *args: Any, **kwargs: Any) -> Any:
        """Read by a reconciler's look: now and then the look raises, as one hitting a bug or a
        corrupt document would (the reconciler must put that instance back, not keep it first
        in line)."""
        f = self.faults
        if f is not None and f.enabled and f.roll("poison"):
            k = args[0] if args else kwargs.get("k")
            self.poisoned.add(getattr(k, "instance_id", ""))
            raise RuntimeError("sim: the look hit a poisoned instance")
        return super().leases(*args, **kwargs)

    def _write(self, call: Callable[[], Any]) -> Any:
        f = self.faults
        if f is None or not f.enabled:
            return call()
        f.maybe_interleave(self)
        if f.roll("refused"):
            raise StoreUnavailable("sim: the write never reached Redis")
        result = call()
        if f.roll("lost_reply"):
            f.maybe_interleave(self)
            raise StoreUnavailable("sim: Redis applied the write and its reply was lost")
        return result
