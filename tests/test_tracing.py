"""OpenTelemetry: a span per run, from its submit (in the producer) to its settle (in the worker
whose commit settled it), a child span per builder attempt (the worker's), the context carried
in the Celery message headers across a real prefork worker process; alone, and beside
opentelemetry-instrumentation-celery in both processes. A message the worker's reconciler sends
again (its first never sent) carries the run's context too.

Both sides record with the SDK's in-memory exporter: this process directly, the worker
(tests/apps/observed_app.py) by writing its exporter's spans to files for this test to read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import polaris_celery as pc
from polaris_celery.status import read_log
from polaris_celery.testing import RedisServer
from tests.apps.observed_app import D, Go, Observed

from .test_compose import base_env, started

_exporter = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This process's finished spans (the SDK's provider is set once per process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def worker_spans(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(directory.glob("*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]


def wait_spans(directory: Path, done: Any, timeout: float = 15) -> list[dict[str, Any]]:
    """The worker's spans, once `done(spans)` holds (or the time is up)."""
    deadline = time.monotonic() + timeout
    got = worker_spans(directory)
    while time.monotonic() < deadline and not done(got):
        time.sleep(0.2)
        got = worker_spans(directory)
    return got


def check_run(run: dict[str, Any], attempts: list[dict[str, Any]], instance: str,
              parent: str | None) -> None:
    """The run's span: its identity the producer's, covering every attempt, their parent."""
    assert run["attributes"] == {"polaris.workflow": "observed", "polaris.instance": instance,
                                 "polaris.run": 1, "polaris.status": "completed"}, run
    assert run["parent"] == parent, run
    assert run["status"] == "UNSET", run
    assert attempts
    for s in attempts:
        assert s["trace"] == run["trace"], (s, run)
        assert run["start"] <= s["start"] and s["end"] <= run["end"], (s, run)


@pytest.mark.slow
@pytest.mark.parametrize("celery_instrumented", [False, True], ids=["alone", "with-celery-otel"])
def test_a_run_is_one_trace_across_the_worker(tmp_path: Path, spans: InMemorySpanExporter,
                                              celery_instrumented: bool) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    span_dir = tmp_path / "spans"
    span_dir.mkdir()
    with RedisServer() as redis:
        store_url, broker_url = redis.url, f"redis://127.0.0.1:{redis.port}/1"
        env = base_env(POLARIS_REDIS_URL=store_url, POLARIS_BROKER_URL=broker_url,
                       POLARIS_TEST_SPANS=str(span_dir),
                       POLARIS_TEST_CELERY_OTEL="1" if celery_instrumented else "0")
        argv = ["celery", "-A", "tests.apps.observed_app", "worker", "--pool=prefork",
                "--concurrency=2", "--without-mingle", "--without-gossip", "--loglevel=INFO"]
        instrumentor = CeleryInstrumentor()
        if celery_instrumented:
            instrumentor.instrument()
        try:
            with started(argv, env, tmp_path / "worker.log") as worker:
                worker.wait_for(" ready.")
                app = Celery("tracing-test-producer", broker=broker_url, set_as_current=False)
                store = pc.RedisStore(store_url)
                registry = pc.Registry(store)
                registry.register("observed", Observed)
                producer = pc.CeleryExecutor(app, registry, reconciler=False)
                instance = f"traced-{time.time_ns()}"
                assert producer.submit_delta("observed", instance, Go(flaky=True)).wait(30) \
                    .get(D) is not None
                log = [e for e in read_log(store, store.keys("observed", instance))
                       if e.event == "builder"]
                got = wait_spans(span_dir, lambda got: sum(
                    s["name"] == "polaris.attempt" for s in got) >= len(log) and any(
                    s["name"] == "polaris.run" for s in got))
                attempts = [s for s in got if s["name"] == "polaris.attempt"]
                store.close()
        finally:
            if celery_instrumented:
                instrumentor.uninstrument()

    # Nothing of the run's span in the producer: it is emitted where the run settled.
    assert [s.name for s in spans.get_finished_spans() if s.name == "polaris.run"] == []
    runs = [s for s in got if s["name"] == "polaris.run"]
    assert len(runs) == 1, runs
    run = runs[0]
    check_run(run, attempts, instance, parent=None)
    assert run["links"] == []  # the SDK's tracer: the kept identity is the span's own
    # One span per attempt of the log (delivered and inline alike), each in the run's trace.
    assert sorted((s["attributes"]["polaris.builder"], s["attributes"]["polaris.attempt"])
                  for s in attempts) == sorted((e.builder, e.attempt) for e in log)
    by_span = {s["span"]: s for s in got}
    for s in attempts:
        a = s["attributes"]
        assert (a["polaris.workflow"], a["polaris.instance"], a["polaris.run"]) == (
            "observed", instance, 1)
        failed = a["polaris.outcome"] == "failed"
        assert (s["status"] == "ERROR") == failed, s
        if celery_instrumented:
            # Under the instrumentation's span for the task that ran it.
            assert by_span[s["parent"]]["name"].startswith("run/polaris.observed."), s
        else:
            # Every attempt a child of the run's span, however many hops it took.
            assert s["parent"] == run["span"], (s, run)
    assert sum(s["attributes"]["polaris.outcome"] == "failed" for s in attempts) == 2


@pytest.mark.slow
def test_a_resent_message_continues_the_runs_trace(tmp_path: Path,
                                                    spans: InMemorySpanExporter) -> None:
    """A run submitted under a span of the caller's: its builder's message is marked but never
    sent, so the worker's reconciler sends it; its attempts are still children of the run's
    span, and the run's span a child of the caller's."""
    from polaris_celery import tracing
    from polaris_celery.coordinator import Coordinator
    from polaris_celery.instance import Settings

    span_dir = tmp_path / "spans"
    span_dir.mkdir()
    with RedisServer() as redis:
        store_url, broker_url = redis.url, f"redis://127.0.0.1:{redis.port}/1"
        env = base_env(POLARIS_REDIS_URL=store_url, POLARIS_BROKER_URL=broker_url,
                       POLARIS_TEST_SPANS=str(span_dir), POLARIS_TEST_CELERY_OTEL="0",
                       POLARIS_INLINE="0")
        argv = ["celery", "-A", "tests.apps.observed_app", "worker", "--pool=prefork",
                "--concurrency=2", "--without-mingle", "--without-gossip", "--loglevel=INFO"]
        with started(argv, env, tmp_path / "worker.log") as worker:
            worker.wait_for(" ready.")
            store = pc.RedisStore(store_url)
            registry = pc.Registry(store)
            registry.register("observed", Observed)
            dropping = Coordinator(registry, lambda sends: None, Settings(dispatch_timeout=1))
            dropping.observer = tracing.observer()
            instance = f"resent-{time.time_ns()}"
            with trace.get_tracer("test").start_as_current_span("caller") as caller, \
                    tracing.run_span("observed", instance):
                ref = dropping.submit("observed", instance, [Go()])
            assert dropping.result("observed", instance, ref, 30).get(D) is not None
            log = [e for e in read_log(store, store.keys("observed", instance))
                   if e.event == "builder"]
            got = wait_spans(span_dir, lambda got: sum(
                s["name"] == "polaris.attempt" for s in got) >= len(log) and any(
                s["name"] == "polaris.run" for s in got))
            store.close()
    attempts = [s for s in got if s["name"] == "polaris.attempt"]
    assert sorted(s["attributes"]["polaris.builder"] for s in attempts) == [
        "MakeA", "MakeB", "MakeC", "MakeD"], attempts
    runs = [s for s in got if s["name"] == "polaris.run"]
    assert len(runs) == 1, runs
    caller_ctx = caller.get_span_context()
    check_run(runs[0], attempts, instance, parent=f"{caller_ctx.span_id:016x}")
    assert runs[0]["trace"] == f"{caller_ctx.trace_id:032x}"
    for s in attempts:
        assert s["parent"] == runs[0]["span"], (s, runs[0])
