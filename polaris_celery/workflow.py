"""Workflows: a set of builders and a target datum, compiled into a graph at registration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from .builder import Builder, DataType

#: The values `Workflow.on_complete` takes.
ON_COMPLETE = ("reopen", "close", "late")


class Workflow:
    """Base class of workflows.

    Attributes:
      builders: the builder classes, in any order (readability suggests execution order).
      target: the datum whose production completes an instance.
      resolution: `{Datum: Builder}` naming the producer to use where several produce one datum.
      transients: data visible to builders within a run and returned in its result, but never
        kept in the instance (the Java original's transient data).
      deadline: seconds from an instance's first delta after which nothing more runs and it is
        marked timed out (distributed executor; `submit_delta(deadline=...)` overrides it).
      on_complete: what a delta sent after the target was produced does. "reopen" (the
        default, DBF's semantics): it starts a run like any other, so builders run again.
        "close": it is refused with InstanceClosed (an order, once shipped, stays shipped).
        "late": its data are kept apart as late data and nothing runs; its run ends "late".
        A restart opens the instance again under every setting.
    """

    builders: ClassVar[Sequence[type[Builder]]] = ()
    target: ClassVar[DataType | None] = None
    resolution: ClassVar[Mapping[DataType, type[Builder]]] = {}
    transients: ClassVar[Sequence[DataType]] = ()
    deadline: ClassVar[float | None] = None
    on_complete: ClassVar[str] = "reopen"
