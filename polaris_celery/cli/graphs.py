"""`polaris workflows` and `polaris graph`: what is registered, and its pictures."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
from rich.table import Table

from ..checks import mistakes
from ..diagram import data_of, to_dot, to_mermaid
from .app import app_of, cli, console

PICTURE_FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}


@cli.command()
@click.pass_context
def workflows(ctx: click.Context) -> None:
    """List every registered version of each workflow: builders, data, inputs (which deltas
    must bring, as no builder produces them), target; then what registration warned about."""
    app = app_of(ctx)
    table = Table(title=f"workflows in {app.spec}", title_justify="left")
    for col in ("workflow", "version", "builders", "data", "inputs (from deltas)", "target"):
        table.add_column(col, justify="right" if col in ("version", "builders", "data")
                         else "left")
    keys = app.registry.keys()
    doubts: list[str] = []
    for key in keys:
        versions = app.registry.versions(key)
        for version in versions:
            g = app.registry.graph(key, version)
            table.add_row(key, f"v{version}", str(len(g.specs)), str(len(data_of(g))),
                          ", ".join(sorted(g.inputs)), g.target)
            name = key if len(versions) == 1 else f"{key} v{version}"
            doubts += [f"{name}: {d}" for d in mistakes(g)[1]]
    console().print(table)
    if not keys:
        click.echo("(no workflow registered)")
    for doubt in doubts:
        click.echo(f"warning: {doubt}")


@cli.command()
@click.argument("key")
@click.option("--version", "version", type=int, default=None, metavar="N",
              help="The workflow version to draw [default: the newest].")
@click.option("--format", "fmt", type=click.Choice(["dot", "mermaid"]), default=None,
              help="Text format [default: dot, or from --output's suffix].")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to FILE: .svg/.png/.pdf are rendered with Graphviz's `dot`; "
                   ".dot/.gv/.mmd get the text.")
@click.option("--direction", type=click.Choice(["TB", "LR"]), default="TB", show_default=True,
              help="Top to bottom, or left to right.")
@click.pass_context
def graph(ctx: click.Context, key: str, version: int | None, fmt: str | None,
          output: Path | None, direction: str) -> None:
    """Print (or render) the compiled graph of workflow KEY."""
    g = app_of(ctx).registry.graph(key, version)
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
