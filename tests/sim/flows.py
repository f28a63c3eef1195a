"""The workflow the simulator drives, in two versions of one key, and its failure switch.

Version 1 (`FlowV1`), target Z::

    A --B1--> X --B4--> V --+
    A (+Nonce) --B2--> Y ---+--B3 (+Hint)--> Z

B4 is B1's only successor while B2 may still be in flight, so B1's commit claims it inline:
the shape in which a commit's lost reply can strand an inline successor. B2 retries once, after a
backoff (a message with a countdown). Nonce is transient. B1 returns None ("not now") for some
values of A.

Version 2 (`FlowV2`) has other builders over the same data: A --C1--> X --C2 (+Hint)--> W, and
C3 consumes W and A into Z. Workers that lack it hand its messages on.

Builders are pure functions of their inputs. `FATES.decide(builder, instance)`, set by the
harness, tells an attempt to raise `SimFailure` (a builder failure the harness injected).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from pydantic import BaseModel

import polaris_celery as pc

WORKFLOW = "sim"
#: Time limit of every sim builder: with `lease_grace` a running lease lasts 10 s, shorter than
#: the 30 s `dispatch_timeout`, so waiting for the wrong one of the two is visible.
TIME_LIMIT = 5.0


class A(BaseModel):
    v: int


class Hint(BaseModel):
    v: int


class Nonce(BaseModel):
    v: int


class X(BaseModel):
    v: int


class Y(BaseModel):
    v: int


class V(BaseModel):
    v: int


class W(BaseModel):
    v: int


class Z(BaseModel):
    v: int


class SimFailure(Exception):
    """A builder failure the harness asked for."""


class Fates:
    """Whether an attempt should fail: set by the world that is running, None otherwise.

    An attempt told to fail does so in one of three ways, picked from the attempt's own ids (so
    the seed's random draws are the same whichever): it raises, it returns an output built with
    `model_construct` that does not validate, or one that cannot be encoded at all. Each is the
    builder's own failure, never its consumer's (issue 10, cases 8 and 9)."""

    def __init__(self) -> None:
        self.decide: Callable[[str, str], bool] | None = None

    def check(self, builder: str, ctx: pc.BuilderContext, produces: type[BaseModel]
              ) -> BaseModel | None:
        """None to go on, or the bad output to return."""
        if self.decide is None or not self.decide(builder, ctx.instance_id):
            return None
        how = zlib.crc32(f"{builder}/{ctx.run}/{ctx.attempt}".encode()) % 3
        if how == 1:
            return produces.model_construct(v="not an int")
        if how == 2:
            return produces.model_construct(v=b"\xff\xfe")  # no JSON for these bytes
        raise SimFailure(f"{builder} told to fail in run {ctx.run} attempt {ctx.attempt}")


FATES = Fates()


def _v(ctx: pc.BuilderContext, tp: type[A | Hint | Nonce | X | Y | V | W]) -> int:
    got = ctx.get(tp)
    return got.v if got is not None else 0


class B1(pc.Builder):
    consumes = [A]
    produces = X
    time_limit = TIME_LIMIT

    def process(self, ctx: pc.BuilderContext) -> X | None:
        bad = FATES.check("B1", ctx, X)
        if bad is not None:
            return bad  # type: ignore[return-value]
        a = _v(ctx, A)
        return None if a % 7 == 3 else X(v=a + 1)


class B2(pc.Builder):
    consumes = [A]
    optionals = [Nonce]
    produces = Y
    max_retries = 1
    retry_backoff = 3.0
    time_limit = TIME_LIMIT

    def process(self, ctx: pc.BuilderContext) -> Y:
        bad = FATES.check("B2", ctx, Y)
        if bad is not None:
            return bad  # type: ignore[return-value]
        return Y(v=_v(ctx, A) * 2 + _v(ctx, Nonce))


class B4(pc.Builder):
    consumes = [X]
    produces = V
    time_limit = TIME_LIMIT

    def process(self, ctx: pc.BuilderContext) -> V:
        bad = FATES.check("B4", ctx, V)
        if bad is not None:
            return bad  # type: ignore[return-value]
        return V(v=_v(ctx, X) * 3)


class B3(pc.Builder):
    consumes = [V, Y]
    optionals = [Hint]
    produces = Z
    time_limit = TIME_LIMIT

    def process(self, ctx: pc.BuilderContext) -> Z:
        bad = FATES.check("B3", ctx, Z)
        if bad is not None:
            return bad  # type: ignore[return-value]
        return Z(v=_v(ctx, V) + _v(ctx, Y) + _v(ctx, Hint))


class FlowV1(pc.Workflow):
    builders = [B1, B2, B4, B3]
    target = Z
    transients = [Nonce]


class C1(pc.Builder):
    consumes = [A]
    produces = X
    time_limit = TIME_LIMIT

    def process(self, ctx: pc.BuilderContext) -> X:
        bad = FATES.check("C1", ctx, X)
        if bad is not None:
            return bad  # type: ignore[return-value]
        return X(v=_v(ctx, A) + 10)


class C2(pc.Builder):
    consumes = [X]
    optionals = [Hint]
    produces = W
    time_limit = TIME_LIMIT

    def process(self, ctx: pc.BuilderContext) -> W:
        bad = FATES.check("C2", ctx, W)
        if bad is not None:
            return bad  # type: ignore[return-value]
        return W(v=_v(ctx, X) * 3 + _v(ctx, Hint))


class C3(pc.Builder):
    consumes = [W, A]
    produces = Z
    time_limit = TIME_LIMIT

    def process(self, ctx: pc.BuilderContext) -> Z:
        bad = FATES.check("C3", ctx, Z)
        if bad is not None:
            return bad  # type: ignore[return-value]
        return Z(v=_v(ctx, W) - _v(ctx, A))


class FlowV2(pc.Workflow):
    builders = [C1, C2, C3]
    target = Z


#: Data a delta may carry, and which of them are kept in the instance (not transient).
DELTA_TYPES: tuple[type[BaseModel], ...] = (A, Hint, Nonce)
KEPT = ("A", "Hint")
