"""Run one attempt of one builder: the step every executor shares.

It builds the scoped context, calls the before/after/on_error hooks (through `Hooks`, so a
raising hook breaks nothing unless strict), and turns every way a builder can
misbehave (raising, returning the wrong type, returning an output that does not validate, cannot
be encoded or is too large) into a `BuilderError` value, so the executors only decide what to do
with an outcome, never how to obtain it. An output is checked here, not at commit, so its builder
takes the blame (and its retries apply) rather than whoever reads it next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from . import codec
from .builder import BuilderSpec
from .context import BuilderContext
from .errors import InvalidInput
from .frontier import BuilderError
from .hooks import NO_HOOKS, HookInfo, Hooks

BeforeHook = Callable[..., object]  # before(builder_cls, new_inputs[, info])
AfterHook = Callable[..., object]  # after(builder_cls, produced[, info])


class InvalidOutput(Exception):
    """A builder returned an output that cannot be committed; never escapes `attempt`.

    Its class name is the `BuilderError.type` such an attempt fails with.
    """


@dataclass(frozen=True)
class Outcome:
    """What one attempt gave: an output (or None for "not now"), or the error it failed with.

    `raw` is `produced` encoded and already validated (None when nothing was produced), so the
    committer stores these bytes instead of encoding a second time.
    """

    produced: BaseModel | None
    error: BuilderError | None
    seconds: float
    raw: bytes | None = None


def attempt(
    spec: BuilderSpec,
    inputs: Mapping[str, BaseModel],
    new: frozenset[str],
    *,
    workflow: str,
    instance_id: str,
    run: int,
    attempt_no: int,
    hooks: Hooks = NO_HOOKS,
    max_bytes: int = codec.DEFAULT_MAX_DATUM_BYTES,
) -> Outcome:
    """Run `spec`'s builder once on `inputs` (already limited to what it declared).

    The output is encoded and validated (within `max_bytes`) before the after-hook sees it, so
    the hook, like the store, only ever gets outputs that can be committed. A failed attempt
    calls the on_error hook (`failed`).
    """
    t0 = time.perf_counter()
    info = HookInfo(workflow, instance_id, run, attempt_no)
    ctx = BuilderContext(
        spec, inputs, workflow=workflow, instance_id=instance_id, run=run, attempt=attempt_no
    )
    try:
        if "before" in hooks:
            hooks.call("before", spec.builder_cls, [inputs[n] for n in spec.readable_names
                                                    if n in new and n in inputs], info=info)
        produced = spec.new_builder().process(ctx)
        if produced is not None and type(produced) is not spec.produces:
            raise TypeError(
                f"returned {type(produced).__qualname__}, but declares produces = "
                f"{spec.produces.__qualname__}"
            )
        raw = None if produced is None else _checked(spec, produced, max_bytes)
        hooks.call("after", spec.builder_cls, produced, info=info)
    except Exception as exc:
        err = BuilderError(spec.name, type(exc).__name__, str(exc)[:2000])
        return failed(spec, Outcome(None, err, time.perf_counter() - t0), hooks, info)
    seconds = time.perf_counter() - t0
    if seconds > spec.time_limit:
        # Pools that cannot interrupt a builder (threads, in-process executors) still refuse
        # its late result, as a prefork worker's hard time limit would have.
        err = BuilderError(spec.name, "TimeLimitExceeded",
                           f"took {seconds:.2f}s, over its time_limit of {spec.time_limit}s")
        return failed(spec, Outcome(None, err, seconds), hooks, info)
    return Outcome(produced, None, seconds, raw)


def failed(spec: BuilderSpec, out: Outcome, hooks: Hooks, info: HookInfo) -> Outcome:
    """Tell the on_error hook about a failed attempt. Under strict hooks, a raising on_error
    hook's error becomes the attempt's error (so it is seen); otherwise it is only logged."""
    assert out.error is not None
    try:
        hooks.call("on_error", spec.builder_cls, out.error, info=info)
    except Exception as exc:
        err = BuilderError(spec.name, type(exc).__name__,
                           f"on_error hook raised {str(exc)[:1900]} (after {out.error.type}: "
                           f"{out.error.message[:200]})")
        return Outcome(None, err, out.seconds)
    return out


def _checked(spec: BuilderSpec, produced: BaseModel, max_bytes: int) -> bytes:
    """`produced` encoded, or InvalidOutput naming the builder, the type and what is wrong."""
    try:
        return codec.encode_valid(produced, max_bytes)
    except InvalidInput as exc:
        raise InvalidOutput(
            f"builder {spec.name!r} produced a {spec.produces_name} that cannot be committed: {exc}"
        ) from None
