"""Prometheus metrics: scraped from a real prefork worker process (`POLARIS_METRICS_PORT`),
whose pool children count through the client's multiprocess mode.

The worker runs tests/apps/observed_app.py against a private redis-server. The producer here
brings every kind of event the metrics count: failed attempts (flaky runs), a dispatch marked
but never sent (the worker's reconciler re-sends it), and an attempt that outlives its lease
(the reconciler finds it lost, a second attempt commits, the first one's commit is refused).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

import polaris_celery as pc
from polaris_celery import metrics, transitions
from polaris_celery.coordinator import Coordinator
from polaris_celery.graph import Graph
from polaris_celery.instance import Settings
from polaris_celery.layout import Snapshot
from polaris_celery.machine import Step
from polaris_celery.testing import RedisServer, free_port
from tests.apps.observed_app import D, Go, Observed

from .test_compose import base_env, started, wait_http

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.slow
def test_a_prefork_worker_serves_its_metrics(tmp_path: Path) -> None:
    with RedisServer() as redis:
        store_url, broker_url = redis.url, f"redis://127.0.0.1:{redis.port}/1"
        port = free_port()
        env = base_env(POLARIS_REDIS_URL=store_url, POLARIS_BROKER_URL=broker_url,
                       POLARIS_METRICS_PORT=str(port), POLARIS_METRICS_ADDR="127.0.0.1")
        argv = ["celery", "-A", "tests.apps.observed_app", "worker", "--pool=prefork",
                "--concurrency=2", "--without-mingle", "--without-gossip", "--loglevel=INFO"]
        with started(argv, env, tmp_path / "worker.log") as worker:
            worker.wait_for(" ready.")
            wait_http(f"http://127.0.0.1:{port}/metrics", proc=worker)
            app = Celery("metrics-test-producer", broker=broker_url, set_as_current=False)
            store = pc.RedisStore(store_url)
            registry = pc.Registry(store)
            registry.register("observed", Observed)
            producer = pc.CeleryExecutor(app, registry, reconciler=False)
            stamp = time.time_ns()

            handles = [producer.submit_delta("observed", f"flaky-{stamp}-{i}", Go(flaky=True))
                       for i in range(3)]
            handles += [producer.submit_delta("observed", f"plain-{stamp}-{i}", Go())
                        for i in range(2)]
            for h in handles:
                assert h.wait(30).get(D) is not None

            # Marked dispatched, never sent: the worker's reconciler sends it again.
            dropping = Coordinator(registry, lambda sends: None, Settings(dispatch_timeout=1))
            ref = dropping.submit("observed", f"dropped-{stamp}", [Go()])
            assert dropping.result("observed", f"dropped-{stamp}", ref, 30).get(D) is not None

            # MakeD's first attempt sleeps 6 s; its lease ends after 2.5 s.
            hung = producer.submit_delta("observed", f"hung-{stamp}", Go(hang=True))
            assert hung.wait(30).get(D) is not None

            deadline = time.monotonic() + 20
            samples = scrape(port)
            while time.monotonic() < deadline and value(
                    samples, "polaris_attempts_total", workflow="observed", builder="MakeD",
                    outcome="superseded") < 1:
                time.sleep(0.3)
                samples = scrape(port)

            def attempts(builder: str, outcome: str) -> float:
                return value(samples, "polaris_attempts_total", workflow="observed",
                             builder=builder, outcome=outcome)

            log = "\n".join(f"{k}={v}" for k, v in samples.items() if "attempts" in k[0])
            assert attempts("MakeA", "failed") == 3, log
            assert attempts("MakeA", "produced") == 7, log
            assert attempts("MakeC", "failed") == 3, log
            assert attempts("MakeC", "produced") == 7, log
            assert attempts("MakeD", "produced") == 7, log
            assert attempts("MakeD", "superseded") == 1, log
            assert value(samples, "polaris_runs_settled_total", workflow="observed",
                         status="completed") == 7
            b = {"workflow": "observed", "builder": "MakeB", "outcome": "produced"}
            assert value(samples, "polaris_builder_duration_seconds_count", **b) == 7
            assert 7 * 0.3 <= value(samples, "polaris_builder_duration_seconds_sum", **b) < 7
            assert value(samples, "polaris_builder_duration_seconds_bucket", le="0.25",
                         **b) == 0
            # The dropped message was the first builder's; the attempt that hung, MakeD's.
            assert value(samples, "polaris_reconciler_resends_total", workflow="observed",
                         builder="MakeA") >= 1
            assert value(samples, "polaris_lease_expiries_total", workflow="observed",
                         builder="MakeD") == 1
            assert value(samples, "polaris_instances_in_flight") == 0
            dropping.store.close()
            store.close()


def test_cas_conflicts_are_counted(redis_url: str) -> None:
    """A fenced change whose state moved on meanwhile is counted (in this process's registry:
    no multiprocess directory here), then decided again."""
    registry = pc.Registry(pc.RedisStore(redis_url))
    registry.register("observed-conflicts", Observed)
    other = Coordinator(registry, lambda sends: None)
    coordinator = Coordinator(registry, lambda sends: None)
    m = metrics.metrics()
    coordinator.observer = m
    instance = f"conflict-{time.time_ns()}"
    other.submit("observed-conflicts", instance, [Go()])
    before = m.registry.get_sample_value("polaris_cas_conflicts_total",
                                         {"workflow": "observed-conflicts"}) or 0.0
    calls: list[int] = []
    keys = coordinator.store.keys("observed-conflicts", instance)

    def decide(graph: Graph, snap: Snapshot) -> Step:
        calls.append(1)
        if len(calls) == 1:  # someone else writes between our read and our write
            other.submit("observed-conflicts", instance, [Go()])
        return Step(transitions.bump(keys, snap))

    coordinator.change("observed-conflicts", instance, decide)
    after = m.registry.get_sample_value("polaris_cas_conflicts_total",
                                        {"workflow": "observed-conflicts"})
    assert calls == [1, 1] and after == before + 1
