"""What the coordinator tells observers: the seam between deciding and watching.

The coordinator calls an `Observer` at a handful of moments (an attempt starts, an attempt's
outcome is committed or refused, a fenced step applied, a compare-and-set lost a race, a
reconciler's look recovered something), one line each, and knows nothing of what listens. It
asks observers one question: what to keep with a new run so that its trace can be continued
wherever it settles (`run_context`; tracing.py answers it, no one else does). Metrics
(`metrics`), traces (`tracing`) and Flower's task events (`executors.flower`) are observers, so
none of them reaches into the state machine, and the state machine's code stays free of
monitoring.

Observers run on the coordinator's thread, inside its loop: they must be quick and must never
raise (`Observers` logs and swallows what one raises, so a broken exporter cannot fail a
commit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .invoke import Outcome
from .machine import Step

log = logging.getLogger("polaris_celery")


class Observer:
    """Does nothing at every moment; subclasses override the ones they watch."""

    def started(self, workflow: str, instance_id: str, run: int, builder: str, token: int
                ) -> None:
        """Attempt `token` of `builder` holds its lease and is about to run."""

    def finished(self, workflow: str, instance_id: str, run: int, builder: str, token: int,
                 outcome: Outcome, committed: bool) -> None:
        """The attempt ran; `committed` says whether its outcome was applied (False: it had
        been superseded, or the instance was closed, restarted or deleted meanwhile)."""

    def applied(self, workflow: str, step: Step) -> None:
        """A fenced step applied (`step.outcomes` lists the statuses of the runs it settled)."""

    def conflict(self, workflow: str) -> None:
        """A compare-and-set found the instance changed meanwhile; it is decided again."""

    def recovered(self, workflow: str, instance_id: str, incarnation: str, step: Step) -> None:
        """A reconciler's look applied `step` (after `applied`): `step.failures` are attempts
        whose lease ran out (lost), `step.sends` the builders sent again: those lost, re-run
        under a new token, and those whose message was overdue, under the same one."""

    def run_context(self) -> str | None:
        """An opaque string to keep with a run started now (None: nothing)."""
        return None


def outcome_label(outcome: Outcome, committed: bool) -> str:
    """One word per way an attempt can end, for metric labels and span attributes."""
    if not committed:
        return "superseded"
    if outcome.error is not None:
        return "failed"
    return "produced" if outcome.raw is not None else "nothing"


class Observers(Observer):
    """Several observers as one; an observer that raises is logged, never propagated."""

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.observers: list[Observer] = list(observers)

    def add(self, observer: Observer) -> None:
        if observer not in self.observers:
            self.observers.append(observer)

    def started(self, workflow: str, instance_id: str, run: int, builder: str, token: int
                ) -> None:
        for o in self.observers:
            try:
                o.started(workflow, instance_id, run, builder, token)
            except Exception:
                log.exception("polaris: observer %r failed", o)

    def finished(self, workflow: str, instance_id: str, run: int, builder: str, token: int,
                 outcome: Outcome, committed: bool) -> None:
        for o in self.observers:
            try:
                o.finished(workflow, instance_id, run, builder, token, outcome, committed)
            except Exception:
                log.exception("polaris: observer %r failed", o)

    def applied(self, workflow: str, step: Step) -> None:
        for o in self.observers:
            try:
                o.applied(workflow, step)
            except Exception:
                log.exception("polaris: observer %r failed", o)

    def conflict(self, workflow: str) -> None:
        for o in self.observers:
            try:
                o.conflict(workflow)
            except Exception:
                log.exception("polaris: observer %r failed", o)

    def recovered(self, workflow: str, instance_id: str, incarnation: str, step: Step) -> None:
        for o in self.observers:
            try:
                o.recovered(workflow, instance_id, incarnation, step)
            except Exception:
                log.exception("polaris: observer %r failed", o)

    def run_context(self) -> str | None:
        """The first observer's answer that is not None."""
        for o in self.observers:
            try:
                answer = o.run_context()
            except Exception:
                log.exception("polaris: observer %r failed", o)
                continue
            if answer is not None:
                return answer
        return None
