"""Compile a workflow into a frozen graph: everything the executors need, computed once.

Run-time questions ("who consumes this datum?", "is this builder upstream of that one?") must
cost in proportion to the builders a delta touches, never to the size of the graph, so the
compiler precomputes:

- `consumers`: datum name -> builders it can trigger (consumes and optionals).
- `rank`: a topological index over the graph with cycle-closing edges removed. Which edge of a
  cycle closes it is DBF's choice, made without regard to the order of the workflow's
  `builders` list: search back from the target's producer through each builder's triggers
  (optionals, then consumes, each in declared order); an edge back to a builder already on the
  search path closes a cycle. Builders off every path to the target are searched from next,
  sinks first, by name.
- `follows`: datum name -> the consumers ranked after its producer (all consumers for an input).
  A datum fed back around a cycle triggers the others only in the run's next pass (DBF's
  level pass; see frontier.py).
- `ancestors`: per builder, a bitmask of the builders upstream of it through consumes and
  optionals; testing "is any pending builder upstream of me?" is one AND of two ints. Bits are
  numbered within each weakly connected component (`component`), in rank order, so the ints
  are as wide as the component a run touches, not as the whole graph.

Validation collects every problem and raises one GraphError listing them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .builder import Builder, BuilderSpec, DataType, datum_name, is_abstract
from .errors import GraphError
from .workflow import ON_COMPLETE, Workflow, builder_defaults


@dataclass(frozen=True, eq=False)
class Graph:
    """The compiled, immutable dependency graph of one registered workflow."""

    key: str
    workflow: type[Workflow]
    version: int
    target: str
    specs: Mapping[str, BuilderSpec]
    types: Mapping[str, DataType]
    consumers: Mapping[str, tuple[str, ...]]
    producer: Mapping[str, str]
    rank: Mapping[str, int]
    ancestors: Mapping[str, int]
    inputs: frozenset[str]
    transients: frozenset[str]
    bits: Mapping[str, int] = field(repr=False, default_factory=dict)
    component: Mapping[str, int] = field(repr=False, default_factory=dict)
    follows: Mapping[str, tuple[str, ...]] = field(repr=False, default_factory=dict)

    def spec(self, builder: str) -> BuilderSpec:
        return self.specs[builder]

    def what_consumes(self, datum: str) -> tuple[str, ...]:
        return self.consumers.get(datum, ())

    def what_follows(self, datum: str) -> tuple[str, ...]:
        """The consumers that `datum`, when its producer made it, triggers in the same pass:
        those ranked after the producer (a cycle's closing edge is left for the next pass)."""
        return self.follows.get(datum, ())

    def is_upstream(self, maybe_ancestor: str, of: str) -> bool:
        if self.component[maybe_ancestor] != self.component[of]:
            return False
        return bool(self.ancestors[of] & self.bits[maybe_ancestor])

    @property
    def builder_names(self) -> list[str]:
        return sorted(self.specs, key=self.rank.__getitem__)


def compile_workflow(key: str, workflow: type[Workflow], version: int = 1) -> Graph:
    """Validate `workflow` and compile it; raises GraphError listing every problem."""
    problems: list[str] = []
    builders: list[type[Builder]] = list(getattr(workflow, "builders", ()) or ())
    specs: dict[str, BuilderSpec] = {}
    defaults = builder_defaults(workflow, problems)
    for b in builders:
        spec = getattr(b, "spec", None)
        if isinstance(b, type) and issubclass(b, Builder) and is_abstract(b):
            problems.append(f"{b.__qualname__} is an abstract builder (a base for shared "
                            "options): list its concrete subclasses instead")
            continue
        if not isinstance(b, type) or not issubclass(b, Builder) or spec is None:
            problems.append(f"{b!r} is not a Builder subclass")
            continue
        if spec.name in specs:
            problems.append(f"two builders are named {spec.name!r}")
            continue
        specs[spec.name] = spec.with_defaults(defaults)
    on_complete = getattr(workflow, "on_complete", "reopen")
    if on_complete not in ON_COMPLETE:
        problems.append(f"on_complete is {on_complete!r}; choose one of {', '.join(ON_COMPLETE)}")
    if not specs and not problems:
        problems.append("declares no builders")

    types: dict[str, DataType] = {}

    def know(t: DataType, where: str) -> None:
        prev = types.setdefault(datum_name(t), t)
        if prev is not t:
            problems.append(
                f"two different data types are named {datum_name(t)!r} ({where}: "
                f"{t.__module__}.{t.__qualname__} vs {prev.__module__}.{prev.__qualname__})"
            )

    for s in specs.values():
        for t in (*s.consumes, *s.optionals, *s.accesses, s.produces):
            know(t, f"builder {s.name}")

    target_t = getattr(workflow, "target", None)
    if target_t is None:
        problems.append("has no target")
    elif datum_name(target_t) not in types:
        problems.append(f"target {datum_name(target_t)} is neither produced nor consumed")
    elif types[datum_name(target_t)] is not target_t:
        know(target_t, "target")

    transients = frozenset(datum_name(t) for t in getattr(workflow, "transients", ()) or ())
    for tname in sorted(transients - set(types)):
        problems.append(f"transient {tname} is not used by any builder")

    # Producers and their resolution.
    producers: dict[str, list[str]] = {}
    for s in specs.values():
        producers.setdefault(s.produces_name, []).append(s.name)
        for t in (*s.consumes, *s.optionals):
            if t is s.produces:
                problems.append(f"builder {s.name} consumes its own output {datum_name(t)}")
    resolution = dict(getattr(workflow, "resolution", {}) or {})
    chosen: dict[str, str] = {}
    for t, b in resolution.items():
        bspec = getattr(b, "spec", None)
        if bspec is None or bspec.name not in specs:
            problems.append(f"resolution names {b!r}, which is not one of the workflow's builders")
        elif bspec.produces is not t:
            problems.append(f"resolution names {bspec.name} for {datum_name(t)}, "
                            f"but it produces {bspec.produces_name}")
        else:
            chosen[datum_name(t)] = bspec.name
    producer: dict[str, str] = {}
    active: dict[str, BuilderSpec] = {}
    for d, names in producers.items():
        if d in chosen:
            producer[d] = chosen[d]
        elif len(names) > 1:
            problems.append(
                f"data {d} is produced by {', '.join(sorted(names))}; name one in resolution"
            )
            continue
        else:
            producer[d] = names[0]
    # Builders not chosen by a resolution are dropped from the graph (the Java framework's rule).
    for name, s in specs.items():
        if producer.get(s.produces_name) == name:
            active[name] = s

    if problems:
        raise GraphError(key, problems)

    consumers: dict[str, list[str]] = {}
    for s in active.values():
        for d in s.trigger_names:
            consumers.setdefault(d, []).append(s.name)

    order = _rank(active, producer, producer.get(datum_name(target_t)) if target_t else None)
    rank = {b: i for i, b in enumerate(order)}
    component = _components(active, producer)
    next_bit: dict[int, int] = {}
    bits: dict[str, int] = {}
    for name in order:  # rank order within each component
        c = component[name]
        bits[name] = 1 << next_bit.get(c, 0)
        next_bit[c] = next_bit.get(c, 0) + 1
    ancestors: dict[str, int] = {}
    for name in order:
        mask = 0
        for d in active[name].trigger_names:
            p = producer.get(d)
            if p is not None and p != name and rank[p] < rank[name]:
                mask |= ancestors[p] | bits[p]
        ancestors[name] = mask
    inputs = frozenset(d for d in types if d not in producer)
    ordered = {d: tuple(sorted(v, key=rank.__getitem__)) for d, v in consumers.items()}
    follows = {d: tuple(b for b in v if d not in producer or rank[b] > rank[producer[d]])
               for d, v in ordered.items()}
    assert target_t is not None
    return Graph(
        key=key,
        workflow=workflow,
        version=version,
        target=datum_name(target_t),
        specs=active,
        types=types,
        consumers=ordered,
        producer=producer,
        rank=rank,
        ancestors=ancestors,
        inputs=inputs,
        transients=transients,
        bits=bits,
        component=component,
        follows=follows,
    )


def _components(specs: Mapping[str, BuilderSpec], producer: Mapping[str, str]) -> dict[str, int]:
    """Weakly connected components of the builder graph (union-find over producer edges)."""
    parent = {name: name for name in specs}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for name, s in specs.items():
        for d in s.trigger_names:
            p = producer.get(d)
            if p is not None and p in parent:
                ra, rb = find(name), find(p)
                if ra != rb:
                    parent[ra] = rb
    ids: dict[str, int] = {}
    return {name: ids.setdefault(find(name), len(ids)) for name in specs}


def _rank(
    specs: Mapping[str, BuilderSpec], producer: Mapping[str, str], goal: str | None
) -> list[str]:
    """Builders in a topological order of the graph minus its cycle-closing edges.

    A depth-first search backwards, from the target's producer (`goal`) through each builder's
    optionals then consumes, in the order it declares them, as DBF's ExecutionGraphGenerator
    does (it walks `Sets.union(optionals, consumes)`); an edge to a builder already on the
    search path closes a cycle and is ignored. Producers finish before
    their consumers, so the post-order is the topological order. Builders the target does not
    depend on are searched from afterwards, sinks first, each group by name, so nothing here
    depends on the order of the workflow's `builders` list.
    """
    parents: dict[str, list[str]] = {}
    has_child: set[str] = set()
    for name, s in specs.items():
        ps: list[str] = []
        # DBF walks Sets.union(optionals, consumes): a builder's optionals first, then consumes.
        for d in (*s.trigger_names[len(s.consumes):], *s.consume_names):
            p = producer.get(d)
            if p is not None and p != name and p in specs and p not in ps:
                ps.append(p)
        parents[name] = ps
        has_child.update(ps)
    rest = sorted(specs, key=lambda n: (n in has_child, n))
    starts = [goal, *rest] if goal is not None and goal in specs else rest
    state: dict[str, int] = {}  # 1 = on the search path, 2 = finished
    post: list[str] = []
    for start in starts:
        if start in state:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        state[start] = 1
        while stack:
            node, i = stack[-1]
            ps = parents[node]
            if i < len(ps):
                stack[-1] = (node, i + 1)
                p = ps[i]
                if p not in state:
                    state[p] = 1
                    stack.append((p, 0))
            else:
                state[node] = 2
                post.append(node)
                stack.pop()
    return post
