"""What looks like a mistake in a compiled workflow: warned at registration, refused if strict.

A graph can be valid and still wrong in a way the compiler cannot rule out: a builder reads a
datum that no builder produces (fine when deltas bring it, a typo or a forgotten builder when
not), or a builder produces a datum that nobody reads and that is not the target (work whose
result goes nowhere). The workflow says what it means with `inputs` and `outputs`; what it does
not say is reported, so `register(..., strict=True)` can make a CI run refuse it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from .builder import datum_name
from .graph import Graph


def declared(graph: Graph, attr: str) -> tuple[frozenset[str], list[str]]:
    """The data names a workflow lists under `inputs` or `outputs`, and what is wrong with them.

    Wrong entries (not a pydantic model class, or a datum no builder names) are errors even
    without strict: the list exists only to be precise about the graph.
    """
    value: object = getattr(graph.workflow, attr, ()) or ()
    if isinstance(value, type) or not isinstance(value, (list, tuple, set, frozenset)):
        return frozenset(), [f"{attr} must be a list of pydantic models, got {value!r}"]
    items: Sequence[object] = list(value)
    names: set[str] = set()
    errors: list[str] = []
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseModel)):
            errors.append(f"{attr} holds {item!r}, which is not a pydantic model class")
        elif graph.types.get(datum_name(item)) is not item:
            errors.append(f"{attr} lists {datum_name(item)}, which no builder of the workflow "
                          "names")
        else:
            names.add(datum_name(item))
    return frozenset(names), errors


def readers(graph: Graph) -> dict[str, list[str]]:
    """Datum name -> the builders that read it (consumes, optionals or accesses)."""
    out: dict[str, list[str]] = {}
    for spec in graph.specs.values():
        for name in spec.readable_names:
            out.setdefault(name, []).append(spec.name)
    return out


def mistakes(graph: Graph) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a compiled graph; both sorted, each naming the data involved."""
    inputs, errors = declared(graph, "inputs")
    outputs, output_errors = declared(graph, "outputs")
    errors += output_errors
    read = readers(graph)
    warnings: list[str] = []
    for name in sorted(graph.inputs - inputs):
        who = ", ".join(sorted(read.get(name, ())))
        if who:
            warnings.append(
                f"{name} is read by {who} but produced by no builder: deltas must bring it "
                "(list it in the workflow's inputs if that is intended)")
    for name in sorted(set(graph.producer) - set(read) - outputs - {graph.target}):
        warnings.append(
            f"{name} is produced by {graph.producer[name]} but read by no builder and is not "
            "the target (list it in the workflow's outputs if that is intended)")
    return sorted(errors), warnings
