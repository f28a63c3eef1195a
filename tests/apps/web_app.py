"""The worker app of tests/test_web.py: an order whose charge waits for the test's go-ahead.

`Charge` blocks until the test pushes to the Redis list `web-gate:<instance id>` (or 60 s pass),
so a test can open the instance page while a run is in flight and then watch the builder turn
done. `Reserve` fails on a negative quantity, which gives the page an error to show.
"""

from __future__ import annotations

import os

import redis
from celery import Celery
from pydantic import BaseModel, Field

import polaris_celery as pc

GATE = "web-gate:{}"


class Order(BaseModel):
    item: str = Field(min_length=1)
    qty: int = 1
    express: bool = False


class Address(BaseModel):
    lines: list[str]
    country: str = "FR"


class Reserved(BaseModel):
    item: str
    qty: int


class Charged(BaseModel):
    amount: float


class Shipped(BaseModel):
    tracking: str


class Reserve(pc.Builder):
    consumes = [Order]
    produces = Reserved

    def process(self, ctx: pc.BuilderContext) -> Reserved:
        order = ctx.need(Order)
        if order.qty < 0:
            raise ValueError(f"cannot reserve {order.qty} of {order.item}")
        return Reserved(item=order.item, qty=order.qty)


class Charge(pc.Builder):
    consumes = [Reserved]
    produces = Charged
    time_limit = 90

    def process(self, ctx: pc.BuilderContext) -> Charged:
        client = redis.Redis.from_url(os.environ["POLARIS_REDIS_URL"])
        try:
            client.blpop([GATE.format(ctx.instance_id)], timeout=60)
        finally:
            client.close()
        return Charged(amount=9.5 * ctx.need(Reserved).qty)


class Ship(pc.Builder):
    consumes = [Charged]
    optionals = [Address]
    produces = Shipped

    def process(self, ctx: pc.BuilderContext) -> Shipped:
        return Shipped(tracking=f"t-{ctx.instance_id}")


class OrderFlow(pc.Workflow):
    builders = [Reserve, Charge, Ship]
    target = Shipped
    inputs = [Order, Address]


def build(redis_url: str, broker_url: str) -> pc.CeleryExecutor:
    app = Celery("web-tests", broker=broker_url, set_as_current=False)
    app.conf.worker_hijack_root_logger = False
    registry = pc.Registry(pc.RedisStore(redis_url))
    registry.register("web-order", OrderFlow)
    return pc.CeleryExecutor(app, registry, reconcile_interval=0.5, dispatch_timeout=5)


if "POLARIS_REDIS_URL" in os.environ:  # imported by `celery -A tests.apps.web_app worker`
    executor = build(os.environ["POLARIS_REDIS_URL"],
                     os.environ.get("POLARIS_BROKER_URL") or os.environ["POLARIS_REDIS_URL"])
    app = executor.app
