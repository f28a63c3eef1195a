"""The life of an instance: transient data, time limits, deadlines, cancel, restart, retention,
delete, and asyncio producers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

import polaris_celery as pc

from .conftest import CeleryEnv
from .scenarios import DBF, A, B, D, G, Scratch, Token, calls, seen

DBF_BUILDERS, DBF_TARGET = DBF.builders, DBF.target


def doc(env: CeleryEnv, key: str, iid: str) -> dict:
    raw = env.store.client.hget(env.store.keys(key, iid).state, "doc")
    return json.loads(raw) if raw else {}


# -- transient data (every executor) -----------------------------------------------------------

def test_transients_are_visible_in_the_run_returned_and_never_kept(run, iid, stored):
    r = run("transient", iid, A(v=1), Token(v=5))
    assert r.get(Scratch) == Scratch(v=6) and r.get(D) == D(v=6)
    assert stored("transient", iid) == {"A", "D"}  # neither Token nor Scratch persisted
    r2 = run("transient", iid, A(v=2))
    assert seen(iid, "UseToken")[-1] == {"token": None}  # last run's Token is gone
    assert r2.get(D) == D(v=2)


# -- time limit per builder (every executor) -----------------------------------------------------

def test_a_builder_over_its_time_limit_fails(run, iid):
    with pytest.raises(pc.BuilderFailed) as info:
        run("slow", iid, G(v=450))
    assert info.value.error_type == "TimeLimitExceeded" and "time_limit of 0.3s" in \
        info.value.message
    assert run("slow", iid, G(v=1)).get(B) == B(v=1)


# -- cancel, restart, delete, deadline, retention (distributed) ---------------------------------

def test_cancel_stops_the_instance_and_keeps_late_data_apart(celery_env: CeleryEnv, iid):
    ex = celery_env.executor
    h = ex.submit_delta("sleep", iid, G(v=700))
    time.sleep(0.25)  # Sleepy is running now
    assert ex.cancel("sleep", iid) is True
    r = h.wait(5)
    assert r.status == "cancelled" and not r.completed
    assert ex.cancel("sleep", iid) is False  # already closed
    with pytest.raises(pc.InstanceClosed, match="cancelled"):
        ex.submit_delta("sleep", iid, G(v=1))
    k = celery_env.store.keys("sleep", iid)
    deadline = time.monotonic() + 5
    while not celery_env.store.client.hexists(k.late, "B") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert celery_env.store.client.hexists(k.late, "B")  # it finished, after the cancel
    assert celery_env.store.data_names("sleep", iid) == {"G"}  # ... and was not merged
    assert celery_env.store.client.hlen(k.lease) == 0
    assert doc(celery_env, "sleep", iid)["status"] == "cancelled"


def test_restart_keeping_data_reruns_everything(celery_env: CeleryEnv, iid):
    ex = celery_env.executor
    assert ex.submit_delta("dbf", iid, A(v=1), B(v=1), D(v=0)).wait(10).completed
    h = ex.restart("dbf", iid, keep_data=True)
    assert h is not None
    r = h.wait(10)
    assert r.completed and calls(iid) == ["BA", "BB", "BC"] * 2


def test_restart_dropping_data_then_new_deltas(celery_env: CeleryEnv, iid):
    ex = celery_env.executor
    ex.submit_delta("sleep", iid, G(v=1)).wait(10)
    ex.cancel("sleep", iid)
    assert ex.restart("sleep", iid, keep_data=False) is None
    assert celery_env.store.data_names("sleep", iid) == set()
    assert doc(celery_env, "sleep", iid)["status"] == "open"
    assert ex.submit_delta("sleep", iid, G(v=1)).wait(10).get(B) == B(v=1)


def test_deadline_times_out_a_paused_instance(celery_env: CeleryEnv, iid):
    ex = celery_env.executor
    assert ex.submit_delta("dbf", iid, A(v=1), deadline=0.3).wait(5).status == "paused"
    time.sleep(0.35)
    with pytest.raises(pc.InstanceClosed, match="deadline"):
        ex.submit_delta("dbf", iid, B(v=1))
    assert celery_env.store.data_names("dbf", iid) == {"A"}  # the refused delta stored nothing
    deadline = time.monotonic() + 5  # the workers' reconciler marks it
    while doc(celery_env, "dbf", iid)["status"] != "timed_out" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert doc(celery_env, "dbf", iid)["status"] == "timed_out"
    member = f"dbf/{iid}"
    assert celery_env.store.index_score(celery_env.store.keys(*member.split("/", 1))) is None


def test_deadline_ends_a_run_in_flight(celery_env: CeleryEnv, iid):
    h = celery_env.executor.submit_delta("sleep", iid, G(v=2500), deadline=0.4)
    r = h.wait(10)
    assert r.status == "timed_out" and not r.completed


def test_retention_expires_completed_instances(celery_env: CeleryEnv, iid):
    coordinator = celery_env.executor.coordinator
    saved = coordinator.settings
    coordinator.settings = dataclasses.replace(saved, retention=60)
    try:
        k = celery_env.store.keys("dbf", iid)
        celery_env.executor.submit_delta("dbf", iid, A(v=1), B(v=1)).wait(10)
        assert celery_env.store.client.ttl(k.data) == -1  # paused: kept
        celery_env.executor.submit_delta("dbf", iid, D(v=1)).wait(10)
        assert 0 < celery_env.store.client.ttl(k.data) <= 60  # completed: expires
        assert 0 < celery_env.store.client.ttl(k.state) <= 60
        celery_env.executor.submit_delta("dbf", iid, D(v=2)).wait(10)  # re-opened ...
        assert 0 < celery_env.store.client.ttl(k.data) <= 60  # ... and completed again
    finally:
        coordinator.settings = saved


def test_delete_removes_the_instance(celery_env: CeleryEnv, iid):
    ex = celery_env.executor
    first = ex.submit_delta("dbf", iid, A(v=1), B(v=1), D(v=0))
    first.wait(10)
    ex.delete("dbf", iid)
    k = celery_env.store.keys("dbf", iid)
    assert celery_env.store.data_names("dbf", iid) == set()
    assert celery_env.store.client.exists(k.history, k.log, k.deltas) == 0
    again = ex.submit_delta("dbf", iid, A(v=2), B(v=2), D(v=0))
    # A new incarnation: its runs count from 1 again, and old results cannot be confused.
    assert again.run == first.run == 1 and again.incarnation > first.incarnation
    assert again.wait(10).completed


# -- asyncio producers ---------------------------------------------------------------------------

def test_async_submit_and_await(celery_env: CeleryEnv, iid):
    ex = celery_env.executor

    async def main() -> list[pc.RunResult]:
        handles = [await ex.submit_delta_async("dbf", f"{iid}-{i}", A(v=i), B(v=1), D(v=0))
                   for i in range(5)]
        ticks = 0

        async def ticker() -> None:  # proves the event loop is not blocked while waiting
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        t = asyncio.create_task(ticker())
        results = await asyncio.gather(*(h.wait_async(10) for h in handles[:4]), handles[4])
        t.cancel()
        assert ticks > 0
        return list(results)

    results = asyncio.run(main())
    assert [r.get(D) is None for r in results] == [True] * 5
    assert all(r.completed for r in results)


def test_async_wait_timeout(celery_env: CeleryEnv, iid):
    async def main() -> None:
        h = await celery_env.executor.submit_delta_async("sleep", iid, G(v=800))
        with pytest.raises(pc.WaitTimeout):
            await h.wait_async(0.2)
        assert (await h.wait_async(5)).get(B) == B(v=1)

    asyncio.run(main())


# -- what a delta after completion does (on_complete) -------------------------------------------

def test_a_completed_instance_reopens_by_default(run, iid):
    assert run("dbf", iid, A(v=1), B(v=1), D(v=0)).completed
    assert run("dbf", iid, A(v=2)).completed  # builders ran again
    assert calls(iid) == ["BA", "BB", "BC"] * 2


def test_on_complete_close_refuses_later_deltas_and_keeps_what_it_had(run, iid, stored):
    assert run("dbf-close", iid, A(v=1), B(v=1), D(v=0)).completed
    with pytest.raises(pc.InstanceClosed, match="on_complete"):
        run("dbf-close", iid, A(v=2))
    assert calls(iid) == ["BA", "BB", "BC"] and "F" in stored("dbf-close", iid)


def test_on_complete_late_keeps_later_deltas_apart(celery_env: CeleryEnv, iid):
    ex = celery_env.executor
    assert ex.submit_delta("dbf-late", iid, A(v=1), B(v=1), D(v=0)).wait(10).completed
    r = ex.submit_delta("dbf-late", iid, A(v=2), delta_id="coupon").wait(10)
    assert r.status == "late" and r.completed and r.run == 2
    again = ex.submit_delta("dbf-late", iid, A(v=2), delta_id="coupon")  # applied once
    assert again.run == 2
    k = celery_env.store.keys("dbf-late", iid)
    assert json.loads(celery_env.store.client.hget(k.late, "A")) == {"v": 2}
    assert json.loads(celery_env.store.client.hget(k.data, "A")) == {"v": 1}  # not merged
    assert calls(iid) == ["BA", "BB", "BC"]  # nothing ran again
    h = ex.restart("dbf-late", iid, keep_data=True)  # a restart opens it again
    assert h is not None and h.wait(10).completed and calls(iid) == ["BA", "BB", "BC"] * 2


def test_on_complete_must_be_known():
    class Bad(pc.Workflow):
        builders = DBF_BUILDERS
        target = DBF_TARGET
        on_complete = "ignore"

    with pytest.raises(pc.GraphError, match="on_complete is 'ignore'; choose one of reopen"):
        pc.compile_workflow("bad", Bad)
