"""`polaris`: look at and operate workflows from a terminal.

    polaris [--app MODULE[:ATTR]] workflows
    polaris graph KEY [--version N] [--format dot|mermaid] [--direction TB|LR] [--output F]
    polaris status KEY ID [--json]
    polaris timeline KEY ID [--runs N]
    polaris instances KEY [--status S ...] [--limit N] [--cursor C] [--json]
    polaris reindex KEY
    polaris submit KEY ID --data '{"RideRequested": {...}}' [--delta-id X] [--wait S] [--json]
    polaris recover [--json]
    polaris web [--host H] [--port P] [--token T]

One module per job: `app` finds the user's app and holds the group, `graphs` the workflows
and their graphs, `instance` one instance (status, timeline), `listing` many, `run` submits and
recovers. Reading goes through the query API (polaris_celery.query); these modules only turn
what it returns into text. Every expected failure prints one line and exits 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..web.command import web
from . import graphs, instance, listing, run
from .app import App, cli, load_app

__all__ = ["App", "cli", "load_app", "main"]

_COMMANDS = (graphs, instance, listing, run)  # imported for the commands they add to `cli`
cli.add_command(web)  # `polaris web` lives in polaris_celery/web/command.py


def main(argv: Sequence[str] | None = None) -> None:
    """The `polaris` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="polaris")


if __name__ == "__main__":  # pragma: no cover
    main()
