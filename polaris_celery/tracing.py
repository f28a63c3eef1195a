"""OpenTelemetry traces: a span per run, with a child span per builder attempt.

- The producer opens the run's span around `submit_delta` (and `restart`): `polaris.run`.
- Its context travels in the Celery message headers (W3C `traceparent`, through the global
  propagator), where opentelemetry-instrumentation-celery puts and looks for it too, so the two
  compose: with the instrumentation installed its `run/<task>` span sits between the two.
- A worker opens `polaris.attempt` for every attempt it runs, the delivered one and those it
  runs inline, as a child of the context the message brought (or of the span already current,
  the instrumentation's). The successors it sends carry that same context, not the attempt's,
  so every attempt of a run is a sibling under the run's span, however many hops it took.
- Messages the reconciler re-sends carry no context: such an attempt starts a trace of its
  own (the run's context is not kept in Redis).

Attributes: `polaris.workflow`, `polaris.instance`, `polaris.run`, `polaris.builder`,
`polaris.attempt`, `polaris.outcome`; a failed attempt's span has an error status naming the
error. Without the `opentelemetry-api` package (`pip install 'polaris-celery[otel]'`) every
function here does nothing; without an SDK configured, OpenTelemetry's own no-op tracer does.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .invoke import Outcome
from .observe import Observer, outcome_label

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised without the extra only
    trace = None  # type: ignore[assignment]

TRACER = "polaris_celery"
#: The context an attempt's span continues (the run's), while a worker runs a task.
_parent: contextvars.ContextVar[Any] = contextvars.ContextVar("polaris_trace_parent",
                                                              default=None)


def available() -> bool:
    return trace is not None


def _tracer() -> Any:
    return trace.get_tracer(TRACER)


@contextmanager
def run_span(workflow: str, instance_id: str) -> Iterator[Callable[[int], None]]:
    """The producer's span of a run, current while its delta is stored and sent; yields a
    function to call with the run's number once it is known."""
    if trace is None:
        yield lambda run: None
        return
    attributes = {"polaris.workflow": workflow, "polaris.instance": instance_id}
    with _tracer().start_as_current_span("polaris.run", kind=SpanKind.PRODUCER,
                                         attributes=attributes) as span:
        yield lambda run: span.set_attribute("polaris.run", run)


def headers() -> dict[str, str] | None:
    """The headers for a builder message: the run's context (see the module docstring)."""
    if trace is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=_parent.get())
    return carrier or None


class _RequestGetter:
    """Reads propagation headers off a Celery task request, as the Celery instrumentation
    does (Celery turns message headers into request attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None:
            return None
        return value if isinstance(value, list) else [str(value)]

    def keys(self, carrier: Any) -> list[str]:
        return []


@contextmanager
def task_context(request: Any) -> Iterator[None]:
    """While a worker runs a delivered task: the context its attempts continue."""
    if trace is None:
        yield
        return
    current = trace.get_current_span().get_span_context()
    ctx = otel_context.get_current() if current.is_valid \
        else propagate.extract(request, getter=_RequestGetter())  # type: ignore[arg-type]
    token = _parent.set(ctx)
    try:
        yield
    finally:
        _parent.reset(token)


class Tracing(Observer):
    """Opens and closes the attempt spans."""

    def __init__(self) -> None:
        self._spans: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(instance_id: str, run: int, builder: str, token: int) -> tuple[Any, ...]:
        return (threading.get_ident(), instance_id, run, builder, token)

    def started(self, workflow: str, instance_id: str, run: int, builder: str, token: int
                ) -> None:
        if trace is None:
            return
        span = _tracer().start_span(
            "polaris.attempt", context=_parent.get(), kind=SpanKind.CONSUMER,
            attributes={"polaris.workflow": workflow, "polaris.instance": instance_id,
                        "polaris.run": run, "polaris.builder": builder,
                        "polaris.attempt": token})
        with self._lock:
            self._spans[self._key(instance_id, run, builder, token)] = span

    def finished(self, workflow: str, instance_id: str, run: int, builder: str, token: int,
                 outcome: Outcome, committed: bool) -> None:
        with self._lock:
            span = self._spans.pop(self._key(instance_id, run, builder, token), None)
        if span is None:
            return
        span.set_attribute("polaris.outcome", outcome_label(outcome, committed))
        if outcome.error is not None:
            span.set_status(Status(StatusCode.ERROR,
                                   f"{outcome.error.type}: {outcome.error.message}"))
        span.end()


_tracing = Tracing()


def observer() -> Tracing:
    """The process's attempt-span observer (one, whatever the number of executors)."""
    return _tracing
