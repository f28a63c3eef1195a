"""Dynamic flows: pick, from a catalog of builders, those a target depends on (DBF's
ExecutionGraphGenerator).

A plain `Workflow` runs every builder it lists (Go Polaris). DBF instead keeps a catalog of every
builder it knows and, given a target, generates the flow that produces it: searching back from
the target through each producer's consumes and optionals, choosing a datum's producer by the
resolution where several produce it. Conflicts, and anything else, off that path do not matter,
so one catalog serves many targets. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .builder import Builder, DataType, datum_name
from .errors import GraphError


def on_path(
    catalog: Iterable[type[Builder]],
    target: DataType,
    resolution: Mapping[DataType, type[Builder]] | None = None,
    *,
    label: str = "",
) -> tuple[list[type[Builder]], dict[DataType, type[Builder]]]:
    """The builders `target` depends on (in catalog order) and the resolution entries they use.

    Raises GraphError listing every problem: a catalog entry that is not a builder, a datum on
    the path with several producers and no resolution, a resolution naming a builder that is
    not in the catalog or that does not produce its datum. A target no builder produces gives
    no builders at all (DBF's empty execution graph); registering that flow says so.
    """
    label = label or f"from_catalog({getattr(target, '__name__', target)!r})"
    problems: list[str] = []
    entries: list[type[Builder]] = []
    for b in catalog:
        if not (isinstance(b, type) and issubclass(b, Builder) and getattr(b, "spec", None)):
            problems.append(f"catalog entry {b!r} is not a Builder subclass")
        elif b not in entries:
            entries.append(b)
    if not isinstance(target, type):
        problems.append(f"target {target!r} is not a pydantic model class")
    producers: dict[str, list[type[Builder]]] = {}
    for b in entries:
        producers.setdefault(b.spec.produces_name, []).append(b)
    chosen: dict[str, type[Builder]] = {}
    by_name: dict[str, DataType] = {}
    for t, b in (resolution or {}).items():
        name = datum_name(t)
        by_name[name] = t
        if b not in entries:
            problems.append(f"resolution names {b!r} for {name}, which is not in the catalog")
        elif b.spec.produces is not t:
            problems.append(f"resolution names {b.spec.name} for {name}, but it produces "
                            f"{b.spec.produces_name}")
        else:
            chosen[name] = b
    if problems:
        raise GraphError(label, problems)

    kept: set[type[Builder]] = set()
    used: dict[DataType, type[Builder]] = {}
    seen: set[str] = set()
    todo = [datum_name(target)]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        if d in chosen:
            picks = [chosen[d]]
            used[by_name[d]] = chosen[d]
        else:
            picks = producers.get(d, [])
            if len(picks) > 1:
                names = ", ".join(sorted(p.spec.name for p in picks))
                problems.append(f"data {d} is produced by {names}; name one in resolution")
                continue
        for p in picks:
            kept.add(p)
            todo.extend(p.spec.trigger_names)
    if problems:
        raise GraphError(label, problems)
    return [b for b in entries if b in kept], used
