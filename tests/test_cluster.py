"""The store on a real Redis Cluster (3 primaries, 3 replicas, private processes): many
producers on one instance, the life of an instance, and a primary SIGKILLed mid-run. The
semantic suite and the edge cases run on the cluster too (`celery-cluster` in conftest's `run`,
and `rig` in test_edges.py)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery.contrib.testing.worker import start_worker

import polaris_celery as pc
from polaris_celery.devserver import RedisCluster

from . import scenarios
from .conftest import CeleryEnv, make_app
from .scenarios import A, B, D, F, G, X, Y, seen


def test_a_cluster_url_and_a_node_url_both_reach_the_cluster(redis_cluster: RedisCluster):
    node = redis_cluster.nodes[0]
    for url in (redis_cluster.url, f"redis://127.0.0.1:{node.port}/0"):
        store = pc.RedisStore(url)
        assert store.cluster, url
        store.close()


def test_the_shared_keys_spread_over_every_primary(celery_cluster_env: CeleryEnv,
                                                  redis_cluster: RedisCluster):
    store = celery_cluster_env.store
    owners = Counter(redis_cluster.node_for_key(store.shared.index(b)).port for b in range(16))
    assert len(owners) == 3 and min(owners.values()) >= 3, owners


def test_fifty_producers_on_one_instance_on_a_cluster(celery_cluster_env: CeleryEnv, iid):
    ex = celery_cluster_env.executor

    def produce(i: int) -> pc.RunHandle:
        return ex.submit_delta("tally", iid, Y(v=i), delta_id=f"d{i}")

    with ThreadPoolExecutor(16) as pool:
        handles = list(pool.map(produce, range(50)))
    assert sorted(h.run for h in handles) == list(range(1, 51))
    assert all(h.wait(30).get(X) is not None for h in handles)
    assert sorted(s["run"] for s in seen(iid, "CountIt")) == list(range(1, 51))


def test_lifecycle_on_a_cluster(celery_cluster_env: CeleryEnv, iid):
    ex = celery_cluster_env.executor
    first = ex.submit_delta("dbf", iid, A(v=1), B(v=1), D(v=0))
    assert first.wait(10).get(F) == F(v=21)
    assert ex.cancel("dbf", iid) is True
    again = ex.restart("dbf", iid)
    assert again is not None and again.wait(10).completed
    ex.delete("dbf", iid)
    other = ex.submit_delta("dbf", iid, A(v=2), B(v=2), D(v=0))
    assert other.incarnation != first.incarnation and other.wait(10).completed
    k = celery_cluster_env.store.keys("dbf", iid)
    r = celery_cluster_env.store.client
    assert r.ttl(k.state) == -1 and r.ttl(k.run(first.incarnation, first.run)) > 0


@pytest.mark.timeout(120)
def test_a_primary_killed_mid_run_loses_no_instance(fresh_redis_cluster: RedisCluster,
                                                    redis_server):
    """SIGKILL the primary serving some instances while 24 of them run; its replica is promoted
    (cluster-node-timeout 2 s) and every instance still reaches its target."""
    cluster = fresh_redis_cluster
    app = make_app(f"redis://127.0.0.1:{redis_server.port}/7", name="polaris-failover")
    store = pc.RedisStore(cluster.url)
    registry = scenarios.register_all(pc.Registry(store))
    ex = pc.CeleryExecutor(app, registry, reconcile_interval=0.5, dispatch_timeout=3,
                           lease_grace=1)
    tag = uuid.uuid4().hex[:6]
    ids = [f"fo-{tag}-{i}" for i in range(24)]

    def submit(iid: str) -> pc.RunHandle:
        deadline = time.monotonic() + 30
        while True:
            try:  # a producer retries with its delta id, as the README says
                return ex.submit_delta("sleep", iid, G(v=400), delta_id="once")
            except pc.StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    with start_worker(app, pool="threads", concurrency=8, perform_ping_check=False,
                      shutdown_timeout=10):
        handles = [submit(iid) for iid in ids[:12]]
        victim = store.keys("sleep", ids[0]).state
        killed = cluster.kill_primary_of(victim)
        handles += [submit(iid) for iid in ids[12:]]
        results = [h.wait(60) for h in handles]
    assert [r.get(scenarios.B) for r in results] == [scenarios.B(v=1)] * len(ids)
    assert cluster.node_for_key(victim).port != killed.port  # a replica took its slots
    store.close()
