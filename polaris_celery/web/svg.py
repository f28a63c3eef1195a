"""The instance page's graph: an SVG laid out by Graphviz's `dot`, coloured by each builder's
state in the selected run.

The layout depends only on the workflow's graph, so `dot` runs once per graph (cached); each
page then only sets a state class on every builder's group (`st-done`, `st-running`, ...) and a
`held` class on the data the instance holds, and the page's CSS colours them. Live updates
re-send the whole fragment, so the same substitution serves them.
"""

from __future__ import annotations

import functools
import html
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping

from .. import status as st
from ..diagram import data_of, to_dot
from ..graph import Graph
from ..views import ActiveBuilder

#: Builder states shown, in the legend's order.
STATES = ("done", "running", "queued", "waiting", "failed", "not-run")


class NoGraphviz(RuntimeError):
    """Graphviz's `dot` is not installed: the page shows the builders as a list instead."""


def builder_states(graph: Graph, run: int | None, bars: Iterable[st.Bar],
                   in_flight: Iterable[ActiveBuilder]) -> dict[str, str]:
    """Each builder's state in `run`: its last finished attempt (from the log: done or
    failed), overridden by what is in flight now (running, queued, waiting)."""
    states = dict.fromkeys(graph.builder_names, "not-run")
    for b in sorted(bars, key=lambda b: (b.start, b.attempt)):
        if b.builder in states:
            states[b.builder] = "failed" if b.result.startswith("error:") else "done"
    for a in in_flight:
        if a.run == run and a.builder in states:
            states[a.builder] = {"unsent": "queued"}.get(a.state, a.state)
    return states


def _node_ids(graph: Graph) -> tuple[dict[str, str], dict[str, str]]:
    builders = {b: f"pcb{i}" for i, b in enumerate(graph.builder_names)}
    data = {d: f"pcd{i}" for i, d in enumerate(data_of(graph))}
    return builders, data


@functools.lru_cache(maxsize=64)
def _layout(dot_text: str) -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise NoGraphviz("drawing the graph needs Graphviz's `dot` (Debian: apt-get install "
                         "graphviz)")
    done = subprocess.run([exe, "-Tsvg"], input=dot_text.encode(), capture_output=True,
                          timeout=30, check=False)
    if done.returncode != 0:
        raise NoGraphviz(f"dot failed: {done.stderr.decode(errors='replace').strip()}")
    text = done.stdout.decode()
    return text[text.index("<svg"):]  # inline: without the XML prolog and doctype


def base_svg(graph: Graph) -> str:
    """The graph's SVG, every builder's group tagged with an id (cached per graph)."""
    builders, data = _node_ids(graph)
    extra = {f"b:{b}": f'id="{i}", class="builder"' for b, i in builders.items()}
    extra.update({f"d:{d}": f'id="{i}", class="datum"' for d, i in data.items()})
    return _layout(to_dot(graph, "TB", extra))


def coloured(graph: Graph, states: Mapping[str, str], held: Iterable[str]) -> str:
    """The graph's SVG with each builder in its state's class and held data marked."""
    svg = base_svg(graph)
    builders, data = _node_ids(graph)
    held_set = set(held)
    attrs = {i: f'class="node builder st-{states.get(b, "not-run")}" '
                f'data-builder="{html.escape(b)}" data-state="{states.get(b, "not-run")}"'
             for b, i in builders.items()}
    attrs.update({i: f'class="node datum{" held" if d in held_set else ""}" '
                     f'data-datum="{html.escape(d)}"' for d, i in data.items()})
    return re.sub(r'<g id="(pc[bd]\d+)" class="node[^"]*">',
                  lambda m: f'<g id="{m.group(1)}" {attrs[m.group(1)]}>', svg)
