"""`polaris instances` and `polaris reindex`: a workflow's instances by status, in pages."""

from __future__ import annotations

import json
import time

import click
from rich.table import Table
from rich.text import Text

from ..instance import STATUSES
from . import fmt
from .app import app_of, cli, console


@cli.command()
@click.argument("key")
@click.option("--status", "-s", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only instances of this status (repeat for several).")
@click.option("--limit", "-n", default=50, show_default=True, help="Instances per page.")
@click.option("--cursor", default=None, help="Where the previous page ended (it prints it).")
@click.option("--oldest-first", is_flag=True, help="Oldest change first.")
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@click.pass_context
def instances(ctx: click.Context, key: str, statuses: tuple[str, ...], limit: int,
              cursor: str | None, oldest_first: bool, as_json: bool) -> None:
    """List the instances of workflow KEY, newest change first, one page at a time."""
    query = app_of(ctx).query("instances")
    try:
        page = query.instances(key, status=statuses or None, limit=limit, cursor=cursor,
                               newest_first=not oldest_first)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(page.to_json(), indent=2))
        return
    now = time.time()
    title = f"instances of {key}" + (f" ({', '.join(statuses)})" if statuses else "")
    table = Table(title=title, title_justify="left")
    for col in ("instance", "status", "changed", "created", "version"):
        table.add_column(col, justify="right" if col == "version" else "left")
    for s in page.items:
        table.add_row(s.instance_id, Text(s.status, style=fmt.outcome_style(s.status)),
                      fmt.when(s.updated, now), fmt.when(s.created),
                      f"v{s.workflow_version}" if s.workflow_version else "-")
    console(full_width=True).print(table)
    if not page.items:
        click.echo("(no instance listed)")
    if page.cursor is not None:
        click.echo(f"next page: --cursor {page.cursor}")


@cli.command()
@click.argument("key")
@click.pass_context
def reindex(ctx: click.Context, key: str) -> None:
    """Write the listing of workflow KEY again from every instance's state (for instances
    created before the listing existed, or whose entry a crash lost). Scans the store's keys."""
    listed = app_of(ctx).query("reindex").reindex(key)
    click.echo(f"{listed} instance(s) of {key} listed")
