"""The worker bootsteps a `CeleryExecutor` adds: the reconciler, and the metrics endpoint.

Both run inside every worker, so neither recovery nor monitoring depends on a process that
users may forget to start.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import bootsteps

from .. import metrics
from ..errors import StoreUnavailable

if TYPE_CHECKING:
    from .celery import CeleryExecutor

log = logging.getLogger("polaris_celery")


def reconciler_step(executor: CeleryExecutor) -> type[bootsteps.StartStopStep]:
    """A worker bootstep running the reconciler on a thread, so recovery needs no extra
    process: every worker does it, and many at once are safe."""

    class PolarisReconciler(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.components:Pool"}

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None

        def start(self, worker: Any) -> None:
            executor.lost_attempts.worker = worker  # observe: Flower hears of lost attempts
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


def metrics_step(executor: CeleryExecutor) -> type[bootsteps.StartStopStep]:
    """A worker bootstep serving Prometheus metrics on `executor.metrics_port`.

    Its `__init__` runs in the worker's parent before the pool forks (Celery builds every step
    before starting any), so the multiprocess directory is chosen before any child counts."""

    class PolarisMetrics(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.components:Pool"}

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            self._server: Any = None
            path, self._ours = metrics.prepare()
            self._path = path
            executor.metrics = metrics.metrics()
            executor.observers.add(executor.metrics)
            log.info("polaris: metrics in %s, served on %s:%s", path, executor.metrics_addr,
                     executor.metrics_port)

        def start(self, worker: Any) -> None:
            self._server = metrics.serve(executor.metrics_port or 0, executor.metrics_addr,
                                         executor.coordinator.store)

        def stop(self, worker: Any) -> None:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
            if self._ours:
                metrics.cleanup(self._path)

    return PolarisMetrics
