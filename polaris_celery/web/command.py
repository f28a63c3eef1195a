"""`polaris web`: serve the web view of workflows (like `celery flower`).

Kept apart from the other commands, and importing the web stack only when run, so `polaris`
works without the `web` extra installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .auth import TOKEN_ENV, is_loopback

DEFAULT_PORT = 5566
MISSING = "`polaris web` needs the web extra: pip install 'polaris-celery[web]'"


def check_binding(host: str, token: str | None) -> str | None:
    """The token to require (None on loopback without one); refuses a non-loopback host
    without a token with a clear error."""
    if token is not None and not token.strip():
        raise click.ClickException(f"the web token (--token or {TOKEN_ENV}) is empty")
    if not is_loopback(host) and token is None:
        raise click.ClickException(
            f"--host {host} serves beyond this machine: give a token with --token or "
            f"{TOKEN_ENV}, which every page, action and /metrics scrape must then carry")
    return token


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback requires a token.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", envvar=TOKEN_ENV, default=None, show_envvar=True,
              help="Required for pages, actions and /metrics (header `Authorization: Bearer "
                   "TOKEN` or the login form's cookie).")
@click.pass_context
def web(ctx: click.Context, host: str, port: int, token: str | None) -> None:
    """Serve the web view: instances, their graphs and runs, live; actions; /metrics."""
    token = check_binding(host, token)
    getter: Callable[[], Any] = ctx.find_root().obj
    executor = getter().need_executor("web")
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise click.ClickException(f"{MISSING} ({exc})") from None
    click.echo(f"polaris web on http://{host}:{port}/"
               + (" (token required)" if token else ""))
    uvicorn.run(create_app(executor, token), host=host, port=port, log_level="info",
                timeout_graceful_shutdown=3)
