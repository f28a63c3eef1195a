"""What the query API returns: frozen views of an instance and of a page of instances.

Pure types, no I/O: `query.py` reads Redis into them, the CLI and the web pages render them
(`to_json()` gives the same document to both).

An instance's status is one of STATUSES, decided from its document alone (InstanceDoc.state_name
says how), so the listing and the instance's own view always agree on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel

from .instance import STATUSES


@dataclass(frozen=True)
class ActiveBuilder:
    """A builder a run has dispatched and not yet seen finish, or one waiting upstream."""

    run: int
    builder: str
    attempt: int | None
    state: str  # "queued", "running", "waiting" (upstream still pending) or "unsent" (no lease)
    deadline: float | None  # queued: re-sent after it; running: lease ends (retry) after it

    def overdue(self, now: float) -> bool:
        return self.deadline is not None and self.deadline < now


@dataclass(frozen=True)
class DatumView:
    """One datum the instance holds: its value (None if it no longer decodes under the
    instance's workflow version) and who wrote it, when (None once the log no longer says)."""

    name: str
    value: BaseModel | None
    size: int  # bytes, as stored (JSON)
    producer: str | None  # a builder's name, "delta", or None
    run: int | None
    at: float | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "producer": self.producer,
                "run": self.run, "at": self.at,
                "value": None if self.value is None else self.value.model_dump(mode="json")}


@dataclass(frozen=True)
class RunView:
    """One run: in flight ("running", `ended` None) or settled with its outcome ("completed",
    "paused", "failed", "cancelled", "timed_out", "deleted" or "late")."""

    run: int
    status: str
    started: float
    ended: float | None
    produced: tuple[str, ...]
    error: Mapping[str, str] | None
    delta_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "status": self.status, "started": self.started,
                "ended": self.ended, "produced": list(self.produced),
                "error": None if self.error is None else dict(self.error),
                "delta_id": self.delta_id}


@dataclass(frozen=True)
class ErrorView:
    """A failed builder attempt (retried or not), or a run's error whose attempt the log no
    longer holds. `message` is empty where only the type was logged (retried attempts)."""

    run: int
    builder: str
    type: str
    message: str
    at: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InstanceView:
    """Everything about one instance at one moment (see `CeleryExecutor.instance`).

    version: the state's version counter (every change bumps it); workflow_version: the
    workflow version it is pinned to (0: none, i.e. finished or not started); incarnation: which
    life of the instance this is (a new one after a delete)."""

    workflow: str
    instance_id: str
    status: str
    workflow_version: int
    version: int
    incarnation: str
    created: float
    updated: float
    deadline: float | None
    target: str
    data: tuple[DatumView, ...]
    runs: tuple[RunView, ...]  # newest first: those in flight, then the history's
    in_flight: tuple[ActiveBuilder, ...]
    errors: tuple[ErrorView, ...]
    late: tuple[str, ...]  # data produced or sent after the instance closed, kept apart
    absent_inputs: tuple[str, ...]  # inputs no delta has brought yet

    @property
    def finished(self) -> bool:
        """Nothing in flight and nothing more expected."""
        return self.status in ("completed", "cancelled", "timed_out")

    def datum(self, name: str) -> DatumView | None:
        return next((d for d in self.data if d.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow, "instance_id": self.instance_id, "status": self.status,
            "workflow_version": self.workflow_version, "version": self.version,
            "incarnation": self.incarnation, "created": self.created, "updated": self.updated,
            "deadline": self.deadline, "target": self.target,
            "data": [d.to_json() for d in self.data],
            "runs": [r.to_json() for r in self.runs],
            "in_flight": [asdict(b) for b in self.in_flight],
            "errors": [e.to_json() for e in self.errors],
            "late": list(self.late), "absent_inputs": list(self.absent_inputs),
        }


@dataclass(frozen=True)
class InstanceSummary:
    """One instance of a listing, its status confirmed from its state when the page was read.

    `updated` is the listing's time: when the instance last changed status or opened or
    settled a run (pages are in its order). A builder's commit in mid-run does not move it, so
    it may be older than the InstanceView's `updated`."""

    workflow: str
    instance_id: str
    status: str
    created: float
    updated: float
    workflow_version: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InstancePage:
    """One page of a listing; pass `cursor` back for the next (None: there is no more)."""

    items: tuple[InstanceSummary, ...]
    cursor: str | None

    def to_json(self) -> dict[str, Any]:
        return {"items": [i.to_json() for i in self.items], "cursor": self.cursor}


__all__ = ["STATUSES", "ActiveBuilder", "DatumView", "ErrorView", "InstancePage",
           "InstanceSummary", "InstanceView", "RunView"]
