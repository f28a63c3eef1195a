"""The store on a real Redis Cluster (3 primaries, 3 replicas, private processes): many
producers on one instance and the life of an instance. The semantic suite and the edge cases
run on the cluster too (`cluster` in conftest's `run`, and `rig` in test_edges.py), and
tests/faults kills a primary under worker processes."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

import polaris_celery as pc
from polaris_celery.coordinator import Coordinator, RunRef
from polaris_celery.testing import RedisCluster, RedisServer

from . import scenarios
from .conftest import ClusterEnv
from .scenarios import A, B, D, F, X, Y, seen


def test_a_cluster_url_and_a_node_url_both_reach_the_cluster(redis_cluster: RedisCluster):
    node = redis_cluster.nodes[0]
    for url in (redis_cluster.url, f"redis://127.0.0.1:{node.port}/0"):
        store = pc.RedisStore(url)
        assert store.cluster, url
        store.close()


def test_the_shared_keys_spread_over_every_primary(cluster_env: ClusterEnv,
                                                  redis_cluster: RedisCluster):
    store = cluster_env.store
    owners = Counter(redis_cluster.node_for_key(store.shared.index(b)).port for b in range(16))
    assert len(owners) == 3 and min(owners.values()) >= 3, owners


def test_fifty_producers_on_one_instance_on_a_cluster(cluster_env: ClusterEnv, iid):
    c = cluster_env.coordinator

    def produce(i: int) -> RunRef:
        return c.submit("tally", iid, [Y(v=i)], delta_id=f"d{i}")

    with ThreadPoolExecutor(16) as pool:
        refs = list(pool.map(produce, range(50)))
    assert sorted(r.run for r in refs) == list(range(1, 51))
    cluster_env.drain()
    assert all(c.result("tally", iid, r, timeout=5).get(X) is not None for r in refs)
    assert sorted(s["run"] for s in seen(iid, "CountIt")) == list(range(1, 51))


def test_lifecycle_on_a_cluster(cluster_env: ClusterEnv, iid):
    c, drain = cluster_env.coordinator, cluster_env.drain
    first = c.submit("dbf", iid, [A(v=1), B(v=1), D(v=0)])
    drain()
    assert c.result("dbf", iid, first, timeout=5).get(F) == F(v=21)
    assert c.cancel("dbf", iid) is True
    again = c.restart("dbf", iid)
    drain()
    assert again is not None and c.result("dbf", iid, again, timeout=5).completed
    c.delete("dbf", iid)
    other = c.submit("dbf", iid, [A(v=2), B(v=2), D(v=0)])
    drain()
    assert other.incarnation != first.incarnation
    assert c.result("dbf", iid, other, timeout=5).completed
    k = cluster_env.store.keys("dbf", iid)
    r = cluster_env.store.client
    assert r.ttl(k.state) == -1 and r.ttl(k.run(first.incarnation, first.run)) > 0


def test_min_replicas_ack_waits_for_a_replica(iid):
    """With min_replicas_ack a change returns only once a replica has it (WAIT on the writing
    connection); with no replica to ask, the change is refused as StoreUnavailable, and the
    producer's retry under the same delta id finds it applied once a replica is there."""
    with RedisServer(extra=["--repl-diskless-sync-delay", "0"]) as primary:
        store = pc.RedisStore(primary.url, min_replicas_ack=1, replica_ack_timeout=0.2)
        registry = scenarios.register_all(pc.Registry(store))
        c = Coordinator(registry, lambda sends: None)
        with pytest.raises(pc.StoreUnavailable, match="0 of the 1 replicas"):
            c.submit("dbf", iid, [A(v=1)], delta_id="d1")
        extra = ["--replicaof", "127.0.0.1", str(primary.port)]
        with RedisServer(extra=extra) as replica:
            _synced(replica)
            ref = c.submit("dbf", iid, [A(v=1)], delta_id="d1")
            assert ref.run == 1  # the refused-but-applied delta, once
            # What the primary acknowledged is on the replica.
            k = store.keys("dbf", iid)
            assert redis.Redis(port=replica.port).hget(k.data, "A") == b'{"v":1}'
        store.close()


def test_min_replicas_ack_on_a_cluster(redis_cluster: RedisCluster, iid):
    store = pc.RedisStore(redis_cluster.url, min_replicas_ack=1)
    registry = scenarios.register_all(pc.Registry(store))
    sent: list[Any] = []
    c = Coordinator(registry, sent.extend)
    ref = c.submit("dbf", iid, [A(v=1), B(v=1), D(v=0)])
    while sent:
        d = sent.pop(0)
        c.execute(d.workflow, d.instance_id, d.run, d.builder, d.token, version=d.version,
                  incarnation=d.incarnation)
    assert c.result("dbf", iid, ref, timeout=5).get(F) == F(v=21)
    store.close()


@pytest.mark.timeout(90)
def test_a_sentinel_store_follows_a_failover(iid):
    """`redis+sentinel://` names the Sentinels and the service: the store follows the primary
    they name. SIGKILL the primary; once the Sentinel promotes the replica, instances go on."""
    with RedisServer() as primary, \
            RedisServer(extra=["--replicaof", "127.0.0.1", str(primary.port)]) as replica:
        sentinel = RedisServer(config_file=True, extra=[
            "--sentinel", "--sentinel", "monitor", "svc", "127.0.0.1", str(primary.port), "1",
            "--sentinel", "down-after-milliseconds", "svc", "1000",
            "--sentinel", "failover-timeout", "svc", "5000"])
        with sentinel:
            url = f"redis+sentinel://127.0.0.1:{sentinel.port}/svc"
            _synced(replica)
            # Before: every change waits for the replica (min_replicas_ack); after the failover
            # the new primary has no replica left, so the second store asks for none.
            acked, plain = pc.RedisStore(url, min_replicas_ack=1), pc.RedisStore(url)

            def drive(store: pc.RedisStore, instance_id: str) -> pc.RunResult:
                sent: list[Any] = []
                c = Coordinator(scenarios.register_all(pc.Registry(store)), sent.extend)
                deadline = time.monotonic() + 30
                while True:
                    try:
                        ref = c.submit("dbf", instance_id, [A(v=1), B(v=1), D(v=0)])
                        while sent:
                            d = sent.pop(0)
                            c.execute(d.workflow, d.instance_id, d.run, d.builder, d.token,
                                      version=d.version, incarnation=d.incarnation)
                        return c.result("dbf", instance_id, ref, timeout=5)
                    except pc.StoreUnavailable:  # while the Sentinel fails over
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)

            assert drive(acked, f"{iid}-before").get(F) == F(v=21)
            primary.kill()
            assert drive(plain, f"{iid}-after").get(F) == F(v=21)
            assert redis.Redis(port=replica.port).execute_command("ROLE")[0] == b"master"
            # What was committed before the failover is on the new primary.
            k = plain.keys("dbf", f"{iid}-before")
            assert redis.Redis(port=replica.port).hget(k.data, "F") == b'{"v":21}'
            acked.close()
            plain.close()


def _synced(replica: RedisServer) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and b"master_link_status:up" not in \
            redis.Redis(port=replica.port).execute_command("INFO", "replication"):
        time.sleep(0.05)
