"""Fixtures over real parts: private redis-server processes and real Celery workers.

- `redis_server`: one private redis-server for the session (a free port, its own directory).
- `redis_cluster` / `redis_cluster_url`: one private Redis Cluster (3 primaries, 3 replicas) for
  the session; `fresh_redis_cluster`: one of a test's own, for tests that kill nodes.
- `celery_env`: a Celery app whose broker is that server (db 1) and whose registry stores in it
  (db 0), every scenario workflow registered, and an in-process worker on threads.
- `cluster_env`: the distributed coordinator with its store on that Redis Cluster.
- `run`: one callable, parametrized over the sequential, parallel and Celery executors and the
  coordinator on the cluster, so every
  semantic test runs on all three. Every one of them carries `scenarios.RECORDING_HOOKS`.
Tests never flush: each uses instance ids of its own (`iid`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery.devserver import RedisCluster, RedisServer

from . import scenarios


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    return redis_cluster.url


@pytest.fixture
def fresh_redis_cluster() -> Iterator[RedisCluster]:
    """A cluster of the test's own: kill its nodes freely."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def iid() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@dataclass
class CeleryEnv:
    app: Celery
    registry: pc.Registry
    executor: Any  # pc.CeleryExecutor
    store: Any  # pc.RedisStore
    broker_url: str
    redis_url: str


def make_app(broker_url: str, name: str = "polaris-tests") -> Celery:
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.worker_hijack_root_logger = False
    return app


@pytest.fixture(scope="session")
def celery_env(redis_server: RedisServer) -> Iterator[CeleryEnv]:
    store_url = redis_server.url
    broker_url = f"redis://127.0.0.1:{redis_server.port}/1"
    app = make_app(broker_url)
    store = pc.RedisStore(store_url)
    registry = scenarios.register_all(pc.Registry(store))
    executor = pc.CeleryExecutor(app, registry, reconcile_interval=0.5, dispatch_timeout=5,
                                 lease_grace=2, **scenarios.RECORDING_HOOKS)
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False,
                      shutdown_timeout=10):
        yield CeleryEnv(app, registry, executor, store, broker_url, store_url)


@dataclass
class ClusterEnv:
    """The distributed coordinator with its store on the private Redis Cluster; the messages it
    sends are delivered in this process (two in-process Celery workers in one process do not get
    along, and the semantic tests read what builders recorded in this process)."""

    coordinator: Any  # Coordinator
    store: Any  # pc.RedisStore
    sent: list[Any]

    def run(self, key: str, instance_id: str, *data: BaseModel) -> pc.RunResult:
        ref = self.coordinator.submit(key, instance_id, data)
        self.drain()
        return self.coordinator.result(key, instance_id, ref, timeout=10)  # type: ignore[no-any-return]

    def drain(self) -> None:
        while self.sent:
            d = self.sent.pop(0)
            self.coordinator.execute(d.workflow, d.instance_id, d.run, d.builder, d.token,
                                     version=d.version, incarnation=d.incarnation)


@pytest.fixture(scope="session")
def cluster_env(redis_cluster: RedisCluster) -> Iterator[ClusterEnv]:
    from polaris_celery.coordinator import Coordinator

    store = pc.RedisStore(redis_cluster.url)
    sent: list[Any] = []
    from polaris_celery.hooks import Hooks

    coordinator = Coordinator(scenarios.register_all(pc.Registry(store)), sent.extend,
                              hooks=Hooks(**scenarios.RECORDING_HOOKS))
    yield ClusterEnv(coordinator, store, sent)
    store.close()


@pytest.fixture(scope="session")
def memory_registry() -> pc.Registry:
    return scenarios.register_all(pc.Registry(pc.MemoryStore()))


Runner = Callable[..., pc.RunResult]


@pytest.fixture(params=["sequential", "parallel", "celery", "cluster"])
def executor_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(executor_kind: str, request: pytest.FixtureRequest) -> Runner:
    """run(key, instance_id, *data) -> RunResult on the parametrized executor."""
    if executor_kind == "cluster":
        return request.getfixturevalue("cluster_env").run  # type: ignore[no-any-return]
    if executor_kind == "celery":
        env: CeleryEnv = request.getfixturevalue("celery_env")

        def go(key: str, instance_id: str, *data: BaseModel) -> pc.RunResult:
            return env.executor.submit_delta(key, instance_id, *data).wait(timeout=30)

        return go
    registry: pc.Registry = request.getfixturevalue("memory_registry")
    ex = pc.Executor(registry, **scenarios.RECORDING_HOOKS)
    return getattr(ex, executor_kind)  # type: ignore[no-any-return]


@pytest.fixture
def stored(executor_kind: str, request: pytest.FixtureRequest) -> Callable[[str, str], set[str]]:
    """stored(key, instance_id) -> names of the data the instance holds, for that executor."""
    if executor_kind in ("celery", "cluster"):
        store = request.getfixturevalue(f"{executor_kind}_env").store
    else:
        store = request.getfixturevalue("memory_registry").store
    return lambda key, instance_id: set(store.data_names(key, instance_id))
