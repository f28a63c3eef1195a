"""`polaris`: look at and operate workflows from a terminal.

    polaris [--app MODULE[:ATTR]] workflows
    polaris graph KEY [--format dot|mermaid] [--direction TB|LR] [--output FILE.svg|.png|...]
    polaris status KEY ID [--json]
    polaris timeline KEY ID [--runs N]
    polaris submit KEY ID --data '{"RideRequested": {...}}' [--delta-id X] [--wait S] [--json]
    polaris recover [--json]

The app is the module users start workers from (`celery -A worker worker`): `--app` (or
POLARIS_APP, default "worker") names it, and the CLI finds its `pc.CeleryExecutor` and
`pc.Registry` by attribute (`executor`, `registry`, or `MODULE:ATTR`) or else by type. Reading
Redis lives in `status`; this module only turns what it returns into text. Every expected
failure (unknown workflow, bad JSON, unknown data, Redis down) prints one line and exits 1.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, ValidationError
from rich.bar import Bar as RichBar
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import status as st
from .checks import mistakes
from .diagram import data_of, to_dot, to_mermaid
from .errors import BuilderFailed, InvalidInput, PolarisError, UnknownData
from .executors.celery import CeleryExecutor
from .graph import Graph
from .registry import Registry
from .result import RunResult
from .stores.redis import RedisStore, redact
from .web.command import web as web_command

DEFAULT_APP = "worker"
PICTURE_FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}


# -- finding the user's app -------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    """What the CLI found in the user's module."""

    spec: str
    registry: Registry
    executor: CeleryExecutor | None

    def need_executor(self, command: str) -> CeleryExecutor:
        if self.executor is None:
            raise click.ClickException(
                f"`{command}` needs a polaris_celery.CeleryExecutor in {self.spec}, which "
                "holds only a Registry")
        return self.executor

    def need_redis(self, command: str) -> RedisStore:
        store = self.registry.store
        if not isinstance(store, RedisStore):
            raise click.ClickException(
                f"`{command}` reads Redis, but the registry in {self.spec} stores in "
                f"{type(store).__name__}")
        return store


def _by_type(module: Any, tp: type) -> list[Any]:
    found: list[Any] = []
    for name in dir(module):
        obj = getattr(module, name, None)
        if isinstance(obj, tp) and not any(obj is f for f in found):
            found.append(obj)
    return found


def load_app(spec: str) -> App:
    """Import MODULE (from the current directory too, as `celery -A` does) and find the
    executor and registry in it."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise click.ClickException(f"--app {spec!r}: expected MODULE or MODULE:ATTR")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except PolarisError:
        raise
    except ImportError as exc:
        raise click.ClickException(f"cannot import the app module {module_name!r}: {exc}"
                                   ) from None
    except Exception as exc:
        raise click.ClickException(f"importing the app module {module_name!r} failed: "
                                   f"{type(exc).__name__}: {exc}") from None
    if attr:
        obj = getattr(module, attr, None)
        if isinstance(obj, CeleryExecutor):
            return App(spec, obj.registry, obj)
        if isinstance(obj, Registry):
            execs = [e for e in _by_type(module, CeleryExecutor) if e.registry is obj]
            return App(spec, obj, execs[0] if len(execs) == 1 else None)
        what = "nothing" if obj is None else f"a {type(obj).__name__}"
        raise click.ClickException(f"{spec} is {what}, not a polaris_celery CeleryExecutor "
                                   "or Registry")
    executor = getattr(module, "executor", None)
    if not isinstance(executor, CeleryExecutor):
        execs = _by_type(module, CeleryExecutor)
        if len(execs) > 1:
            raise click.ClickException(f"{module_name} holds {len(execs)} CeleryExecutors; "
                                       f"name one with --app {module_name}:ATTR")
        executor = execs[0] if execs else None
    registry = getattr(module, "registry", None)
    if executor is not None:
        registry = executor.registry
    elif not isinstance(registry, Registry):
        regs = _by_type(module, Registry)
        if len(regs) != 1:
            found = "no" if not regs else str(len(regs))
            raise click.ClickException(
                f"{module_name} holds {found} polaris_celery Registry/CeleryExecutor objects; "
                f"name one with --app {module_name}:ATTR")
        registry = regs[0]
    return App(spec, registry, executor)


# -- one line per expected error --------------------------------------------------------------


class _Group(click.Group):
    """Turns the library's errors (and a broker that is down) into one line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PolarisError as exc:
            raise click.ClickException(str(exc).replace("\n", " ")) from None
        except BrokerError as exc:
            raise click.ClickException(f"the Celery broker is unreachable: {exc}") from None


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--app", "-A", "app_spec", envvar="POLARIS_APP", default=DEFAULT_APP,
              show_default=True, metavar="MODULE[:ATTR]",
              help="The module holding your CeleryExecutor and/or Registry (env POLARIS_APP).")
@click.version_option(package_name="polaris-celery")
@click.pass_context
def cli(ctx: click.Context, app_spec: str) -> None:
    """Operate polaris-celery workflows: inspect graphs and instances, submit, recover."""
    cache: dict[str, App] = {}

    def get() -> App:
        if "app" not in cache:
            cache["app"] = load_app(app_spec)
        return cache["app"]

    ctx.obj = get


def _app(ctx: click.Context) -> App:
    getter: Callable[[], App] = ctx.find_root().obj
    return getter()


# -- workflows --------------------------------------------------------------------------------


@cli.command()
@click.pass_context
def workflows(ctx: click.Context) -> None:
    """List the registered workflows: builders, data, inputs (which deltas must bring, as no
    builder produces them), target; then what registration warned about."""
    app = _app(ctx)
    table = Table(title=f"workflows in {app.spec}", title_justify="left")
    for col in ("workflow", "builders", "data", "inputs (from deltas)", "target"):
        table.add_column(col, justify="right" if col in ("builders", "data") else "left")
    keys = app.registry.keys()
    doubts: list[str] = []
    for key in keys:
        g = app.registry.graph(key)
        table.add_row(key, str(len(g.specs)), str(len(data_of(g))),
                      ", ".join(sorted(g.inputs)), g.target)
        doubts += [f"{key}: {d}" for d in mistakes(g)[1]]
    _console().print(table)
    if not keys:
        click.echo("(no workflow registered)")
    for doubt in doubts:
        click.echo(f"warning: {doubt}")


# -- graph ------------------------------------------------------------------------------------


@cli.command()
@click.argument("key")
@click.option("--format", "fmt", type=click.Choice(["dot", "mermaid"]), default=None,
              help="Text format [default: dot, or from --output's suffix].")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to FILE: .svg/.png/.pdf are rendered with Graphviz's `dot`; "
                   ".dot/.gv/.mmd get the text.")
@click.option("--direction", type=click.Choice(["TB", "LR"]), default="TB", show_default=True,
              help="Top to bottom, or left to right.")
@click.pass_context
def graph(ctx: click.Context, key: str, fmt: str | None, output: Path | None,
          direction: str) -> None:
    """Print (or render) the compiled graph of workflow KEY."""
    g = _app(ctx).registry.graph(key)
    suffix = output.suffix.lower() if output is not None else ""
    if fmt is None:
        fmt = "mermaid" if suffix in (".mmd", ".mermaid", ".md") else "dot"
    text = to_mermaid(g, direction) if fmt == "mermaid" else to_dot(g, direction)
    if output is None:
        click.echo(text, nl=False)
        return
    if suffix not in PICTURE_FORMATS:
        output.write_text(text)
        click.echo(f"wrote {output}")
        return
    if fmt != "dot":
        raise click.ClickException(f"{output.name}: pictures are drawn from DOT; "
                                   "drop --format mermaid")
    exe = shutil.which("dot")
    if exe is None:
        raise click.ClickException(
            f"rendering {output.name} needs Graphviz's `dot` binary, which is not installed "
            "(Debian: apt-get install graphviz); `polaris graph KEY` prints the DOT text")
    done = subprocess.run([exe, f"-T{PICTURE_FORMATS[suffix]}", "-o", str(output)],
                          input=text.encode(), capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"dot failed: {done.stderr.decode(errors='replace').strip()}")
    click.echo(f"wrote {output}")


# -- status and timeline ----------------------------------------------------------------------


def _when(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    if now is None:
        return stamp
    return f"{stamp} ({_ago(now - ts)})"


def _ago(secs: float) -> str:
    if secs < 0:
        return f"in {_span(-secs)}"
    return f"{_span(secs)} ago"


def _span(secs: float) -> str:
    if secs < 1:
        return f"{secs * 1000:.0f} ms"
    if secs < 120:
        return f"{secs:.1f} s"
    if secs < 7200:
        return f"{secs / 60:.0f} min"
    if secs < 172800:
        return f"{secs / 3600:.0f} h"
    return f"{secs / 86400:.0f} d"


def _deadline(b: st.ActiveBuilder, now: float) -> Text:
    if b.deadline is None:
        return Text("-")
    if b.overdue(now):
        return Text(f"overdue by {_span(now - b.deadline)}", style="bold red")
    return Text(f"in {_span(b.deadline - now)}")


def _outcome_style(outcome: str) -> str:
    return {"completed": "green", "paused": "yellow", "failed": "bold red",
            "running": "cyan", "queued": "cyan", "unsent": "red"}.get(outcome, "")


def _error_text(err: Any) -> str:
    if not err:
        return ""
    return f"{err.get('builder')}: {err.get('type')}: {err.get('message')}"


def _find_instance(ctx: click.Context, key: str, command: str) -> tuple[RedisStore, Graph]:
    app = _app(ctx)
    return app.need_redis(command), app.registry.graph(key)


@cli.command()
@click.argument("key")
@click.argument("instance_id")
@click.option("--history", default=10, show_default=True, help="How many settled runs to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def status(ctx: click.Context, key: str, instance_id: str, history: int, as_json: bool) -> None:
    """Show one instance: its data, the builders in flight, the runs in flight and settled."""
    store, g = _find_instance(ctx, key, "status")
    s = st.read_status(store, g, instance_id, history=max(history, 1))
    if not s.exists:
        raise click.ClickException(f"no instance {instance_id!r} of workflow {key!r} in "
                                   f"{redact(store.url)}")
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(s), indent=2))
        return
    now, out = s.read_at, _console()
    head = Text.assemble((f"{key}/{instance_id}", "bold"), "  ",
                         (s.state, f"bold {_outcome_style(s.state)}"),
                         f"  state v{s.version}"
                         + (f" · workflow v{s.workflow_version}" if s.workflow_version else "")
                         + f" · created {_when(s.created, now)}"
                         f" · updated {_when(s.updated, now)}"
                         + (f" · deadline {_when(s.deadline, now)}" if s.deadline else ""))
    out.print(head)
    has_target = any(d.is_target for d in s.data)
    out.print(f"target {s.target}: {'produced' if has_target else 'not yet'}"
              + (f" · inputs not yet received: {', '.join(s.absent_inputs)}"
                 if s.absent_inputs else ""))

    data = Table(title="data", title_justify="left")
    for col, just in (("datum", "left"), ("bytes", "right"), ("written by", "left"),
                      ("run", "right"), ("at", "left")):
        data.add_column(col, justify=just)  # type: ignore[arg-type]
    for d in s.data:
        name = Text(d.name, style="bold" if d.is_target else "")
        if d.is_input:
            name.append(" (input)", style="dim")
        if d.is_target:
            name.append(" (target)", style="yellow")
        data.add_row(name, str(d.size), d.producer or "?",
                     "-" if d.run is None else str(d.run), _when(d.at))
    out.print(data)

    if s.builders:
        bt = Table(title="builders in flight", title_justify="left")
        for col in ("run", "builder", "state", "attempt", "deadline"):
            bt.add_column(col, justify="right" if col in ("run", "attempt") else "left")
        for b in s.builders:
            bt.add_row(str(b.run), b.builder, Text(b.state, style=_outcome_style(b.state)),
                       "-" if b.attempt is None else str(b.attempt), _deadline(b, now))
        out.print(bt)
    if s.runs:
        rt = Table(title="runs in flight", title_justify="left")
        for col in ("run", "started", "new", "done", "produced", "delta id", "error"):
            rt.add_column(col, justify="right" if col == "run" else "left")
        for r in s.runs:
            rt.add_row(str(r.run), _when(r.started, now), ", ".join(r.new), ", ".join(r.done),
                       ", ".join(r.produced), r.delta_id or "", _error_text(r.error))
        out.print(rt)
    else:
        out.print("no run in flight")
    if not s.history:
        out.print("no settled run yet")
        return
    ht = Table(title="recent runs", title_justify="left")
    for col in ("run", "outcome", "produced", "started", "took", "error"):
        ht.add_column(col, justify="right" if col in ("run", "took") else "left")
    for h in s.history:
        ht.add_row(str(h.run), Text(h.status, style=_outcome_style(h.status)),
                   ", ".join(h.produced) or "-", _when(h.started), _span(h.seconds),
                   Text(_error_text(h.error), style="red"))
    out.print(ht)


@cli.command()
@click.argument("key")
@click.argument("instance_id")
@click.option("--runs", default=10, show_default=True, help="How many recent runs to draw.")
@click.option("--width", default=40, show_default=True, help="Width of the bars.")
@click.pass_context
def timeline(ctx: click.Context, key: str, instance_id: str, runs: int, width: int) -> None:
    """Draw each run: which builder ran on which worker, when, for how long."""
    store, g = _find_instance(ctx, key, "timeline")
    lines = st.read_timeline(store, g, instance_id, runs=runs)
    if not lines:
        raise click.ClickException(f"no log of instance {instance_id!r} of workflow {key!r} in "
                                   f"{redact(store.url)}")
    out = _console()
    for t in lines:
        span = max(t.seconds, 1e-3)
        title = Text.assemble(
            (f"run {t.run}", "bold"), f" · {_when(t.started)} · {_span(t.seconds)}",
            (f" · {t.status}" if t.status else " · in flight", _outcome_style(t.status or "")),
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
                          _span(b.seconds), Text(b.result, style="red" if failed else ""),
                          RichBar(span, begin, end, width=width,
                                  color="red" if failed else "green"))
        out.print(table)


# -- submit and recover -----------------------------------------------------------------------


def _parse_data(graph: Graph, text: str) -> list[BaseModel]:
    """`{"Name": {...fields}}` -> models of the workflow's own types, validated."""
    if text.startswith("@"):
        source = text[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as exc:
            raise click.ClickException(f"--data {text}: {exc.strerror or exc}") from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise click.ClickException(f"--data is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise click.ClickException('--data must be a JSON object of {"DatumName": {fields}}')
    unknown = [n for n in obj if n not in graph.types]
    if unknown:
        raise UnknownData(graph.key, unknown)
    models: list[BaseModel] = []
    for name, fields in obj.items():
        try:
            models.append(graph.types[name].model_validate(fields))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                                 for e in exc.errors())
            raise InvalidInput(f"{name} does not validate: {problems}") from None
    return models


def _result_json(r: RunResult) -> dict[str, Any]:
    return {"workflow": r.workflow, "instance_id": r.instance_id, "run": r.run,
            "status": r.status, "completed": r.completed, "error": r.error,
            "data": {n: m.model_dump(mode="json") for n, m in r.data.items()}}


def _print_result(r: RunResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_result_json(r)))
        return
    out = _console()
    line = Text.assemble(f"run {r.run} of {r.workflow}/{r.instance_id}: ",
                         (r.status, f"bold {_outcome_style(r.status)}"))
    if r.completed:
        line.append(" (target produced)")
    out.print(line)
    if r.data:
        table = Table(title="produced in this run", title_justify="left")
        table.add_column("datum")
        table.add_column("value", overflow="fold")
        for name, model in r.data.items():
            table.add_row(name, model.model_dump_json())
        out.print(table)


@cli.command()
@click.argument("key")
@click.argument("instance_id")
@click.option("--data", "-d", "data_text", required=True, metavar="JSON",
              help='The delta, e.g. \'{"RideRequested": {"user_id": "u1"}}\'; @FILE or @- '
                   "reads it from a file or stdin.")
@click.option("--delta-id", default=None, help="Idempotency key: the delta applies once.")
@click.option("--wait", "wait_s", type=float, default=None, metavar="SECONDS",
              help="Wait up to SECONDS for the run to settle and print its result.")
@click.option("--json", "as_json", is_flag=True, help="Print the run (and result) as JSON.")
@click.pass_context
def submit(ctx: click.Context, key: str, instance_id: str, data_text: str,
           delta_id: str | None, wait_s: float | None, as_json: bool) -> None:
    """Submit a delta to instance ID of workflow KEY (through the app's CeleryExecutor)."""
    app = _app(ctx)
    executor = app.need_executor("submit")
    models = _parse_data(app.registry.graph(key), data_text)
    handle = executor.submit_delta(key, instance_id, *models, delta_id=delta_id)
    if wait_s is None:
        if as_json:
            click.echo(json.dumps({"workflow": key, "instance_id": instance_id,
                                   "run": handle.run}))
        else:
            click.echo(f"submitted run {handle.run} of {key}/{instance_id}")
        return
    try:
        result = handle.wait(timeout=wait_s)
    except BuilderFailed as exc:
        if exc.result is not None:
            _print_result(exc.result, as_json)
        raise click.ClickException(f"run {handle.run} of {key}/{instance_id} failed: {exc}"
                                   ) from None
    _print_result(result, as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
def recover(ctx: click.Context, as_json: bool) -> None:
    """Run one reconciler pass now: re-send lost dispatches, re-run lost attempts."""
    counts = _app(ctx).need_executor("recover").reconcile()
    if as_json:
        click.echo(json.dumps(counts))
        return
    click.echo(f"reconciler pass: {counts.get('instances', 0)} instance(s) looked at, "
               f"{counts.get('resent', 0)} dispatch(es) re-sent, "
               f"{counts.get('lost', 0)} lost attempt(s) re-run, "
               f"{counts.get('skipped', 0)} passed over (workflow or version not here), "
               f"{counts.get('failed', 0)} failed (looked at again later)")


cli.add_command(web_command)  # `polaris web` lives in polaris_celery/web/command.py


def main(argv: Sequence[str] | None = None) -> None:
    """The `polaris` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="polaris")


if __name__ == "__main__":  # pragma: no cover
    main()
