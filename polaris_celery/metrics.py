"""Prometheus metrics, recorded by an observer of the coordinator and served by each worker.

Names follow Prometheus' conventions, prefixed `polaris_`:

| metric | type | labels |
|---|---|---|
| `polaris_builder_duration_seconds` | histogram | workflow, builder, outcome |
| `polaris_attempts_total` | counter | workflow, builder, outcome |
| `polaris_runs_settled_total` | counter | workflow, status |
| `polaris_cas_conflicts_total` | counter | workflow |
| `polaris_reconciler_resends_total` | counter | workflow, builder |
| `polaris_lease_expiries_total` | counter | workflow, builder |
| `polaris_instances_in_flight` | gauge | |

`outcome` is one of produced, nothing (the builder returned None), failed, superseded (its
commit was refused: another attempt or a lifecycle change came first). `status` is a settled
run's outcome (completed, paused, failed, cancelled, timed_out, deleted). A re-send is a builder
message the reconciler sent again because it was overdue (lost, or queued behind a backlog); a
lease expiry an attempt it found lost (its worker gone, or past its time limit), which it runs
again under a new token (not counted as a re-send). The in-flight gauge is
read from the store when scraped: the instances the reconciler watches (a run in flight, or a
deadline pending).

A prefork worker's pool children each count in their own process, so the client's
multiprocess mode is used whenever metrics are served: `PROMETHEUS_MULTIPROC_DIR` (a fresh
private directory unless set) must be in the environment before `prometheus_client` is first
imported, which `prepare()` sees to in the worker's parent before it forks its children.

`prometheus_client` is optional: `pip install 'polaris-celery[metrics]'`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from .errors import ConfigurationError
from .invoke import Outcome
from .machine import Step
from .observe import Observer, outcome_label
from .stores.redis import RedisStore
from .stores.shared import BUCKETS

log = logging.getLogger("polaris_celery")

PREFIX = "polaris"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Builder durations: from a millisecond to the default time_limit.
BUCKETS_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0)

_lock = threading.Lock()
_metrics: Metrics | None = None


MISSING = "Prometheus metrics need prometheus_client: pip install 'polaris-celery[metrics]'"


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - exercised without the extra only
        raise ConfigurationError(MISSING) from exc
    return prometheus_client


def prepare() -> tuple[str, bool]:
    """Choose the multiprocess directory and put the client in multiprocess mode.

    Returns the directory, and whether it is ours (created empty here, so counts of an earlier
    worker never leak in; `cleanup` removes it). One named by the user is theirs to clear
    between worker starts. The client picks its mode when first imported, and the `celery`
    command may have imported it already (Flower's command plugin does): it is then switched
    through `values.get_value_class()`, before any polaris metric exists."""
    _client()
    path = os.environ.get(MULTIPROC_ENV)
    ours = not path
    if not path:
        path = tempfile.mkdtemp(prefix="polaris-metrics-")
        os.environ[MULTIPROC_ENV] = path
    os.makedirs(path, exist_ok=True)
    from prometheus_client import values

    if not multiprocess():
        if _metrics is not None:
            log.warning("polaris: metrics were created before %s was set: a prefork worker's "
                        "children will not be counted", MULTIPROC_ENV)
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path, ours


def cleanup(path: str) -> None:
    """Remove a multiprocess directory `prepare` created (at the worker's shutdown)."""
    shutil.rmtree(path, ignore_errors=True)


def multiprocess() -> bool:
    """Whether this process's metric values live in the multiprocess directory."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics(Observer):
    """The metrics of this process (one per process: see `metrics()`), as an observer."""

    def __init__(self) -> None:
        pc = _client()
        # A registry of our own (not the global one): served directly where there is no
        # multiprocess directory, and never clashing with a user's metrics of the same name.
        self.registry = pc.CollectorRegistry()
        kw: dict[str, Any] = {"namespace": PREFIX, "registry": self.registry}
        self.duration = pc.Histogram(
            "builder_duration_seconds", "Time a builder attempt took (its process() call).",
            ["workflow", "builder", "outcome"], buckets=BUCKETS_SECONDS, **kw)
        self.attempts = pc.Counter(
            "attempts", "Builder attempts, by how they ended.",
            ["workflow", "builder", "outcome"], **kw)
        self.runs = pc.Counter(
            "runs_settled", "Runs settled, by their outcome.", ["workflow", "status"], **kw)
        self.conflicts = pc.Counter(
            "cas_conflicts", "Fenced writes refused because the instance changed meanwhile "
            "(decided again from the newer state).", ["workflow"], **kw)
        self.resends = pc.Counter(
            "reconciler_resends", "Builder messages the reconciler sent again (overdue).",
            ["workflow", "builder"], **kw)
        self.expiries = pc.Counter(
            "lease_expiries", "Attempts the reconciler found lost (their lease ran out).",
            ["workflow", "builder"], **kw)

    def finished(self, workflow: str, instance_id: str, run: int, builder: str, token: int,
                 outcome: Outcome, committed: bool) -> None:
        label = outcome_label(outcome, committed)
        self.attempts.labels(workflow, builder, label).inc()
        self.duration.labels(workflow, builder, label).observe(outcome.seconds)

    def applied(self, workflow: str, step: Step) -> None:
        for status in step.outcomes:
            self.runs.labels(workflow, status).inc()

    def conflict(self, workflow: str) -> None:
        self.conflicts.labels(workflow).inc()

    def recovered(self, workflow: str, instance_id: str, incarnation: str, step: Step) -> None:
        lost = {(run.id, builder) for run, builder, _, _ in step.failures}
        for _, builder, _, _ in step.failures:
            self.expiries.labels(workflow, builder).inc()
        for d in step.sends:
            if (d.run, d.builder) not in lost:  # a lost attempt's re-run is no re-send
                self.resends.labels(workflow, d.builder).inc()


def metrics() -> Metrics:
    """This process's metrics, created on first use (after `prepare()` where served)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics


class InFlight:
    """The in-flight gauge, read from the reconciler's index when scraped (16 ZCARDs, one per
    bucket, whatever the number of instances)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            pipe = self.store.client.pipeline(transaction=False)
            for b in range(BUCKETS):
                pipe.zcard(self.store.shared.index(b))
            total = sum(int(n) for n in pipe.execute())
        except Exception as exc:  # a scrape must answer even when Redis does not
            log.warning("polaris: instances in flight not read: %s", exc)
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_instances_in_flight",
            "Instances the reconciler watches: a run in flight or a deadline pending.",
            value=total)


def address(port: int | str | None, addr: str | None) -> tuple[int | None, str]:
    """The metrics port and address, from the arguments or else the environment
    (POLARIS_METRICS_PORT, POLARIS_METRICS_ADDR), checked; the port None when not served."""
    if port is None:
        port = os.environ.get("POLARIS_METRICS_PORT") or None
    addr = addr or os.environ.get("POLARIS_METRICS_ADDR") or "0.0.0.0"
    if port is None:
        return None, addr
    try:
        number = int(port)
    except (TypeError, ValueError):
        number = -1
    if not 0 < number < 65536 or isinstance(port, bool):
        raise ConfigurationError(f"metrics_port (POLARIS_METRICS_PORT) must be a TCP port "
                                 f"from 1 to 65535, got {port!r}")
    # Checked without importing it: the worker imports it once the multiprocess mode is set.
    if importlib.util.find_spec("prometheus_client") is None:  # pragma: no cover
        raise ConfigurationError(MISSING)
    return number, addr


def serve(port: int, addr: str, store: RedisStore) -> Any:
    """Serve /metrics on `addr:port` on a daemon thread; returns the server (`shutdown()`).

    Aggregates every process of the worker through the multiprocess directory when there is
    one, else serves this process's registry."""
    pc = _client()
    mine = metrics()
    if multiprocess():
        from prometheus_client import multiprocess as mp

        registry = pc.CollectorRegistry()
        mp.MultiProcessCollector(registry, path=os.environ[MULTIPROC_ENV])  # type: ignore[no-untyped-call]
    else:
        registry = mine.registry
    registry.register(InFlight(store))
    server, _thread = pc.start_http_server(port, addr=addr, registry=registry)
    return server
