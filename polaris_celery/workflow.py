"""Workflows: a set of builders and a target datum, compiled into a graph at registration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from .builder import Builder, DataType


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
    """

    builders: ClassVar[Sequence[type[Builder]]] = ()
    target: ClassVar[DataType | None] = None
    resolution: ClassVar[Mapping[DataType, type[Builder]]] = {}
    transients: ClassVar[Sequence[DataType]] = ()
    deadline: ClassVar[float | None] = None
