"""The Celery executor: the facade users hold (`CeleryExecutor`, `RunHandle`) and the Celery
settings it insists on. The only modules that import celery are this one and its plumbing,
`executors/tasks.py` (the builder tasks, their messages, the worker signals) and the worker's
bootsteps and Flower events; the decisions all live in `coordinator`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Generator, Iterable, Sequence
from typing import Any

from celery import Celery, signals
from pydantic import BaseModel

from .. import metrics, tracing
from ..coordinator import Coordinator, RunRef, task_budget
from ..errors import ConfigurationError
from ..hooks import Hook, Hooks
from ..instance import Dispatch, Settings
from ..invoke import AfterHook, BeforeHook
from ..observe import Observers
from ..query import Query
from ..registry import Registry
from ..result import RunResult
from ..views import InstancePage, InstanceView
from ..workflow import Workflow
from . import bootsteps, flower, tasks
from .tasks import HAND_OFF_DELAY, HAND_OFF_HOPS, RECONCILE_TASK, TASK_PREFIX, task_name

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
        self.lost_attempts = flower.LostAttempts(app, task_name)  # set up by the reconciler
        self.observers = Observers([flower.task_events, tracing.observer(), self.lost_attempts])
        self.coordinator.observer = self.observers
        self.query = Query(registry)
        self.metrics: metrics.Metrics | None = None  # in a worker serving them
        self.metrics_port, self.metrics_addr = metrics.address(metrics_port, metrics_addr)
        self.tasks = tasks.BuilderTasks(app, self.coordinator)
        graphs = registry.graphs()
        longest = max((s.time_limit for g in graphs for s in g.specs.values()), default=0.0)
        check_and_configure(app, longest)
        for key in registry.keys():  # noqa: SIM118 - Registry.keys() is a method, not a dict's
            self.tasks.register(key)
        self.tasks.register_reconcile(self.reconcile)
        # In the worker's parent process: a pool child that died mid-builder (SIGKILL, out of
        # memory, a hard time limit) is re-run at once rather than when its lease ends; and a
        # message for a workflow this worker does not have is named for what it is.
        signals.task_failure.connect(self.tasks.on_task_failure, weak=False)
        signals.task_unknown.connect(self.tasks.on_unknown_task, weak=False)
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
        with tracing.run_span(workflow, instance_id):  # observe: the run's span starts
            run = self.coordinator.submit(workflow, instance_id, data, delta_id, deadline)
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
        with tracing.run_span(workflow, instance_id):  # observe: the run's span starts
            run = self.coordinator.restart(workflow, instance_id, keep_data)
        return None if run is None else RunHandle(self.coordinator, workflow, instance_id, run)

    def delete(self, workflow: str, instance_id: str) -> None:
        """Remove an instance and all it holds."""
        self.coordinator.delete(workflow, instance_id)

    def retire(self, workflow: str, version: int) -> None:
        """Forget a workflow version once no live instance runs on it (else VersionInUse)."""
        self.coordinator.retire(workflow, version)

    # -- reading instances ----------------------------------------------------------------------

    def instance(self, workflow: str, instance_id: str) -> InstanceView:
        """The instance as it is now: status, data (values, who wrote each and when), runs,
        builders in flight, errors. Raises UnknownInstance if it does not exist."""
        return self.query.instance(workflow, instance_id)

    def instances(self, workflow: str, *, status: str | Iterable[str] | None = None,
                  limit: int = 50, cursor: str | None = None, newest_first: bool = True
                  ) -> InstancePage:
        """One page of the workflow's instances (of `status`, one or several of
        pc.STATUSES), newest change first; pass the page's `cursor` back for the next."""
        return self.query.instances(workflow, status=status, limit=limit, cursor=cursor,
                                    newest_first=newest_first)

    def wait_instance(self, workflow: str, instance_id: str, *,
                      datum: type[BaseModel] | str | None = None, timeout: float = 30.0
                      ) -> InstanceView:
        """Block until the instance completed (or was cancelled or timed out) with nothing in
        flight, or, with `datum`, until it holds that datum. Works from any process; raises
        WaitTimeout after `timeout` seconds."""
        return self.query.wait_instance(workflow, instance_id, datum=datum, timeout=timeout)

    def register(self, key: str, workflow: type[Workflow], version: int = 1) -> None:
        """Register a workflow (or a new version of one) after the executor was created."""
        graph = self.registry.register(key, workflow, version)
        check_and_configure(self.app, max(s.time_limit for s in graph.specs.values()))
        self.tasks.register(key)

    def reconcile(self) -> dict[str, int]:
        """One reconciler pass (workers run this every `reconcile_interval` by themselves)."""
        return self.coordinator.reconcile()

    # -- tasks ------------------------------------------------------------------------------

    def _ensure_tasks(self, workflow: str) -> None:
        self.tasks.ensure(workflow)

    def _send(self, dispatches: Sequence[Dispatch]) -> None:
        tasks.send(self.app, self.registry, self.settings, dispatches)


__all__ = ["HAND_OFF_DELAY", "HAND_OFF_HOPS", "RECONCILE_TASK", "SAFE_SETTINGS", "TASK_PREFIX",
           "CeleryExecutor", "RunHandle", "check_and_configure", "task_name"]
