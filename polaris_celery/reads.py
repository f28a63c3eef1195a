"""What each decision reads of an instance before it is made: a guess from the graph, exact in
the common case, so that a step costs one read and one write. Pure.

A commit reads its run's header, its builder's token and counts, and, for each builder that
consumes what it produced, that builder's token and done mark and whether its inputs exist;
one that produces the workflow's target reads the whole state (it settles the run, which reads
it all anyway).
Anything else a decision turns out to need (a waiting builder's inputs, a run being settled
whole) it asks for by raising `NeedMore`, and `grow` adds it to the next read. Nothing here is
proportional to the builders in flight, only to the builders next to the one committing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .fields import NeedMore, field_name, header_name
from .graph import Graph
from .layout import Want

#: A consumer with more inputs than this (a join behind a wide fan-out) has them read only
#: when it stops waiting, not on every commit of a branch.
PREFETCH_INPUTS = 8


def _inputs(graph: Graph, run: int, consumers: Iterable[str]) -> tuple[set[str], set[str]]:
    fields: set[str] = set()
    data: set[str] = set()
    for c in consumers:
        names = graph.specs[c].consume_names
        if len(names) > PREFETCH_INPUTS:
            continue
        for n in names:
            if n in graph.transients:
                fields.add(field_name("n", run, n))
            else:
                data.add(n)
    return fields, data


def commit(graph: Graph, run: int, builder: str, hops: int = 2) -> Want:
    """What committing `builder` in `run` reads; with `hops=2` also what committing each of
    its successors reads, so that one run inline decides from what this commit saw."""
    spec = graph.specs[builder]
    fields = {header_name(run), *(field_name(k, run, builder) for k in "afl")}
    name = spec.produces_name
    fields.add(field_name("p", run, name))
    consumers = graph.what_consumes(name)
    for c in consumers:
        fields.update((field_name("a", run, c), field_name("x", run, c)))
    more, data = _inputs(graph, run, consumers)
    # Producing the target settles the run (once nothing else is active), and settling reads
    # the whole run: read it now, not in a round trip of its own.
    want = Want(frozenset(fields | more), frozenset(data), whole=name == graph.target)
    if hops > 1 and len(consumers) == 1:  # only a lone successor may run inline
        nxt = commit(graph, run, consumers[0], hops - 1)
        # Not nxt.whole: a successor run inline decides from what the step claiming it reads
        # back (machine.dispatch), and a join's branches must not each read the whole run.
        want = Want(want.fields | nxt.fields, want.data | nxt.data, want.whole)
    return want


def submit(graph: Graph, delta: Mapping[str, bytes]) -> Want:
    """What a delta's submit reads (its run is new, so only which data exist)."""
    consumers = {c for d in delta for c in graph.what_consumes(d)}
    _, data = _inputs(graph, 0, consumers)
    if graph.target not in graph.transients:
        data.add(graph.target)
    return Want(frozenset(), frozenset(data))


def claim(graph: Graph, run: int, builder: str) -> set[str]:
    """What an attempt reads as it starts: its token, and which of its inputs are new."""
    return {field_name("a", run, builder),
            *(field_name("n", run, n) for n in graph.specs[builder].readable_names)}


def grow(want: Want, more: NeedMore, strict: bool = True) -> Want:
    """`want` and what a decision asked for besides. `strict`: the decision was made from a
    read of `want` itself, so it must have asked for something new (else it would loop)."""
    if not strict:
        return Want(want.fields | more.fields, want.data | more.data, want.whole or more.whole,
                    want.names)
    return want.more(more.fields, more.data, more.whole)
