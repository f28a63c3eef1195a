"""Two code versions of one workflow, for deploy tests: POLARIS_VERSIONS=1 is the old code,
POLARIS_VERSIONS=1,2 the new code that still carries the old version for instances in flight."""

from __future__ import annotations

import os

from celery import Celery
from pydantic import BaseModel

import polaris_celery as pc


class Order(BaseModel):
    amount: float


class Confirm(BaseModel):
    ok: bool = True


class Quoted(BaseModel):
    price: float
    version: int


class Done(BaseModel):
    price: float
    version: int
    worker_versions: str


def _builders(version: int, markup: float) -> type[pc.Workflow]:
    class Quote(pc.Builder):
        consumes = [Order]
        produces = Quoted

        def process(self, ctx: pc.BuilderContext) -> Quoted:
            order = ctx.get(Order)
            assert order is not None
            return Quoted(price=round(order.amount * markup, 2), version=version)

    class Finish(pc.Builder):
        consumes = [Quoted, Confirm]
        produces = Done

        def process(self, ctx: pc.BuilderContext) -> Done:
            q = ctx.get(Quoted)
            assert q is not None
            return Done(price=q.price, version=version,
                        worker_versions=os.environ.get("POLARIS_VERSIONS", "?"))

    builders: list[type[pc.Builder]] = [Quote, Finish]
    if version == 2:
        class Audit(pc.Builder):  # a builder only the new code has
            consumes = [Quoted]
            produces = Confirm

            def process(self, ctx: pc.BuilderContext) -> None:
                return None  # "not now": audits never confirm by themselves

        builders.append(Audit)
    return type(f"Shop{version}", (pc.Workflow,), {"builders": builders, "target": Done})


MARKUP = {1: 1.0, 2: 1.2}


def build(redis_url: str, broker_url: str, versions: list[int],
          dispatch_timeout: float = 3) -> pc.CeleryExecutor:
    app = Celery("versioned", broker=broker_url, set_as_current=False)
    app.conf.worker_hijack_root_logger = False
    registry = pc.Registry(pc.RedisStore(redis_url))
    for v in versions:
        registry.register("shop", _builders(v, MARKUP[v]), version=v)
    return pc.CeleryExecutor(app, registry, reconcile_interval=0.5,
                             dispatch_timeout=dispatch_timeout)


if "POLARIS_REDIS_URL" in os.environ:
    executor = build(os.environ["POLARIS_REDIS_URL"], os.environ["POLARIS_BROKER_URL"],
                     [int(v) for v in os.environ["POLARIS_VERSIONS"].split(",")],
                     float(os.environ.get("POLARIS_DISPATCH_TIMEOUT", "3")))
    app = executor.app
