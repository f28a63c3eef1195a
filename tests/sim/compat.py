"""The only place that knows which shape of the Coordinator it is driving.

The simulator runs against the Coordinator before and after the incarnation rework, so it asks
for what it needs by feature, never by version:

- `clock=`, `sleep=`, `ids=`, `rng=` constructor keywords are passed when the constructor
  takes them; without `clock=` the modules' `time` is patched for the world's run
  (`legacy_time`), and the world seeds the `random` module for code drawing from it;
- `submit` and `restart` return an int run (before) or a `RunRef(run, incarnation)` (after);
- `Dispatch` may carry an `incarnation`, which `execute` then takes.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import random
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

from polaris_celery.coordinator import Coordinator

Clock = Callable[[], float]

#: Modules that read the time through `time.time()` in code that predates `clock=`.
_LEGACY_TIME_MODULES = ("coordinator", "recovery", "lifecycle", "stores.redis")


def _accepts(name: str) -> bool:
    return name in inspect.signature(Coordinator.__init__).parameters


def coordinator_options(clock: Clock, ids: Callable[[], str], rng: random.Random
                        ) -> dict[str, Any]:
    """Keyword arguments for `Coordinator(...)`: the world's clock, a sleep that returns at once
    (a retry after a lost reply happens in no simulated time), deterministic ids and a seeded
    random source."""
    options: dict[str, Any] = {}
    if _accepts("clock"):
        options["clock"] = clock
    if _accepts("sleep"):
        options["sleep"] = lambda seconds: None
    if _accepts("ids"):
        options["ids"] = ids
    if _accepts("rng"):
        options["rng"] = rng
    return options


class _SimTime:
    """Stands in for the `time` module where code reads the wall clock directly."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.monotonic = time.monotonic
        self.perf_counter = time.perf_counter

    def time(self) -> float:
        return self._clock()

    @staticmethod
    def sleep(seconds: float) -> None:
        """Retries back off in no simulated time."""


@contextlib.contextmanager
def legacy_time(clock: Clock) -> Iterator[None]:
    """For a Coordinator without `clock=`: patch `time` in the modules that read it."""
    if _accepts("clock"):
        yield
        return
    with contextlib.ExitStack() as stack:
        for name in _LEGACY_TIME_MODULES:
            try:
                module = importlib.import_module(f"polaris_celery.{name}")
            except ImportError:
                continue
            if getattr(module, "time", None) is time:
                stack.enter_context(mock.patch.object(module, "time", _SimTime(clock)))
        yield


def deliver(c: Coordinator, d: Any) -> None:
    """Execute one message on a worker, with its incarnation when messages carry one."""
    extra = {"incarnation": d.incarnation} if hasattr(d, "incarnation") else {}
    c.execute(d.workflow, d.instance_id, d.run, d.builder, d.token, version=d.version, **extra)


def run_of(returned: object) -> tuple[int, str | None]:
    """(run, incarnation) from what submit or restart returned; None: the caller must read
    the incarnation (code without incarnations returns a bare run number)."""
    if isinstance(returned, int):
        return returned, None
    return int(returned.run), str(returned.incarnation)  # type: ignore[attr-defined]
