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
    """

    builders: ClassVar[Sequence[type[Builder]]] = ()
    target: ClassVar[DataType | None] = None
    resolution: ClassVar[Mapping[DataType, type[Builder]]] = {}
    transients: ClassVar[Sequence[DataType]] = ()
