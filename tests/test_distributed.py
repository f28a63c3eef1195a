"""What only the distributed executor has: processes, concurrency, producers, brokers, recovery."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery import Celery
from celery.signals import before_task_publish
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery.coordinator import Coordinator, Settings

from . import scenarios
from .apps import probe_app
from .conftest import CeleryEnv, make_app
from .scenarios import A, B, C, D, F, G, X, Y, calls, seen
from .workers import worker_process


@pytest.mark.parametrize("store", ["one node", "cluster"])
def test_builders_run_in_other_processes_and_fan_out_runs_concurrently(
        redis_server, store: str, request: pytest.FixtureRequest):
    """Worker processes on a store on one Redis, and on a Redis Cluster (the broker stays on
    one node: Celery's Redis transport has no cluster support)."""
    broker = f"redis://127.0.0.1:{redis_server.port}/2"
    store_url = redis_server.url if store == "one node" else \
        request.getfixturevalue("redis_cluster_url")
    env = {"POLARIS_REDIS_URL": store_url, "POLARIS_BROKER_URL": broker}
    producer = probe_app.build(store_url, broker)
    with worker_process("tests.apps.probe_app", env, name="p1", concurrency=2), \
            worker_process("tests.apps.probe_app", env, name="p2", concurrency=2):
        h = producer.submit_delta("fan-out", f"f-{uuid.uuid4().hex[:8]}", probe_app.Go(sleep=0.6))
        r = h.wait(timeout=30)
    ran = [r.get(t) for t in (probe_app.R1, probe_app.R2, probe_app.R3, probe_app.R4)]
    assert all(x is not None for x in ran)
    pids = {x.pid for x in ran}
    assert os.getpid() not in pids  # not in this (the producer's) process
    assert len(pids) >= 2  # spread over processes
    # At least two of the four 0.6 s probes overlapped in time: they ran at the same time.
    overlaps = sum(1 for a in ran for b in ran
                   if a is not b and a.start < b.end and b.start < a.end)
    assert overlaps >= 2
    assert r.completed and sorted(r.get(probe_app.AllRan).pids) == sorted(x.pid for x in ran)


def test_fifty_producers_on_one_instance_lose_nothing(celery_env: CeleryEnv, iid):
    n = 50

    def produce(i: int) -> pc.RunHandle:
        return celery_env.executor.submit_delta("tally", iid, Y(v=i), delta_id=f"d{i}")

    with ThreadPoolExecutor(16) as pool:
        handles = list(pool.map(produce, range(n)))
    runs = [h.run for h in handles]
    assert sorted(runs) == list(range(1, n + 1))  # one run per delta, none merged or lost
    assert len({h.incarnation for h in handles}) == 1  # all of one life of the instance
    results = [h.wait(30) for h in handles]
    assert all(r.get(X) is not None for r in results)
    ran = [s["run"] for s in seen(iid, "CountIt")]
    assert sorted(ran) == list(range(1, n + 1))  # each run's builder ran exactly once
    assert celery_env.store.data_names("tally", iid) == {"X", "Y"}
    k = celery_env.store.keys("tally", iid)
    assert celery_env.store.client.hlen(k.deltas) == n
    assert celery_env.store.client.hlen(k.lease) == 0  # nothing left in flight


def test_same_delta_id_applies_once(celery_env: CeleryEnv, iid):
    ex = celery_env.executor
    h1 = ex.submit_delta("optional", iid, A(v=1), delta_id="req-1")
    h2 = ex.submit_delta("optional", iid, A(v=1), delta_id="req-1")
    assert h1.run == h2.run
    h1.wait(10)
    assert calls(iid) == ["WithOptional"]
    h3 = ex.submit_delta("optional", iid, A(v=1), delta_id="req-2")
    assert h3.run != h1.run
    h3.wait(10)
    assert calls(iid) == ["WithOptional", "WithOptional"]


def test_messages_carry_ids_only_as_json(celery_env: CeleryEnv, iid):
    captured: list[tuple[dict, dict]] = []

    def grab(sender=None, body=None, headers=None, properties=None, **kw):
        if str(sender).startswith("polaris."):
            captured.append((headers or {}, body))

    before_task_publish.connect(grab, weak=False)
    try:
        celery_env.executor.submit_delta("fan-in", iid, A(v=123456789)).wait(10)
    finally:
        before_task_publish.disconnect(grab)
    assert len(captured) == 7  # the seven parts; the join runs inline after the last part
    for headers, body in captured:
        args, kwargs, _ = body
        assert args == [] or args == ()
        assert set(kwargs) == {"instance", "run", "attempt", "version", "inc"}
        assert kwargs["instance"] == iid and "123456789" not in repr(body)
        assert headers["task"].startswith("polaris.fan-in.Part")


def test_app_accepting_pickle_is_refused(redis_url):
    app = Celery("unsafe", broker=redis_url, set_as_current=False)
    app.conf.accept_content = ["json", "pickle"]
    registry = scenarios.register_all(pc.Registry(pc.RedisStore(redis_url)))
    with pytest.raises(pc.ConfigurationError, match="pickle"):
        pc.CeleryExecutor(app, registry, reconciler=False)


def test_distributed_executor_needs_redis_store(redis_url):
    app = Celery("mem", broker=redis_url, set_as_current=False)
    with pytest.raises(pc.ConfigurationError, match="RedisStore"):
        pc.CeleryExecutor(app, scenarios.register_all(pc.Registry(pc.MemoryStore())))


def test_wait_times_out_without_polling(celery_env: CeleryEnv, iid):
    h = celery_env.executor.submit_delta("sleep", iid, G(v=1500))
    t0 = time.monotonic()
    with pytest.raises(pc.WaitTimeout):
        h.wait(timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 2
    assert h.wait(timeout=10).get(B) == B(v=1)


def test_many_waiters_on_one_run_all_wake(celery_env: CeleryEnv, iid):
    h = celery_env.executor.submit_delta("sleep", iid, G(v=300))
    results: list[pc.RunResult] = []
    threads = [threading.Thread(target=lambda: results.append(h.wait(10))) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(results) == 5 and all(r.get(B) == B(v=1) for r in results)


def test_marked_but_unsent_dispatch_is_resent_by_the_workers_reconciler(celery_env, iid):
    """A producer that dies between its commit and its send: the builders were marked, no
    message went out. The workers' own reconciler finds the overdue dispatch and sends it."""
    dropped: list = []
    lossy = Coordinator(celery_env.registry, dropped.extend, Settings(dispatch_timeout=0.5))
    run = lossy.submit("dbf", iid, [A(v=1), B(v=1), D(v=0)])
    assert [d.builder for d in dropped] == ["BA"]  # marked, "never sent"
    result = celery_env.executor.coordinator.result("dbf", iid, run, timeout=15)
    assert result.completed and result.get(F) == F(v=21)
    assert calls(iid) == ["BA", "BB", "BC"]  # and nothing ran twice


def test_reconciler_is_idempotent_when_nothing_is_due(celery_env: CeleryEnv, iid):
    celery_env.executor.submit_delta("dbf", iid, A(v=1), B(v=1), D(v=1)).wait(10)
    counts = [celery_env.executor.reconcile() for _ in range(3)]
    assert all(c["resent"] == 0 and c["lost"] == 0 for c in counts)
    assert calls(iid) == ["BA", "BB", "BC"]
    member = f"dbf/{iid}"
    assert celery_env.store.index_score(celery_env.store.keys(*member.split("/", 1))) is None


def test_rabbitmq_broker(redis_server, iid):
    """The same fan-out with RabbitMQ (AMQP) as the broker and worker processes; the store
    stays Redis."""
    broker = "amqp://guest:guest@127.0.0.1:5672//"
    queue = f"polaris-test-{uuid.uuid4().hex[:8]}"
    producer = probe_app.build(redis_server.url, broker, queue)
    try:
        with producer.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # the machine's RabbitMQ is part of this project's setup
        pytest.fail(f"RabbitMQ at 127.0.0.1:5672 unreachable: {exc}")
    env = {"POLARIS_REDIS_URL": redis_server.url, "POLARIS_BROKER_URL": broker,
           "POLARIS_QUEUE": queue}
    try:
        with worker_process("tests.apps.probe_app", env, name="amqp1", concurrency=2):
            r = producer.submit_delta("fan-out", iid, probe_app.Go(sleep=0.1)).wait(30)
        assert r.completed and len(r.get(probe_app.AllRan).pids) == 4
        assert "amqp" in producer.app.connection_for_write().transport_cls
    finally:
        with producer.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def test_inline_off_sends_every_builder_through_the_broker(celery_env: CeleryEnv, iid):
    coordinator = celery_env.executor.coordinator
    saved = coordinator.settings
    sent: list[str] = []

    def grab(sender=None, body=None, **kw):
        if body and body[1].get("instance") == iid:
            sent.append(str(sender))

    before_task_publish.connect(grab, weak=False)
    coordinator.settings = dataclasses.replace(saved, inline=False)
    try:
        assert celery_env.executor.submit_delta("dbf", iid, A(v=1), B(v=1), D(v=0)).wait(15)\
            .completed
    finally:
        coordinator.settings = saved
        before_task_publish.disconnect(grab)
    assert sent == ["polaris.dbf.BA", "polaris.dbf.BB", "polaris.dbf.BC"]
    assert calls(iid) == ["BA", "BB", "BC"]


def test_inline_on_runs_a_lone_successor_without_a_message(celery_env: CeleryEnv, iid):
    sent: list[str] = []

    def grab(sender=None, body=None, **kw):
        if body and body[1].get("instance") == iid:
            sent.append(str(sender))

    before_task_publish.connect(grab, weak=False)
    try:
        assert celery_env.executor.submit_delta("dbf", iid, A(v=1), B(v=1), D(v=0)).wait(15)\
            .completed
    finally:
        before_task_publish.disconnect(grab)
    assert sent == ["polaris.dbf.BA"]
    assert calls(iid) == ["BA", "BB", "BC"]


def test_store_outage_is_a_clear_error(iid):
    from polaris_celery.testing import RedisServer

    with RedisServer() as server:
        app = make_app(server.url, name="outage")
        registry = scenarios.register_all(pc.Registry(pc.RedisStore(server.url)))
        ex = pc.CeleryExecutor(app, registry, reconciler=False)
        server.stop()
        with pytest.raises(pc.StoreUnavailable, match="Redis unreachable"):
            ex.submit_delta("dbf", iid, A(v=1))
    _ = C, D


def test_a_wide_fan_out_shares_messages_and_runs_each_builder_once(celery_env: CeleryEnv, iid):
    """Beyond chunks.SPREAD dispatches of one run, builders share broker messages (fewer
    messages to publish and to receive), each still claimed and committed on its own."""
    captured: list[dict] = []

    def grab(sender=None, body=None, **kw):
        if str(sender).startswith("polaris.wide."):
            captured.append(body[1])

    before_task_publish.connect(grab, weak=False)
    try:
        r = celery_env.executor.submit_delta("wide", iid, A(v=1)).wait(20)
    finally:
        before_task_publish.disconnect(grab)
    assert r.completed and r.get(scenarios.WideDone) == scenarios.WideDone(
        v=sum(range(scenarios.WIDE)))
    ran = calls(iid)
    assert sorted(ran) == sorted([f"Wide{i}" for i in range(scenarios.WIDE)] + ["WideJoin"])
    carried = [1 + len(kw.get("more", [])) for kw in captured]
    assert sum(carried) == scenarios.WIDE  # every part dispatched once (the join ran inline)
    assert len(captured) == 35 and max(carried) == 2  # 70 over at least SPREAD=32 messages


class Hop0(BaseModel):
    v: int = 0


class Hop1(BaseModel):
    v: int = 0


class Hop2(BaseModel):
    v: int = 0


class HopStep1(pc.Builder):
    consumes = [Hop0]
    produces = Hop1

    def process(self, ctx: pc.BuilderContext) -> Hop1:
        return Hop1(v=1)


class HopStep2(pc.Builder):
    consumes = [Hop1]
    produces = Hop2

    def process(self, ctx: pc.BuilderContext) -> Hop2:
        return Hop2(v=2)


class TwoHops(pc.Workflow):
    builders = [HopStep1, HopStep2]
    target = Hop2


@pytest.mark.parametrize("inline", [True, False])
def test_a_chain_commits_and_settles_in_one_script_per_builder(redis_url, iid, inline: bool):
    """Claim, then one fenced script per builder, the one settling the run included: it read
    the whole run with its claim (reads.commit), so settling costs no read of its own."""
    registry = pc.Registry(pc.RedisStore(redis_url))
    registry.register("two-steps", TwoHops)
    sent: list = []
    c = Coordinator(registry, sent.extend, Settings(inline=inline))
    ref = c.submit("two-steps", iid, [Hop0()])
    counts = {"view": 0, "cas": 0, "begin": 0}
    def counting(name: str):
        real = getattr(c.store, name)

        def counted(*a, **kw):
            counts[name] += 1
            return real(*a, **kw)
        return counted

    for name in counts:
        setattr(c.store, name, counting(name))
    while sent:
        d = sent.pop(0)
        c.execute(d.workflow, d.instance_id, d.run, d.builder, d.token, version=d.version,
                  incarnation=d.incarnation)
    assert c.result("two-steps", iid, ref, timeout=5).get(Hop2) == Hop2(v=2)
    assert counts == {"view": 0, "cas": 2, "begin": 1 if inline else 2}
    # ... and it left nothing of the run behind in the state hash.
    state = c.store.client.hkeys(c.store.keys("two-steps", iid).state)
    assert sorted(state) == [b"doc", b"inc", b"v"]


def test_a_packed_message_past_pack_spill_sends_the_rest_alone(celery_env: CeleryEnv, iid):
    """A packed message's builders queue behind each other in one worker: once the message has
    taken `pack_spill`, the builders it still carries go out as messages of their own, so slow
    builders spread over every worker. With pack_spill=0 each packed message runs its first
    builder and sends the rest on; every builder still runs exactly once."""
    captured: list[dict] = []

    def grab(sender=None, body=None, **kw):
        if str(sender).startswith("polaris.wide."):
            captured.append(body[1])

    ex = celery_env.executor
    before = ex.coordinator.settings
    ex.coordinator.settings = dataclasses.replace(before, pack_spill=0.0)
    before_task_publish.connect(grab, weak=False)
    try:
        r = ex.submit_delta("wide", iid, A(v=1)).wait(20)
    finally:
        before_task_publish.disconnect(grab)
        ex.coordinator.settings = before
    assert r.completed and r.get(scenarios.WideDone) == scenarios.WideDone(
        v=sum(range(scenarios.WIDE)))
    ran = calls(iid)
    assert sorted(ran) == sorted([f"Wide{i}" for i in range(scenarios.WIDE)] + ["WideJoin"])
    packed = [kw for kw in captured if kw.get("more")]
    alone = [kw for kw in captured if not kw.get("more")]
    assert len(packed) == 35  # 70 builders over at least SPREAD=32 messages, 2 each
    # each packed message ran its first builder and spilled its second, under the same attempt
    assert sorted((kw["run"], kw["attempt"]) for kw in alone) == sorted(
        (kw["run"], kw["more"][0][1]) for kw in packed)
    assert len(alone) == 35
