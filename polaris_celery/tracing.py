"""OpenTelemetry traces: a span per run, from its submit to its settle, with a child span per
builder attempt.

A run starts in one process (the producer's `submit_delta` or `restart`) and settles in another
(the worker whose commit, or reconciler's look, settled it), so its span cannot be held open by
one process. Instead:

- The producer starts the run's span (`polaris.run`) around the submit, current while the delta
  is stored and its builders are sent, as a child of whatever span is current there, and never
  ends it. Its identity (trace and span id, sampled flag) and its parent's span id are kept
  with the run, in its header in Redis (`RunState.trace`, a few dozen bytes; absent when no
  span is recording, so nothing is stored without an SDK), and its start time is the run's own
  `started`.
- Whichever process settles the run emits the run's span then: that identity, that parent, that
  start time, and the end time now, with the run's outcome. Attempt spans recorded meanwhile
  were already children of it, so the trace is whole once it settles. The SDK draws span ids
  from its tracer's id generator, so the run's tracer gets one that hands out the kept ids
  while the span is started, and fresh ones otherwise. With another SDK (a tracer without an
  `id_generator`) the span is emitted with fresh ids and a link to the kept identity.
- A run's context travels in every Celery message of the run (W3C `traceparent`, through the
  global propagator), where opentelemetry-instrumentation-celery puts and looks for it too, so
  the two compose: with the instrumentation installed its `run/<task>` spans sit between the
  run's span and the attempts'. Messages the reconciler sends again carry it too, read from the
  run's header, so their attempts join the run's trace as well.
- A worker opens `polaris.attempt` for every attempt it runs, the delivered one and those it
  runs inline, as a child of the context the message brought (or of the span already current,
  the instrumentation's).

Attributes: `polaris.workflow`, `polaris.instance`, `polaris.run`, `polaris.builder`,
`polaris.attempt`, `polaris.outcome` (an attempt's), `polaris.status` (a run's); a failed
attempt's or run's span has an error status naming the error. Without the `opentelemetry-api`
package (`pip install 'polaris-celery[otel]'`) every function here does nothing; without an SDK
configured, OpenTelemetry's own no-op tracer does, and nothing is kept with runs.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .frontier import RunState
from .invoke import Outcome
from .machine import Step
from .observe import Observer, outcome_label

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised without the extra only
    trace = None  # type: ignore[assignment]

TRACER = "polaris_celery"
#: The context an attempt's span continues (the run's), while a worker runs a task.
_parent: contextvars.ContextVar[Any] = contextvars.ContextVar("polaris_trace_parent",
                                                              default=None)
#: What the run being submitted here keeps (see `run_span`), and whether it was asked for.
_submitting: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "polaris_trace_submitting", default=None)
#: The (trace id, span id) the run tracer's id generator hands out while a run's span starts.
_kept_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "polaris_trace_kept_ids", default=None)
_ids_lock = threading.Lock()


def available() -> bool:
    return trace is not None


def _tracer() -> Any:
    return trace.get_tracer(TRACER)


# -- what a run keeps: "<traceparent>" or "<traceparent>/<parent span id>" ------------------------


def _keep(ctx: Any, parent: Any) -> str:
    kept = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0xff:02x}"
    return f"{kept}/{parent.span_id:016x}" if parent is not None and parent.is_valid else kept


def _kept(value: str) -> tuple[Any, Any] | None:
    """The run span's own context and its parent's (or None), from what the run kept; None for
    a value this version cannot read (traces are best effort: never fail a step for one)."""
    try:
        traceparent, _, parent = value.partition("/")
        version, trace_id, span_id, flags = traceparent.split("-")
        if version != "00" or len(trace_id) != 32 or len(span_id) != 16 or len(flags) != 2:
            return None
        tid, sid, fl = int(trace_id, 16), int(span_id, 16), trace.TraceFlags(int(flags, 16))
        own = trace.SpanContext(tid, sid, is_remote=True, trace_flags=fl)
        up = trace.SpanContext(tid, int(parent, 16), is_remote=True, trace_flags=fl) \
            if len(parent) == 16 else None
    except ValueError:
        return None
    return (own, up) if own.is_valid else None


@contextmanager
def run_span(workflow: str, instance_id: str) -> Iterator[None]:
    """Around a submit (or restart) in the producer: starts the run's span, current while its
    delta is stored and its builders are sent, and offers its identity to the coordinator
    (`Tracing.run_context`). The span is ended where the run settles (see the module
    docstring), unless the submit failed before asking for it: then here, as an error."""
    if trace is None:
        yield
        return
    parent = trace.get_current_span().get_span_context()
    span = _tracer().start_span(
        "polaris.run", kind=SpanKind.PRODUCER,
        attributes={"polaris.workflow": workflow, "polaris.instance": instance_id})
    ctx = span.get_span_context()
    offer: list[Any] = [_keep(ctx, parent) if ctx.is_valid else None, False]
    token = _submitting.set(offer)
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False,
                            set_status_on_exception=False):
            yield
    except BaseException as exc:
        if not offer[1]:  # no run kept this identity: nothing else will end the span
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.end()
        raise
    finally:
        _submitting.reset(token)


def headers(kept: str | None = None) -> dict[str, str] | None:
    """The headers for a builder message: the run's context, from what the run kept, else the
    context the current task continues (see the module docstring)."""
    if trace is None:
        return None
    ctx = _parent.get()
    if kept is not None:
        got = _kept(kept)
        if got is not None:
            ctx = trace.set_span_in_context(trace.NonRecordingSpan(got[0]))
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
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
        # Runs settled by the commit of an attempt whose span is still open: their spans end
        # after it, so that the run's span covers its last attempt's.
        self._settled: dict[tuple[Any, ...], list[tuple[str, str, RunState]]] = {}
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
        with self._lock:
            settled = self._settled.pop(self._key(instance_id, run, builder, token), [])
        for args in settled:
            _end_run_span(*args)


    def run_context(self) -> str | None:
        """The identity of the run span being submitted in this context (see `run_span`)."""
        offer = _submitting.get()
        if offer is None or offer[0] is None:
            return None
        offer[1] = True
        return str(offer[0])

    def applied(self, workflow: str, step: Step) -> None:
        for run in step.ended:
            if run.trace is None:
                continue
            with self._lock:  # an attempt of this run open on this thread: after its span
                key = next((k for k in self._spans if k[0] == threading.get_ident()
                            and k[1:3] == (step.instance_id, run.id)), None)
                if key is not None:
                    self._settled.setdefault(key, []).append((workflow, step.instance_id, run))
                    continue
            _end_run_span(workflow, step.instance_id, run)


class _KeptIds:
    """The run tracer's id generator: the kept ids while a run's span starts (`_kept_ids`),
    the SDK's own generator's otherwise."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def generate_span_id(self) -> int:
        kept = _kept_ids.get()
        return kept[1] if kept is not None else int(self.fallback.generate_span_id())

    def generate_trace_id(self) -> int:
        kept = _kept_ids.get()
        return kept[0] if kept is not None else int(self.fallback.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        return bool(getattr(self.fallback, "is_trace_id_random", lambda: False)())


def _run_tracer() -> tuple[Any, bool]:
    """The tracer for run spans, and whether it can give a span the ids a run kept (an SDK
    tracer: its id generator is wrapped once, and hands out the SDK's ids unless asked)."""
    tracer: Any = trace.get_tracer(TRACER + ".runs")
    ids = getattr(tracer, "id_generator", None)
    if ids is None:
        return tracer, False
    if not isinstance(ids, _KeptIds):
        with _ids_lock:
            if not isinstance(tracer.id_generator, _KeptIds):
                tracer.id_generator = _KeptIds(tracer.id_generator)
    return tracer, True


def _end_run_span(workflow: str, instance_id: str, run: RunState) -> None:
    """Emit the span of a run that settled here, as the identity it kept (module docstring)."""
    got = _kept(run.trace or "")
    if got is None:
        return
    own, up = got
    if not own.trace_flags.sampled:
        return
    parent = trace.set_span_in_context(trace.NonRecordingSpan(up)) if up is not None \
        else otel_context.Context()  # a root span: no parent, whatever is current here
    attributes = {"polaris.workflow": workflow, "polaris.instance": instance_id,
                  "polaris.run": run.id, "polaris.status": run.outcome}
    tracer, keeps = _run_tracer()
    options: dict[str, Any] = {"context": parent, "kind": SpanKind.PRODUCER,
                               "attributes": attributes,
                               "start_time": int(run.started * 1_000_000_000)}
    if keeps:
        token = _kept_ids.set((own.trace_id, own.span_id))
        try:
            span = tracer.start_span("polaris.run", **options)
        finally:
            _kept_ids.reset(token)
    else:
        span = tracer.start_span("polaris.run", links=[Link(own)], **options)
    if run.error is not None:
        span.set_status(Status(StatusCode.ERROR, f"{run.error.type}: {run.error.message}"))
    span.end()


_tracing = Tracing()


def observer() -> Tracing:
    """The process's attempt-span observer (one, whatever the number of executors)."""
    return _tracing
