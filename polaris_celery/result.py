"""The result of one run, the same type from every executor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel

from .builder import datum_name

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class RunRef:
    """A submitted run: its number within the instance's incarnation (a new incarnation starts
    after a delete or an expiry, and counts its runs from 1 again)."""

    run: int
    incarnation: str


@dataclass(frozen=True)
class RunResult:
    """The data builders produced in one run, keyed by type name, and how the run ended.

    status: "completed" (the target was produced), "paused" (nothing more could run; a later
    delta may resume the instance) or "failed" (a builder failed for good; see `error`).
    """

    workflow: str
    instance_id: str
    run: int
    status: str
    completed: bool
    data: Mapping[str, BaseModel] = field(default_factory=dict)
    error: Mapping[str, str] | None = None
    incarnation: str = ""  # which life of the instance (a new one after a delete or expiry)

    def get(self, tp: type[M]) -> M | None:
        """The datum of type `tp` produced in this run, or None."""
        return self.data.get(datum_name(tp))  # type: ignore[return-value]

    def __contains__(self, tp: type[BaseModel]) -> bool:
        return datum_name(tp) in self.data

    @property
    def failed(self) -> bool:
        return self.status == "failed"
