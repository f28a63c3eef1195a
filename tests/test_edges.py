"""The edges of an instance's life (issue 10), one regression test per case, each driving the
real coordinator against the private redis-server with an injected clock and messages held in
a list, so every interleaving is exact. Numbers refer to the cases of the issue."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery import faults
from polaris_celery.coordinator import Coordinator, RunRef
from polaris_celery.errors import StoreUnavailable
from polaris_celery.hooks import Hooks
from polaris_celery.instance import Dispatch, Settings

from . import scenarios
from .scenarios import A, B, D, G, calls


class Rig:
    """One coordinator (or several) on a store of its own prefix, a clock it reads, and the
    messages it sent, delivered when a test says so."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.now = 1_000_000.0
        self.sent: list[Dispatch] = []
        self.url = url
        self.prefix = f"e{uuid.uuid4().hex[:8]}"
        self.settings = Settings(**settings)
        self.c = self.coordinator()
        self.store = self.c.store
        self.r = self.store.client

    def coordinator(self, registry: pc.Registry | None = None, name: str = "w1") -> Coordinator:
        registry = registry or scenarios.register_all(
            pc.Registry(pc.RedisStore(self.url, prefix=self.prefix)))
        return Coordinator(registry, self.sent.extend, self.settings, worker_name=name,
                           clock=lambda: self.now, sleep=lambda s: None,
                           rng=random.Random(name))

    def deliver(self, d: Dispatch, c: Coordinator | None = None) -> None:
        (c or self.c).execute(d.workflow, d.instance_id, d.run, d.builder, d.token,
                              version=d.version, incarnation=d.incarnation)

    def drain(self, c: Coordinator | None = None) -> None:
        while self.sent:
            self.deliver(self.sent.pop(0), c)

    def take(self, builder: str) -> Dispatch:
        d = next(d for d in self.sent if d.builder == builder)
        self.sent.remove(d)
        return d

    def outcome(self, wf: str, iid: str, ref: RunRef) -> dict[str, Any] | None:
        raw = self.r.hget(self.store.keys(wf, iid).run(ref.incarnation, ref.run), "_outcome")
        return json.loads(raw) if raw else None

    def expire(self, wf: str, iid: str) -> None:
        """What Redis does once `retention` ran out: every lasting key of the instance goes."""
        for key in self.store.keys(wf, iid).lasting:
            assert self.r.ttl(key) in (-2, *range(1, 10**6)), f"{key} had no TTL"
            self.r.delete(key)

    def doc(self, wf: str, iid: str) -> dict[str, Any]:
        raw = self.r.hget(self.store.keys(wf, iid).state, "doc")
        return json.loads(raw) if raw else {}


@pytest.fixture(params=["single", "cluster"])
def rig(request: pytest.FixtureRequest) -> Iterator[Callable[..., Rig]]:
    """Rigs on the private redis-server, and on the private Redis Cluster (where the shared keys
    are written beside the instance's script instead of in it)."""
    url = request.getfixturevalue("redis_url" if request.param == "single"
                                  else "redis_cluster_url")
    made: list[Rig] = []

    def make(**settings: Any) -> Rig:
        made.append(Rig(url, **settings))
        return made[-1]

    yield make
    for r in made:
        for key in r.r.scan_iter(f"{r.prefix}:*"):
            r.r.delete(key)


def test_1_retention_expiry_starts_a_new_incarnation(rig, iid):
    t = rig(retention=50)
    first = t.c.submit("dbf", iid, [A(v=1), B(v=1), D(v=0)])
    t.drain()
    assert t.outcome("dbf", iid, first)["status"] == "completed"
    t.expire("dbf", iid)
    second = t.c.submit("dbf", iid, [A(v=5), B(v=5)])  # run 1 again, of a new incarnation
    assert second.run == 1 and second.incarnation != first.incarnation
    new_message = t.take("BA")
    # An attempt of the old life cannot commit into the new one ...
    held = Dispatch("dbf", iid, 1, "BA", 1, incarnation=first.incarnation)
    t.deliver(held)
    assert calls(iid).count("BA") == 1  # only the first life's
    # ... and the waiter of the new run is not answered with the old run's result.
    assert t.outcome("dbf", iid, second) is None
    t.deliver(new_message)
    t.drain()
    assert t.outcome("dbf", iid, second)["status"] == "paused"
    assert t.store.read_data("dbf", iid, ["C"]) == {"C": b'{"v":10}'}


def test_2_delete_then_recreate_keeps_no_expiry(rig, iid):
    t = rig()
    t.c.submit("dbf", iid, [A(v=1)])
    t.c.delete("dbf", iid)
    t.c.submit("dbf", iid, [A(v=2)])
    k = t.store.keys("dbf", iid)
    assert t.r.ttl(k.state) == -1 and t.r.ttl(k.data) == -1


def test_3_lost_commit_reply_with_a_sibling_commit_still_sends(rig, iid):
    t = rig()
    t.c.submit("diamond", iid, [A(v=1)])
    left, right = t.take("Left"), t.take("Right")
    real = t.store.cas
    once = [True]

    def lossy(*args: Any, **kw: Any) -> Any:
        got = real(*args, **kw)
        if once and got[0] == "applied":
            once.clear()
            t.deliver(right)  # a sibling commits meanwhile ...
            raise StoreUnavailable("reply lost")  # ... and Left's reply is lost
        return got

    t.store.cas = lossy  # type: ignore[method-assign]
    t.deliver(left)
    t.store.cas = real  # type: ignore[method-assign]
    t.drain()
    assert calls(iid).count("Waiter") == 1 and calls(iid).count("Finish") == 1
    assert t.doc("diamond", iid)["runs"] == []


def test_4_restart_is_one_step_and_keeps_a_delta_that_came_meanwhile(rig, iid):
    t = rig()
    t.c.submit("dbf", iid, [A(v=1), B(v=1)])
    real = t.store.cas
    once = [True]

    def racing(*args: Any, **kw: Any) -> Any:
        if once:
            once.clear()
            t.c.submit("dbf", iid, [B(v=7)])  # a producer's delta lands between read and write
        return real(*args, **kw)

    t.store.cas = racing  # type: ignore[method-assign]
    ref = t.c.restart("dbf", iid)
    t.store.cas = real  # type: ignore[method-assign]
    assert ref is not None
    assert t.store.read_data("dbf", iid, ["B"]) == {"B": b'{"v":7}'}


def test_4_restart_refused_under_new_code_changes_nothing(rig, iid):
    t = rig()
    ref = t.c.submit("dbf", iid, [A(v=1), B(v=1)])
    before = t.r.hgetall(t.store.keys("dbf", iid).state)

    class BA2(pc.Builder):
        consumes = [_incompatible_a(), scenarios.B]
        produces = scenarios.C

        def process(self, ctx: pc.BuilderContext) -> scenarios.C:
            return scenarios.C()

    class DBF2(pc.Workflow):
        builders = [BA2]
        target = scenarios.C

    t.c.registry.register("dbf", DBF2, version=2)
    with pytest.raises(pc.InvalidInput):
        t.c.restart("dbf", iid)
    assert t.r.hgetall(t.store.keys("dbf", iid).state) == before  # nothing written
    t.drain()
    assert t.outcome("dbf", iid, ref)["status"] == "paused"  # the run was not cancelled


def _incompatible_a() -> type[BaseModel]:
    class A(BaseModel):  # the same datum name, a new schema the stored A does not fit
        v: str
        required: int

    return A


def test_5_deadline_holds_after_a_completed_run(rig, iid):
    t = rig()
    t.c.submit("dbf", iid, [A(v=1), B(v=1), D(v=0)], deadline=100)
    t.drain()
    ref = t.c.submit("dbf", iid, [A(v=2)])
    assert [d.builder for d in t.sent] == ["BA"]
    t.now += 101
    t.c.reconcile()
    assert t.outcome("dbf", iid, ref)["status"] == "timed_out"
    assert t.doc("dbf", iid)["status"] == "timed_out"
    t.drain()  # the held message runs nothing
    assert calls(iid).count("BA") == 1


def test_6_retire_is_atomic_with_submits(rig, iid):
    t = rig()
    other = t.coordinator(name="w2")  # has only v1
    t.c.registry.register("dbf", scenarios.DBF, version=2)
    t.c.retire("dbf", 1)
    with pytest.raises(pc.UnknownWorkflow):
        other.submit("dbf", iid, [A(v=1)])  # it learns v1 is retired, and has no other
    assert t.store.live_instances("dbf", 1) == []
    assert not t.r.exists(t.store.keys("dbf", iid).state)


def test_7_failing_instances_do_not_starve_the_reconciler(rig, iid):
    t = rig(dispatch_timeout=5)
    t.c.submit("dbf", iid, [A(v=1), B(v=1)])
    t.sent.clear()  # the message is lost
    for i in range(250):  # instances whose look raises, all due before the good one
        k = t.store.keys("dbf", f"{iid}-bad-{i}")
        t.r.hset(k.state, mapping={"v": 1, "doc": "{not json"})
        t.store.shared.touch(k.member, 1)
    t.now += 6
    for _ in range(3):
        t.c.reconcile(limit=200)
    assert [d.builder for d in t.sent] == ["BA"]


def test_10_delete_settles_runs_in_flight(rig, iid):
    t = rig()
    ref = t.c.submit("dbf", iid, [A(v=1), B(v=1)])
    t.c.delete("dbf", iid)
    got = t.c.result("dbf", iid, ref, timeout=1)
    assert got.status == "deleted"
    k = t.store.keys("dbf", iid)
    assert t.r.ttl(k.run(ref.incarnation, ref.run)) > 0
    assert [key for key in t.r.scan_iter(f"{k.tag}:*") if t.r.ttl(key) < 0] == []


def test_11_late_data_expires_with_its_instance(rig, iid):
    t = rig(retention=50)
    t.c.submit("sleep", iid, [G(v=0)])
    # cancelled while it runs
    t.c.hooks = Hooks(before=lambda cls, data: t.c.cancel("sleep", iid))
    t.drain()
    k = t.store.keys("sleep", iid)
    assert t.r.hexists(k.late, "B")
    assert 0 < t.r.ttl(k.late) <= 50


def test_12_a_claim_brings_the_next_look_forward_to_its_lease(rig, iid, monkeypatch):
    t = rig(dispatch_timeout=10_000)
    t.c.submit("dbf", iid, [A(v=1), B(v=1)])

    def crash(name: str) -> None:
        if name == "before_commit":
            raise RuntimeError("the process died here")

    monkeypatch.setattr(faults, "point", crash)
    with pytest.raises(RuntimeError):
        t.drain()
    lease_ends = t.now + scenarios.BA.time_limit + t.settings.lease_grace
    assert t.store.index_score(t.store.keys("dbf", iid)) <= lease_ends + 0.001


def test_13_a_worker_without_the_workflow_postpones_nothing(rig, iid):
    t = rig()
    t.c.submit("dbf", iid, [A(v=1), B(v=1)])
    k = t.store.keys("dbf", iid)
    score = t.store.index_score(k)
    lacking = t.coordinator(pc.Registry(pc.RedisStore(t.url, prefix=t.prefix)), name="w2")
    t.now += 10_000
    assert lacking.reconcile()["skipped"] >= 1
    assert t.store.index_score(k) == score


def test_15_a_reused_delta_id_with_other_data_is_refused(rig, iid):
    t = rig()
    first = t.c.submit("dbf", iid, [A(v=1)], delta_id="order-1")
    assert t.c.submit("dbf", iid, [A(v=1)], delta_id="order-1") == first
    with pytest.raises(pc.DeltaConflict, match="order-1"):
        t.c.submit("dbf", iid, [A(v=2)], delta_id="order-1")
    assert t.store.read_data("dbf", iid, ["A"]) == {"A": b'{"v":1}'}


def test_lost_attempts_spend_max_lost_not_retries(rig, iid):
    t = rig(max_lost=2)
    ref = t.c.submit("sleep", iid, [G(v=0)])
    for token in (1, 2, 3):
        d = t.take("Sleepy")
        assert d.token == token
        k = t.store.keys("sleep", iid)
        # The attempt is claimed, then its process dies (the worker's parent reports it).
        t.r.hset(k.lease, "1/Sleepy", f"{token}|r|{t.now + 100:.3f}|x")
        assert t.c.lose("sleep", iid, 1, "Sleepy", token, ref.incarnation, "SIGKILL")
    with pytest.raises(pc.BuilderFailed) as info:
        t.c.result("sleep", iid, ref, timeout=1)
    assert info.value.error_type == "WorkerLost"


def test_an_expired_lease_reruns_without_spending_retries(rig, iid, monkeypatch):
    t = rig()
    ref = t.c.submit("sleep", iid, [G(v=0)])  # Sleepy has max_retries = 0
    monkeypatch.setattr(faults, "point", lambda name: (_ for _ in ()).throw(RuntimeError(name)))
    with pytest.raises(RuntimeError):
        t.drain()
    monkeypatch.undo()
    t.now += scenarios.Sleepy.time_limit + t.settings.lease_grace + 1
    assert t.c.reconcile()["lost"] == 1
    assert [(d.builder, d.token) for d in t.sent] == [("Sleepy", 2)]
    t.drain()
    assert t.c.result("sleep", iid, ref, timeout=1).status == "completed"


@pytest.mark.parametrize("bad", [" ", "\t", "ride-1 ", " ride-1"])
def test_instance_ids_with_outer_whitespace_are_refused(rig, bad):
    t = rig()
    with pytest.raises(pc.InvalidInput):
        t.c.submit("dbf", bad, [A(v=1)])


def test_7_reconcilers_spread_over_the_index_instead_of_taking_the_same_entries(rig, iid):
    """Entries a worker cannot judge (another app's workflow) are passed over without being
    postponed; a pass that always started at the same place would read only those, every time,
    and never reach the one instance it can recover."""
    from polaris_celery.stores.shared import bucket

    t = rig(dispatch_timeout=5)
    good = next(f"{iid}-{n}" for n in range(1000) if bucket(f"dbf/{iid}-{n}") == 15)
    t.c.submit("dbf", good, [A(v=1), B(v=1)])
    t.sent.clear()  # its message is lost: only a reconciler can recover it
    for b in range(15):  # ten entries of another app's workflow in every bucket before it
        names = (f"other/{iid}-{b}-{n}" for n in range(10_000))
        for member in [m for m in names if bucket(m) == b][:10]:
            t.store.shared.touch(member, 1)
    t.now += 6
    for _ in range(200):  # a pass starts in the right bucket 1 time in 16
        t.c.reconcile(limit=10)
        if t.sent:
            break
    assert [d.builder for d in t.sent] == ["BA"]
