"""Chaos mode bites: a builder whose side effect is not idempotent is caught, its idempotent
twin passes, and both workflows reach the same result.

The payment gateway below stands in for an external service; it runs in the test's memory
because the plugin's worker runs builders on threads of this process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import pytest
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery.testing import Chaos


class Order(BaseModel):
    amount: float


class Charged(BaseModel):
    amount: float


class Receipt(BaseModel):
    text: str


class Gateway:
    """Charges accounts; a charge with an idempotency key it has seen is not made again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.charges: Counter[str] = Counter()  # account -> charges made
        self.keys: set[str] = set()

    def charge(self, account: str, amount: float, idempotency_key: str | None = None) -> None:
        with self.lock:
            if idempotency_key is not None:
                if idempotency_key in self.keys:
                    return
                self.keys.add(idempotency_key)
            self.charges[account] += 1


GATEWAY = Gateway()


class ChargeNaive(pc.Builder):
    consumes = [Order]
    produces = Charged

    def process(self, ctx: pc.BuilderContext) -> Charged:
        order = ctx.get(Order)
        assert order is not None
        GATEWAY.charge(ctx.instance_id, order.amount)  # charged again on every attempt
        return Charged(amount=order.amount)


class ChargeOnce(pc.Builder):
    consumes = [Order]
    produces = Charged

    def process(self, ctx: pc.BuilderContext) -> Charged:
        order = ctx.get(Order)
        assert order is not None
        # One charge per instance and run, however often this attempt is run again.
        GATEWAY.charge(ctx.instance_id, order.amount, f"{ctx.instance_id}/{ctx.run}")
        return Charged(amount=order.amount)


class Issue(pc.Builder):
    consumes = [Charged]
    produces = Receipt

    def process(self, ctx: pc.BuilderContext) -> Receipt:
        charged = ctx.get(Charged)
        assert charged is not None
        return Receipt(text=f"paid {charged.amount:.2f}")


class NaivePayment(pc.Workflow):
    builders = [ChargeNaive, Issue]
    target = Receipt


class IdempotentPayment(pc.Workflow):
    builders = [ChargeOnce, Issue]
    target = Receipt


@pytest.fixture(scope="session")
def polaris_registry() -> pc.Registry:
    registry = pc.Registry(pc.MemoryStore())
    registry.register("pay-naive", NaivePayment)
    registry.register("pay-once", IdempotentPayment)
    return registry


CHARGER = {"pay-naive": "ChargeNaive", "pay-once": "ChargeOnce"}


def pay(polaris_flow, workflow: str):
    flow = polaris_flow(workflow)
    flow.send(Order(amount=12.5))
    assert flow.completed and flow.get(Receipt) == Receipt(text="paid 12.50")
    assert flow.ran == [CHARGER[workflow], "Issue"]
    return flow


@pytest.mark.parametrize("workflow", ["pay-naive", "pay-once"])
def test_without_chaos_both_charge_once(polaris_flow, workflow):
    flow = pay(polaris_flow, workflow)
    assert GATEWAY.charges[flow.instance_id] == 1


@pytest.mark.polaris_chaos(kill=1.0)
def test_chaos_catches_the_builder_that_charges_twice(polaris_flow, polaris_chaos):
    naive = pay(polaris_flow, "pay-naive")
    once = pay(polaris_flow, "pay-once")
    # Each charging builder was killed after its call and before its commit, then run again.
    assert {(a.instance_id, a.builder) for a in polaris_chaos.killed} >= {
        (naive.instance_id, "ChargeNaive"), (once.instance_id, "ChargeOnce")}
    assert [a.attempt for a in naive.attempts if a.builder == "ChargeNaive"] == [1, 2]
    assert GATEWAY.charges[naive.instance_id] == 2  # caught: the rider paid twice
    assert GATEWAY.charges[once.instance_id] == 1  # idempotent: the same result, one charge


@pytest.mark.polaris_chaos(kill=0.0, duplicate=0.0, lose_reply=1.0)
def test_a_lost_commit_reply_neither_reruns_nor_loses_the_commit(polaris_flow, polaris_chaos):
    flow = pay(polaris_flow, "pay-naive")
    assert len(polaris_chaos.lost_replies) == 2  # both commits' replies, once each
    assert [a.attempt for a in flow.attempts] == [1, 1]  # committed once, never re-run
    assert GATEWAY.charges[flow.instance_id] == 1


@pytest.mark.polaris_chaos(kill=0.0, duplicate=1.0, lose_reply=0.0)
def test_every_message_delivered_twice_runs_each_builder_once(polaris_flow, polaris_chaos,
                                                             caplog):
    caplog.set_level(logging.INFO, logger="polaris_celery")
    flow = pay(polaris_flow, "pay-naive")
    assert [a.attempt for a in flow.attempts] == [1, 1]
    assert GATEWAY.charges[flow.instance_id] == 1
    # Issue runs inline after ChargeNaive's commit, so one message was sent, twice; the copy
    # found its attempt taken and was skipped.
    assert len([d for d in polaris_chaos.duplicated if flow.instance_id in d]) >= 1
    deadline = time.monotonic() + 10
    while f"skipped pay-naive/{flow.instance_id}" not in caplog.text:
        assert time.monotonic() < deadline, "the duplicate was never consumed"
        time.sleep(0.05)


@pytest.mark.parametrize("polaris_chaos", [None, {"seed": 7}], indirect=True)
def test_the_same_test_with_and_without_chaos(polaris_flow, polaris_chaos):
    flow = pay(polaris_flow, "pay-once")
    assert GATEWAY.charges[flow.instance_id] == 1
    if polaris_chaos is not None:
        assert polaris_chaos.seed == 7 and polaris_chaos.duplicated  # chaos was on


def test_chaos_is_the_same_for_one_seed_and_checks_its_options():
    a, b = Chaos(seed=3), Chaos(seed=3)
    keys = [f"k{i}" for i in range(200)]
    struck = [k for k in keys if a.reply_lost("commit", k)]
    assert struck == [k for k in keys if b.reply_lost("commit", k)]
    assert 60 < len(struck) < 140  # about half, as asked
    assert not any(a.reply_lost("commit", k) for k in struck)  # each at most once
    with pytest.raises(pc.InvalidInput, match="kill must be a share between 0 and 1"):
        Chaos(kill=2)
    with pytest.raises(pc.InvalidInput, match="seed must be an int"):
        Chaos(seed="x")  # type: ignore[arg-type]
