"""Bad input, each with a clear error naming what was wrong, and nothing stored from it.

The README's "Bad input" table lists the same cases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery.coordinator import Coordinator, Settings
from polaris_celery.executors.celery import check_and_configure

from .conftest import CeleryEnv, make_app
from .scenarios import A, B, D, calls


class Big(BaseModel):
    blob: str


class A2(BaseModel):
    v: int = 0


A2.__name__ = "A"  # a different class wearing the workflow's datum name


def _submit(env: CeleryEnv, iid: str, *data: Any, **kw: Any) -> Any:
    return env.executor.submit_delta("dbf", iid, *data, **kw)


def _small_limit_submit(env: CeleryEnv, iid: str) -> Any:
    coordinator = Coordinator(env.registry, lambda d: None, Settings(max_datum_bytes=16))
    return coordinator.submit("dbf", iid, [A(v=1), B(v=10**30)])


CASES: list[tuple[str, Callable[[CeleryEnv, str], Any], type[Exception], str]] = [
    ("unknown workflow key",
     lambda e, i: e.executor.submit_delta("nope", i, A()), pc.UnknownWorkflow, "'nope'"),
    ("datum the workflow does not know",
     lambda e, i: _submit(e, i, A(), Big(blob="x")), pc.UnknownData, "Big"),
    ("another class under a known datum's name",
     lambda e, i: _submit(e, i, A2()), pc.UnknownData, "another class"),
    ("a dict instead of a model",
     lambda e, i: _submit(e, i, {"v": 1}), pc.InvalidInput, "not a pydantic model"),
    ("a string instead of a model",
     lambda e, i: _submit(e, i, "A"), pc.InvalidInput, "not a pydantic model"),
    ("the model class instead of an instance",
     lambda e, i: _submit(e, i, B(), A), pc.InvalidInput, "pass an instance: A(...)"),
    ("a model failing validation",
     lambda e, i: _submit(e, i, A.model_construct(v="not-an-int")), pc.InvalidInput,
     "fails validation"),
    ("a delta over the size limit",
     _small_limit_submit, pc.InvalidInput, "over the 16-byte limit"),
    ("an empty instance id",
     lambda e, i: e.executor.submit_delta("dbf", "", A()), pc.InvalidInput, "empty"),
    ("an absurdly long instance id",
     lambda e, i: e.executor.submit_delta("dbf", "x" * 5000, A()), pc.InvalidInput,
     "over the limit"),
    ("an instance id with braces (would break the hash tag)",
     lambda e, i: e.executor.submit_delta("dbf", "a{b}", A()), pc.InvalidInput, "braces"),
    ("an instance id that is not a string",
     lambda e, i: e.executor.submit_delta("dbf", 42, A()), pc.InvalidInput, "must be a string"),
    ("an instance id with a newline",
     lambda e, i: e.executor.submit_delta("dbf", "a\nb", A()), pc.InvalidInput, "unprintable"),
    ("a delta id that is too long",
     lambda e, i: _submit(e, i, A(), delta_id="d" * 500), pc.InvalidInput, "delta_id"),
    ("a message for an unknown builder",
     lambda e, i: e.executor.coordinator.execute("dbf", i, 1, "Nope", 1), pc.MessageRejected,
     "'Nope'"),
    ("a message for an unknown workflow",
     lambda e, i: e.executor.coordinator.execute("ghost", i, 1, "BA", 1), pc.MessageRejected,
     "'ghost'"),
    ("a message with positional arguments",
     lambda e, i: e.app.tasks["polaris.dbf.BA"](i, 1, 1), pc.MessageRejected, "positional"),
    ("a message missing its instance",
     lambda e, i: e.app.tasks["polaris.dbf.BA"](run=1, attempt=1), pc.MessageRejected,
     "instance"),
    ("a message with a run that is not an integer",
     lambda e, i: e.app.tasks["polaris.dbf.BA"](instance=i, run="1", attempt=1),
     pc.MessageRejected, "integers"),
    ("a message with unexpected arguments",
     lambda e, i: e.app.tasks["polaris.dbf.BA"](instance=i, run=1, attempt=1, data="x"),
     pc.MessageRejected, "unexpected"),
]


@pytest.mark.parametrize(("what", "call", "exc", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_stores_nothing(celery_env, iid, what, call, exc, needle):
    with pytest.raises(exc) as info:
        call(celery_env, iid)
    assert needle in str(info.value), f"{what}: {info.value}"
    assert isinstance(info.value, pc.PolarisError)
    store = celery_env.store
    for key in ("dbf", "optional", "ghost"):
        assert store.data_names(key, iid) == set()
        assert store.client.exists(store.keys(key, iid).state) == 0
    assert calls(iid) == []


def test_bad_delta_leaves_earlier_data_untouched(celery_env, iid):
    celery_env.executor.submit_delta("dbf", iid, A(v=1)).wait(10)
    before = celery_env.store.read_data("dbf", iid, ["A"])
    with pytest.raises(pc.UnknownData):
        celery_env.executor.submit_delta("dbf", iid, A(v=2), Big(blob="x"))
    assert celery_env.store.read_data("dbf", iid, ["A"]) == before


def test_pickle_message_is_never_run(celery_env, iid):
    """A message in pickle format for a builder's task is refused by the worker (JSON only)."""
    queue = celery_env.app.conf.task_default_queue  # the test session's own
    with Connection(celery_env.broker_url) as conn:
        producer = Producer(conn.channel(), exchange=Exchange(queue, type="direct"),
                            routing_key=queue, serializer="pickle")
        producer.publish(
            {"instance": iid, "run": 1, "attempt": 1},
            headers={"task": "polaris.dbf.BA", "id": "pickled-1", "lang": "py",
                     "argsrepr": "", "kwargsrepr": ""},
        )
    broker = redis.Redis.from_url(celery_env.broker_url)
    deadline = time.monotonic() + 5
    while broker.llen(queue) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.llen(queue) == 0  # the worker took the message off the queue ...
    time.sleep(0.5)
    assert calls(iid) == []  # ... and refused to run it
    # The worker is still healthy afterwards.
    assert celery_env.executor.submit_delta("dbf", iid, A(v=1), B(v=1), D()).wait(10).completed


def test_visibility_timeout_shorter_than_time_limits_is_refused(redis_url):
    app = make_app(redis_url, name="vt")
    app.conf.broker_transport_options = {"visibility_timeout": 100}
    with pytest.raises(pc.ConfigurationError, match="visibility_timeout"):
        check_and_configure(app, max_time_limit=300)


def test_local_executors_refuse_the_same_bad_deltas(memory_registry, iid):
    ex = pc.Executor(memory_registry)
    with pytest.raises(pc.UnknownData):
        ex.sequential("dbf", iid, A(), Big(blob="x"))
    with pytest.raises(pc.InvalidInput):
        ex.parallel("dbf", iid, {"v": 1})
    with pytest.raises(pc.InvalidInput):
        ex.sequential("dbf", "", A())
    assert memory_registry.store.data_names("dbf", iid) == set()


def test_a_message_for_a_workflow_this_worker_lacks_is_named_as_rejected(celery_env, iid,
                                                                         caplog):
    """Issue 10 case 13: Celery's own "Received unregistered task" is not all the operator
    sees; polaris names it a MessageRejected and says who will send the builder again."""
    caplog.set_level(logging.ERROR, logger="polaris_celery")
    celery_env.app.send_task("polaris.ghost.Nope", kwargs={"instance": iid, "run": 1,
                                                           "attempt": 1, "version": 1})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "MessageRejected" not in caplog.text:
        time.sleep(0.05)
    assert "MessageRejected: polaris.ghost.Nope" in caplog.text
    assert "reconciler of a worker that has it" in caplog.text


@pytest.mark.parametrize("port", [0, 70000, "nine", True])
def test_a_bad_metrics_port_is_refused(redis_url, port):
    registry = pc.Registry(pc.RedisStore(redis_url))
    with pytest.raises(pc.ConfigurationError, match="metrics_port"):
        pc.CeleryExecutor(make_app(redis_url, name="mp"), registry, metrics_port=port)
