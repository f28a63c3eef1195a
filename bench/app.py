"""The module the benchmark's Celery worker processes import (`celery -A bench.app worker`).

Configured from the environment the bench process sets when it starts them:
  BENCH_ROLE         polaris | canvas
  BENCH_BROKER_URL   the broker
  BENCH_STORE_URL    polaris: the RedisStore
  BENCH_BACKEND_URL  canvas: the result backend
"""

from __future__ import annotations

import os

from .apps import canvas_app, polaris_app

ROLE = os.environ.get("BENCH_ROLE", "polaris")
BROKER_URL = os.environ["BENCH_BROKER_URL"]

if ROLE == "canvas":
    app = canvas_app(BROKER_URL, os.environ["BENCH_BACKEND_URL"])
elif ROLE == "polaris":
    polaris = polaris_app(BROKER_URL, os.environ["BENCH_STORE_URL"])
    app = polaris.app
else:
    raise SystemExit(f"BENCH_ROLE must be polaris or canvas, not {ROLE!r}")
