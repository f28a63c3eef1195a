"""The pytest plugin (entry point `pytest11: polaris`): test your workflows on real parts.

Fixtures:
  polaris_redis           URL of a private redis-server for the session (POLARIS_TEST_REDIS_URL
                          names an existing one instead; nothing is ever flushed)
  polaris_broker          the Celery broker URL (db 1 of that server; POLARIS_TEST_BROKER_URL)
  polaris_registry        your `pc.Registry`: override this fixture, or set the ini option
                          `polaris_registry = package.module:attribute`
  polaris_settings        `CeleryExecutor` settings for the tests (recovery in seconds)
  polaris_executor        a `pc.CeleryExecutor` running your workflows on an in-process worker
  polaris_flow            `polaris_flow("cab-ride")` -> a `Flow` on a new instance
  polaris_chaos           the `Chaos` of this test, or None
  polaris_worker_process  `polaris_worker_process("myapp.worker")`: a `celery worker` process
                          on the same Redis, for tests that need process boundaries

Chaos mode: `@pytest.mark.polaris_chaos` (optionally with `seed=`, `duplicate=`, `kill=`,
`lose_reply=`), or `polaris_chaos` parametrized indirectly (None, True, a dict or a `Chaos`).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .. import faults
from ..executors.celery import CeleryExecutor
from ..registry import Registry
from .chaos import Chaos
from .flow import Flow
from .inprocess import InProcessWorker
from .servers import RedisServer
from .workers import WorkerProcess

REDIS_ENV = "POLARIS_TEST_REDIS_URL"
BROKER_ENV = "POLARIS_TEST_BROKER_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("polaris_registry", "module:attribute of the pc.Registry your tests run "
                  "(a Registry, or a function returning one)", default="")
    parser.addini("polaris_worker_concurrency", "threads of the in-process polaris worker",
                  default="4")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "polaris_chaos(seed=0, duplicate=1.0, kill=0.5, lose_reply=0.5): deliver "
        "every message twice, kill attempts before their commit, lose commit replies")


def load_registry(spec: str) -> Registry:
    """`package.module:attribute` -> the Registry it names (called first if a function)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise pytest.UsageError(f"polaris_registry = {spec!r}: write it as module:attribute")
    try:
        found: Any = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise pytest.UsageError(f"polaris_registry = {spec!r}: {exc}") from exc
    if inspect.isfunction(found):
        found = found()
    if not isinstance(found, Registry):
        raise pytest.UsageError(f"polaris_registry = {spec!r} is a {type(found).__name__}, "
                                "not a pc.Registry")
    return found


@pytest.fixture(scope="session")
def polaris_redis_server() -> Iterator[RedisServer | None]:
    """The private redis-server this session started (None under POLARIS_TEST_REDIS_URL)."""
    if os.environ.get(REDIS_ENV):
        yield None
        return
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def polaris_redis(polaris_redis_server: RedisServer | None) -> str:
    if polaris_redis_server is None:
        return os.environ[REDIS_ENV]
    return polaris_redis_server.url


@pytest.fixture(scope="session")
def polaris_broker(polaris_redis_server: RedisServer | None, polaris_redis: str) -> str:
    if os.environ.get(BROKER_ENV):
        return os.environ[BROKER_ENV]
    if polaris_redis_server is None:
        return polaris_redis  # the broker's keys and the store's never meet
    return f"redis://127.0.0.1:{polaris_redis_server.port}/1"


@pytest.fixture(scope="session")
def polaris_registry(pytestconfig: pytest.Config) -> Registry:
    spec = str(pytestconfig.getini("polaris_registry") or "")
    if not spec:
        raise pytest.UsageError(
            "polaris: no registry named; set `polaris_registry = package.module:attribute` in "
            "your pytest configuration, or override the `polaris_registry` fixture")
    return load_registry(spec)


@pytest.fixture(scope="session")
def polaris_settings() -> dict[str, Any]:
    """Override to change the executor's settings (`inline`, `max_lost`, ...)."""
    return {}


@pytest.fixture(scope="session")
def polaris_in_process(polaris_redis: str, polaris_broker: str, pytestconfig: pytest.Config,
                       polaris_settings: dict[str, Any]) -> Iterator[InProcessWorker]:
    """The session's one app, executor and in-process worker (see `InProcessWorker`)."""
    raw = str(pytestconfig.getini("polaris_worker_concurrency"))
    if not raw.isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"polaris_worker_concurrency = {raw!r}: a positive integer")
    world = InProcessWorker(polaris_redis, polaris_broker, concurrency=int(raw),
                            settings=polaris_settings)
    try:
        yield world
    finally:
        world.close()


def _chaos_of(value: Any) -> Chaos | None:
    if value is None or value is False:
        return None
    if value is True:
        return Chaos()
    if isinstance(value, Chaos):
        return value
    if isinstance(value, dict):
        return Chaos(**value)
    raise pytest.UsageError(f"polaris_chaos: None, True, a dict of Chaos options or a Chaos, "
                            f"got {value!r}")


@pytest.fixture
def polaris_chaos(request: pytest.FixtureRequest) -> Iterator[Chaos | None]:
    """This test's chaos, installed at the fault points while it runs (None: no chaos)."""
    marker = request.node.get_closest_marker("polaris_chaos")
    if hasattr(request, "param"):
        chaos = _chaos_of(request.param)
    elif marker is not None:
        if marker.args:
            raise pytest.UsageError("polaris_chaos takes keyword arguments only")
        try:
            chaos = Chaos(**marker.kwargs)
        except TypeError as exc:
            raise pytest.UsageError(f"polaris_chaos: {exc}") from exc
    else:
        chaos = None
    before = faults.install(chaos) if chaos is not None else None
    try:
        yield chaos
    finally:
        if chaos is not None:
            faults.install(before)
            request.node.add_report_section("call", "polaris chaos", chaos.summary())


@pytest.fixture
def polaris_executor(polaris_in_process: InProcessWorker, polaris_registry: Registry,
                     polaris_chaos: Chaos | None) -> CeleryExecutor:
    """A CeleryExecutor running `polaris_registry`'s workflows on the in-process worker."""
    return polaris_in_process.adopt(polaris_registry)


@pytest.fixture
def polaris_flow(polaris_executor: CeleryExecutor, request: pytest.FixtureRequest
                 ) -> Callable[..., Flow]:
    """`polaris_flow(workflow, instance_id=None, timeout=30)`: a Flow on a new instance (its id
    from the test's name, unique per call)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:80]

    def make(workflow: str, instance_id: str | None = None, timeout: float = 30.0) -> Flow:
        return Flow(polaris_executor, workflow, instance_id or f"{stem}-{uuid.uuid4().hex[:8]}",
                    timeout)

    return make


@pytest.fixture
def polaris_worker_process(polaris_redis: str, polaris_broker: str
                           ) -> Iterator[Callable[..., WorkerProcess]]:
    """`polaris_worker_process(app_module, **options)`: start `celery -A app_module worker`
    with POLARIS_REDIS_URL and POLARIS_BROKER_URL naming the test Redis, ready on return;
    stopped after the test. Options are `WorkerProcess`'s (`env`, `pool`, `concurrency`, ...)."""
    started: list[WorkerProcess] = []

    def start(app_module: str, env: dict[str, str] | None = None, **options: Any
              ) -> WorkerProcess:
        merged = {"POLARIS_REDIS_URL": polaris_redis, "POLARIS_BROKER_URL": polaris_broker,
                  **(env or {})}
        options.setdefault("name", f"w{len(started) + 1}")
        worker = WorkerProcess(app_module, merged, **options)
        started.append(worker)
        return worker.start().wait_ready()

    yield start
    for worker in started:
        with contextlib.suppress(Exception):
            worker.stop()
