"""A worker app for the observability tests (Flower, Prometheus, OpenTelemetry).

One workflow, `observed`: Go -> MakeA -> MakeB -> MakeC -> MakeD, each one ready successor, so
with inline execution on a delivered MakeA runs MakeB, MakeC and MakeD in the same task. With
`Go(flaky=True)` the first attempts of MakeA (a delivered task) and MakeC (an inline one)
raise; each has one retry, which the broker delivers. MakeB sleeps long enough that a task's
runtime visibly excludes it. With `Go(hang=True)` MakeD's first attempt sleeps past its lease.

Environment: POLARIS_REDIS_URL, POLARIS_BROKER_URL, POLARIS_METRICS_PORT (read by the
executor), and POLARIS_TEST_SPANS (a directory): the worker records its spans with the
OpenTelemetry SDK's in-memory exporter and writes them there as JSON lines, one file per
process, for the test to read; POLARIS_TEST_CELERY_OTEL=1 also installs
opentelemetry-instrumentation-celery.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery
from pydantic import BaseModel

import polaris_celery as pc


class Go(BaseModel):
    flaky: bool = False
    hang: bool = False


class A(BaseModel):
    pass


class B(BaseModel):
    pass


class C(BaseModel):
    pass


class D(BaseModel):
    pass


class MakeA(pc.Builder):
    consumes = [Go]
    produces = A
    max_retries = 1

    def process(self, ctx: pc.BuilderContext) -> A:
        time.sleep(0.05)
        go = ctx.get(Go)
        if go is not None and go.flaky and ctx.attempt == 1:
            raise ValueError("the first try of MakeA fails")
        return A()


class MakeB(pc.Builder):
    consumes = [A]
    produces = B

    def process(self, ctx: pc.BuilderContext) -> B:
        time.sleep(0.3)
        return B()


class MakeC(pc.Builder):
    consumes = [B]
    accesses = [Go]
    produces = C
    max_retries = 1

    def process(self, ctx: pc.BuilderContext) -> C:
        time.sleep(0.02)
        go = ctx.get(Go)
        if go is not None and go.flaky and ctx.attempt == 1:
            raise RuntimeError("the first try of MakeC fails")
        return C()


class MakeD(pc.Builder):
    consumes = [C]
    accesses = [Go]
    produces = D
    time_limit = 2

    def process(self, ctx: pc.BuilderContext) -> D:
        go = ctx.get(Go)
        if go is not None and go.hang and ctx.attempt == 1:
            time.sleep(6)
        return D()


class Observed(pc.Workflow):
    builders = [MakeA, MakeB, MakeC, MakeD]
    target = D


def _record_spans(directory: str) -> None:
    """The SDK's in-memory exporter, its spans written out as each one ends."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()

    class Dump(SimpleSpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            super().on_end(span)
            with open(os.path.join(directory, f"{os.getpid()}.jsonl"), "a") as out:
                for s in exporter.get_finished_spans():
                    out.write(json.dumps(span_json(s)) + "\n")
            exporter.clear()

    provider = TracerProvider()
    provider.add_span_processor(Dump(exporter))
    trace.set_tracer_provider(provider)
    if os.environ.get("POLARIS_TEST_CELERY_OTEL") == "1":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()


def span_json(s: Any) -> dict[str, Any]:
    ctx, parent = s.get_span_context(), s.parent
    return {"name": s.name, "trace": f"{ctx.trace_id:032x}", "span": f"{ctx.span_id:016x}",
            "parent": f"{parent.span_id:016x}" if parent is not None else None,
            "attributes": dict(s.attributes or {}), "status": s.status.status_code.name,
            "links": [f"{link.context.span_id:016x}" for link in s.links or ()],
            "start": s.start_time, "end": s.end_time, "pid": os.getpid()}


if os.environ.get("POLARIS_TEST_SPANS"):
    _record_spans(os.environ["POLARIS_TEST_SPANS"])

REDIS_URL = os.environ.get("POLARIS_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("observed", broker=os.environ.get("POLARIS_BROKER_URL") or REDIS_URL)
app.conf.worker_hijack_root_logger = False
registry = pc.Registry(pc.RedisStore(REDIS_URL))
registry.register("observed", Observed)
executor = pc.CeleryExecutor(app, registry, reconcile_interval=0.5, dispatch_timeout=2,
                             lease_grace=0.5)
