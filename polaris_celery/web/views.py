"""What the instance page shows, computed from the source's views: the selected run, each
builder's state in it, the coloured graph, and the timeline's bars as percentages.

Pure (no I/O beyond the cached `dot` layout), so the page and its live updates are the same
function of what was read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .. import status as st
from ..graph import Graph
from ..views import InstanceView
from . import svg


@dataclass(frozen=True)
class GanttBar:
    builder: str
    attempt: int
    worker: str
    left: float  # percent of the run's span
    width: float
    seconds: float
    result: str
    failed: bool


@dataclass(frozen=True)
class GanttRun:
    run: int
    status: str
    started: float
    seconds: float
    delta: tuple[str, ...]
    bars: tuple[GanttBar, ...]


@dataclass(frozen=True)
class InstancePage:
    view: InstanceView
    run: int | None  # the selected run (newest by default)
    states: dict[str, str]
    svg: str | None
    svg_error: str | None
    gantt: tuple[GanttRun, ...]
    live: bool  # a run is in flight: the page listens for updates

    @property
    def running(self) -> bool:
        return self.view.status == "running"


def gantt(timelines: list[st.RunTimeline], live_runs: set[int]) -> tuple[GanttRun, ...]:
    out = []
    now = time.time()
    for t in reversed(timelines):  # newest first
        ended = max(t.ended, now) if t.run in live_runs else t.ended
        span = max(ended - t.started, 1e-3)
        bars = tuple(GanttBar(
            b.builder, b.attempt, b.worker,
            left=round(100 * max(b.start - t.started, 0.0) / span, 2),
            width=round(max(100 * b.seconds / span, 0.5), 2), seconds=b.seconds,
            result=b.result, failed=b.result.startswith("error:")) for b in t.bars)
        status = "running" if t.run in live_runs else (t.status or "settled")
        out.append(GanttRun(t.run, status, t.started, ended - t.started, t.delta, bars))
    return tuple(out)


def instance_page(graph: Graph, view: InstanceView, timelines: list[st.RunTimeline],
                  run: int | None) -> InstancePage:
    runs = [r.run for r in view.runs]
    if run not in runs:
        run = runs[0] if runs else None
    bars = [b for t in timelines if t.run == run for b in t.bars]
    states = svg.builder_states(graph, run, bars, view.in_flight)
    picture: str | None = None
    error: str | None = None
    try:
        picture = svg.coloured(graph, states, [d.name for d in view.data])
    except svg.NoGraphviz as exc:
        error = str(exc)
    live_runs = {r.run for r in view.runs if r.status == "running"}
    return InstancePage(view, run, states, picture, error, gantt(timelines, live_runs),
                        live=bool(live_runs))
