"""Hooks that never break a flow (issue 11, item 3), on every executor.

Every test executor carries `scenarios.RECORDING_HOOKS` (tests/conftest.py), which record what
they are called with, and raise for instances whose id starts with `scenarios.BOOM`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

import polaris_celery as pc
from polaris_celery.coordinator import Coordinator
from polaris_celery.hooks import Hooks

from . import scenarios
from .scenarios import BOOM, FAIL_TIMES, A, B, C, D, calls, hook_events


def settled_events(instance_id: str) -> list[tuple[Any, ...]]:
    """The hook events, once after_run was recorded: on Celery it runs in the worker that
    settled the run, just after the waiter was woken."""
    deadline = time.monotonic() + 10
    while not any(e[0] == "after_run" for e in hook_events(instance_id)):
        assert time.monotonic() < deadline, hook_events(instance_id)
        time.sleep(0.01)
    return hook_events(instance_id)


def test_hooks_see_every_attempt_and_the_run(run, iid):
    FAIL_TIMES[iid] = 1  # Flaky fails its first attempt, then succeeds
    r = run("failing", iid, A())
    assert r.completed
    events = settled_events(iid)
    assert events[0] == ("before_run", r.run, None)
    assert events[-1] == ("after_run", r.run, "completed")
    flaky = [e for e in events if e[1] == "Flaky"]
    assert flaky == [("before", "Flaky", 1), ("on_error", "Flaky", 1, "RuntimeError"),
                     ("before", "Flaky", 2), ("after", "Flaky", 2)]
    assert ("after", "AfterFlaky", 1) in events and ("after", "Sibling", 1) in events


def test_after_run_sees_a_failed_run(run, iid):
    FAIL_TIMES[iid] = 10
    with pytest.raises(pc.BuilderFailed):
        run("failing", iid, A())
    events = settled_events(iid)
    assert [e for e in events if e[0] == "on_error"] == [
        ("on_error", "Flaky", n, "RuntimeError") for n in (1, 2, 3)]
    assert events[-1][0] == "after_run" and events[-1][2] == "failed"


def test_raising_hooks_fail_neither_the_builder_nor_the_run(run, caplog):
    """Every hook raises for this instance: each is logged with its traceback and ignored."""
    iid = f"{BOOM}{uuid.uuid4().hex[:8]}"
    FAIL_TIMES[iid] = 1
    r = run("failing", iid, A())
    assert r.completed and r.get(B) == B(v=2) and r.get(C) == C(v=7) and r.get(D) == D(v=1)
    assert calls(iid).count("Flaky") == 2
    kinds = {e[0] for e in settled_events(iid)}
    assert kinds == {"before_run", "before", "on_error", "after", "after_run"}


def test_raising_hooks_are_logged_with_their_traceback(memory_registry, caplog):
    iid = f"{BOOM}{uuid.uuid4().hex[:8]}"
    pc.Executor(memory_registry, **scenarios.RECORDING_HOOKS).sequential("dbf", iid, A(v=1))
    logged = [r for r in caplog.records if "hook raised" in r.getMessage()]
    assert {r.getMessage().split()[2] for r in logged} == {"before_run", "after_run"}
    assert all(r.exc_info and "hook boom" in str(r.exc_info[1]) for r in logged)


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_strict_hooks_fail_the_attempt(memory_registry, iid, mode):
    def boom(builder, delta):
        raise ValueError("hook refused")

    ex = pc.Executor(memory_registry, before=boom, strict_hooks=True)
    with pytest.raises(pc.BuilderFailed, match="hook refused"):
        getattr(ex, mode)("dbf", iid, A(v=1), B(v=1))


def test_strict_run_hooks_reach_the_caller(memory_registry, iid):
    def refuse(result):
        raise ValueError("after_run refused")

    ex = pc.Executor(memory_registry, after_run=refuse, strict_hooks=True)
    with pytest.raises(ValueError, match="after_run refused"):
        ex.sequential("dbf", iid, A(v=1), B(v=1))


def test_two_argument_hooks_still_work(memory_registry, iid):
    """Hooks written before HookInfo existed (builder, data) are called without it."""
    seen: list[str] = []
    ex = pc.Executor(memory_registry, before=lambda b, d: seen.append(b.__name__),
                     after_run=lambda result: seen.append(result.status))
    ex.sequential("dbf", iid, A(v=1), B(v=1))
    assert seen == ["BA", "paused"]


def test_unknown_hook_is_refused(memory_registry):
    with pytest.raises(TypeError, match="not callable"):
        pc.Executor(memory_registry, on_error="nope")  # type: ignore[arg-type]


def test_distributed_strict_hooks(redis_server, iid):
    """The coordinator of the Celery executor, driven in process: a strict before-hook fails
    the attempt; a strict before_run reaches the producer, and the run goes on regardless."""
    store = pc.RedisStore(redis_server.url)
    sent: list = []

    def boom(*args):
        raise ValueError("strict hook")

    def drain(c: Coordinator) -> None:
        while sent:
            d = sent.pop(0)
            c.execute(d.workflow, d.instance_id, d.run, d.builder, d.token,
                      version=d.version, incarnation=d.incarnation)

    try:
        registry = scenarios.register_all(pc.Registry(store))
        c = Coordinator(registry, sent.extend, hooks=Hooks(before=boom, strict=True))
        ref = c.submit("dbf", iid, [A(v=1), B(v=1)])
        drain(c)
        with pytest.raises(pc.BuilderFailed, match="strict hook"):
            c.result("dbf", iid, ref, timeout=10)
        c2 = Coordinator(registry, sent.extend, hooks=Hooks(before_run=boom, strict=True))
        with pytest.raises(ValueError, match="strict hook"):
            c2.submit("dbf", iid + "b", [A(v=1), B(v=1)])
        assert sent  # its builders were sent all the same
        drain(c2)
        assert "C" in store.data_names("dbf", iid + "b")  # BA ran
    finally:
        store.close()
