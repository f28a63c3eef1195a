"""The two Celery apps the distributed benchmarks compare, built the same way in the worker
processes (bench/app.py) and in the producer (the bench process).

- polaris: broker and store on the private Redis, no result backend (builders report through
  the store). Every workflow is registered twice: under its key with inline on (the default)
  and under key + "-noinline" on a second executor with inline off, so one set of workers
  serves both variants.
- canvas: the same broker server (another db), a result backend (the same server, another db)
  so the producer can wait, no-op tasks, and the delivery settings polaris sets (acks_late,
  reject_on_worker_lost, prefetch 1, JSON), so both sides pay for the same guarantees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

import polaris_celery as pc
from polaris_celery.executors.celery import SAFE_SETTINGS

from .workflows import DISTRIBUTED, NOINLINE, SLEEP_SECONDS


@dataclass
class PolarisApp:
    app: Celery
    store: Any  # pc.RedisStore
    inline: Any  # pc.CeleryExecutor, inline on
    noinline: Any  # pc.CeleryExecutor, inline off

    def executor(self, key: str) -> Any:
        return self.noinline if key.endswith(NOINLINE) else self.inline


def polaris_app(broker_url: str, store_url: str, *, name: str = "bench-polaris",
                reconcile_interval: float = 5.0, **store_kwargs: Any) -> PolarisApp:
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.worker_hijack_root_logger = False
    store = pc.RedisStore(store_url, **store_kwargs)
    on = DISTRIBUTED.register(pc.Registry(store))
    off = DISTRIBUTED.register(pc.Registry(store), NOINLINE)
    ex_on = pc.CeleryExecutor(app, on, inline=True, reconcile_interval=reconcile_interval)
    ex_off = pc.CeleryExecutor(app, off, inline=False, reconciler=False)
    return PolarisApp(app, store, ex_on, ex_off)


def canvas_app(broker_url: str, backend_url: str, *, name: str = "bench-canvas") -> Celery:
    app = Celery(name, broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.worker_hijack_root_logger = False
    app.conf.update(SAFE_SETTINGS)
    app.conf.task_ignore_result = False  # canvas waits through the result backend

    @app.task(name="bench.noop", acks_late=True, reject_on_worker_lost=True)
    def noop(x: Any = None) -> Any:
        return x

    @app.task(name="bench.sleep", acks_late=True, reject_on_worker_lost=True)
    def sleep(x: Any = None) -> Any:
        time.sleep(SLEEP_SECONDS)
        return x

    @app.task(name="bench.join", acks_late=True, reject_on_worker_lost=True)
    def join(results: list[Any]) -> int:
        return len(results)

    return app
