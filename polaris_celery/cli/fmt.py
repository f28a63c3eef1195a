"""Text pieces the commands share: times, spans, outcome colours, errors."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text

from ..views import ActiveBuilder


def when(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    if now is None:
        return stamp
    return f"{stamp} ({ago(now - ts)})"


def ago(secs: float) -> str:
    if secs < 0:
        return f"in {span(-secs)}"
    return f"{span(secs)} ago"


def span(secs: float) -> str:
    if secs < 1:
        return f"{secs * 1000:.0f} ms"
    if secs < 120:
        return f"{secs:.1f} s"
    if secs < 7200:
        return f"{secs / 60:.0f} min"
    if secs < 172800:
        return f"{secs / 3600:.0f} h"
    return f"{secs / 86400:.0f} d"


def deadline(b: ActiveBuilder, now: float) -> Text:
    if b.deadline is None:
        return Text("-")
    if b.overdue(now):
        return Text(f"overdue by {span(now - b.deadline)}", style="bold red")
    return Text(f"in {span(b.deadline - now)}")


def outcome_style(outcome: str) -> str:
    return {"completed": "green", "paused": "yellow", "failed": "bold red",
            "running": "cyan", "queued": "cyan", "unsent": "red", "open": "blue",
            "cancelled": "magenta", "timed_out": "magenta"}.get(outcome, "")


def error_text(err: Any) -> str:
    if not err:
        return ""
    return f"{err.get('builder')}: {err.get('type')}: {err.get('message')}"
