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

And what a lost worker leaves behind, since a process killed outright sends no events at all:

- Every attempt has a task id of its own, the same wherever it is computed (`attempt_id`, from
  the instance, its incarnation, the run, the builder and the attempt): a delivered attempt's
  message is sent under it, an inline attempt's events use it. So the reconciler that finds an
  attempt's lease ran out names its task: it sends task-failed for it (`LostAttempts`), with
  the AttemptLost error, and Flower stops showing a dead attempt as STARTED. (Sent from the
  reconciling worker, Flower shows that worker on the task.)
- A delivered task that goes on to run a successor inline has finished its own builder: its
  task-succeeded is sent then, so that a worker killed during the successor does not leave it
  STARTED for a builder that was done (Celery's own event at the task's end repeats it).
- Copies of a message share its id (a re-send of an overdue message, a redelivery): a copy
  that finds its attempt not its to run reports task-revoked, not task-succeeded, so it never
  hides what the copy that ran reported (Flower keeps SUCCESS or FAILURE over REVOKED).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery.worker.request import Request

from ..errors import AttemptFailed
from ..invoke import Outcome
from ..machine import Step
from ..observe import Observer

log = logging.getLogger("polaris_celery")

#: The request attribute that tells a task body whether its worker sends task events.
EVENTS_FLAG = "polaris_events"
_RESULT = re.compile(r"^'polaris-runtime=([0-9.]+) (.*)'$", re.S)
SKIPPED = "skipped (the attempt was not this message's to run)"
_NAMESPACE = uuid.UUID("5b0c1a4e-6f1d-4d3a-9a47-70a1a215ce1e")


def attempt_id(workflow: str, instance_id: str, incarnation: str, run: int, builder: str,
               token: int) -> str:
    """The task id of one attempt, the same in every process (see the module docstring)."""
    return str(uuid.uuid5(_NAMESPACE, f"{workflow}/{instance_id}/{incarnation}/{run}/"
                                      f"{builder}/{token}"))


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
            if m is not None and m.group(2).startswith(SKIPPED):
                super().send_event("task-revoked", terminated=False, signum=None,
                                   expired=False)
                return
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
    reported: bool = False  # its own task-succeeded sent early (an inline successor follows)

    def what(self) -> str:
        """What the delivered attempt came to, in words (the task's result)."""
        out = self.outcome
        if out is None:
            return SKIPPED
        if not self.committed:
            return "superseded: not committed"
        return "returned nothing" if out.raw is None else "produced"


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
        what = s.what()
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
        task_id = attempt_id(workflow, instance_id, str(s.kwargs.get("inc", "")), run, builder,
                             token)
        s.inline[(builder, token)] = (task_id, time.monotonic())
        kwargs = dict(s.kwargs, attempt=token)
        req = s.task.request
        early: list[tuple[str, dict[str, Any]]] = []
        if not s.reported and s.outcome is not None and s.runtime is not None:
            # The delivered builder is done: say so now, not when the task ends (docstring).
            s.reported = True
            early.append(("task-succeeded", {"uuid": req.id, "result": repr(s.what()),
                                             "runtime": s.runtime}))
        self._send(s, *early, ("task-received", {
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


class LostAttempts(Observer):
    """Sends task-failed for the attempts a reconciler in this worker found lost (their lease ran
    out): what the dead process could not send (see the module docstring). `worker` is set by
    the reconciler's bootstep; elsewhere (a producer's own `reconcile()`) it sends nothing."""

    def __init__(self, app: Any, task_name: Callable[[str, str], str]) -> None:
        self.app = app
        self.task_name = task_name
        self.worker: Any = None

    def recovered(self, workflow: str, instance_id: str, incarnation: str, step: Step) -> None:
        worker = self.worker
        if worker is None or not step.failures or not _sends_task_events(worker):
            return
        events = []
        for run, builder, token, error in step.failures:
            failure = AttemptFailed(f"{builder} attempt {token}: {error.type}: "
                                    f"{error.message}"[:1000])
            events.append(("task-failed", {
                "uuid": attempt_id(workflow, instance_id, incarnation, run.id, builder, token),
                "name": self.task_name(workflow, builder), "exception": repr(failure),
                "traceback": ""}))
        try:
            with self.app.events.default_dispatcher(hostname=worker.hostname) as dispatcher:
                for kind, fields in events:
                    dispatcher.send(kind, **fields)
        except Exception as exc:  # monitoring must never fail a reconciler pass
            log.warning("polaris: could not send task events for lost attempts: %s", exc)


def _sends_task_events(worker: Any) -> bool:
    """Whether the worker sends task events now (`-E`, or Flower enabled them since)."""
    d = getattr(getattr(worker, "consumer", None), "event_dispatcher", None)
    return bool(d is not None and d.enabled and (not d.groups or "task" in d.groups))


def _sibling(task_name: str, builder: str) -> str:
    """The task name of another builder of the same workflow (`polaris.<workflow>.<B>`)."""
    return f"{task_name.rpartition('.')[0]}.{builder}"


task_events = TaskEvents()
