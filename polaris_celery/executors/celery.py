"""The Celery adapter: one task per builder, sending, the worker-side reconciler. The only module
that imports celery; the decisions all live in `coordinator`.

Task messages carry ids only (instance, run, attempt; the workflow and builder are the task's
name), as JSON keyword arguments, so Flower shows `polaris.cab-ride.MatchCabbie(instance=...,
run=3, attempt=1)` and never a payload.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Generator, Sequence
from typing import Any

from celery import Celery, bootsteps
from pydantic import BaseModel

from .. import faults
from ..builder import BuilderSpec
from ..coordinator import Coordinator, task_budget
from ..errors import ConfigurationError, MessageRejected, PolarisError, StoreUnavailable
from ..instance import Dispatch, Settings, UnknownVersion
from ..invoke import AfterHook, BeforeHook
from ..registry import Registry
from ..result import RunResult
from ..workflow import Workflow

log = logging.getLogger("polaris_celery")

TASK_PREFIX = "polaris"
RECONCILE_TASK = "polaris.reconcile"

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

    def __init__(self, coordinator: Coordinator, workflow: str, instance_id: str, run: int):
        self._coordinator = coordinator
        self.workflow = workflow
        self.instance_id = instance_id
        self.run = run

    def wait(self, timeout: float = 30.0) -> RunResult:
        """The run's result once it settled; raises BuilderFailed or WaitTimeout."""
        return self._coordinator.result(self.workflow, self.instance_id, self.run, timeout)

    async def wait_async(self, timeout: float = 30.0) -> RunResult:
        """`wait` for asyncio code (FastAPI handlers ...): blocks no thread while it waits."""
        return await self._coordinator.result_async(
            self.workflow, self.instance_id, self.run, timeout
        )

    def __await__(self) -> Generator[Any, None, RunResult]:
        return self.wait_async().__await__()

    def __repr__(self) -> str:
        return f"RunHandle({self.workflow}/{self.instance_id}, run={self.run})"


class CeleryExecutor:
    """Runs workflows on Celery workers, coordinated through the registry's RedisStore.

    Create it where the app is defined, after registering workflows, so producers and workers
    (which import the same module) know the same tasks. Options are `Settings` fields.
    """

    def __init__(
        self,
        app: Celery,
        registry: Registry,
        *,
        before: BeforeHook | None = None,
        after: AfterHook | None = None,
        reconciler: bool = True,
        **settings: Any,
    ) -> None:
        self.app = app
        self.registry = registry
        self.settings = Settings(**settings)
        self.coordinator = Coordinator(registry, self._send, self.settings,
                                       before=before, after=after)
        self._tasks: dict[str, Any] = {}
        graphs = registry.graphs()
        longest = max((s.time_limit for g in graphs for s in g.specs.values()), default=0.0)
        check_and_configure(app, longest)
        for key in registry.keys():  # noqa: SIM118 - Registry.keys() is a method, not a dict's
            self._register_tasks(key)
        self._register_reconcile_task()
        if reconciler:
            app.steps["worker"].add(_reconciler_step(self))

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
        run = self.coordinator.restart(workflow, instance_id, keep_data)
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
        return self.coordinator.reconcile()

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
            if tname in self._tasks:
                continue
            self._tasks[tname] = self.app.task(
                _make_body(self.coordinator, workflow, name),
                name=tname,
                shared=False,  # bound to this executor's coordinator: never to other apps
                bind=True,
                acks_late=True,
                reject_on_worker_lost=True,
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
        coordinator = self.coordinator

        def reconcile() -> dict[str, int]:
            return coordinator.reconcile()

        self.app.task(reconcile, name=RECONCILE_TASK, ignore_result=True, shared=False)

    def _send(self, dispatches: Sequence[Dispatch]) -> None:
        for i, d in enumerate(dispatches):
            if i:
                faults.point("mid_send")
            spec = self.registry.graph(d.workflow, d.version).specs[d.builder]
            kwargs = {"instance": d.instance_id, "run": d.run, "attempt": d.token,
                      "version": d.version}
            self.app.send_task(
                task_name(d.workflow, d.builder),
                kwargs=kwargs,
                queue=spec.queue,
                countdown=d.countdown or None,
                # No result backend round trips, and Flower's argument summary without
                # Celery's saferepr.
                ignore_result=True,
                argsrepr="()",
                kwargsrepr=repr(kwargs),
            )


def _make_body(coordinator: Coordinator, workflow: str, builder: str) -> Any:
    def body(task: Any, *args: Any, **kwargs: Any) -> None:
        try:
            if args:
                raise MessageRejected(f"positional arguments {args!r:.100}")
            instance = kwargs.pop("instance")
            run = kwargs.pop("run")
            attempt = kwargs.pop("attempt")
            version = kwargs.pop("version", 1)
            if kwargs:
                raise MessageRejected(f"unexpected arguments {sorted(kwargs)}")
            ints = (run, attempt, version)
            if not isinstance(instance, str) or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in ints):
                raise MessageRejected("instance must be a string; run, attempt, version integers")
        except (KeyError, MessageRejected) as exc:
            log.error("polaris: rejected a message for %s.%s: %s", workflow, builder, exc)
            raise MessageRejected(f"malformed message for {workflow}.{builder}: {exc}") from None
        registry = coordinator.registry
        spec = registry.graph(workflow, version).specs.get(builder) \
            if version in registry.versions(workflow) else None
        try:
            coordinator.execute(workflow, instance, run, builder, attempt,
                                queue=spec.queue if spec else None,
                                worker=task.request.hostname, version=version)
        except UnknownVersion:
            # Another worker runs that version (a deploy in progress): hand the message on.
            log.info("polaris: %s v%s not here; passing %s run %s on", workflow, version,
                     instance, run)
            raise task.retry(countdown=1, max_retries=None) from None
        except PolarisError:
            log.exception("polaris: %s.%s for %s run %s", workflow, builder, instance, run)
            raise

    # Celery compiles a signature checker from __name__, so it must be an identifier.
    body.__name__ = body.__qualname__ = "run_" + "".join(
        c if c.isalnum() else "_" for c in f"{workflow}_{builder}")
    return body


def _reconciler_step(executor: CeleryExecutor) -> type[bootsteps.StartStopStep]:
    """A worker bootstep running the reconciler on a thread, so recovery needs no extra
    process: every worker does it, and many at once are safe."""

    class PolarisReconciler(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.components:Pool"}

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None

        def start(self, worker: Any) -> None:
            self._thread = threading.Thread(target=self._loop, name="polaris-reconciler",
                                            daemon=True)
            self._thread.start()

        def _loop(self) -> None:
            interval = executor.settings.reconcile_interval
            while not self._stop.wait(interval):
                try:
                    executor.reconcile()
                except StoreUnavailable as exc:
                    log.warning("polaris: reconciler pass skipped: %s", exc)
                except Exception:
                    log.exception("polaris: reconciler pass failed; retrying next period")

        def stop(self, worker: Any) -> None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=5)

    return PolarisReconciler
