"""Workflows: a set of builders and a target datum, compiled into a graph at registration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from .builder import DEFAULTABLE, Builder, DataType


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
      inputs: the data deltas bring. Listing them is optional, but a datum that builders read
        and none produces is otherwise reported at registration as a possible mistake.
      outputs: data other than the target that are produced for readers outside the workflow
        (results, `polaris status`), so that nobody consuming them is not reported.
      max_retries, time_limit, retry_backoff, retry_backoff_max: workflow-wide defaults for
        builders that do not set the option themselves (None: the Builder class default).
    """

    builders: ClassVar[Sequence[type[Builder]]] = ()
    target: ClassVar[DataType | None] = None
    resolution: ClassVar[Mapping[DataType, type[Builder]]] = {}
    transients: ClassVar[Sequence[DataType]] = ()
    deadline: ClassVar[float | None] = None
    inputs: ClassVar[Sequence[DataType]] = ()
    outputs: ClassVar[Sequence[DataType]] = ()
    max_retries: ClassVar[int | None] = None
    time_limit: ClassVar[float | None] = None
    retry_backoff: ClassVar[float | None] = None
    retry_backoff_max: ClassVar[float | None] = None


def builder_defaults(workflow: type[Workflow], problems: list[str]) -> dict[str, float]:
    """The workflow-wide builder defaults it sets, validated; bad ones are added to problems."""
    out: dict[str, float] = {}
    for attr in DEFAULTABLE:
        v = getattr(workflow, attr, None)
        if v is None:
            continue
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if attr == "max_retries":
            ok, want = number and isinstance(v, int) and v >= 0, "an int >= 0"
        elif attr == "time_limit":
            ok, want = number and v > 0, "a positive number"
        else:
            ok, want = number and v >= 0, "a non-negative number"
        if not ok:
            problems.append(f"workflow default {attr} must be {want}, got {v!r}")
            continue
        out[attr] = v
    return out
