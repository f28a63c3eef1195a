"""`Flow`: one workflow instance played through its deltas in a test, and what came of it.

What ran is read from the instance's log stream (the one `polaris timeline` shows), written by
the same atomic step as each commit, so it says what was committed, not what a builder's
process believed: an attempt killed before its commit shows up as lost, the attempt that then
committed as the one that ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel

from .. import codec, status
from ..errors import BuilderFailed, InvalidInput
from ..executors.celery import CeleryExecutor
from ..result import RunResult

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Attempt:
    """One builder attempt as the instance's log recorded it."""

    run: int
    builder: str
    attempt: int
    result: str  # the produced datum's name, "-" (returned None) or "error:<Type>"

    @property
    def failed(self) -> bool:
        """It raised, or was lost with its process (`error:AttemptLost`)."""
        return self.result.startswith("error:")


class Flow:
    """One instance of `workflow` on a `CeleryExecutor`: send deltas, then look at the results,
    the instance's data and the builders that ran.

        flow = polaris_flow("cab-ride")
        flow.send(RideRequested(user_id="u1"))
        assert flow.ran == ["MatchCabbie"]
    """

    def __init__(self, executor: CeleryExecutor, workflow: str, instance_id: str,
                 timeout: float = 30.0) -> None:
        executor.registry.graph(workflow)  # raises UnknownWorkflow, naming it
        self.executor = executor
        self.workflow = workflow
        self.instance_id = instance_id
        self.timeout = timeout
        self.results: list[RunResult] = []

    def __repr__(self) -> str:
        return f"Flow({self.workflow}/{self.instance_id}, runs={len(self.results)})"

    # -- playing -----------------------------------------------------------------------------

    def send(self, *data: BaseModel, delta_id: str | None = None) -> RunResult:
        """Submit one delta and wait until its run settled. A run whose builder failed for
        good raises `pc.BuilderFailed`; its partial result is still kept in `results`."""
        handle = self.executor.submit_delta(self.workflow, self.instance_id, *data,
                                            delta_id=delta_id)
        try:
            result = handle.wait(self.timeout)
        except BuilderFailed as exc:
            if exc.result is not None:
                self.results.append(exc.result)
            raise
        self.results.append(result)
        return result

    def play(self, *deltas: BaseModel | Sequence[BaseModel]) -> list[RunResult]:
        """Send each delta in turn (a datum, or a list of data sent together), one run each.
        Every delta is checked before the first is sent."""
        batches = []
        for i, delta in enumerate(deltas):
            data = [delta] if isinstance(delta, BaseModel) else \
                list(delta) if isinstance(delta, (list, tuple)) else []
            if not data or not all(isinstance(d, BaseModel) for d in data):
                raise InvalidInput(f"delta {i} must be a pydantic model or a non-empty list of "
                                   f"them, got {delta!r:.100}")
            batches.append(data)
        return [self.send(*data) for data in batches]

    # -- what came of it ---------------------------------------------------------------------

    @property
    def result(self) -> RunResult:
        """The last run's result."""
        if not self.results:
            raise AssertionError(f"{self!r}: no delta was sent yet")
        return self.results[-1]

    @property
    def completed(self) -> bool:
        """The last run produced the target (the instance is complete)."""
        return self.result.completed

    @property
    def data(self) -> dict[type[BaseModel], BaseModel]:
        """The instance's data in the store now, by type."""
        store = self.executor.registry.store
        graph = self.executor.registry.graph(self.workflow)
        names = store.data_names(self.workflow, self.instance_id)
        raw = store.read_data(self.workflow, self.instance_id, sorted(names))
        return {type(m): m for m in codec.decode_many(graph, raw).values()}

    def get(self, tp: type[M]) -> M | None:
        """The instance's current value of datum `tp`, or None."""
        value = self.data.get(tp)
        return value if isinstance(value, tp) else None

    @property
    def attempts(self) -> list[Attempt]:
        """Every builder attempt of the instance, in the order the log recorded them."""
        store = self.executor.coordinator.store
        entries = status.read_log(store, store.keys(self.workflow, self.instance_id))
        return [Attempt(e.run, e.builder, e.attempt or 0, e.result or "")
                for e in entries if e.event == "builder" and e.builder is not None]

    @property
    def ran(self) -> list[str]:
        """The builders whose attempt committed (produced a datum or returned None), in order.
        A killed or failed attempt that ran again appears once: chaos leaves this unchanged."""
        return [a.builder for a in self.attempts if not a.failed]

    def ran_in(self, run: int) -> list[str]:
        """`ran`, for one run only (runs count from 1 per instance)."""
        return [a.builder for a in self.attempts if a.run == run and not a.failed]
