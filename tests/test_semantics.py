"""DESIGN section 3, rule by rule, on every executor (sequential, parallel, Celery workers)."""

from __future__ import annotations

import pytest

import polaris_celery as pc

from . import scenarios_dbf as dbf
from .scenarios import (
    FAIL_TIMES,
    FAN_PARTS,
    A,
    B,
    C,
    D,
    E,
    F,
    G,
    O,
    Unrelated,
    X,
    Z,
    calls,
    seen,
)

# -- the Java framework's own scenarios ---------------------------------------------------------

def test_three_deltas_into_dbf_graph(run, iid):
    """BA:{A,B}->C, BB:{C,D}->E, BC:{A,E}->F fed one datum at a time."""
    r1 = run("dbf", iid, A(v=2))
    assert r1.status == "paused" and not r1.completed and dict(r1.data) == {}
    assert calls(iid) == []
    r2 = run("dbf", iid, B(v=3))
    assert r2.get(C) == C(v=5) and r2.get(E) is None
    assert calls(iid) == ["BA"]
    r3 = run("dbf", iid, D(v=4))
    assert r3.get(E) == E(v=54) and r3.get(F) == F(v=55)
    assert r3.completed and r3.status == "completed"
    assert calls(iid) == ["BA", "BB", "BC"]
    assert r3.get(C) is None  # produced in an earlier run, not in this one


def test_all_at_once_runs_each_builder_once_in_order(run, iid):
    r = run("dbf", iid, A(v=1), B(v=1), D(v=0))
    assert r.completed and r.get(F) == F(v=21)
    assert calls(iid) == ["BA", "BB", "BC"]


def test_optional_arriving_before_the_consumes(run, iid):
    r1 = run("optional", iid, O(v=5))
    assert calls(iid) == [] and r1.status == "paused"  # A, a consume, is missing
    r2 = run("optional", iid, A(v=1))
    assert r2.get(X) == X(v=6)
    assert seen(iid, "WithOptional") == [{"a": 1, "o": 5, "z": None}]


def test_optional_arriving_after_retriggers(run, iid):
    assert run("optional", iid, A(v=1)).get(X) == X(v=1)
    assert run("optional", iid, O(v=2)).get(X) == X(v=3)
    assert [s["o"] for s in seen(iid, "WithOptional")] == [None, 2]


def test_access_only_data_never_triggers_but_is_readable(run, iid):
    r = run("optional", iid, Z(v=9))
    assert calls(iid) == [] and dict(r.data) == {}
    run("optional", iid, A(v=1))
    assert seen(iid, "WithOptional") == [{"a": 1, "o": None, "z": 9}]


def test_diamond_joins_once_and_waiter_waits_for_upstream(run, iid):
    r = run("diamond", iid, A(v=1))
    assert r.completed and r.get(F) == F(v=5)
    order = calls(iid)
    assert sorted(order) == ["Finish", "Join", "Left", "Right", "Waiter"]
    assert order.count("Join") == 1
    # Waiter was eligible as soon as A arrived, but Left (upstream via its optional B) was
    # pending: it ran once, after Left, and saw B.
    assert order.index("Waiter") > order.index("Left")
    assert seen(iid, "Waiter") == [{"a": 1, "b": 2}]
    assert seen(iid, "Join") == [{"b": 2, "c": 3}]


def test_a_join_waits_for_an_active_upstream_even_with_its_inputs_present(run, iid):
    """In a second run both of Join's inputs exist from the first; whichever of Left and Right
    commits first, Join waits for the other (active, upstream) and runs once, on fresh values.
    In the distributed executor the first commit did not read the other's field: it must ask."""
    assert run("diamond", iid, A(v=1)).completed
    r = run("diamond", iid, A(v=10))
    assert r.completed and r.get(F) == F(v=23)
    assert seen(iid, "Join") == [{"b": 2, "c": 3}, {"b": 11, "c": 12}]


def test_cycle_terminates_running_each_builder_at_most_once(run, iid):
    r1 = run("cycle", iid, A(v=0))
    assert calls(iid) == ["Fwd", "Back"]
    assert r1.status == "paused"
    r2 = run("cycle", iid, G())
    assert r2.completed and calls(iid) == ["Fwd", "Back", "CycleDone"]
    # A later C (data in the loop) re-enters the cycle: Fwd then Back, once each, and
    # CycleDone (consuming C) waits for the loop upstream of it to finish, then runs once.
    r3 = run("cycle", iid, C(v=10))
    assert calls(iid)[3:] == ["Fwd", "Back", "CycleDone"]
    assert seen(iid, "Fwd")[-1] == {"c": 10}
    assert r3.get(C) == C(v=12) and r3.get(F) == F(v=12)


def test_seven_builders_fan_into_one(run, iid):
    r = run("fan-in", iid, A())
    assert r.completed and r.get(F) == F(v=28)
    assert calls(iid).count("FanJoin") == 1 and calls(iid)[-1] == "FanJoin"
    assert all(r.get(p) is not None for p in FAN_PARTS)


def test_resolution_picks_the_named_producer(run, iid):
    r = run("resolved", iid, A())
    assert r.get(X) == X(v=2)
    assert calls(iid) == ["MakeXSlow"]


def test_data_in_separate_runs_behave_like_one_delta(run, iid):
    run("dbf", iid, A(v=1))
    run("dbf", iid, D(v=0))
    r = run("dbf", iid, B(v=1))
    assert r.completed and r.get(F) == F(v=21)


def test_function_style_builders(run, iid):
    r = run("functions", iid, A(v=1), O(v=10))
    assert r.get(B) == B(v=12) and r.get(C) == C(v=24) and r.completed


# -- the rules one by one -------------------------------------------------------------------------

def test_resubmitting_identical_data_retriggers(run, iid):
    run("optional", iid, A(v=1))
    run("optional", iid, A(v=1))
    assert calls(iid) == ["WithOptional", "WithOptional"]


def test_empty_delta_runs_nothing(run, iid):
    r = run("dbf", iid)
    assert dict(r.data) == {} and calls(iid) == [] and r.status == "paused"


def test_none_means_not_now_and_keeps_earlier_value(run, iid, stored):
    r1 = run("maybe", iid, A(v=3))
    assert r1.get(B) == B(v=3) and r1.get(C) == C(v=3)
    r2 = run("maybe", iid, A(v=-1))
    assert r2.get(B) is None and dict(r2.data) == {}
    assert calls(iid) == ["NotNow", "AfterNotNow", "NotNow"]  # nothing downstream triggered
    r3 = run("maybe", iid, A(v=5))
    assert r3.get(C) == C(v=5)
    assert "B" in stored("maybe", iid)


def test_retries_then_success(run, iid):
    FAIL_TIMES[iid] = 2  # max_retries = 2: third attempt succeeds
    r = run("failing", iid, A())
    assert r.get(B) == B(v=3) and r.completed
    assert [s["attempt"] for s in seen(iid, "Flaky")] == [1, 2, 3]


def test_retries_spent_fail_the_run_with_partial_result(run, iid, stored):
    FAIL_TIMES[iid] = 10
    with pytest.raises(pc.BuilderFailed) as info:
        run("failing", iid, A())
    err = info.value
    assert err.builder == "Flaky" and err.error_type == "RuntimeError"
    assert "flaky failure" in err.message
    assert len(seen(iid, "Flaky")) == 3
    assert "AfterFlaky" not in calls(iid)  # nothing downstream of the failure
    assert err.result is not None and err.result.status == "failed"
    # The sibling ran (or was already running) and its datum is kept and returned.
    if "Sibling" in calls(iid):
        assert err.result.get(C) == C(v=7)
        assert "C" in stored("failing", iid)
    assert "A" in stored("failing", iid)  # the delta is never lost


def test_wrong_produced_type_is_a_failure(run, iid):
    with pytest.raises(pc.BuilderFailed) as info:
        run("misbehaving", iid, A())
    assert info.value.builder == "WrongType" and info.value.error_type == "TypeError"
    assert "produces" in info.value.message


def test_builder_sees_only_what_it_declared(run, iid):
    with pytest.raises(pc.BuilderFailed) as info:
        run("misbehaving", iid, B())
    assert info.value.builder == "Snoop" and info.value.error_type == "UndeclaredData"
    assert "Z" in info.value.message


def test_target_stops_dispatch_in_the_run_and_later_delta_reopens(run, iid):
    r1 = run("stops-at-target", iid, A())
    assert r1.completed and calls(iid) == ["MakeTarget"]  # PastTarget not dispatched
    r2 = run("stops-at-target", iid, A())
    assert r2.completed and calls(iid) == ["MakeTarget", "MakeTarget"]


def test_unknown_data_is_rejected_whole_before_anything_is_stored(run, iid, stored):
    with pytest.raises(pc.UnknownData) as info:
        run("dbf", iid, A(v=1), Unrelated())
    assert "Unrelated" in str(info.value)
    assert stored("dbf", iid) == set()
    assert calls(iid) == []


def test_unknown_workflow(run, iid):
    with pytest.raises(pc.UnknownWorkflow):
        run("no-such-workflow", iid, A())


def test_delta_is_stored_even_when_the_run_fails(run, iid, stored):
    FAIL_TIMES[iid] = 10
    with pytest.raises(pc.BuilderFailed):
        run("failing", iid, A(v=4))
    assert "A" in stored("failing", iid)


def test_completed_flag_follows_target(run, iid):
    assert not run("dbf", iid, A(v=1), B(v=1)).completed
    assert run("dbf", iid, D()).completed
    assert run("dbf", iid).completed  # an empty delta re-opens nothing


def test_e_and_f_values_flow_through(run, iid):
    r = run("dbf", iid, A(v=2), B(v=2), D(v=1))
    assert r.get(E) == E(v=41) and r.get(F) == F(v=42)


# -- declaration order and DBF's cycles (issue 11, items 1 and 2) -------------------------------

@pytest.mark.parametrize("key", ["together", "together-reversed"])
def test_builders_ready_with_the_targets_producer_run_whatever_the_order(run, iid, key):
    """Both become ready on A; the target stops new dispatches, not those already made."""
    r = run(key, iid, A())
    assert r.completed and r.get(B) == B(v=1) and r.get(C) == C(v=1)
    assert sorted(calls(iid)) == ["Beside", "MakeTargetToo"]


@pytest.mark.parametrize("key", ["dbf-flow", "dbf-flow-reversed"])
def test_dbf_flow_test_counts(run, iid, key):
    """DBF's FlowTest.testRunMultiStep: 3, 2 and 5 data. OMSP, fed back around the cycle by
    OMSPD, does not re-run OCRDB..IPDB in the run that produces the target."""
    r1 = run(key, iid, dbf.CAID(), dbf.CR(), dbf.OMSP())
    assert sorted(r1.data) == ["OCRD", "OO", "POD"]
    r2 = run(key, iid, dbf.SPD())
    assert sorted(r2.data) == ["ILD", "IPD"]
    r3 = run(key, iid, dbf.EPD())
    assert sorted(r3.data) == ["DPD", "OCD", "OMSP", "PPD", "PSD"] and r3.completed
    assert calls(iid)[-5:] == ["DPDB", "OMSPD", "PSDB", "PPDB", "OCDB"]


@pytest.mark.parametrize("key", ["dbf-flow", "dbf-flow-reversed"])
def test_dbf_flow_test_single_step(run, iid, key):
    """FlowTest.testRunSingleStep: everything at once produces all 10."""
    r = run(key, iid, dbf.CAID(), dbf.CR(), dbf.OMSP(), dbf.SPD(), dbf.EPD())
    assert len(r.data) == 10 and r.completed


@pytest.mark.parametrize("key", ["dbf-loop", "dbf-loop-reversed"])
def test_dbf_loop_test_counts(run, iid, key):
    """DBF's LoopTest: SPD, EPD, DPD transient, OCDB "not now" twice: 9, 8, 7 data. In the
    second run the target is not produced, so OMSP fed back around the cycle starts a second
    pass, in which OCRDB and PODB (not run yet in that run) run; in the third the target is
    produced in the first pass and nothing is fed back."""
    r1 = run(key, iid, dbf.CAID(), dbf.CR(), dbf.OMSP(), dbf.SPD(), dbf.EPD())
    assert len(r1.data) == 9 and not r1.completed and "OCD" not in r1.data
    r2 = run(key, iid, dbf.SPD(), dbf.EPD())
    assert sorted(r2.data) == ["DPD", "ILD", "IPD", "OCRD", "OMSP", "POD", "PPD", "PSD"]
    assert calls(iid)[-2:] == ["OCRDB", "PODB"]  # the second pass
    r3 = run(key, iid, dbf.SPD(), dbf.EPD())
    assert sorted(r3.data) == ["DPD", "ILD", "IPD", "OCD", "OMSP", "PPD", "PSD"]
    assert r3.completed and r3.status == "completed"
