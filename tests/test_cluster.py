"""The store on a real Redis Cluster (3 primaries, 3 replicas, private processes): many
producers on one instance and the life of an instance. The semantic suite and the edge cases
run on the cluster too (`celery-cluster` in conftest's `run`, and `rig` in test_edges.py), and
tests/faults kills a primary under worker processes."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import polaris_celery as pc
from polaris_celery.devserver import RedisCluster

from .conftest import CeleryEnv
from .scenarios import A, B, D, F, X, Y, seen


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
