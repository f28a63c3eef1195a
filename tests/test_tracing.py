"""OpenTelemetry: a span per run (the producer's), a child span per builder attempt (the
worker's), the context carried in the Celery message headers across a real prefork worker
process; alone, and beside opentelemetry-instrumentation-celery in both processes.

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
from tests.apps.observed_app import D, Go, Observed, span_json

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
                deadline = time.monotonic() + 15
                attempts = [s for s in worker_spans(span_dir) if s["name"] == "polaris.attempt"]
                while time.monotonic() < deadline and len(attempts) < len(log):
                    time.sleep(0.2)
                    attempts = [s for s in worker_spans(span_dir)
                                if s["name"] == "polaris.attempt"]
                store.close()
        finally:
            if celery_instrumented:
                instrumentor.uninstrument()

    runs = [span_json(s) for s in spans.get_finished_spans() if s.name == "polaris.run"]
    assert len(runs) == 1, runs
    run = runs[0]
    assert run["attributes"] == {"polaris.workflow": "observed", "polaris.instance": instance,
                                 "polaris.run": 1}
    # One span per attempt of the log (delivered and inline alike), each in the run's trace.
    assert sorted((s["attributes"]["polaris.builder"], s["attributes"]["polaris.attempt"])
                  for s in attempts) == sorted((e.builder, e.attempt) for e in log)
    assert len({s["pid"] for s in attempts}) >= 1
    by_span = {s["span"]: s for s in worker_spans(span_dir)}
    for s in attempts:
        a = s["attributes"]
        assert s["trace"] == run["trace"], (s, run)
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
