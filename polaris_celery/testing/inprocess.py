"""One Celery app, one `CeleryExecutor` and one in-process worker on threads, for a test session.

Celery keeps some worker state per process (`celery.worker.state`), so two embedded workers in
one process do not get along: a session has one, and the workflows of every registry a test
names are adopted into its executor (registered on the test Redis, the worker's task table
refreshed). The worker runs on threads, so builders share the test's memory: a test can count
their side effects in a plain dict.

The worker is Celery's own embedded worker (`celery.contrib.testing.worker.start_worker`), the
part of Celery's test tooling that needs no Docker engine (pytest-celery's `celery_setup` does).
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from celery import Celery, signals
from celery.contrib.testing.worker import start_worker

from ..errors import ConfigurationError
from ..executors.celery import CeleryExecutor
from ..registry import Registry
from ..stores.redis import RedisStore
from .chaos import AttemptKilled

#: Executor settings for tests: a lost message or attempt is recovered in seconds, not minutes.
TEST_SETTINGS: dict[str, Any] = {"reconcile_interval": 0.5, "dispatch_timeout": 5.0,
                                 "lease_grace": 2.0}


class InProcessWorker:
    """The session's app, executor (on a registry stored at `store_url`) and worker.

    settings: `CeleryExecutor` settings over TEST_SETTINGS. queue: the app's default queue, of
    this session's own, so sessions sharing one broker never take each other's messages.
    """

    def __init__(self, store_url: str, broker_url: str, *, concurrency: int = 4,
                 settings: dict[str, Any] | None = None, queue: str | None = None) -> None:
        self.store_url = store_url
        self.broker_url = broker_url
        self.concurrency = concurrency
        self.app = Celery("polaris-tests", broker=broker_url, set_as_current=False)
        self.app.conf.worker_hijack_root_logger = False
        self.app.conf.task_default_queue = queue or f"polaris-test-{uuid.uuid4().hex[:8]}"
        self.store = RedisStore(store_url)
        self.registry = Registry(self.store)
        self.executor = CeleryExecutor(self.app, self.registry,
                                       **{**TEST_SETTINGS, **(settings or {})})
        self._stack = contextlib.ExitStack()
        self._worker: Any = None
        signals.task_failure.connect(self._on_task_failure, weak=False)

    def adopt(self, registry: Registry) -> CeleryExecutor:
        """Register every workflow version of `registry` here (once), so that the worker runs
        it; start the worker on first use. A key already holding another workflow class is
        refused: give the two workflows different keys."""
        added = False
        for key in registry.keys():  # noqa: SIM118 - a method, not a dict's
            for version in registry.versions(key):
                workflow = registry.graph(key, version).workflow
                if key in self.registry and version in self.registry.versions(key):
                    mine = self.registry.graph(key, version).workflow
                    if mine is not workflow:
                        raise ConfigurationError(
                            f"workflow key {key!r} v{version} is registered in this test session "
                            f"as {mine.__qualname__} and as {workflow.__qualname__}; register "
                            "different workflows under different keys")
                    continue
                self.executor.register(key, workflow, version)
                added = True
        if self._worker is None:
            self._start()
        elif added:
            consumer = self._worker.consumer
            consumer.update_strategies()  # the new builders' tasks
            for queue in self._queues():
                consumer.add_task_queue(queue)  # a no-op for a queue it consumes already
        return self.executor

    def _queues(self) -> list[str]:
        named = {s.queue for g in self.registry.graphs() for s in g.specs.values() if s.queue}
        return [self.app.conf.task_default_queue, *sorted(named)]

    def _start(self) -> None:
        self._worker = self._stack.enter_context(start_worker(
            self.app, pool="threads", concurrency=self.concurrency, perform_ping_check=False,
            shutdown_timeout=15, queues=self._queues()))

    def _on_task_failure(self, sender: Any = None, exception: BaseException | None = None,
                         **_: Any) -> None:
        """Chaos killed an attempt before its commit: give it up as lost, as the worker's
        parent does for a pool child that died, so it runs again at once."""
        if not isinstance(exception, AttemptKilled) or getattr(sender, "app", None) is not \
                self.app:
            return
        a = exception.attempt
        self.executor.coordinator.lose(a.workflow, a.instance_id, a.run, a.builder, a.token,
                                       a.incarnation, str(exception))

    def close(self) -> None:
        signals.task_failure.disconnect(self._on_task_failure)
        try:
            self._stack.close()
        finally:
            self.store.close()
