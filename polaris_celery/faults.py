"""Fault points: where a crash test (or the testing plugin's chaos mode) strikes.

Two ways to arm them:

- `POLARIS_FAULTS=after_commit:0.2,before_commit` makes the process kill itself with SIGKILL at
  those points (with the given probability, default 1). Read once at import. This is how the
  fault tests reach worker processes they cannot reach into.
- `install(hooks)`: a `Hooks` object in this process decides at each point what happens, with
  the attempt in hand: raise (an attempt abandoned before its commit), lose a reply after Redis
  applied the write, deliver a message more than once. `polaris_celery.testing.chaos` is the
  one such object the library ships.

Points: before_commit (a builder ran, nothing committed), after_commit (committed, successors
not yet sent), mid_send (some successors sent, others not). Hooks see before_commit (`strike`,
with the attempt), the commit's reply (`reply`) and each message sent (`copies`). With nothing
armed each costs one dict lookup or one `is None`.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import StoreUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class Attempt:
    """Which attempt is at a fault point: enough to name it and to give it up (`lose`)."""

    workflow: str
    instance_id: str
    run: int
    builder: str
    token: int
    incarnation: str


class Hooks:
    """What happens at the fault points in this process. The base class does nothing: a
    subclass overrides the points it strikes at. Methods are called from worker threads."""

    def point(self, name: str, attempt: Attempt) -> None:
        """At a fault point (`strike`); raising abandons the attempt there."""

    def reply_lost(self, name: str, key: str) -> bool:
        """True: the write `key` (one commit) applied, but its caller is told the connection
        dropped, and retries."""
        return False

    def copies(self, name: str, what: object) -> int:
        """How many times to send one message (1: once; 2: a duplicate delivery)."""
        return 1


def _parse(spec: str) -> dict[str, float]:
    points: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, prob = part.partition(":")
        points[name] = float(prob) if prob else 1.0
    return points


_POINTS = _parse(os.environ.get("POLARIS_FAULTS", ""))
_hooks: Hooks | None = None


def install(hooks: Hooks | None) -> Hooks | None:
    """Make `hooks` decide at every fault point of this process (None: none); returns the
    hooks installed before, so a caller can put them back."""
    global _hooks
    before, _hooks = _hooks, hooks
    return before


def point(name: str) -> None:
    """Die here, as a crash would, if POLARIS_FAULTS arms this point."""
    prob = _POINTS.get(name)
    if prob is not None and random.random() < prob:
        os.kill(os.getpid(), signal.SIGKILL)


def strike(name: str, attempt: Attempt) -> None:
    """A fault point with the attempt in hand: `point(name)` (which crash tests and the
    simulator replace), then the installed hooks, which may raise to abandon the attempt."""
    point(name)
    if _hooks is not None:
        _hooks.point(name, attempt)


def reply(name: str, key: str, write: Callable[..., T]) -> Callable[..., T]:
    """`write` as it is, or, when the hooks say so, a call that applies the write and then
    raises StoreUnavailable as a connection dropped before the reply would."""
    hooks = _hooks
    if hooks is None:
        return write

    def lossy(*args: Any, **kwargs: Any) -> T:
        out = write(*args, **kwargs)
        if hooks.reply_lost(name, key):
            raise StoreUnavailable(f"Redis unreachable while committing: the reply to {name} "
                                   f"{key} was lost (injected)") from ConnectionError(name)
        return out

    return lossy


def copies(name: str, what: object) -> int:
    """How many copies of one message to send (1 unless the hooks duplicate it)."""
    return 1 if _hooks is None else max(1, _hooks.copies(name, what))
