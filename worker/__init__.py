"""The Celery app users start with `celery -A worker worker`.

Configuration comes from the environment:
  POLARIS_REDIS_URL   the store (default redis://127.0.0.1:6379/0)
  POLARIS_BROKER_URL  the broker: redis://... or amqp://... (default: the store's URL)
  POLARIS_INLINE      1/0: run a lone successor in the same worker (default 1)
  POLARIS_RECONCILE_INTERVAL, POLARIS_DISPATCH_TIMEOUT, POLARIS_LEASE_GRACE (seconds)

Producers import the same module (`from worker import executor`) so both sides know the same
workflows and tasks.
"""

from __future__ import annotations

import os

from celery import Celery

import polaris_celery as pc

from .cab_ride import CabRide

REDIS_URL = os.environ.get("POLARIS_REDIS_URL", "redis://127.0.0.1:6379/0")
BROKER_URL = os.environ.get("POLARIS_BROKER_URL") or REDIS_URL

app = Celery("polaris_worker", broker=BROKER_URL)
app.conf.worker_hijack_root_logger = False

registry = pc.Registry(pc.RedisStore(REDIS_URL))
registry.register("cab-ride", CabRide, strict=True)  # a suspect graph refuses to start

executor = pc.CeleryExecutor(
    app,
    registry,
    inline=os.environ.get("POLARIS_INLINE", "1") != "0",
    reconcile_interval=float(os.environ.get("POLARIS_RECONCILE_INTERVAL", "5")),
    dispatch_timeout=float(os.environ.get("POLARIS_DISPATCH_TIMEOUT", "30")),
    lease_grace=float(os.environ.get("POLARIS_LEASE_GRACE", "10")),
)

__all__ = ["app", "executor", "registry"]
