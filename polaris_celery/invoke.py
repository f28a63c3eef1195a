"""Run one attempt of one builder: the step every executor shares.

It builds the scoped context, calls the before/after hooks, and turns every way a builder can
misbehave (raising, returning the wrong type) into a `BuilderError` value, so the executors only
decide what to do with an outcome, never how to obtain it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from .builder import Builder, BuilderSpec
from .context import BuilderContext
from .frontier import BuilderError

BeforeHook = Callable[[type[Builder], Sequence[BaseModel]], None]
AfterHook = Callable[[type[Builder], BaseModel | None], None]


@dataclass(frozen=True)
class Outcome:
    produced: BaseModel | None
    error: BuilderError | None
    seconds: float


def attempt(
    spec: BuilderSpec,
    inputs: Mapping[str, BaseModel],
    new: frozenset[str],
    *,
    workflow: str,
    instance_id: str,
    run: int,
    attempt_no: int,
    before: BeforeHook | None = None,
    after: AfterHook | None = None,
) -> Outcome:
    """Run `spec`'s builder once on `inputs` (already limited to what it declared)."""
    t0 = time.perf_counter()
    ctx = BuilderContext(
        spec, inputs, workflow=workflow, instance_id=instance_id, run=run, attempt=attempt_no
    )
    try:
        if before is not None:
            before(spec.builder_cls, [inputs[n] for n in spec.readable_names
                                      if n in new and n in inputs])
        produced = spec.builder_cls().process(ctx)
        if produced is not None and type(produced) is not spec.produces:
            raise TypeError(
                f"returned {type(produced).__qualname__}, but declares produces = "
                f"{spec.produces.__qualname__}"
            )
        if after is not None:
            after(spec.builder_cls, produced)
    except Exception as exc:
        err = BuilderError(spec.name, type(exc).__name__, str(exc)[:2000])
        return Outcome(None, err, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    if seconds > spec.time_limit:
        # Pools that cannot interrupt a builder (threads, in-process executors) still refuse
        # its late result, as a prefork worker's hard time limit would have.
        err = BuilderError(spec.name, "TimeLimitExceeded",
                           f"took {seconds:.2f}s, over its time_limit of {spec.time_limit}s")
        return Outcome(None, err, seconds)
    return Outcome(produced, None, seconds)
