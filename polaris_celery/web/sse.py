"""Server-sent events for an instance page while a run is in flight.

The stream polls a cheap marker (the state's version and the log's length: two commands in one
pipeline) every `interval`, and only when it moved re-renders the page's live fragment and
sends it as an `update` event. Once nothing is in flight any more it sends the final fragment
and an `end` event, and the page closes its EventSource (else the browser would reconnect).
A comment every `keepalive` seconds keeps proxies from closing a quiet stream; `lifetime` bounds
a stream, after which the browser reconnects on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

INTERVAL = 0.25
KEEPALIVE = 15.0
LIFETIME = 600.0


def event(name: str, data: str) -> str:
    """One SSE event; every line of `data` is its own `data:` line."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {name}\n{lines}\n"


async def stream(marker: Callable[[], Awaitable[Hashable]],
                 render: Callable[[], Awaitable[tuple[str, bool]]], *,
                 interval: float = INTERVAL, keepalive: float = KEEPALIVE,
                 lifetime: float = LIFETIME) -> AsyncIterator[str]:
    """`marker()` changes whenever the instance does; `render()` gives (fragment, live)."""
    last: Hashable = None
    started = quiet_since = time.monotonic()
    yield "retry: 2000\n\n"
    while time.monotonic() - started < lifetime:
        now = await marker()
        if now != last:
            last = now
            fragment, live = await render()
            yield event("update", fragment)
            quiet_since = time.monotonic()
            if not live:
                yield event("end", "settled")
                return
        elif time.monotonic() - quiet_since > keepalive:
            yield ": keepalive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(interval)
