"""The Celery adapter: one task per builder, sending, the worker-side reconciler. The only module
that imports celery; the decisions all live in `coordinator`.

Task messages carry ids only (instance, run, attempt; the workflow and builder are the task's
name), as JSON keyword arguments, so Flower shows `polaris.cab-ride.MatchCabbie(instance=...,
run=3, attempt=1)` and never a payload. A message of a wide fan-out carries the other builders
it packs as `more=[[builder, attempt], ...]` (chunks.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Generator, Sequence
from typing import Any

from celery import Celery, signals
from celery.exceptions import TimeLimitExceeded, WorkerLostError
from pydantic import BaseModel

from .. import chunks, faults, metrics, tracing
from ..builder import BuilderSpec
from ..coordinator import Coordinator, RunRef, task_budget
from ..errors import (
    AttemptFailed,
    ConfigurationError,
    MessageRejected,
    PolarisError,
)
from ..hooks import Hook, Hooks
from ..instance import Dispatch, Settings, UnknownVersion
from ..invoke import AfterHook, BeforeHook
from ..observe import Observers
from ..registry import Registry
from ..result import RunResult
from ..workflow import Workflow
from . import bootsteps, flower

log = logging.getLogger("polaris_celery")

TASK_PREFIX = "polaris"
RECONCILE_TASK = "polaris.reconcile"
#: How often a message for a builder or version this worker lacks is handed on (about once a
#: second) before it is dropped; the reconciler re-sends a dropped one.
HAND_OFF_HOPS = 600
HAND_OFF_DELAY = 1.0

#: The Celery settings the library sets, and why (the README's configuration table lists them).
SAFE_SETTINGS: dict[str, Any] = {
    # A prefork child killed mid-builder must not ack its message: redeliver it instead.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    # One message at a time per process, so a slow builder does not hold others hostage.
    "worker_prefetch_multiplier": 1,
    # A lost broker connection cannot ack running late-ack tasks, and the broker redelivers
    # them. Celery can cancel the running copies; here they are better left to finish: the
    # redelivered copy finds the attempt claimed and is dropped, and the running one commits
    # under its token. Cancelling instead turns a broker restart into failed attempts (see
    # tests/faults: test_broker_restart_keeps_running_builders).
    "worker_cancel_long_running_tasks_on_connection_loss": False,
    "task_serializer": "json",
    "accept_content": ["json"],
    "broker_connection_retry_on_startup": True,
    # Builders report through Redis, never through a result backend.
    "task_ignore_result": True,
}


def task_name(workflow: str, builder: str) -> str:
    return f"{TASK_PREFIX}.{workflow}.{builder}"


def check_and_configure(app: Celery, max_time_limit: float) -> None:
    """Refuse an app that accepts pickle; set the settings that make delivery at-least-once."""
    conf = app.conf
    for setting in ("accept_content", "task_accept_content", "result_accept_content"):
        value = conf.get(setting) or []
        if any("pickle" in str(v) for v in value):
            raise ConfigurationError(
                f"the Celery app accepts pickle ({setting}={list(value)!r}); polaris-celery "
                "messages are JSON and an app that unpickles messages can be made to run code"
            )
    for setting in ("task_serializer", "result_serializer", "event_serializer"):
        if "pickle" in str(conf.get(setting) or ""):
            raise ConfigurationError(f"the Celery app uses {setting}={conf.get(setting)!r}; "
                                     "polaris-celery requires JSON")
    conf.update(SAFE_SETTINGS)
    options = dict(conf.broker_transport_options or {})
    visibility = float(options.get("visibility_timeout", 3600))
    if visibility <= task_budget(max_time_limit) * 2:
        raise ConfigurationError(
            f"broker visibility_timeout ({visibility}s) must exceed four times the longest "
            f"builder time_limit ({max_time_limit}s: a task may run inline successors for as "
            "long again), or running builders are delivered twice"
        )
    options.setdefault("visibility_timeout", visibility)
    conf.broker_transport_options = options


class RunHandle:
    """A submitted run. `wait()` blocks on Redis (no polling, no result backend)."""

    def __init__(self, coordinator: Coordinator, workflow: str, instance_id: str, ref: RunRef):
        self._coordinator = coordinator
        self.workflow = workflow
        self.instance_id = instance_id
        self.ref = ref

    @property
    def run(self) -> int:
        return self.ref.run

    @property
    def incarnation(self) -> str:
        """Which life of the instance the run belongs to (a new one after a delete)."""
        return self.ref.incarnation

    def wait(self, timeout: float = 30.0) -> RunResult:
        """The run's result once it settled; raises BuilderFailed or WaitTimeout."""
        return self._coordinator.result(self.workflow, self.instance_id, self.ref, timeout)

    async def wait_async(self, timeout: float = 30.0) -> RunResult:
        """`wait` for asyncio code (FastAPI handlers ...): blocks no thread while it waits."""
        return await self._coordinator.result_async(
            self.workflow, self.instance_id, self.ref, timeout
        )

    def __await__(self) -> Generator[Any, None, RunResult]:
        return self.wait_async().__await__()

    def __repr__(self) -> str:
        return f"RunHandle({self.workflow}/{self.instance_id}, run={self.run})"


class CeleryExecutor:
    """Runs workflows on Celery workers, coordinated through the registry's RedisStore.

    Create it where the app is defined, after registering workflows, so producers and workers
    (which import the same module) know the same tasks. Options are `Settings` fields.

    Hooks are the local Executor's: before, after and on_error run in the worker that runs the
    attempt; before_run in the process that submits the delta (once it is stored, before its
    builders are sent); after_run in the process whose commit (or reconciler pass, or cancel)
    settled the run. A raising hook is logged and ignored unless `strict_hooks=True`.

    metrics_port: serve Prometheus metrics on this port from every worker (default: the
    POLARIS_METRICS_PORT environment variable; unset, none are served), bound to
    `metrics_addr` (POLARIS_METRICS_ADDR, default 0.0.0.0). Needs the `metrics` extra.
    """

    def __init__(
        self,
        app: Celery,
        registry: Registry,
        *,
        before: BeforeHook | None = None,
        after: AfterHook | None = None,
        on_error: Hook | None = None,
        before_run: Hook | None = None,
        after_run: Hook | None = None,
        strict_hooks: bool = False,
        reconciler: bool = True,
        metrics_port: int | None = None,
        metrics_addr: str | None = None,
        **settings: Any,
    ) -> None:
        self.app = app
        self.registry = registry
        self.settings = Settings(**settings)
        hooks = Hooks(before=before, after=after, on_error=on_error, before_run=before_run,
                      after_run=after_run, strict=strict_hooks)
        self.coordinator = Coordinator(registry, self._send, self.settings, hooks=hooks)
        # Observability: Flower's task events and OpenTelemetry spans (no-ops when off), and
        # Prometheus metrics once a worker's bootstep sets them up (bootsteps.metrics_step).
        self.observers = Observers([flower.task_events, tracing.observer()])
        self.coordinator.observer = self.observers
        self.metrics: metrics.Metrics | None = None  # in a worker serving them
        self.metrics_port, self.metrics_addr = metrics.address(metrics_port, metrics_addr)
        self._tasks: dict[str, Any] = {}
        self._builders: dict[str, tuple[str, str]] = {}  # task name -> (workflow, builder)
        graphs = registry.graphs()
        longest = max((s.time_limit for g in graphs for s in g.specs.values()), default=0.0)
        check_and_configure(app, longest)
        for key in registry.keys():  # noqa: SIM118 - Registry.keys() is a method, not a dict's
            self._register_tasks(key)
        self._register_reconcile_task()
        # In the worker's parent process: a pool child that died mid-builder (SIGKILL, out of
        # memory, a hard time limit) is re-run at once rather than when its lease ends; and a
        # message for a workflow this worker does not have is named for what it is.
        signals.task_failure.connect(self._on_task_failure, weak=False)
        signals.task_unknown.connect(self._on_unknown_task, weak=False)
        if reconciler:
            app.steps["worker"].add(bootsteps.reconciler_step(self))
        if self.metrics_port is not None:
            app.steps["worker"].add(bootsteps.metrics_step(self))

    # -- producers ----------------------------------------------------------------------------

    def submit_delta(
        self,
        workflow: str,
        instance_id: str,
        *data: BaseModel,
        delta_id: str | None = None,
        deadline: float | None = None,
    ) -> RunHandle:
        """Store `data` as a new delta of the instance and dispatch what it makes runnable.

        delta_id: an idempotency key; the same key applies once however often it is sent.
        deadline: seconds from now after which nothing more runs and the instance times out.
        """
        self._ensure_tasks(workflow)
        with tracing.run_span(workflow, instance_id) as traced:  # observe: the run's span
            run = self.coordinator.submit(workflow, instance_id, data, delta_id, deadline)
            traced(run.run)
        return RunHandle(self.coordinator, workflow, instance_id, run)

    async def submit_delta_async(
        self,
        workflow: str,
        instance_id: str,
        *data: BaseModel,
        delta_id: str | None = None,
        deadline: float | None = None,
    ) -> RunHandle:
        """`submit_delta` for asyncio code. Storing and sending take a few milliseconds on a
        worker thread; `await handle` (or `handle.wait_async()`) then waits without one."""
        return await asyncio.to_thread(
            functools.partial(self.submit_delta, workflow, instance_id, *data,
                              delta_id=delta_id, deadline=deadline)
        )

    def cancel(self, workflow: str, instance_id: str) -> bool:
        """Cancel an instance: nothing more runs; builders still running may finish and their
        data is kept apart as late. False if it was not open."""
        return self.coordinator.cancel(workflow, instance_id)

    def restart(
        self, workflow: str, instance_id: str, keep_data: bool = True
    ) -> RunHandle | None:
        """Run an instance again from the beginning on the newest version, re-submitting its
        input data (keep_data=True) or dropping all its data and waiting for new deltas."""
        self._ensure_tasks(workflow)
        with tracing.run_span(workflow, instance_id) as traced:  # observe: the run's span
            run = self.coordinator.restart(workflow, instance_id, keep_data)
            if run is not None:
                traced(run.run)
        return None if run is None else RunHandle(self.coordinator, workflow, instance_id, run)

    def delete(self, workflow: str, instance_id: str) -> None:
        """Remove an instance and all it holds."""
        self.coordinator.delete(workflow, instance_id)

    def retire(self, workflow: str, version: int) -> None:
        """Forget a workflow version once no live instance runs on it (else VersionInUse)."""
        self.coordinator.retire(workflow, version)

    def register(self, key: str, workflow: type[Workflow], version: int = 1) -> None:
        """Register a workflow (or a new version of one) after the executor was created."""
        graph = self.registry.register(key, workflow, version)
        check_and_configure(self.app, max(s.time_limit for s in graph.specs.values()))
        self._register_tasks(key)

    def reconcile(self) -> dict[str, int]:
        """One reconciler pass (workers run this every `reconcile_interval` by themselves)."""
        counts = self.coordinator.reconcile()
        if self.metrics is not None:
            self.metrics.reconciled(counts)
        return counts

    # -- tasks --------------------------------------------------------------------------------

    def _ensure_tasks(self, workflow: str) -> None:
        if workflow not in self._tasks:
            self.registry.graph(workflow)  # raises UnknownWorkflow
            self._register_tasks(workflow)

    def _register_tasks(self, workflow: str) -> None:
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
                _make_body(self.coordinator, workflow, name),
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
                # (_on_task_failure), and its lease covers a whole worker lost.
                reject_on_worker_lost=False,
                # A hand-off to a worker that has the instance's version must never run out
                # (Celery reads retry(max_retries=None) as "the task's default").
                max_retries=None,
                ignore_result=True,
                typing=False,
                # The task's budget covers its builder and the successors it runs inline; each
                # builder is still held to its own time_limit (invoke.attempt refuses a late
                # result, and its lease expires).
                time_limit=task_budget(spec.time_limit) + self.settings.lease_grace / 2,
                soft_time_limit=task_budget(spec.time_limit),
            )
        self._tasks[workflow] = True

    def _register_reconcile_task(self) -> None:
        executor = self

        def reconcile() -> dict[str, int]:
            return executor.reconcile()

        self.app.task(reconcile, name=RECONCILE_TASK, ignore_result=True, shared=False)

    def _on_task_failure(self, sender: Any = None, exception: BaseException | None = None,
                         kwargs: dict[str, Any] | None = None, **_: Any) -> None:
        name = getattr(sender, "name", "")
        target = self._builders.get(name)
        if target is None or not self._mine(sender) \
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

    def _mine(self, sender: Any) -> bool:
        """Signals are process-wide: this executor answers only for its own app."""
        return getattr(sender, "app", None) is self.app

    def _on_unknown_task(self, sender: Any = None, message: Any = None, name: str = "",
                         **_: Any) -> None:
        """A message for a builder this worker lacks. Of a workflow it has, the builder is one
        of a newer version (a deploy in progress): hand it on, as for an unknown version. Of a
        workflow it lacks: drop it, named; a worker that has it re-sends it (reconciler)."""
        if not name.startswith(TASK_PREFIX + ".") or not self._mine(sender):
            return
        workflow = name[len(TASK_PREFIX) + 1:].rpartition(".")[0]
        hops = int(((message.headers or {}) if message is not None else {}).get("retries") or 0)
        if workflow in self.registry and message is not None and hops < HAND_OFF_HOPS:
            try:
                _, kwargs, _ = message.decode()
                self.app.send_task(name, kwargs=kwargs, countdown=1, retries=hops + 1,
                                   queue=(message.delivery_info or {}).get("routing_key"),
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

    def _send(self, dispatches: Sequence[Dispatch]) -> None:
        def queue(d: Dispatch) -> str | None:
            return self.registry.graph(d.workflow, d.version).specs[d.builder].queue

        # A wide fan-out packs several builders into a message (chunks.py says when).
        for i, message in enumerate(chunks.pack(dispatches, self.settings.dispatch_chunk, queue)):
            if i:
                faults.point("mid_send")
            d, more = message[0], message[1:]
            graph = self.registry.graph(d.workflow, d.version)
            kwargs: dict[str, Any] = {"instance": d.instance_id, "run": d.run,
                                      "attempt": d.token, "version": d.version,
                                      "inc": d.incarnation}
            limits: dict[str, float] = {}
            if more:
                kwargs["more"] = [[m.builder, m.token] for m in more]
                # The message's time limits cover every builder it carries.
                budget = sum(task_budget(graph.specs[m.builder].time_limit) for m in message)
                limits = {"soft_time_limit": budget,
                          "time_limit": budget + self.settings.lease_grace / 2}
            for _ in range(faults.copies("send", d)):  # >1 only in chaos tests
                self.app.send_task(
                    task_name(d.workflow, d.builder),
                    kwargs=kwargs,
                    queue=queue(d),
                    countdown=d.countdown or None,
                    # No result backend round trips, and Flower's argument summary without
                    # Celery's saferepr.
                    ignore_result=True,
                    argsrepr="()",
                    kwargsrepr=repr(kwargs),
                    headers=tracing.headers(),  # observe: the run's trace context
                    **limits,
                )


def _make_body(coordinator: Coordinator, workflow: str, builder: str) -> Any:
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
            with flower.delivered(task, builder, {"instance": instance, "run": run,
                                                  "attempt": attempt, "version": version,
                                                  "inc": inc}) as report, \
                    tracing.task_context(task.request):
                coordinator.execute(workflow, instance, run, builder, attempt,
                                    queue=spec.queue if spec else None,
                                    worker=task.request.hostname, version=version,
                                    incarnation=inc)
                # The rest of a packed fan-out (chunks.py), each claimed on its own.
                for other, token in more:
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
        return report.result()  # raises AttemptFailed for a failed attempt, once committed

    # Celery compiles a signature checker from __name__, so it must be an identifier.
    body.__name__ = body.__qualname__ = "run_" + "".join(
        c if c.isalnum() else "_" for c in f"{workflow}_{builder}")
    return body
