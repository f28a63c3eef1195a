"""Tiny workflows, one per rule of DESIGN section 3 and per scenario of the Java framework's suite.

Builders record each call in `CALLS` (keyed by instance id) so tests can assert what ran, how
often and on which inputs; the in-process Celery worker runs on threads of this process, so the
same record serves every executor.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pydantic
from pydantic import BaseModel

import polaris_celery as pc

_lock = threading.Lock()
CALLS: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
FAIL_TIMES: dict[str, int] = {}  # instance id -> how many attempts of Flaky fail


def record(ctx: pc.BuilderContext, name: str, **seen: Any) -> None:
    with _lock:
        CALLS[ctx.instance_id].append((name, seen))


def calls(instance_id: str) -> list[str]:
    with _lock:
        return [n for n, _ in CALLS[instance_id]]


def seen(instance_id: str, builder: str) -> list[dict[str, Any]]:
    with _lock:
        return [s for n, s in CALLS[instance_id] if n == builder]


def v(ctx: pc.BuilderContext, tp: type[BaseModel]) -> Any:
    got = ctx.get(tp)
    return None if got is None else got.v  # type: ignore[attr-defined]


# -- data ------------------------------------------------------------------------------------

class A(BaseModel):
    v: int = 0


class B(BaseModel):
    v: int = 0


class C(BaseModel):
    v: int = 0


class D(BaseModel):
    v: int = 0


class E(BaseModel):
    v: int = 0


class F(BaseModel):
    v: int = 0


class G(BaseModel):
    v: int = 0


class O(BaseModel):  # noqa: E742 - an optional
    v: int = 0


class Z(BaseModel):  # accessed only
    v: int = 0


class X(BaseModel):
    v: int = 0


class Y(BaseModel):
    v: int = 0


class Unrelated(BaseModel):
    v: int = 0


# -- DBF: BA:{A,B}->C, BB:{C,D}->E, BC:{A,E}->F -------------------------------------------------

class BA(pc.Builder):
    consumes = [A, B]
    produces = C

    def process(self, ctx: pc.BuilderContext) -> C:
        record(ctx, "BA", a=v(ctx, A), b=v(ctx, B))
        return C(v=v(ctx, A) + v(ctx, B))


class BB(pc.Builder):
    consumes = [C, D]
    produces = E

    def process(self, ctx: pc.BuilderContext) -> E:
        record(ctx, "BB", c=v(ctx, C), d=v(ctx, D))
        return E(v=v(ctx, C) * 10 + v(ctx, D))


class BC(pc.Builder):
    consumes = [A, E]
    produces = F

    def process(self, ctx: pc.BuilderContext) -> F:
        record(ctx, "BC", a=v(ctx, A), e=v(ctx, E))
        return F(v=v(ctx, E) + 1)


class DBF(pc.Workflow):
    builders = [BC, BA, BB]  # any order
    target = F


# -- optionals and accesses ----------------------------------------------------------------------

class WithOptional(pc.Builder):
    consumes = [A]
    optionals = [O]
    accesses = [Z]
    produces = X

    def process(self, ctx: pc.BuilderContext) -> X:
        record(ctx, "WithOptional", a=v(ctx, A), o=v(ctx, O), z=v(ctx, Z))
        return X(v=(v(ctx, A) or 0) + (v(ctx, O) or 0))


class OptionalFlow(pc.Workflow):
    builders = [WithOptional]
    target = X


# -- diamond: A -> P(B), A -> Q(C), {B, C} -> J(D); and a waiter consuming A optionally B ------

class Left(pc.Builder):
    consumes = [A]
    produces = B

    def process(self, ctx: pc.BuilderContext) -> B:
        record(ctx, "Left")
        return B(v=v(ctx, A) + 1)


class Right(pc.Builder):
    consumes = [A]
    produces = C

    def process(self, ctx: pc.BuilderContext) -> C:
        record(ctx, "Right")
        return C(v=v(ctx, A) + 2)


class Join(pc.Builder):
    consumes = [B, C]
    produces = D

    def process(self, ctx: pc.BuilderContext) -> D:
        record(ctx, "Join", b=v(ctx, B), c=v(ctx, C))
        return D(v=v(ctx, B) + v(ctx, C))


class Waiter(pc.Builder):
    """Eligible as soon as A arrives, but Left (upstream through its optional B) is pending."""

    consumes = [A]
    optionals = [B]
    produces = E

    def process(self, ctx: pc.BuilderContext) -> E:
        record(ctx, "Waiter", a=v(ctx, A), b=v(ctx, B))
        return E(v=1)


class Finish(pc.Builder):
    consumes = [D, E]
    produces = F

    def process(self, ctx: pc.BuilderContext) -> F:
        record(ctx, "Finish")
        return F(v=v(ctx, D))


class Diamond(pc.Workflow):
    builders = [Finish, Join, Waiter, Right, Left]
    target = F


# -- a cycle: Seed -> Fwd(B) -> Back(C) -> Fwd (optional) ... Done(F) ---------------------------

class Fwd(pc.Builder):
    consumes = [A]
    optionals = [C]
    produces = B

    def process(self, ctx: pc.BuilderContext) -> B:
        record(ctx, "Fwd", c=v(ctx, C))
        return B(v=(v(ctx, C) or 0) + 1)


class Back(pc.Builder):
    consumes = [B]
    produces = C

    def process(self, ctx: pc.BuilderContext) -> C:
        record(ctx, "Back", b=v(ctx, B))
        return C(v=v(ctx, B) + 1)


class CycleDone(pc.Builder):
    consumes = [C, G]
    produces = F

    def process(self, ctx: pc.BuilderContext) -> F:
        record(ctx, "CycleDone")
        return F(v=v(ctx, C))


class Cycle(pc.Workflow):
    builders = [Fwd, Back, CycleDone]
    target = F


# -- seven builders fanning into one ---------------------------------------------------------

class P1(BaseModel):
    v: int = 0


class P2(BaseModel):
    v: int = 0


class P3(BaseModel):
    v: int = 0


class P4(BaseModel):
    v: int = 0


class P5(BaseModel):
    v: int = 0


class P6(BaseModel):
    v: int = 0


class P7(BaseModel):
    v: int = 0


FAN_PARTS = [P1, P2, P3, P4, P5, P6, P7]


def _part(i: int, out: type[BaseModel]) -> type[pc.Builder]:
    def process(self: pc.Builder, ctx: pc.BuilderContext) -> BaseModel:
        record(ctx, f"Part{i}")
        return out(v=i)

    return type(f"Part{i}", (pc.Builder,), {"consumes": [A], "produces": out,
                                            "process": process, "__module__": __name__})


PARTS = [_part(i + 1, p) for i, p in enumerate(FAN_PARTS)]


class FanJoin(pc.Builder):
    consumes = FAN_PARTS
    produces = F

    def process(self, ctx: pc.BuilderContext) -> F:
        record(ctx, "FanJoin")
        return F(v=sum(v(ctx, p) for p in FAN_PARTS))


class FanIn(pc.Workflow):
    builders = [*PARTS, FanJoin]
    target = F


# -- a fan-out wider than chunks.SPREAD: its dispatches share broker messages -------------------

WIDE = 70
WIDE_PARTS = [pydantic.create_model(f"WideE{i}", v=(int, 0), __module__=__name__)
              for i in range(WIDE)]


class WideDone(BaseModel):
    v: int = 0


def _wide(i: int, out: type[BaseModel]) -> type[pc.Builder]:
    def process(self: pc.Builder, ctx: pc.BuilderContext) -> BaseModel:
        record(ctx, f"Wide{i}")
        return out(v=i)

    return type(f"Wide{i}", (pc.Builder,), {"consumes": [A], "produces": out,
                                            "process": process, "__module__": __name__})


class WideJoin(pc.Builder):
    consumes = WIDE_PARTS
    produces = WideDone

    def process(self, ctx: pc.BuilderContext) -> WideDone:
        record(ctx, "WideJoin")
        return WideDone(v=sum(v(ctx, p) for p in WIDE_PARTS))


class Wide(pc.Workflow):
    builders = [*(_wide(i, p) for i, p in enumerate(WIDE_PARTS)), WideJoin]
    target = WideDone


# -- two producers of one datum, resolved -----------------------------------------------------

class MakeXFast(pc.Builder):
    consumes = [A]
    produces = X

    def process(self, ctx: pc.BuilderContext) -> X:
        record(ctx, "MakeXFast")
        return X(v=1)


class MakeXSlow(pc.Builder):
    consumes = [A]
    produces = X

    def process(self, ctx: pc.BuilderContext) -> X:
        record(ctx, "MakeXSlow")
        return X(v=2)


class Resolved(pc.Workflow):
    builders = [MakeXFast, MakeXSlow]
    target = X
    resolution = {X: MakeXSlow}


# -- failures, wrong types, "not now", scoping, the target stopping a run ------------------------

class Flaky(pc.Builder):
    consumes = [A]
    produces = B
    max_retries = 2

    def process(self, ctx: pc.BuilderContext) -> B:
        record(ctx, "Flaky", attempt=ctx.attempt)
        with _lock:
            left = FAIL_TIMES.get(ctx.instance_id, 0)
            FAIL_TIMES[ctx.instance_id] = left - 1
        if left > 0:
            raise RuntimeError(f"flaky failure, {left} left")
        return B(v=ctx.attempt)


class Sibling(pc.Builder):
    consumes = [A]
    produces = C

    def process(self, ctx: pc.BuilderContext) -> C:
        record(ctx, "Sibling")
        return C(v=7)


class AfterFlaky(pc.Builder):
    consumes = [B]
    produces = D

    def process(self, ctx: pc.BuilderContext) -> D:
        record(ctx, "AfterFlaky")
        return D(v=1)


class Failing(pc.Workflow):
    builders = [Flaky, Sibling, AfterFlaky]
    target = D


class WrongType(pc.Builder):
    consumes = [A]
    produces = B

    def process(self, ctx: pc.BuilderContext) -> Any:
        record(ctx, "WrongType")
        return C(v=1)


class Snoop(pc.Builder):
    consumes = [B]
    produces = C

    def process(self, ctx: pc.BuilderContext) -> C:
        record(ctx, "Snoop")
        ctx.get(Z)  # not declared
        return C()


class Misbehaving(pc.Workflow):
    builders = [WrongType, Snoop]
    target = C


class NotNow(pc.Builder):
    """Produces B only when A.v is positive; otherwise "not now"."""

    consumes = [A]
    produces = B

    def process(self, ctx: pc.BuilderContext) -> B | None:
        record(ctx, "NotNow", a=v(ctx, A))
        return B(v=v(ctx, A)) if v(ctx, A) > 0 else None


class AfterNotNow(pc.Builder):
    consumes = [B]
    produces = C

    def process(self, ctx: pc.BuilderContext) -> C:
        record(ctx, "AfterNotNow", b=v(ctx, B))
        return C(v=v(ctx, B))


class Maybe(pc.Workflow):
    builders = [NotNow, AfterNotNow]
    target = C


class MakeTarget(pc.Builder):
    consumes = [A]
    produces = B

    def process(self, ctx: pc.BuilderContext) -> B:
        record(ctx, "MakeTarget")
        return B(v=1)


class PastTarget(pc.Builder):
    consumes = [B]
    produces = C

    def process(self, ctx: pc.BuilderContext) -> C:
        record(ctx, "PastTarget")
        return C(v=1)


class StopsAtTarget(pc.Workflow):
    builders = [MakeTarget, PastTarget]
    target = B


# -- function style ---------------------------------------------------------------------------

@pc.builder
def add_one(a: A, o: O | None = None) -> B:
    return B(v=a.v + 1 + (o.v if o else 0))


@pc.builder(max_retries=1)
def double(b: B) -> C | None:
    return C(v=b.v * 2) if b.v >= 0 else None


class Functions(pc.Workflow):
    builders = [add_one, double]
    target = C


class CountIt(pc.Builder):
    consumes = [Y]
    produces = X

    def process(self, ctx: pc.BuilderContext) -> X:
        record(ctx, "CountIt", run=ctx.run, y=v(ctx, Y))
        return X(v=v(ctx, Y))


class Tally(pc.Workflow):
    builders = [CountIt]
    target = X


class Sleepy(pc.Builder):
    consumes = [G]
    produces = B

    def process(self, ctx: pc.BuilderContext) -> B:
        import time

        time.sleep(ctx.get(G).v / 1000)  # type: ignore[union-attr]
        return B(v=1)


class SleepFlow(pc.Workflow):
    builders = [Sleepy]
    target = B


class Token(BaseModel):  # transient input
    v: int = 0


class Scratch(BaseModel):  # transient, produced
    v: int = 0


class UseToken(pc.Builder):
    consumes = [A]
    optionals = [Token]
    produces = Scratch

    def process(self, ctx: pc.BuilderContext) -> Scratch:
        record(ctx, "UseToken", token=v(ctx, Token))
        return Scratch(v=v(ctx, A) + (v(ctx, Token) or 0))


class AfterScratch(pc.Builder):
    consumes = [Scratch]
    produces = D

    def process(self, ctx: pc.BuilderContext) -> D:
        record(ctx, "AfterScratch", scratch=v(ctx, Scratch))
        return D(v=v(ctx, Scratch))


class TransientFlow(pc.Workflow):
    builders = [UseToken, AfterScratch]
    target = D
    transients = [Token, Scratch]


class SlowBuilder(pc.Builder):
    consumes = [G]
    produces = B
    time_limit = 0.3

    def process(self, ctx: pc.BuilderContext) -> B:
        import time

        record(ctx, "SlowBuilder", attempt=ctx.attempt)
        time.sleep(v(ctx, G) / 1000)
        return B(v=1)


class Slow(pc.Workflow):
    builders = [SlowBuilder]
    target = B


WORKFLOWS: dict[str, type[pc.Workflow]] = {
    "transient": TransientFlow,
    "slow": Slow,
    "tally": Tally,
    "sleep": SleepFlow,
    "dbf": DBF,
    "optional": OptionalFlow,
    "diamond": Diamond,
    "cycle": Cycle,
    "fan-in": FanIn,
    "wide": Wide,
    "resolved": Resolved,
    "failing": Failing,
    "misbehaving": Misbehaving,
    "maybe": Maybe,
    "stops-at-target": StopsAtTarget,
    "functions": Functions,
    "dbf-close": type("DBFClose", (DBF,), {"on_complete": "close"}),
    "dbf-late": type("DBFLate", (DBF,), {"on_complete": "late"}),
}


def register_all(registry: pc.Registry) -> pc.Registry:
    from . import scenarios_dbf  # it builds on this module's data and record()

    for key, wf in {**WORKFLOWS, **scenarios_dbf.WORKFLOWS}.items():
        registry.register(key, wf)
    return registry


# -- hooks every test executor carries (tests/test_hooks.py) ----------------------------------

HOOK_EVENTS: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
BOOM = "hookboom-"  # instances whose id starts so have every hook raise (after recording)


def _recorder(kind: str) -> Any:
    def hook(subject: Any, detail: Any, info: pc.HookInfo) -> None:
        assert isinstance(info, pc.HookInfo)
        if kind in ("before_run", "after_run"):
            event: tuple[Any, ...] = (kind, info.run, getattr(subject, "status", None))
        elif kind == "on_error":
            event = (kind, subject.__name__, info.attempt, detail.type)
        else:
            event = (kind, subject.__name__, info.attempt)
        with _lock:
            HOOK_EVENTS[info.instance_id].append(event)
        if info.instance_id.startswith(BOOM):
            raise RuntimeError(f"{kind} hook boom")

    return hook


def _run_recorder(kind: str) -> Any:
    inner = _recorder(kind)

    def hook(subject: Any, info: pc.HookInfo) -> None:
        inner(subject, None, info)

    return hook


RECORDING_HOOKS: dict[str, Any] = {
    "before": _recorder("before"),
    "after": _recorder("after"),
    "on_error": _recorder("on_error"),
    "before_run": _run_recorder("before_run"),
    "after_run": _run_recorder("after_run"),
}


def hook_events(instance_id: str) -> list[tuple[Any, ...]]:
    with _lock:
        return list(HOOK_EVENTS[instance_id])
