"""The `RedisCluster` launcher: real redis-server processes formed into a real cluster."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as ClusterClient
from redis.exceptions import MovedError

from polaris_celery.errors import ConfigurationError
from polaris_celery.testing import RedisCluster, RedisServer
from polaris_celery.testing.cluster import SLOTS


@contextmanager
def client_of(cluster: RedisCluster) -> Iterator[ClusterClient]:
    """A redis-py cluster client seeded with the primaries named in the cluster's url."""
    assert cluster.url.startswith("redis+cluster://")
    seeds = [hp.rsplit(":", 1) for hp in cluster.url.removeprefix("redis+cluster://").split(",")]
    client = ClusterClient(startup_nodes=[ClusterNode(h, int(p)) for h, p in seeds],
                           decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def direct(node: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True)


def test_the_cluster_forms_with_three_primaries_each_with_a_replica(redis_cluster, capsys):
    primaries, replicas = redis_cluster.primaries(), redis_cluster.replicas()
    assert len(primaries) == 3 and len(replicas) == 3
    assert {n.port for n in primaries + replicas} == {n.port for n in redis_cluster.nodes}
    for node in redis_cluster.nodes:
        info = redis_cluster.ask(node, "CLUSTER", "INFO")
        assert "cluster_state:ok" in info
        assert f"cluster_slots_ok:{SLOTS}" in info
        assert "cluster_known_nodes:6" in info
    views = redis_cluster.view()
    by_id = {v.node_id: v.port for v in views}
    masters_of_replicas = sorted(by_id[v.master_id] for v in views if not v.is_primary)
    assert masters_of_replicas == sorted(n.port for n in primaries)
    assert sum(b - a + 1 for v in views for a, b in v.slots) == SLOTS
    ports = ",".join(f"127.0.0.1:{n.port}" for n in primaries)
    assert redis_cluster.url == f"redis+cluster://{ports}"
    assert redis_cluster.formed_in is not None and redis_cluster.formed_in < 30
    with capsys.disabled():
        print(f"\n[cluster formed in {redis_cluster.formed_in:.2f}s]")


def test_a_cluster_client_routes_hash_tags_to_different_primaries(redis_cluster):
    run = uuid.uuid4().hex[:8]
    keys: dict[int, str] = {}  # primary port -> a key it serves
    for i in range(64):
        key = f"{{{run}-{i}}}:k"
        keys.setdefault(redis_cluster.node_for_key(key).port, key)
        if len(keys) == 3:
            break
    assert set(keys) == {n.port for n in redis_cluster.primaries()}
    with client_of(redis_cluster) as client:
        for port, key in keys.items():
            assert client.set(key, f"v{port}")
            assert client.get(key) == f"v{port}"
            assert client.get_node_from_key(key).port == port
            assert redis_cluster.node_for_key(key).port == port
            # The data lives on that primary, and another one redirects.
            with direct(redis_cluster.node_for_key(key)) as owner:
                assert owner.get(key) == f"v{port}"
            other = next(n for n in redis_cluster.primaries() if n.port != port)
            with direct(other) as elsewhere, pytest.raises(MovedError, match=str(port)):
                elsewhere.get(key)


def test_kill_primary_of_promotes_its_replica_and_the_key_stays_readable(fresh_redis_cluster):
    cluster = fresh_redis_cluster
    key = f"{{failover-{uuid.uuid4().hex[:8]}}}:k"
    primary = cluster.node_for_key(key)
    me = next(v for v in cluster.view() if v.port == primary.port)
    its_replicas = {v.port for v in cluster.view() if v.master_id == me.node_id}
    assert len(its_replicas) == 1
    with direct(primary) as conn:
        assert conn.set(key, "kept")
        assert conn.execute_command("WAIT", 1, 1000) == 1  # the replica has it
    with client_of(cluster) as before:
        assert before.get(key) == "kept"
        killed = cluster.kill_primary_of(key)
        assert killed is primary and killed.proc is None
        promoted = cluster.node_for_key(key)
        assert promoted.port in its_replicas
        assert len(cluster.primaries()) == 3 and len(cluster.replicas()) == 2
        assert killed not in cluster.primaries() + cluster.replicas()
        assert all("cluster_state:ok" in cluster.ask(n, "CLUSTER", "INFO")
                   for n in cluster.live())
        assert before.get(key) == "kept"  # a client made before the failover follows it
    with client_of(cluster) as after:
        assert after.get(key) == "kept"
        assert after.set(key, "written-after")
    # The killed node, restarted, rejoins as a replica of the promoted one.
    killed.start()
    cluster.wait_healthy()
    assert killed in cluster.replicas() and cluster.node_for_key(key) is promoted
    # Cleanup ends every process it started and removes their directories.
    procs = [n.proc for n in cluster.nodes]
    cluster.cleanup()
    assert all(p is not None and p.poll() is not None for p in procs)
    assert all(n.proc is None and not os.path.exists(n.directory) for n in cluster.nodes)


def test_a_missing_redis_cli_is_a_configuration_error(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "redis-cli" else real(name))
    with pytest.raises(ConfigurationError, match="redis-cli"):
        RedisCluster()
