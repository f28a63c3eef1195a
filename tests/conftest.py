"""Fixtures over real parts: private redis-server processes and real Celery workers.

The project's own pytest plugin (`polaris_celery.testing.plugin`, loaded through its entry
point) provides the session's redis-server and in-process worker; these fixtures give the
project's tests their shapes on top of it.

- `redis_server`: the plugin's private redis-server for the session (`polaris_redis_server`).
- `redis_cluster` / `redis_cluster_url`: one private Redis Cluster (3 primaries, 3 replicas) for
  the session; `fresh_redis_cluster`: one of a test's own, for tests that kill nodes.
- `celery_env`: the plugin's Celery app, executor and in-process worker on threads (broker: db 1
  of that server, store: db 0), with every scenario workflow adopted into it.
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
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery.testing import InProcessWorker, RedisCluster, RedisServer

from . import scenarios

pytest_plugins = ["pytester"]  # tests/test_plugin.py runs a user's project in a pytest of its own


@pytest.fixture(scope="session")
def redis_server(polaris_redis_server: RedisServer | None) -> Iterator[RedisServer]:
    if polaris_redis_server is not None:
        yield polaris_redis_server
        return
    with RedisServer() as server:  # POLARIS_TEST_REDIS_URL named another: tests need a process
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
def polaris_settings() -> dict[str, Any]:
    """The session's in-process executor records every hook call (tests/test_hooks.py)."""
    return dict(scenarios.RECORDING_HOOKS)


@pytest.fixture(scope="session")
def celery_env(polaris_in_process: InProcessWorker) -> CeleryEnv:
    w = polaris_in_process
    w.adopt(scenarios.register_all(pc.Registry(pc.MemoryStore())))
    return CeleryEnv(w.app, w.registry, w.executor, w.store, w.broker_url, w.store_url)


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
