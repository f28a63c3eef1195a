"""The seeds' cab ride as a polaris-celery workflow.

    RideRequested ─► MatchCabbie ─► CabbieMatched ─┐
    CabbieArrived ─────────────────────────────────┴► StartRide ─► RideStarted ─┐
    ArrivedAtDestination ───────────────────────────────────────────────────────┴► ComputeFare
    FareComputed + PaymentMade ─► ConfirmPayment ─► PaymentConfirmed ─► EndRide ─► RideEnded

Producers (the rider's app, the cabbie's app, the payment gateway) bring the inputs as deltas,
minutes apart; the instance pauses in between at no cost.
"""

from __future__ import annotations

import hashlib
import os
import time

from pydantic import BaseModel

import polaris_celery as pc


class RideRequested(BaseModel):
    user_id: str
    source: str
    dest: str


class CabbieMatched(BaseModel):
    cabbie_id: str
    eta_minutes: int


class CabbieArrived(BaseModel):
    cabbie_id: str


class RideStarted(BaseModel):
    ride_id: str
    cabbie_id: str


class ArrivedAtDestination(BaseModel):
    distance_km: float


class FareComputed(BaseModel):
    amount: float
    currency: str = "EUR"


class PaymentMade(BaseModel):
    user_id: str
    amount: float


class PaymentConfirmed(BaseModel):
    receipt: str


class RideEnded(BaseModel):
    ride_id: str
    receipt: str
    fare: float


#: Seconds each builder's stand-in service call takes (the benchmarks set 0).
WORK_SECONDS = float(os.environ.get("POLARIS_CAB_RIDE_WORK", "0.05"))


def _work() -> None:
    """Stand-in for a call to another service."""
    time.sleep(WORK_SECONDS)


def cabbie_for(user_id: str) -> str:
    """The cabbie the (simulated) dispatch service assigns to a rider."""
    return f"cabbie-{hashlib.sha1(user_id.encode()).hexdigest()[:4]}"


class MatchCabbie(pc.Builder):
    consumes = [RideRequested]
    produces = CabbieMatched
    max_retries = 3
    retry_backoff = 0.5

    def process(self, ctx: pc.BuilderContext) -> CabbieMatched:
        req = ctx.need(RideRequested)  # typed RideRequested; a consume is always there
        _work()
        return CabbieMatched(cabbie_id=cabbie_for(req.user_id), eta_minutes=4)


class StartRide(pc.Builder):
    consumes = [CabbieMatched, CabbieArrived]
    accesses = [RideRequested]
    produces = RideStarted

    def process(self, ctx: pc.BuilderContext) -> RideStarted | None:
        matched, arrived = ctx[CabbieMatched], ctx[CabbieArrived]
        if matched.cabbie_id != arrived.cabbie_id:
            return None  # another cabbie showed up: not now
        _work()
        return RideStarted(ride_id=ctx.instance_id, cabbie_id=matched.cabbie_id)


class ComputeFare(pc.Builder):
    consumes = [RideStarted, ArrivedAtDestination]
    produces = FareComputed

    def process(self, ctx: pc.BuilderContext) -> FareComputed:
        trip = ctx.need(ArrivedAtDestination)
        _work()
        return FareComputed(amount=round(3.5 + 1.2 * trip.distance_km, 2))


class ConfirmPayment(pc.Builder):
    consumes = [FareComputed, PaymentMade]
    produces = PaymentConfirmed
    max_retries = 2

    def process(self, ctx: pc.BuilderContext) -> PaymentConfirmed | None:
        fare, paid = ctx.need(FareComputed), ctx.need(PaymentMade)
        _work()
        if paid.amount + 1e-9 < fare.amount:
            return None  # short payment: wait for a further PaymentMade
        return PaymentConfirmed(receipt=f"rcpt-{ctx.instance_id}-{paid.amount:.2f}")


class EndRide(pc.Builder):
    consumes = [PaymentConfirmed, RideStarted]
    accesses = [FareComputed]
    produces = RideEnded

    def process(self, ctx: pc.BuilderContext) -> RideEnded:
        ride, receipt = ctx.need(RideStarted), ctx.need(PaymentConfirmed)
        fare = ctx.need(FareComputed)  # an access: MissingData (a failure) if it were absent
        return RideEnded(ride_id=ride.ride_id, receipt=receipt.receipt, fare=fare.amount)


class CabRide(pc.Workflow):
    builders = [MatchCabbie, StartRide, ComputeFare, ConfirmPayment, EndRide]
    target = RideEnded
    # What the producers bring; registration warns about any datum read but never produced
    # that is not listed here (and the worker registers with strict=True, so it would refuse).
    inputs = [RideRequested, CabbieArrived, ArrivedAtDestination, PaymentMade]
