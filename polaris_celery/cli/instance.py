"""`polaris status` and `polaris timeline`: one instance, read through the query API."""

from __future__ import annotations

import json
import time

import click
from rich.bar import Bar as RichBar
from rich.table import Table
from rich.text import Text

from ..errors import UnknownWorkflow
from ..graph import Graph
from ..stores.redis import redact
from ..views import InstanceView
from . import fmt
from .app import App, app_of, cli, console


def _graph_of(app: App, view: InstanceView) -> Graph:
    """The graph the instance runs on, or the newest if this process lacks that version."""
    try:
        return app.registry.graph(view.workflow, view.workflow_version or None)
    except UnknownWorkflow:
        return app.registry.graph(view.workflow)


def status_json(view: InstanceView, history: int) -> dict[str, object]:
    """The view as JSON, with at most `history` settled runs."""
    doc = view.to_json()
    running = [r for r in doc["runs"] if r["status"] == "running"]
    settled = [r for r in doc["runs"] if r["status"] != "running"]
    doc["runs"] = running + settled[:history]
    return doc


@cli.command()
@click.argument("key")
@click.argument("instance_id")
@click.option("--history", default=10, show_default=True, help="How many settled runs to show.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the instance as JSON (its top-level \"status\" is one of "
                   "open, running, paused, completed, failed, cancelled, timed_out).")
@click.pass_context
def status(ctx: click.Context, key: str, instance_id: str, history: int, as_json: bool) -> None:
    """Show one instance: its data, the builders in flight, the runs in flight and settled."""
    app = app_of(ctx)
    view = app.query("status").instance(key, instance_id)
    history = max(history, 1)
    if as_json:
        click.echo(json.dumps(status_json(view, history), indent=2))
        return
    g = _graph_of(app, view)
    now, out = time.time(), console()
    head = Text.assemble((f"{key}/{instance_id}", "bold"), "  ",
                         (view.status, f"bold {fmt.outcome_style(view.status)}"),
                         f"  state v{view.version}"
                         + (f" · workflow v{view.workflow_version}"
                            if view.workflow_version else "")
                         + f" · created {fmt.when(view.created, now)}"
                         f" · updated {fmt.when(view.updated, now)}"
                         + (f" · deadline {fmt.when(view.deadline, now)}"
                            if view.deadline else ""))
    out.print(head)
    has_target = view.datum(view.target) is not None
    out.print(f"target {view.target}: {'produced' if has_target else 'not yet'}"
              + (f" · inputs not yet received: {', '.join(view.absent_inputs)}"
                 if view.absent_inputs else ""))

    data = Table(title="data", title_justify="left")
    for col, just in (("datum", "left"), ("bytes", "right"), ("written by", "left"),
                      ("run", "right"), ("at", "left")):
        data.add_column(col, justify=just)  # type: ignore[arg-type]
    for d in view.data:
        is_target = d.name == view.target
        name = Text(d.name, style="bold" if is_target else "")
        if d.name in g.inputs:
            name.append(" (input)", style="dim")
        if is_target:
            name.append(" (target)", style="yellow")
        data.add_row(name, str(d.size), d.producer or "?",
                     "-" if d.run is None else str(d.run), fmt.when(d.at))
    out.print(data)
    if view.late:
        out.print(f"late data (kept apart): {', '.join(view.late)}")

    if view.in_flight:
        bt = Table(title="builders in flight", title_justify="left")
        for col in ("run", "builder", "state", "attempt", "deadline"):
            bt.add_column(col, justify="right" if col in ("run", "attempt") else "left")
        for b in view.in_flight:
            bt.add_row(str(b.run), b.builder,
                       Text(b.state, style=fmt.outcome_style(b.state)),
                       "-" if b.attempt is None else str(b.attempt), fmt.deadline(b, now))
        out.print(bt)
    running = [r for r in view.runs if r.status == "running"]
    settled = [r for r in view.runs if r.status != "running"][:history]
    if running:
        rt = Table(title="runs in flight", title_justify="left")
        for col in ("run", "started", "produced", "delta id", "error"):
            rt.add_column(col, justify="right" if col == "run" else "left")
        for r in running:
            rt.add_row(str(r.run), fmt.when(r.started, now), ", ".join(r.produced),
                       r.delta_id or "", fmt.error_text(r.error))
        out.print(rt)
    else:
        out.print("no run in flight")
    if not settled:
        out.print("no settled run yet")
        return
    ht = Table(title="recent runs", title_justify="left")
    for col in ("run", "outcome", "produced", "started", "took", "error"):
        ht.add_column(col, justify="right" if col in ("run", "took") else "left")
    for r in settled:
        took = max((r.ended or r.started) - r.started, 0.0)
        ht.add_row(str(r.run), Text(r.status, style=fmt.outcome_style(r.status)),
                   ", ".join(r.produced) or "-", fmt.when(r.started), fmt.span(took),
                   Text(fmt.error_text(r.error), style="red"))
    out.print(ht)


@cli.command()
@click.argument("key")
@click.argument("instance_id")
@click.option("--runs", default=10, show_default=True, help="How many recent runs to draw.")
@click.option("--width", default=40, show_default=True, help="Width of the bars.")
@click.pass_context
def timeline(ctx: click.Context, key: str, instance_id: str, runs: int, width: int) -> None:
    """Draw each run: which builder ran on which worker, when, for how long. Not on a
    terminal (a pipe, a file) every line is printed whole, however wide."""
    app = app_of(ctx)
    lines = app.query("timeline").timeline(key, instance_id, runs=runs)
    if not lines:
        raise click.ClickException(f"no log of instance {instance_id!r} of workflow {key!r} in "
                                   f"{redact(app.need_redis('timeline').url)}")
    out = console(full_width=True)
    for t in lines:
        span = max(t.seconds, 1e-3)
        title = Text.assemble(
            (f"run {t.run}", "bold"), f" · {fmt.when(t.started)} · {fmt.span(t.seconds)}",
            (f" · {t.status}" if t.status else " · in flight",
             fmt.outcome_style(t.status or "")),
            f" · delta {', '.join(t.delta) or '(empty)'}" if t.delta or t.producer else "",
            f" from {t.producer}" if t.producer else "")
        if not t.bars:
            out.print(title)
            out.print("  no builder attempt has finished in this run yet")
            continue
        table = Table(title=title, title_justify="left")
        for col, just in (("builder", "left"), ("try", "right"), ("worker", "left"),
                          ("start", "right"), ("took", "right"), ("result", "left"),
                          ("", "left")):
            table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
        for b in t.bars:
            begin = b.start - t.started
            end = max(begin + b.seconds, begin + span / (2 * width))
            failed = b.result.startswith("error:")
            table.add_row(b.builder, str(b.attempt), b.worker, f"+{begin:.3f}s",
                          fmt.span(b.seconds), Text(b.result, style="red" if failed else ""),
                          RichBar(span, begin, end, width=width,
                                  color="red" if failed else "green"))
        out.print(table)
