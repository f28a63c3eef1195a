"""The web view of workflows (`polaris web`): Starlette pages rendered on the server, an SVG of
each instance's graph coloured by its builders' states, live updates by server-sent events,
actions (cancel, restart, submit a delta, recover) and Prometheus `/metrics`.

Modules: `app` (routes), `source` (what the pages read), `views` (what they show), `svg`
(the graph), `forms` (the delta form), `sse` (live updates), `auth` (token, CSRF, host),
`prom` (/metrics), `command` (the CLI command). Needs the `web` extra; `create_app` is in
`app`, imported from here lazily so that `polaris` works without it.
"""

from __future__ import annotations

from typing import Any


def create_app(executor: Any, token: str | None = None, **options: Any) -> Any:
    """The ASGI app of the web view (see `app.create_app`)."""
    from .app import create_app as make

    return make(executor, token, **options)
