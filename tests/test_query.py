"""The query API (issue 13 part 1): one instance's view through its life, the listing by status
with paging, and waiting from another executor. On the session's real Redis with real Celery
worker threads, and on the real Redis Cluster with the coordinator (messages delivered here).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery.coordinator import Coordinator
from polaris_celery.query import Query
from polaris_celery.testing import InProcessWorker, RedisCluster

from .conftest import make_app

GATES: dict[str, threading.Event] = {}


class Req(BaseModel):
    v: int = 0


class Extra(BaseModel):
    v: int = 0


class Mid(BaseModel):
    v: int = 0


class Out(BaseModel):
    v: int = 0


class Step1(pc.Builder):
    consumes = [Req]
    produces = Mid
    max_retries = 0

    def process(self, ctx: pc.BuilderContext) -> Mid:
        gate = GATES.get(ctx.instance_id)
        if gate is not None:
            gate.wait(20)
        if ctx.need(Req).v < 0:
            raise ValueError("negative request")
        return Mid(v=ctx.need(Req).v + 1)


class Step2(pc.Builder):
    consumes = [Mid, Extra]
    produces = Out

    def process(self, ctx: pc.BuilderContext) -> Out:
        return Out(v=ctx.need(Mid).v + ctx.need(Extra).v)


class Steps(pc.Workflow):
    builders = [Step1, Step2]
    target = Out
    inputs = [Req, Extra]


WF = "q-steps"


def registry(store: pc.RedisStore) -> pc.Registry:
    reg = pc.Registry(store)
    reg.register(WF, Steps)
    return reg


class Rig:
    """One way to drive instances (Celery worker threads, or the coordinator on a cluster,
    draining its messages here) and the query API beside it."""

    def __init__(self, submit: Callable[..., Any], settle: Callable[[], None],
                 query: Query, coordinator: Coordinator) -> None:
        self.submit = submit
        self.settle = settle
        self.q = query
        self.c = coordinator

    def until(self, instance_id: str, status: str, timeout: float = 10.0) -> pc.InstanceView:
        end = time.monotonic() + timeout
        while True:
            self.settle()
            view = self.q.instance(WF, instance_id)
            if view.status == status or time.monotonic() > end:
                assert view.status == status, view
                return view
            time.sleep(0.02)

    def listed(self, status: str | None = None, limit: int = 25) -> list[str]:
        out: list[str] = []
        cursor: str | None = None
        while True:
            page = self.q.instances(WF, status=status, limit=limit, cursor=cursor)
            assert len(page.items) <= limit
            out += [i.instance_id for i in page.items]
            cursor = page.cursor
            if cursor is None:
                return out


@pytest.fixture(scope="module")
def celery_rig(polaris_in_process: InProcessWorker) -> Rig:
    ex = polaris_in_process.adopt(registry(polaris_in_process.store))
    return Rig(lambda iid, *d, **kw: ex.submit_delta(WF, iid, *d, **kw), lambda: None,
               ex.query, ex.coordinator)


@pytest.fixture(scope="module")
def cluster_rig(redis_cluster: RedisCluster) -> Iterator[Rig]:
    store = pc.RedisStore(redis_cluster.url)
    sent: list[Any] = []
    lock = threading.Lock()
    c = Coordinator(registry(store), sent.extend)

    def drain() -> None:
        with lock:
            while sent:
                d = sent.pop(0)
                c.execute(d.workflow, d.instance_id, d.run, d.builder, d.token,
                          version=d.version, incarnation=d.incarnation)

    yield Rig(lambda iid, *d, **kw: c.submit(WF, iid, d, **kw), drain, Query(c.registry), c)
    store.close()


@pytest.fixture(params=["celery", "cluster"])
def rig(request: pytest.FixtureRequest) -> Rig:
    return request.getfixturevalue(f"{request.param}_rig")  # type: ignore[no-any-return]


def _gate(iid: str) -> threading.Event:
    GATES[iid] = threading.Event()
    return GATES[iid]


def test_statuses_data_runs_and_errors_through_a_life(rig: Rig, iid: str) -> None:
    gate = _gate(iid)
    rig.submit(iid, Req(v=1))
    first = rig.q.instance(WF, iid)
    assert first.status == "running" and first.version >= 1 and first.incarnation
    assert [r.status for r in first.runs] == ["running"]
    assert first.absent_inputs == ("Extra",)
    gate.set()
    paused = rig.until(iid, "paused")
    assert paused.datum("Mid") is not None
    assert paused.datum("Mid").value == Mid(v=2)  # type: ignore[union-attr]
    assert paused.datum("Mid").producer == "Step1"  # type: ignore[union-attr]
    assert paused.datum("Req").producer == "delta"  # type: ignore[union-attr]
    assert paused.in_flight == () and paused.workflow_version == 1

    rig.submit(iid, Extra(v=10))
    done = rig.until(iid, "completed")
    assert done.datum("Out").value == Out(v=12)  # type: ignore[union-attr]
    assert [r.status for r in done.runs] == ["completed", "paused"]
    assert done.runs[0].produced == ("Out",) and done.runs[0].ended is not None
    assert done.workflow_version == 0 and done.to_json()["status"] == "completed"

    rig.submit(iid, Req(v=-1))
    failed = rig.until(iid, "failed")
    (err,) = failed.errors
    assert (err.builder, err.type, err.run) == ("Step1", "ValueError", 3)
    assert "negative request" in err.message
    assert failed.runs[0].error is not None

    assert rig.c.cancel(WF, iid)
    assert rig.q.instance(WF, iid).status == "cancelled"
    rig.c.restart(WF, iid, keep_data=False)
    reopened = rig.q.instance(WF, iid)
    assert reopened.status == "open" and reopened.data == ()
    rig.c.delete(WF, iid)
    with pytest.raises(pc.UnknownInstance, match=iid):
        rig.q.instance(WF, iid)


def test_builders_in_flight_and_a_timeout(rig: Rig, iid: str) -> None:
    gate = _gate(iid)
    rig.submit(iid, Req(v=1), deadline=0.3)
    view = rig.q.instance(WF, iid)
    assert view.deadline is not None and view.status == "running"
    (active,) = view.in_flight
    assert (active.run, active.builder) == (1, "Step1")
    assert active.state in ("queued", "running") and active.deadline is not None
    time.sleep(0.4)
    rig.c.reconcile()
    assert rig.q.instance(WF, iid).status == "timed_out"
    assert iid in rig.listed("timed_out", limit=200)
    gate.set()


def test_bad_arguments_are_named(rig: Rig, iid: str) -> None:
    with pytest.raises(ValueError, match="status"):
        rig.q.instances(WF, status="finished")
    with pytest.raises(ValueError, match="limit"):
        rig.q.instances(WF, limit=0)
    with pytest.raises(ValueError, match="cursor"):
        rig.q.instances(WF, cursor="nonsense!")
    with pytest.raises(pc.UnknownWorkflow):
        rig.q.instances("no-such-workflow")
    with pytest.raises(pc.UnknownInstance):
        rig.q.instance(WF, iid)


def test_paging_lists_every_instance_once_by_status(rig: Rig) -> None:
    """120 instances (100 paused, 20 completed) in pages of 25, in both orders."""
    tag = uuid.uuid4().hex[:6]
    paused = [f"p{tag}-{i:03}" for i in range(100)]
    completed = [f"c{tag}-{i:03}" for i in range(20)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: rig.submit(i, Extra(v=1)), paused))  # no builder runs
        list(pool.map(lambda i: rig.submit(i, Req(v=1), Extra(v=1)), completed))
    for i in completed:
        rig.until(i, "completed")
    everything = rig.listed()
    mine = [i for i in everything if tag in i]
    assert sorted(mine) == sorted(paused + completed) and len(set(everything)) == len(everything)
    assert set(completed) <= set(rig.listed("completed"))
    listed_paused = [i for i in rig.listed("paused") if tag in i]
    assert sorted(listed_paused) == sorted(paused)
    both = [i for i in rig.listed(["paused", "completed"], limit=7) if tag in i]
    assert sorted(both) == sorted(paused + completed)
    page = rig.q.instances(WF, limit=25)
    assert len(page.items) == 25 and page.cursor is not None
    times = [s.updated for s in page.items]
    assert times == sorted(times, reverse=True)
    oldest = rig.q.instances(WF, limit=1000, newest_first=False).items
    assert [s.instance_id for s in oldest] == list(reversed(everything))


def test_the_listing_follows_cancel_restart_and_delete(rig: Rig, iid: str) -> None:
    rig.submit(iid, Req(v=1), Extra(v=2))
    rig.until(iid, "completed")
    assert iid in rig.listed("completed", limit=500)
    gate = _gate(iid)
    rig.submit(iid, Req(v=5))
    assert rig.c.cancel(WF, iid)
    gate.set()
    assert iid in rig.listed("cancelled", limit=500)
    assert iid not in rig.listed("completed", limit=500)
    GATES.pop(iid)
    rig.c.restart(WF, iid)
    rig.until(iid, "completed")
    assert iid in rig.listed("completed", limit=500)
    assert iid not in rig.listed("cancelled", limit=500)
    rig.c.delete(WF, iid)
    assert iid not in rig.listed(limit=500)
    assert iid not in rig.listed("completed", limit=500)


def test_a_stale_entry_is_put_right_when_read(rig: Rig, iid: str) -> None:
    rig.submit(iid, Extra(v=1))
    rig.until(iid, "paused")
    store = rig.q.store
    # What a cluster client that died between its step and its entry leaves: the old status.
    store.listings.move(WF, iid, "0", 1, "running", time.time())
    assert iid not in rig.listed("running", limit=500)  # confirmed from the state, repaired
    assert iid in rig.listed("paused", limit=500)
    # A stale write cannot go back over a newer entry.
    entry = store.listings.entries(WF, [iid])[0]
    inc, v, status = entry.split("|")
    assert status == "paused"
    assert not store.listings.move(WF, iid, inc, int(v) - 1, "running", time.time())
    assert store.listings.entries(WF, [iid])[0] == entry
    # An instance whose entry is missing is listed again by a reindex.
    store.listings.move(WF, iid, "f" * 20, 0, "", 0.0)
    assert iid not in rig.listed("paused", limit=500)
    assert rig.q.reindex(WF) >= 1
    assert iid in rig.listed("paused", limit=500)


def test_waiting_from_another_executor(celery_rig: Rig, polaris_in_process: InProcessWorker,
                                       iid: str) -> None:
    """A waiter with its own store, registry and executor (as in another process)."""
    gate = _gate(iid)
    store = pc.RedisStore(polaris_in_process.store_url)
    other = pc.CeleryExecutor(make_app(polaris_in_process.broker_url, "query-waiter"),
                              registry(store), reconciler=False)
    got: dict[str, Any] = {}

    def wait() -> None:
        got["mid"] = other.wait_instance(WF, iid, datum=Mid, timeout=10)
        got["done"] = other.wait_instance(WF, iid, timeout=10)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        time.sleep(0.2)
        celery_rig.submit(iid, Req(v=1))
        with pytest.raises(pc.WaitTimeout, match="hold Mid"):
            other.wait_instance(WF, iid, datum="Mid", timeout=0.3)
        gate.set()
        time.sleep(0.3)
        assert "done" not in got  # paused: waits for Extra
        celery_rig.submit(iid, Extra(v=1))
        waiter.join(10)
        assert got["mid"].datum("Mid").value == Mid(v=2)
        assert got["done"].status == "completed"
        assert got["done"].datum("Out").value == Out(v=3)
    finally:
        gate.set()
        waiter.join(10)
        store.close()


def test_waiting_times_out(rig: Rig, iid: str) -> None:
    rig.submit(iid, Extra(v=1))  # paused: waits for a Req that never comes
    start = time.monotonic()
    with pytest.raises(pc.WaitTimeout, match="complete"):
        rig.q.wait_instance(WF, iid, timeout=0.5)
    assert 0.45 < time.monotonic() - start < 2.0
