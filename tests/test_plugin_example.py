"""The README's "Testing your workflows" example, run by CI as written there: the cab ride played
as its producers would, then the same ride in chaos mode."""

import pytest

import polaris_celery as pc
from worker.cab_ride import (
    ArrivedAtDestination,
    CabbieArrived,
    CabRide,
    PaymentMade,
    RideEnded,
    RideRequested,
    cabbie_for,
)


@pytest.fixture(scope="session")
def polaris_registry() -> pc.Registry:
    registry = pc.Registry(pc.MemoryStore())  # names the workflows; the plugin stores in Redis
    registry.register("cab-ride", CabRide)
    return registry


def play_ride(flow):
    flow.send(RideRequested(user_id="u1", source="Gare du Nord", dest="Orly"))
    assert flow.ran == ["MatchCabbie"] and not flow.completed
    flow.play(CabbieArrived(cabbie_id=cabbie_for("u1")),
              ArrivedAtDestination(distance_km=10.0),
              PaymentMade(user_id="u1", amount=15.5))
    assert flow.completed
    assert flow.ran == ["MatchCabbie", "StartRide", "ComputeFare", "ConfirmPayment", "EndRide"]
    assert flow.ran_in(4) == ["ConfirmPayment", "EndRide"]
    assert flow.result.get(RideEnded) == flow.get(RideEnded)
    assert flow.get(RideEnded).fare == 15.5


def test_cab_ride(polaris_flow):
    flow = polaris_flow("cab-ride")
    play_ride(flow)
    assert all(a.attempt == 1 for a in flow.attempts)


@pytest.mark.polaris_chaos(kill=1.0, lose_reply=1.0)
def test_cab_ride_in_chaos(polaris_flow, polaris_chaos):
    flow = polaris_flow("cab-ride")
    play_ride(flow)  # the same result, whatever was killed, duplicated or lost
    assert len(polaris_chaos.killed) == 5  # every builder's first attempt, before its commit
    assert polaris_chaos.lost_replies and polaris_chaos.duplicated
    assert [a.attempt for a in flow.attempts if a.builder == "EndRide"] == [1, 2]
