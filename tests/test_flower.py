"""Flower shows the flow: one task per builder, named `polaris.<workflow>.<Builder>`, whose
arguments are ids only (instance, run, attempt, version), never a payload.

A real `flower` process and a real `celery -A worker worker -E` process run against a private
redis-server; the worker runs with POLARIS_INLINE=0 so that every builder goes through the
broker (inline runs skip the broker hop, so Flower would not see them as tasks of their own).
"""

from __future__ import annotations

import ast
import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery

import polaris_celery as pc
from polaris_celery.testing import RedisServer, free_port
from worker.cab_ride import (
    ArrivedAtDestination,
    CabbieArrived,
    CabRide,
    PaymentMade,
    RideEnded,
    RideRequested,
)

from .test_compose import base_env, started, wait_flower_sees_a_worker, wait_http

BUILDERS = ["MatchCabbie", "StartRide", "ComputeFare", "ConfirmPayment", "EndRide"]
USER = "u-flower"
SECRET = "s3cret-payload-marker"


def whole_ride() -> list[Any]:
    """All four inputs in one delta: the five builders run one after another in one run."""
    cabbie = f"cabbie-{hashlib.sha1(USER.encode()).hexdigest()[:4]}"
    return [RideRequested(user_id=USER, source=SECRET, dest="Orly"),
            CabbieArrived(cabbie_id=cabbie), ArrivedAtDestination(distance_km=10),
            PaymentMade(user_id=USER, amount=100)]


def builder_tasks(port: int, instance: str) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=5)
    assert r.status_code == 200, f"HTTP {r.status_code}: {r.text[:300]}"
    out: dict[str, dict[str, Any]] = {}
    for task in r.json().values():
        name = task.get("name") or ""
        if name.startswith("polaris.cab-ride.") and instance in (task.get("kwargs") or ""):
            out[name.rsplit(".", 1)[1]] = task
    return out


@pytest.mark.slow
def test_flower_lists_each_builder_task_with_ids_only(tmp_path: Path) -> None:
    with RedisServer() as redis:
        store_url, broker_url = redis.url, f"redis://127.0.0.1:{redis.port}/1"
        env = base_env(POLARIS_REDIS_URL=store_url, POLARIS_BROKER_URL=broker_url,
                       POLARIS_INLINE="0")
        port = free_port()
        flower_argv = ["celery", "-A", "worker", "flower", f"--port={port}",
                       "--address=127.0.0.1"]
        worker_argv = ["celery", "-A", "worker", "worker", "-E", "--pool=threads",
                       "--concurrency=2", "--without-mingle", "--without-gossip",
                       "--loglevel=INFO"]
        with started(flower_argv, {**env, "FLOWER_UNAUTHENTICATED_API": "true"},
                     tmp_path / "flower.log") as flower:
            wait_http(f"http://127.0.0.1:{port}/healthcheck", proc=flower)
            with started(worker_argv, env, tmp_path / "worker.log") as worker:
                worker.wait_for(" ready.")
                node = wait_flower_sees_a_worker(port)

                # A producer of our own on the same store and broker (the task names are
                # derived from the workflow key and builder names alone).
                app = Celery("flower-test-producer", broker=broker_url, set_as_current=False)
                registry = pc.Registry(pc.RedisStore(store_url))
                registry.register("cab-ride", CabRide)
                producer = pc.CeleryExecutor(app, registry, reconciler=False)
                instance = f"flower-{time.time_ns()}"
                result = producer.submit_delta("cab-ride", instance, *whole_ride()).wait(30)
                assert result.completed and result.get(RideEnded) is not None

                deadline = time.monotonic() + 20
                tasks = builder_tasks(port, instance)
                while time.monotonic() < deadline and not (
                        len(tasks) == len(BUILDERS)
                        and all(t.get("state") == "SUCCESS" for t in tasks.values())):
                    time.sleep(0.25)
                    tasks = builder_tasks(port, instance)
                assert sorted(tasks) == sorted(BUILDERS), \
                    f"Flower saw {sorted(tasks)}\n{worker.text()[-2000:]}"
                for name, task in tasks.items():
                    assert task["state"] == "SUCCESS", (name, task)
                    assert task["worker"] == node
                    assert ast.literal_eval(task["args"]) == ()
                    kwargs = ast.literal_eval(task["kwargs"])
                    inc = kwargs.pop("inc")
                    assert isinstance(inc, str) and len(inc) >= 8, (name, inc)
                    assert kwargs == {"instance": instance, "run": 1, "attempt": 1, "version": 1}, (
                        name, kwargs)
                    assert SECRET not in repr(task), f"{name} carries a payload: {task}"
                # The same names in Flower's list of task types.
                types = httpx.get(f"http://127.0.0.1:{port}/api/task/types", timeout=5).json()
                assert {f"polaris.cab-ride.{b}" for b in BUILDERS} <= set(types["task-types"])


def instance_tasks(port: int, instance: str) -> list[dict[str, Any]]:
    r = httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=5)
    assert r.status_code == 200, f"HTTP {r.status_code}: {r.text[:300]}"
    return [t for t in r.json().values()
            if (t.get("name") or "").startswith("polaris.observed.")
            and instance in (t.get("kwargs") or "")]


@pytest.mark.slow
def test_flower_shows_failed_and_inline_attempts_as_the_timeline_does(tmp_path: Path) -> None:
    """Inline on (the default), on a prefork worker: every attempt the instance's log (what
    `polaris timeline` draws) records is one Flower task, FAILURE exactly when the attempt
    failed (with its error), and with the attempt's own runtime, not its inline successors'."""
    from polaris_celery.status import read_log
    from tests.apps.observed_app import D, Go, Observed

    with RedisServer() as redis:
        store_url, broker_url = redis.url, f"redis://127.0.0.1:{redis.port}/1"
        env = base_env(POLARIS_REDIS_URL=store_url, POLARIS_BROKER_URL=broker_url)
        port = free_port()
        flower_argv = ["celery", "-A", "tests.apps.observed_app", "flower", f"--port={port}",
                       "--address=127.0.0.1"]
        worker_argv = ["celery", "-A", "tests.apps.observed_app", "worker", "-E",
                       "--pool=prefork", "--concurrency=2", "--without-mingle",
                       "--without-gossip", "--loglevel=INFO"]
        with started(flower_argv, {**env, "FLOWER_UNAUTHENTICATED_API": "true"},
                     tmp_path / "flower.log") as flower:
            wait_http(f"http://127.0.0.1:{port}/healthcheck", proc=flower)
            with started(worker_argv, env, tmp_path / "worker.log") as worker:
                worker.wait_for(" ready.")
                wait_flower_sees_a_worker(port)
                app = Celery("flower-test-producer", broker=broker_url, set_as_current=False)
                store = pc.RedisStore(store_url)
                registry = pc.Registry(store)
                registry.register("observed", Observed)
                producer = pc.CeleryExecutor(app, registry, reconciler=False)
                instance = f"observed-{time.time_ns()}"
                result = producer.submit_delta("observed", instance, Go(flaky=True)).wait(30)
                assert result.completed and result.get(D) is not None

                log = [e for e in read_log(store, store.keys("observed", instance))
                       if e.event == "builder"]
                attempts = {(e.builder, e.attempt): e for e in log}
                assert sorted(attempts) == [("MakeA", 1), ("MakeA", 2), ("MakeB", 1),
                                            ("MakeC", 1), ("MakeC", 2), ("MakeD", 1)], log

                def seen() -> dict[tuple[str, int], dict[str, Any]]:
                    out = {}
                    for t in instance_tasks(port, instance):
                        kw = ast.literal_eval(t["kwargs"])
                        out[(t["name"].rsplit(".", 1)[1], kw["attempt"])] = t
                    return out

                deadline = time.monotonic() + 20
                tasks = seen()
                while time.monotonic() < deadline and not (
                        set(tasks) == set(attempts)
                        and all(t["state"] in ("SUCCESS", "FAILURE") for t in tasks.values())):
                    time.sleep(0.25)
                    tasks = seen()
                assert len(instance_tasks(port, instance)) == len(attempts), \
                    f"{sorted(tasks)}\n{worker.text()[-3000:]}"
                assert set(tasks) == set(attempts), f"{sorted(tasks)}\n{worker.text()[-3000:]}"
                for key, entry in attempts.items():
                    task = tasks[key]
                    if entry.failed:
                        assert task["state"] == "FAILURE", (key, task)
                        assert entry.result is not None
                        assert entry.result.removeprefix("error:") in task["exception"], task
                        assert "the first try of" in task["exception"], task
                    else:
                        assert task["state"] == "SUCCESS", (key, task)
                        # The task's time: its own builder, claim and commit included; its
                        # inline successors (MakeB alone sleeps 0.3 s) not.
                        assert entry.seconds <= task["runtime"] <= entry.seconds + 0.15, (
                            key, entry.seconds, task["runtime"])
                # Inline attempts are children of the task that ran them.
                delivered = {t["uuid"] for k, t in tasks.items()
                             if k in {("MakeA", 1), ("MakeA", 2), ("MakeC", 2)}}
                for key in [("MakeB", 1), ("MakeC", 1), ("MakeD", 1)]:
                    assert tasks[key]["parent_id"] in delivered, (key, tasks[key])
                store.close()


@pytest.mark.slow
def test_a_killed_worker_leaves_no_attempt_started_in_flower(tmp_path: Path) -> None:
    """A worker SIGKILLed (parent and pool child at once) while an inline builder runs: the
    dead process sends no more events. Once another worker's reconciler finds the lost
    attempt's lease ran out and runs it again, Flower shows no task of the instance STARTED:
    the delivered task whose own builder had finished is SUCCESS, the lost attempt FAILURE
    naming its builder and AttemptLost, and the re-run, the builder that ran last, SUCCESS."""
    import os
    import signal

    from polaris_celery.status import read_log
    from tests.apps.observed_app import D, Go, Observed

    with RedisServer() as redis:
        store_url, broker_url = redis.url, f"redis://127.0.0.1:{redis.port}/1"
        env = base_env(POLARIS_REDIS_URL=store_url, POLARIS_BROKER_URL=broker_url)
        port = free_port()
        flower_argv = ["celery", "-A", "tests.apps.observed_app", "flower", f"--port={port}",
                       "--address=127.0.0.1"]

        def worker_argv(name: str) -> list[str]:
            return ["celery", "-A", "tests.apps.observed_app", "worker", "-E", "-n",
                    f"{name}@%h", "--pool=prefork", "--concurrency=1", "--without-mingle",
                    "--without-gossip", "--loglevel=INFO"]

        def seen(instance: str) -> dict[tuple[str, int], dict[str, Any]]:
            out = {}
            for t in instance_tasks(port, instance):
                kw = ast.literal_eval(t["kwargs"]) if t.get("kwargs") else {}
                out[(t["name"].rsplit(".", 1)[1], kw.get("attempt", 0))] = t
            return out

        with started(flower_argv, {**env, "FLOWER_UNAUTHENTICATED_API": "true"},
                     tmp_path / "flower.log") as flower:
            wait_http(f"http://127.0.0.1:{port}/healthcheck", proc=flower)
            app = Celery("flower-test-producer", broker=broker_url, set_as_current=False)
            store = pc.RedisStore(store_url)
            registry = pc.Registry(store)
            registry.register("observed", Observed)
            producer = pc.CeleryExecutor(app, registry, reconciler=False)
            instance = f"killed-{time.time_ns()}"
            with started(worker_argv("doomed"), env, tmp_path / "doomed.log") as doomed:
                doomed.wait_for(" ready.")
                wait_flower_sees_a_worker(port)
                # MakeA is delivered; MakeB, MakeC and MakeD run inline in its task, and
                # MakeD's first attempt sleeps 6 s (its lease ends after 2.5 s).
                handle = producer.submit_delta("observed", instance, Go(hang=True))
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and \
                        seen(instance).get(("MakeD", 1), {}).get("state") != "STARTED":
                    time.sleep(0.1)
                assert seen(instance).get(("MakeD", 1), {}).get("state") == "STARTED", \
                    f"{seen(instance)}\n{doomed.text()[-3000:]}"
                os.killpg(doomed.pid, signal.SIGKILL)  # the whole worker, at once
                doomed.popen.wait(10)
            with started(worker_argv("rescuer"), env, tmp_path / "rescuer.log") as rescuer:
                rescuer.wait_for(" ready.")
                assert handle.wait(30).get(D) is not None
                log = [e for e in read_log(store, store.keys("observed", instance))
                       if e.event == "builder"]
                assert [(e.builder, e.attempt) for e in log][-2:] == [
                    ("MakeD", 1), ("MakeD", 2)], log
                assert log[-2].failed and log[-2].result == "error:AttemptLost", log[-2]

                want = {("MakeA", 1): "SUCCESS", ("MakeB", 1): "SUCCESS",
                        ("MakeC", 1): "SUCCESS", ("MakeD", 1): "FAILURE",
                        ("MakeD", 2): "SUCCESS"}
                deadline = time.monotonic() + 20
                tasks = seen(instance)
                while time.monotonic() < deadline and \
                        {k: t.get("state") for k, t in tasks.items()} != want:
                    time.sleep(0.25)
                    tasks = seen(instance)
                states = {k: t.get("state") for k, t in tasks.items()}
                assert states == want, f"{states}\n{rescuer.text()[-3000:]}"
                lost = tasks[("MakeD", 1)]
                assert lost["name"] == "polaris.observed.MakeD", lost
                assert "MakeD attempt 1: AttemptLost" in lost["exception"], lost
                # The builder that ran last is the one Flower shows last started.
                last = max(tasks.values(), key=lambda t: t.get("started") or 0)
                assert last["name"] == "polaris.observed.MakeD", last
                assert ast.literal_eval(last["kwargs"])["attempt"] == 2, last
            store.close()
