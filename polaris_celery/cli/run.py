"""`polaris submit` and `polaris recover`: send a delta (and wait for its run), recover now."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ValidationError
from rich.table import Table
from rich.text import Text

from ..errors import BuilderFailed, InvalidInput, UnknownData
from ..graph import Graph
from ..result import RunResult
from . import fmt
from .app import app_of, cli, console

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
    out = console()
    line = Text.assemble(f"run {r.run} of {r.workflow}/{r.instance_id}: ",
                         (r.status, f"bold {fmt.outcome_style(r.status)}"))
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
    app = app_of(ctx)
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
    counts = app_of(ctx).need_executor("recover").reconcile()
    if as_json:
        click.echo(json.dumps(counts))
        return
    click.echo(f"reconciler pass: {counts.get('instances', 0)} instance(s) looked at, "
               f"{counts.get('resent', 0)} dispatch(es) re-sent, "
               f"{counts.get('lost', 0)} lost attempt(s) re-run, "
               f"{counts.get('skipped', 0)} passed over (workflow or version not here), "
               f"{counts.get('failed', 0)} failed (looked at again later)")
