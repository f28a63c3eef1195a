"""Pictures of a compiled graph: Graphviz DOT and Mermaid text.

Builders are boxes and data ellipses; inputs (data no builder produces) are dashed, the target
is highlighted; consumes are solid edges, optionals dashed, accesses dotted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from pydantic import BaseModel

from .builder import datum_name
from .graph import Graph


def data_of(graph: Graph) -> list[str]:
    """The data of the graph's active builders (and the target), in builder-rank order."""
    seen: dict[str, None] = {}
    for b in graph.builder_names:
        s = graph.specs[b]
        for n in (*s.consume_names, *(_names(s.optionals)), *(_names(s.accesses)),
                  s.produces_name):
            seen.setdefault(n, None)
    seen.setdefault(graph.target, None)
    return list(seen)


def _names(types: Iterable[type[BaseModel]]) -> list[str]:
    return [datum_name(t) for t in types]


def _edges(graph: Graph) -> list[tuple[str, str, str]]:
    """(kind, datum, builder) for consumes/optional/accesses edges, and (produces, b, d)."""
    out: list[tuple[str, str, str]] = []
    for b in graph.builder_names:
        s = graph.specs[b]
        out += [("consumes", d, b) for d in s.consume_names]
        out += [("optional", d, b) for d in _names(s.optionals)]
        out += [("accesses", d, b) for d in _names(s.accesses)]
        out.append(("produces", b, s.produces_name))
    return out


def _builder_note(graph: Graph, b: str) -> str:
    s = graph.specs[b]
    notes = []
    if s.max_retries:
        notes.append(f"{s.max_retries} retries")
    if s.queue:
        notes.append(f"queue {s.queue}")
    return ", ".join(notes)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Graph, direction: str = "TB", extra: Mapping[str, str] | None = None) -> str:
    """Graphviz DOT: builders as boxes, data as ellipses, inputs dashed, the target in gold.

    extra: more attributes per node (`"b:Name"` or `"d:Name"` -> `id="...", class="..."`),
    which the web view uses to find and colour nodes in the SVG."""
    more = {n: f", {a}" for n, a in (extra or {}).items()}
    lines = [
        f"digraph {_q(graph.key)} {{",
        f'  graph [rankdir={direction}, label={_q(f"{graph.key}  (target: {graph.target})")}, '
        'labelloc=t, fontname="Helvetica", fontsize=16, nodesep=0.3, ranksep=0.45];',
        '  node [fontname="Helvetica", fontsize=11, color="#455a64"];',
        '  edge [color="#546e7a", arrowsize=0.7, fontname="Helvetica", fontsize=9];',
    ]
    for d in data_of(graph):
        attrs = 'shape=ellipse, style=filled, fillcolor="#ffffff"'
        label = d
        if d == graph.target:
            attrs = ('shape=ellipse, style="filled,bold", fillcolor="#ffd54f", '
                     'color="#e65100", penwidth=2, peripheries=2')
            label = f"{d}\\ntarget"
        elif d in graph.inputs:
            attrs = 'shape=ellipse, style="filled,dashed", fillcolor="#e3f2fd", color="#1565c0"'
            label = f"{d}\\ninput"
        lines.append(f'  {_q("d:" + d)} [label="{label}", {attrs}{more.get("d:" + d, "")}];')
    for b in graph.builder_names:
        note = _builder_note(graph, b)
        label = f"{b}\\n{note}" if note else b
        lines.append(f'  {_q("b:" + b)} [label="{label}", shape=box, '
                     f'style="rounded,filled", fillcolor="#eceff1"{more.get("b:" + b, "")}];')
    style = {"consumes": "", "optional": ' [style=dashed, label="optional"]',
             "accesses": ' [style=dotted, arrowhead=none, label="accesses"]',
             "produces": " [penwidth=1.6]"}
    for kind, src, dst in _edges(graph):
        a, z = ("b:" + src, "d:" + dst) if kind == "produces" else ("d:" + src, "b:" + dst)
        lines.append(f"  {_q(a)} -> {_q(z)}{style[kind]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(graph: Graph, direction: str = "TB") -> str:
    """A Mermaid flowchart with the same shapes and marks as `to_dot`."""
    ids: dict[str, str] = {}

    def ident(node: str) -> str:
        if node not in ids:
            base = re.sub(r"\W", "_", node.replace(":", "_", 1))
            ident_ = base
            while ident_ in ids.values():
                ident_ = f"{base}_{len(ids)}"
            ids[node] = ident_
        return ids[node]

    lines = [f"flowchart {direction}", f"  %% {graph.key}: target {graph.target}"]
    classes: dict[str, list[str]] = {"input": [], "target": [], "datum": [], "builder": []}
    for d in data_of(graph):
        i = ident("d:" + d)
        if d == graph.target:
            lines.append(f'  {i}(["{d}<br/>target"])')
            classes["target"].append(i)
        elif d in graph.inputs:
            lines.append(f'  {i}(["{d}<br/>input"])')
            classes["input"].append(i)
        else:
            lines.append(f'  {i}(["{d}"])')
            classes["datum"].append(i)
    for b in graph.builder_names:
        i = ident("b:" + b)
        note = _builder_note(graph, b)
        lines.append(f'  {i}["{b}<br/><small>{note}</small>"]' if note else f'  {i}["{b}"]')
        classes["builder"].append(i)
    arrow = {"consumes": "-->", "optional": "-. optional .->", "accesses": "-. accesses .-",
             "produces": "==>"}
    for kind, src, dst in _edges(graph):
        a, z = ("b:" + src, "d:" + dst) if kind == "produces" else ("d:" + src, "b:" + dst)
        lines.append(f"  {ident(a)} {arrow[kind]} {ident(z)}")
    lines += [
        "  classDef builder fill:#eceff1,stroke:#455a64",
        "  classDef datum fill:#ffffff,stroke:#455a64",
        "  classDef input fill:#e3f2fd,stroke:#1565c0,stroke-dasharray:4 3",
        "  classDef target fill:#ffd54f,stroke:#e65100,stroke-width:3px",
    ]
    lines += [f"  class {','.join(members)} {cls}" for cls, members in classes.items() if members]
    return "\n".join(lines) + "\n"
