"""Workflows: a set of builders and a target datum, compiled into a graph at registration."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from .builder import DEFAULTABLE, Builder, DataType, datum_name

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
    on_complete: ClassVar[str] = "reopen"
    inputs: ClassVar[Sequence[DataType]] = ()
    outputs: ClassVar[Sequence[DataType]] = ()
    max_retries: ClassVar[int | None] = None
    time_limit: ClassVar[float | None] = None
    retry_backoff: ClassVar[float | None] = None
    retry_backoff_max: ClassVar[float | None] = None

    @classmethod
    def from_catalog(
        cls,
        catalog: Iterable[type[Builder]],
        target: DataType,
        *,
        resolution: Mapping[DataType, type[Builder]] | None = None,
        transients: Sequence[DataType] = (),
        name: str | None = None,
        **options: Any,
    ) -> type[Workflow]:
        """A dynamic flow (DBF's headline feature, opt-in): a Workflow subclass holding only the
        catalog's builders that `target` depends on, through consumes and optionals.

        `resolution` picks a datum's producer where the catalog has several; a conflict off the
        path to the target does not matter. Transients not used on the path are dropped; other
        keyword options (`deadline`) become class attributes. Raises GraphError listing every
        problem (a conflict on the path, a resolution naming a builder the catalog lacks).
        """
        from .catalog import on_path  # catalog builds on Builder only; imported when used

        builders, used = on_path(catalog, target, resolution)
        known = {t for b in builders for t in (*b.spec.consumes, *b.spec.optionals,
                                                 *b.spec.accesses, b.spec.produces)}
        attrs: dict[str, Any] = {
            "builders": builders,
            "target": target,
            "resolution": used,
            "transients": [t for t in transients if t in known],
            "__module__": cls.__module__,
            "__doc__": f"The builders of a catalog that {datum_name(target)} depends on.",
            **options,
        }
        return type(name or f"{datum_name(target)}Flow", (cls,), attrs)


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
