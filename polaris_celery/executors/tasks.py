"""The Celery side of a builder: its task, its message, and the worker signals around them.

`CeleryExecutor` (executors/celery.py) is the facade users hold; this module is the plumbing
under it, kept apart so that each stays one job: one task per builder (named
`polaris.<workflow>.<Builder>`), the body every such task runs, how a builder message is sent,
and what a worker does when a pool child dies mid-builder or a message names a builder it lacks.

Task messages carry ids only (instance, run, attempt; the workflow and builder are the task's
name), as JSON keyword arguments, so Flower shows `polaris.cab-ride.MatchCabbie(instance=...,
run=3, attempt=1)` and never a payload. A message of a wide fan-out carries the other builders
it packs as `more=[[builder, attempt], ...]` (chunks.py). The task id of a message is its
attempt's (`flower.attempt_id`), so that whoever declares an attempt lost can name its task in
Flower.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from celery import Celery
from celery.exceptions import TimeLimitExceeded, WorkerLostError

from .. import chunks, faults, tracing
from ..builder import BuilderSpec
from ..coordinator import Coordinator, task_budget
from ..errors import AttemptFailed, MessageRejected, PolarisError
from ..instance import Dispatch, Settings, UnknownVersion
from ..registry import Registry
from . import flower

log = logging.getLogger("polaris_celery")

TASK_PREFIX = "polaris"
RECONCILE_TASK = "polaris.reconcile"
#: How often a message for a builder or version this worker lacks is handed on (about once a
#: second) before it is dropped; the reconciler re-sends a dropped one.
HAND_OFF_HOPS = 600
HAND_OFF_DELAY = 1.0


def task_name(workflow: str, builder: str) -> str:
    return f"{TASK_PREFIX}.{workflow}.{builder}"


def send(app: Celery, registry: Registry, settings: Settings,
         dispatches: Sequence[Dispatch]) -> None:
    """Publish the dispatches (the coordinator's `send`): one message each, except that a wide
    fan-out packs several builders into a message (chunks.py says when)."""

    def queue(d: Dispatch) -> str | None:
        return registry.graph(d.workflow, d.version).specs[d.builder].queue

    for i, message in enumerate(chunks.pack(dispatches, settings.dispatch_chunk, queue)):
        if i:
            faults.point("mid_send")
        d, more = message[0], message[1:]
        graph = registry.graph(d.workflow, d.version)
        kwargs: dict[str, Any] = {"instance": d.instance_id, "run": d.run, "attempt": d.token,
                                  "version": d.version, "inc": d.incarnation}
        limits: dict[str, float] = {}
        if more:
            kwargs["more"] = [[m.builder, m.token] for m in more]
            # The message's time limits cover every builder it carries.
            budget = sum(task_budget(graph.specs[m.builder].time_limit) for m in message)
            limits = {"soft_time_limit": budget,
                      "time_limit": budget + settings.lease_grace / 2}
        for _ in range(faults.copies("send", d)):  # >1 only in chaos tests
            app.send_task(
                task_name(d.workflow, d.builder),
                kwargs=kwargs,
                queue=queue(d),
                countdown=d.countdown or None,
                # observe: the attempt's own task id in Flower (see flower.attempt_id)
                task_id=flower.attempt_id(d.workflow, d.instance_id, d.incarnation, d.run,
                                          d.builder, d.token),
                # No result backend round trips, and Flower's argument summary without
                # Celery's saferepr.
                ignore_result=True,
                argsrepr="()",
                kwargsrepr=repr(kwargs),
                headers=tracing.headers(d.trace),  # observe: the run's trace context
                **limits,
            )


def spill(app: Celery, registry: Registry, settings: Settings,
          rest: Sequence[Dispatch]) -> None:
    """Send the builders a packed message still carries as messages of their own. Each keeps
    its attempt (its queued lease names it), so the copy sent here is the one that claims it;
    the trace context is the one this task runs in."""
    log.info("polaris: a packed message spent over %.2fs; sending %d builders on alone",
             settings.pack_spill, len(rest))
    send(app, registry, replace(settings, dispatch_chunk=1), rest)


class BuilderTasks:
    """The tasks of one executor's app: registered per workflow, bound to its coordinator."""

    def __init__(self, app: Celery, coordinator: Coordinator) -> None:
        self.app = app
        self.coordinator = coordinator
        self.registry = coordinator.registry
        self._tasks: dict[str, Any] = {}
        self._builders: dict[str, tuple[str, str]] = {}  # task name -> (workflow, builder)

    def ensure(self, workflow: str) -> None:
        """The workflow's tasks exist in this process (raises UnknownWorkflow)."""
        if workflow not in self._tasks:
            self.registry.graph(workflow)  # raises UnknownWorkflow
            self.register(workflow)

    def register(self, workflow: str) -> None:
        """One task per builder name across every registered version of the workflow; the
        message's version picks the graph."""
        specs: dict[str, BuilderSpec] = {}
        for version in self.registry.versions(workflow):
            for name, s in self.registry.graph(workflow, version).specs.items():
                if name not in specs or s.time_limit > specs[name].time_limit:
                    specs[name] = s
        for name, spec in specs.items():
            tname = task_name(workflow, name)
            self._builders[tname] = (workflow, name)
            if tname in self._tasks:
                continue
            self._tasks[tname] = self.app.task(
                make_body(self.coordinator, workflow, name),
                # Flower tells the truth (executors/flower.py): the task's own runtime, and a
                # committed failed attempt raised as the expected AttemptFailed.
                Request=flower.BuilderRequest,
                throws=(AttemptFailed,),
                name=tname,
                shared=False,  # bound to this executor's coordinator: never to other apps
                bind=True,
                acks_late=True,
                # A pool child lost mid-builder: its message is not redelivered (the copy would
                # find the attempt claimed); the parent re-runs the attempt under a new token
                # (on_task_failure), and its lease covers a whole worker lost.
                reject_on_worker_lost=False,
                # A hand-off to a worker that has the instance's version must never run out
                # (Celery reads retry(max_retries=None) as "the task's default").
                max_retries=None,
                ignore_result=True,
                typing=False,
                # The task's budget covers its builder and the successors it runs inline; each
                # builder is still held to its own time_limit (invoke.attempt refuses a late
                # result, and its lease expires).
                time_limit=task_budget(spec.time_limit) + self.coordinator.settings.lease_grace / 2,
                soft_time_limit=task_budget(spec.time_limit),
            )
        self._tasks[workflow] = True

    def register_reconcile(self, reconcile: Callable[[], dict[str, int]]) -> None:
        def reconcile_task() -> dict[str, int]:
            return reconcile()

        self.app.task(reconcile_task, name=RECONCILE_TASK, ignore_result=True, shared=False)

    def mine(self, sender: Any) -> bool:
        """Signals are process-wide: this executor answers only for its own app."""
        return getattr(sender, "app", None) is self.app

    def on_task_failure(self, sender: Any = None, exception: BaseException | None = None,
                        kwargs: dict[str, Any] | None = None, **_: Any) -> None:
        """In the worker's parent: a pool child that died mid-builder (SIGKILL, out of memory,
        a hard time limit) is re-run at once rather than when its lease ends."""
        name = getattr(sender, "name", "")
        target = self._builders.get(name)
        if target is None or not self.mine(sender) \
                or not isinstance(exception, (WorkerLostError, TimeLimitExceeded)):
            return
        workflow, builder = target
        kw = kwargs or {}
        # A packed message (chunks.py) died with every builder it still carried: those not
        # done are run again at once too, each under a new token.
        carried = [(builder, kw.get("attempt")), *[tuple(m) for m in kw.get("more") or []]]
        for b, attempt in carried:
            try:
                again = self.coordinator.lose(
                    workflow, str(kw["instance"]), int(kw["run"]), str(b), int(attempt),
                    str(kw.get("inc", "")), f"{type(exception).__name__}: {exception}")
            except Exception as exc:  # the lease is the fallback: never break the worker
                log.warning("polaris: could not re-run %s at once (%s); its lease will",
                            name, exc)
                continue
            if again:
                log.warning("polaris: %s of %s run %s attempt %s lost its process (%s); "
                            "running it again", b, kw.get("instance"), kw.get("run"), attempt,
                            type(exception).__name__)

    def on_unknown_task(self, sender: Any = None, message: Any = None, name: str = "",
                        **_: Any) -> None:
        """A message for a builder this worker lacks. Of a workflow it has, the builder is one
        of a newer version (a deploy in progress): hand it on, as for an unknown version. Of a
        workflow it lacks: drop it, named; a worker that has it re-sends it (reconciler)."""
        if not name.startswith(TASK_PREFIX + ".") or not self.mine(sender):
            return
        workflow = name[len(TASK_PREFIX) + 1:].rpartition(".")[0]
        hops = int(((message.headers or {}) if message is not None else {}).get("retries") or 0)
        if workflow in self.registry and message is not None and hops < HAND_OFF_HOPS:
            try:
                _, kwargs, _ = message.decode()
                self.app.send_task(name, kwargs=kwargs, countdown=1, retries=hops + 1,
                                   queue=(message.delivery_info or {}).get("routing_key"),
                                   task_id=(message.headers or {}).get("id"),
                                   headers=_trace_headers(message.headers or {}),
                                   ignore_result=True, argsrepr="()",
                                   kwargsrepr=repr(kwargs))
            except Exception as exc:  # a malformed message: rejected below
                log.warning("polaris: could not hand %s on: %s", name, exc)
            else:
                log.info("polaris: %s is not here (a newer version's builder); passed on", name)
                # This runs in the consumer itself: a short pause keeps a worker that meets its
                # own hand-offs again (no other worker has the builder yet) from spinning.
                time.sleep(0.05)
                return
        rejected = MessageRejected(
            f"{name}: this worker has no such workflow or builder; the message is dropped, and "
            "the reconciler of a worker that has it sends the builder again")
        log.error("polaris: %s: %s", type(rejected).__name__, rejected)


def _trace_headers(headers: dict[str, Any]) -> dict[str, str] | None:
    """The propagation headers of a message handed on, kept so its attempt stays in its run's
    trace."""
    kept = {k: str(v) for k, v in headers.items() if k in ("traceparent", "tracestate")}
    return kept or None


def make_body(coordinator: Coordinator, workflow: str, builder: str) -> Any:
    """The function a builder's task runs: check the message, run the attempt (and what it
    runs inline) through the coordinator, and report to Celery what really happened."""

    def body(task: Any, *args: Any, **kwargs: Any) -> str:
        try:
            if args:
                raise MessageRejected(f"positional arguments {args!r:.100}")
            instance = kwargs.pop("instance")
            run = kwargs.pop("run")
            attempt = kwargs.pop("attempt")
            version = kwargs.pop("version", 1)
            inc = kwargs.pop("inc", "")
            more = kwargs.pop("more", [])
            if kwargs:
                raise MessageRejected(f"unexpected arguments {sorted(kwargs)}")
            ints = (run, attempt, version)
            if not isinstance(instance, str) or not isinstance(inc, str) or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in ints):
                raise MessageRejected("instance and inc must be strings; run, attempt, version "
                                      "integers")
            if not isinstance(more, list) or not all(
                    isinstance(m, list) and len(m) == 2 and isinstance(m[0], str)
                    and isinstance(m[1], int) and not isinstance(m[1], bool) for m in more):
                raise MessageRejected("more must be a list of [builder, attempt] pairs")
        except (KeyError, MessageRejected) as exc:
            log.error("polaris: rejected a message for %s.%s: %s", workflow, builder, exc)
            raise MessageRejected(f"malformed message for {workflow}.{builder}: {exc}") from None
        registry = coordinator.registry
        spec = registry.graph(workflow, version).specs.get(builder) \
            if version in registry.versions(workflow) else None
        try:
            # observe: Flower's events for this task and its inline successors, and the trace
            # context its attempts continue.
            began = time.monotonic()  # when the message started, for pack_spill
            with flower.delivered(task, builder, {"instance": instance, "run": run,
                                                  "attempt": attempt, "version": version,
                                                  "inc": inc}) as report, \
                    tracing.task_context(task.request):
                coordinator.execute(workflow, instance, run, builder, attempt,
                                    queue=spec.queue if spec else None,
                                    worker=task.request.hostname, version=version,
                                    incarnation=inc)
                # The rest of a packed fan-out (chunks.py), each claimed on its own (Flower
                # shows each as a task of its own, as it does a builder run inline) until the
                # message has taken `pack_spill`: then the rest go out alone (chunks.py).
                for n, (other, token) in enumerate(more):
                    if time.monotonic() - began > coordinator.settings.pack_spill:
                        spill(task.app, registry, coordinator.settings, [
                            Dispatch(workflow, instance, run, b, t, version=version,
                                     incarnation=inc) for b, t in more[n:]])
                        break
                    coordinator.execute(workflow, instance, run, other, token,
                                        queue=spec.queue if spec else None,
                                        worker=task.request.hostname, version=version,
                                        incarnation=inc)
        except UnknownVersion:
            # Another worker runs that version (a deploy in progress): hand the message on.
            # Wait first, holding this worker's only prefetch slot, then publish at once: a
            # worker that is waiting on the queue meanwhile (one that has the version) gets
            # it. Published with a countdown instead, it came straight back here, since this
            # worker had been waiting on the queue the longest.
            log.info("polaris: %s v%s not here; passing %s run %s on", workflow, version,
                     instance, run)
            time.sleep(HAND_OFF_DELAY)
            raise task.retry(countdown=0, max_retries=HAND_OFF_HOPS) from None
        except PolarisError:
            log.exception("polaris: %s.%s for %s run %s", workflow, builder, instance, run)
            raise
        return report.result()  # raises AttemptFailed for a committed failed attempt

    # Celery compiles a signature checker from __name__, so it must be an identifier.
    body.__name__ = body.__qualname__ = "run_" + "".join(
        c if c.isalnum() else "_" for c in f"{workflow}_{builder}")
    return body
