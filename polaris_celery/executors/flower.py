"""Flower tells the truth: Celery task events for what a builder task really did.

Three things Celery alone gets wrong here, and how each is put right:

- A builder that raises does not fail its task (the coordinator records the failure and
  retries or fails the run itself), so Celery reported SUCCESS. Now, once the failed attempt's
  outcome is committed, the task raises `AttemptFailed` naming the error: Flower shows FAILURE
  with it. The task's `throws` lists it, so Celery logs it as expected, without a traceback.
- A successor run inline (in the same worker, no broker hop) was no task at all. Now the
  worker sends task events for it as Celery would for a task of its own: task-received and
  task-started when it starts, task-succeeded (with its runtime) or task-failed when its outcome
  is committed, under a uuid of its own, its `parent_id` the delivered task's. They are sent
  only while the worker sends task events (`-E`, or Flower enabling them).
- The delivered task's runtime covered its inline successors. Now its task-succeeded event
  carries its own builder's time, from the task's start to its own commit: the task body
  returns it in its result (`polaris-runtime=<seconds> ...`), and `BuilderRequest` (the tasks'
  Celery request class, a documented extension point) puts it in the event's runtime field.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery.worker.request import Request

from ..errors import AttemptFailed
from ..invoke import Outcome
from ..observe import Observer

log = logging.getLogger("polaris_celery")

#: The request attribute that tells a task body whether its worker sends task events.
EVENTS_FLAG = "polaris_events"
_RESULT = re.compile(r"^'polaris-runtime=([0-9.]+) (.*)'$", re.S)


class BuilderRequest(Request):  # type: ignore[misc]
    """The Celery request class of builder tasks (runs in the worker's parent process)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        e = self.eventer
        on = bool(e is not None and e.enabled and (not e.groups or "task" in e.groups))
        self.request_dict[EVENTS_FLAG] = on

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded":
            m = _RESULT.match(str(fields.get("result") or ""))
            if m is not None:
                fields["runtime"] = float(m.group(1))
                fields["result"] = repr(m.group(2))
        super().send_event(type, **fields)


@dataclass
class _Delivered:
    """The task a worker thread is running: the delivered attempt, and what ran inline."""

    task: Any
    builder: str
    token: int
    kwargs: dict[str, Any]
    events: bool
    started: float = field(default_factory=time.monotonic)
    runtime: float | None = None
    outcome: Outcome | None = None
    committed: bool = False
    inline: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)
    ran_inline: list[str] = field(default_factory=list)


_current: contextvars.ContextVar[_Delivered | None] = contextvars.ContextVar(
    "polaris_delivered", default=None)


class Report:
    """What a builder task's body returns (or raises) once the coordinator is done."""

    def __init__(self, state: _Delivered) -> None:
        self._state = state

    def result(self) -> str:
        """The task's return value; raises AttemptFailed for a committed failed attempt."""
        s = self._state
        runtime = s.runtime if s.runtime is not None else time.monotonic() - s.started
        out = s.outcome
        if out is not None and out.error is not None and s.committed:
            raise AttemptFailed(f"{s.builder} attempt {s.token}: {out.error.type}: "
                                f"{out.error.message}"[:1000])
        if out is None:
            what = "skipped (the attempt was not this message's to run)"
        elif not s.committed:
            what = "superseded: not committed"
        else:
            what = "returned nothing" if out.raw is None else "produced"
        if s.ran_inline:
            what += "; ran inline: " + ", ".join(s.ran_inline)
        return f"polaris-runtime={runtime:.6f} {what}"


@contextmanager
def delivered(task: Any, builder: str, kwargs: dict[str, Any]) -> Iterator[Report]:
    """Around the coordinator's execution of one delivered builder task."""
    state = _Delivered(task, builder, int(kwargs["attempt"]), dict(kwargs),
                       bool(getattr(task.request, EVENTS_FLAG, False)))
    token = _current.set(state)
    try:
        yield Report(state)
    finally:
        _current.reset(token)


class TaskEvents(Observer):
    """Turns the attempts a task runs into what Celery's events report."""

    def started(self, workflow: str, instance_id: str, run: int, builder: str, token: int
                ) -> None:
        s = _current.get()
        if s is None or (builder, token) == (s.builder, s.token) or not s.events:
            return
        task_id = str(uuid.uuid4())
        s.inline[(builder, token)] = (task_id, time.monotonic())
        kwargs = dict(s.kwargs, attempt=token)
        req = s.task.request
        self._send(s, ("task-received", {
            "uuid": task_id, "name": _sibling(s.task.name, builder), "args": "()",
            "kwargs": repr(kwargs), "root_id": req.root_id or req.id, "parent_id": req.id,
            "retries": 0, "eta": None, "expires": None}),
            ("task-started", {"uuid": task_id}))

    def finished(self, workflow: str, instance_id: str, run: int, builder: str, token: int,
                 outcome: Outcome, committed: bool) -> None:
        s = _current.get()
        if s is None:
            return
        if (builder, token) == (s.builder, s.token) and s.outcome is None:
            s.runtime = time.monotonic() - s.started
            s.outcome, s.committed = outcome, committed
            return
        s.ran_inline.append(builder)
        inline = s.inline.pop((builder, token), None)
        if inline is None:
            return
        task_id, began = inline
        if outcome.error is not None and committed:
            error = AttemptFailed(f"{builder} attempt {token}: {outcome.error.type}: "
                                  f"{outcome.error.message}"[:1000])
            self._send(s, ("task-failed", {"uuid": task_id, "exception": repr(error),
                                           "traceback": ""}))
            return
        what = "superseded: not committed" if not committed else \
            "returned nothing" if outcome.raw is None else "produced"
        self._send(s, ("task-succeeded", {"uuid": task_id, "result": repr(what),
                                          "runtime": time.monotonic() - began}))

    @staticmethod
    def _send(s: _Delivered, *events: tuple[str, dict[str, Any]]) -> None:
        app, hostname = s.task.app, s.task.request.hostname
        try:
            with app.events.default_dispatcher(hostname=hostname) as dispatcher:
                for kind, fields in events:
                    dispatcher.send(kind, **fields)
        except Exception as exc:  # monitoring must never fail a builder
            log.warning("polaris: could not send task events for an inline builder: %s", exc)


def _sibling(task_name: str, builder: str) -> str:
    """The task name of another builder of the same workflow (`polaris.<workflow>.<B>`)."""
    return f"{task_name.rpartition('.')[0]}.{builder}"


task_events = TaskEvents()
