"""Sibling commits of a fan-out apply without the version fence (machine.Machine.seal_quiet),
and are still refused when what they decided no longer holds. Decisions are made here from
one snapshot, as two workers committing at the same moment would, and applied one after the
other through the real cas.lua on a real Redis."""

from __future__ import annotations

import json

from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery import codec, reads, transitions
from polaris_celery.coordinator import Coordinator, Settings
from polaris_celery.fields import NeedMore
from polaris_celery.frontier import BuilderError


class Go(BaseModel):
    v: int = 0


class Q1(BaseModel):
    v: int = 0


class Q2(BaseModel):
    v: int = 0


class Q3(BaseModel):
    v: int = 0


class QDone(BaseModel):
    v: int = 0


def _branch(i: int, out: type[BaseModel]) -> type[pc.Builder]:
    return type(f"QB{i}", (pc.Builder,), {"consumes": [Go], "produces": out, "__module__": __name__,
                                          "max_retries": 0,
                                          "process": lambda self, ctx: out(v=i)})


class QJoin(pc.Builder):
    consumes = [Q1, Q2, Q3]
    produces = QDone

    def process(self, ctx: pc.BuilderContext) -> QDone:
        return QDone(v=1)


class QSideOut(BaseModel):
    v: int = 0


class ThreeWay(pc.Workflow):
    builders = [_branch(1, Q1), _branch(2, Q2), _branch(3, Q3), QJoin]
    target = QDone


class ThreeWayAndSide(pc.Workflow):
    """The same, and a builder beside the fan-out, still active when the join is released."""

    builders = [_branch(1, Q1), _branch(2, Q2), _branch(3, Q3), QJoin, _branch(4, QSideOut)]
    target = QDone


class QLater(pc.Builder):
    """Needs what this test never sends."""

    consumes = [QSideOut]
    produces = QDone

    def process(self, ctx: pc.BuilderContext) -> QDone:
        return QDone(v=1)


class TwoLoose(pc.Workflow):
    """Two branches and nothing after them: the second to commit settles the run."""

    builders = [_branch(1, Q1), _branch(2, Q2), QLater]
    target = QDone


FLOWS = {"three-way": ThreeWay, "three-way-side": ThreeWayAndSide, "two-loose": TwoLoose}


def _setup(redis_url: str, iid: str, key: str = "three-way"
           ) -> tuple[Coordinator, list, pc.RunRef]:
    registry = pc.Registry(pc.RedisStore(redis_url))
    registry.register(key, FLOWS[key])
    sent: list = []
    # One instant throughout, as in the simulator: a step that changes nothing else leaves the
    # document as it was (its `updated` the same), so only the header tells what changed.
    c = Coordinator(registry, sent.extend, Settings(inline=False), clock=lambda: 1_000_000.0)
    ref = c.submit(key, iid, [Go()])
    sent.clear()
    return c, sent, ref


def _decide(c: Coordinator, iid: str, builder: str, value: BaseModel, key: str = "three-way"):
    """The commit of attempt 1 of `builder`, decided from what a commit reads now."""
    graph = c.registry.graph(key)
    k = c.store.keys(key, iid)
    want = reads.commit(graph, 1, builder)
    while True:  # as the coordinator does: read what the decision asks for, decide again
        snap, _ = c.store.view(k, want)
        try:
            step = transitions.commit(c.machine, graph, k, snap, 1, builder, 1,
                                      codec.encode(value), None, by="test", started=0.0,
                                      seconds=0.0, once=f"t/{builder}", inline_claim=None,
                                      now=c.clock())
        except NeedMore as more:
            want = reads.grow(want, more)
            continue
        assert step is not None
        return k, snap, step


def test_siblings_decided_at_once_both_apply_and_the_last_releases_the_join(redis_url, iid):
    c, _sent, ref = _setup(redis_url, iid)
    k, snap, first = _decide(c, iid, "QB1", Q1(v=1))
    assert first.ops.fenced  # the join starts waiting: not a quiet step
    assert c.store.cas(first.ops, snap, k, first.fx)[0] == "applied"
    k, snap2, second = _decide(c, iid, "QB2", Q2(v=2))
    _, snap3, third = _decide(c, iid, "QB3", Q3(v=3))
    assert not second.ops.fenced and not third.ops.fenced and not second.sends
    assert c.store.cas(second.ops, snap2, k, second.fx)[0] == "applied"
    # QB3 decided the join still had an active upstream (QB2): no longer true, so refused ...
    assert c.store.cas(third.ops, snap3, k, third.fx)[0] == "conflict"
    # ... and decided again, it releases the join.
    k, snap3, third = _decide(c, iid, "QB3", Q3(v=3))
    assert third.ops.fenced and [d.builder for d in third.sends] == ["QJoin"]
    assert c.store.cas(third.ops, snap3, k, third.fx)[0] == "applied"
    c.execute("three-way", iid, 1, "QJoin", 1, incarnation=ref.incarnation)
    result = c.result("three-way", iid, ref, timeout=5)
    assert result.completed and result.get(QDone) == QDone(v=1)
    # The order the script gave each datum is the order they were committed in.
    outcome = json.loads(c.store.history(k)[0])
    assert outcome["produced"] == ["Q1", "Q2", "Q3", "QDone"]


def test_a_quiet_commit_of_a_superseded_attempt_is_refused(redis_url, iid):
    c, sent, ref = _setup(redis_url, iid)
    k, snap, first = _decide(c, iid, "QB1", Q1(v=1))
    assert c.store.cas(first.ops, snap, k, first.fx)[0] == "applied"
    k, snap2, second = _decide(c, iid, "QB2", Q2(v=2))
    assert not second.ops.fenced
    # Meanwhile QB2's attempt 1 was lost and QB2 re-dispatched under attempt 2.
    lost = c.lose("three-way", iid, 1, "QB2", 1, ref.incarnation, "test")
    assert lost and [d.token for d in sent if d.builder == "QB2"] == [2]
    assert c.store.cas(second.ops, snap2, k, second.fx)[0] == "conflict"


def test_the_join_is_released_while_another_builder_still_runs(redis_url, iid):
    """The run's active count stays above 0 (QB4 runs on): only the join's own count of active
    ancestors tells the last branch that it must release the join."""
    key = "three-way-side"
    c, _sent, _ = _setup(redis_url, iid, key)
    k, snap, first = _decide(c, iid, "QB1", Q1(v=1), key)
    assert c.store.cas(first.ops, snap, k, first.fx)[0] == "applied"
    k, snap2, second = _decide(c, iid, "QB2", Q2(v=2), key)
    _, snap3, third = _decide(c, iid, "QB3", Q3(v=3), key)
    assert c.store.cas(second.ops, snap2, k, second.fx)[0] == "applied"
    assert c.store.cas(third.ops, snap3, k, third.fx)[0] == "conflict"
    k, snap3, third = _decide(c, iid, "QB3", Q3(v=3), key)
    assert [d.builder for d in third.sends] == ["QJoin"]


def test_the_last_of_two_loose_branches_settles_the_run(redis_url, iid):
    """Nothing waits: only the run's active count tells the second branch that it ends the
    run (a quiet commit never settles one)."""
    key = "two-loose"
    c, _sent, ref = _setup(redis_url, iid, key)
    k, snap1, first = _decide(c, iid, "QB1", Q1(v=1), key)
    _, snap2, second = _decide(c, iid, "QB2", Q2(v=2), key)
    assert not first.ops.fenced and not second.ops.fenced
    assert c.store.cas(first.ops, snap1, k, first.fx)[0] == "applied"
    assert c.store.cas(second.ops, snap2, k, second.fx)[0] == "conflict"
    k, snap2, second = _decide(c, iid, "QB2", Q2(v=2), key)
    assert second.ops.fenced and second.settled == [1]
    assert c.store.cas(second.ops, snap2, k, second.fx)[0] == "applied"
    assert c.result(key, iid, ref, timeout=5).status == "paused"


def test_a_quiet_commit_after_a_sibling_failed_the_run_is_refused(redis_url, iid):
    """The run stopped meanwhile (its header changed in more than its counters, which alone
    would still allow the commit: QB4 runs on): the quiet commit, decided from the running
    run, is refused and decided again."""
    key = "three-way-side"
    c, _sent, _ = _setup(redis_url, iid, key)
    k, snap, first = _decide(c, iid, "QB1", Q1(v=1), key)
    assert c.store.cas(first.ops, snap, k, first.fx)[0] == "applied"
    k, snap2, second = _decide(c, iid, "QB2", Q2(v=2), key)
    assert not second.ops.fenced
    graph = c.registry.graph(key)
    snap3, _ = c.store.snapshot(k)
    failing = transitions.commit(c.machine, graph, k, snap3, 1, "QB3", 1, None,
                                 BuilderError("QB3", "Boom", "no"), by="test", started=0.0,
                                 seconds=0.0, once="t/QB3", inline_claim=None, now=c.clock())
    assert failing is not None and failing.ops.fenced
    assert c.store.cas(failing.ops, snap3, k, failing.fx)[0] == "applied"
    assert c.store.cas(second.ops, snap2, k, second.fx)[0] == "conflict"
