"""A worker app for process tests: probes that report which process ran them, and when."""

from __future__ import annotations

import os
import socket
import time

from celery import Celery
from pydantic import BaseModel

import polaris_celery as pc


class Go(BaseModel):
    sleep: float = 0.0


class Ran(BaseModel):
    pid: int
    host: str
    start: float
    end: float


def _probe(name: str, out: type[Ran]) -> type[pc.Builder]:
    def process(self: pc.Builder, ctx: pc.BuilderContext) -> Ran:
        go = ctx.get(Go)
        start = time.time()
        time.sleep(go.sleep if go else 0)
        return out(pid=os.getpid(), host=socket.gethostname(), start=start, end=time.time())

    return type(name, (pc.Builder,), {"consumes": [Go], "produces": out, "process": process,
                                      "__module__": __name__})


R1 = type("R1", (Ran,), {"__module__": __name__})
R2 = type("R2", (Ran,), {"__module__": __name__})
R3 = type("R3", (Ran,), {"__module__": __name__})
R4 = type("R4", (Ran,), {"__module__": __name__})
PROBES = [_probe(f"Probe{i}", r) for i, r in enumerate([R1, R2, R3, R4], 1)]


class AllRan(BaseModel):
    pids: list[int]


class Gather(pc.Builder):
    consumes = [R1, R2, R3, R4]
    produces = AllRan

    def process(self, ctx: pc.BuilderContext) -> AllRan:
        return AllRan(pids=[ctx.get(r).pid for r in (R1, R2, R3, R4)])  # type: ignore[union-attr]


class FanOut(pc.Workflow):
    builders = [*PROBES, Gather]
    target = AllRan


def build(redis_url: str, broker_url: str, queue: str = "celery") -> pc.CeleryExecutor:
    """An app and executor for these workflows; producers in tests build their own."""
    app = Celery("probe", broker=broker_url, set_as_current=False)
    app.conf.worker_hijack_root_logger = False
    app.conf.task_default_queue = queue
    registry = pc.Registry(pc.RedisStore(redis_url))
    registry.register("fan-out", FanOut)
    return pc.CeleryExecutor(app, registry, reconcile_interval=0.5, dispatch_timeout=5)


if "POLARIS_REDIS_URL" in os.environ:  # imported by `celery -A tests.apps.probe_app worker`
    executor = build(os.environ["POLARIS_REDIS_URL"],
                     os.environ.get("POLARIS_BROKER_URL") or os.environ["POLARIS_REDIS_URL"],
                     os.environ.get("POLARIS_QUEUE", "celery"))
    app = executor.app
