"""The fault tests' Celery app, started as real processes: `celery -A tests.faults.app worker`.

Configured by the environment, read when `app` is first looked up (so importing this module for
its workflow classes, as the test process does, connects to nothing):

  POLARIS_REDIS_URL           the store (required)
  POLARIS_BROKER_URL          the broker (default: the store's server, db 1)
  POLARIS_FX_URL              where builders record their executions (default: the broker's URL)
  POLARIS_RECONCILE_INTERVAL  seconds (default 0.5)
  POLARIS_DISPATCH_TIMEOUT    seconds (default 3)
  POLARIS_LEASE_GRACE         seconds (default 1)
  POLARIS_INLINE              1/0 (default 1)
  POLARIS_FAULTS              fault points, read by polaris_celery.faults

Every builder records each execution in the list `fx:{workflow}:{instance}` (JSON: builder, run,
attempt, event start/end, pid, process group) on a Redis of its own, so the checker can compare
what actually ran with what the store says was committed. The side-effect Redis is kept apart
from the store so that a store restart cannot make a builder fail.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery import Celery
from pydantic import BaseModel

import polaris_celery as pc

# Short limits so that lease-expiry recovery happens within seconds (DESIGN section 4).
CHAIN_TIME_LIMIT = 3.0
SLOW_TIME_LIMIT = 2.0
CRASH_TIME_LIMIT = 2.0
CRASH_RETRIES = 2
HOLD_TIME_LIMIT = 3.0
RETRIES = 0  # the default: a crash costs no retry (max_lost covers it)

# -- side effects ------------------------------------------------------------------------------

_fx_lock = threading.Lock()
_fx_client: tuple[int, redis.Redis] | None = None


def fx_url() -> str:
    return os.environ.get("POLARIS_FX_URL") or broker_url()


def _fx() -> redis.Redis:
    global _fx_client
    with _fx_lock:
        if _fx_client is None or _fx_client[0] != os.getpid():
            _fx_client = (os.getpid(), redis.Redis.from_url(fx_url(), socket_timeout=10))
        return _fx_client[1]


def fx_key(workflow: str, instance_id: str) -> str:
    return f"fx:{workflow}:{instance_id}"


def record(ctx: pc.BuilderContext, builder: str, event: str) -> None:
    entry = {"b": builder, "run": ctx.run, "attempt": ctx.attempt, "ev": event,
             "pid": os.getpid(), "pgid": os.getpgrp(), "at": time.time()}
    _fx().rpush(fx_key(ctx.workflow, ctx.instance_id), json.dumps(entry))


# -- data --------------------------------------------------------------------------------------

class Seed(BaseModel):
    v: int
    work: float = 0.0  # seconds each builder of the instance works (sleeps), jittered


class Num(BaseModel):
    v: int
    work: float = 0.0


def _num(name: str) -> type[Num]:
    return type(name, (Num,), {"__module__": __name__})


def _work(seconds: float) -> None:
    if seconds > 0:
        time.sleep(random.uniform(0.5, 1.5) * seconds)


def _builder(
    name: str, consumes: Sequence[type[BaseModel]], produces: type[BaseModel],
    body: Callable[..., BaseModel | None], **options: Any,
) -> type[pc.Builder]:
    """A builder class that records its start and end around `body(ctx, *inputs)`."""

    def process(self: pc.Builder, ctx: pc.BuilderContext) -> BaseModel | None:
        record(ctx, name, "start")
        out = body(ctx, *(ctx.get(t) for t in consumes))
        record(ctx, name, "end")
        return out

    attrs: dict[str, Any] = {"consumes": list(consumes), "produces": produces,
                             "process": process, "__module__": __name__, **options}
    return type(name, (pc.Builder,), attrs)


def _workflow(name: str, builders: Sequence[type[pc.Builder]], target: type[BaseModel],
              **attrs: Any) -> type[pc.Workflow]:
    return type(name, (pc.Workflow,), {"builders": list(builders), "target": target,
                                       "__module__": __name__, **attrs})


# -- chain: Seed -> Chain1 -> ... -> Chain5 (K1..K5; target K5 = seed + 5) -----------------------

CHAIN_DATA = [_num(f"K{i}") for i in range(1, 6)]


def _chain_step(i: int) -> type[pc.Builder]:
    src: type[BaseModel] = Seed if i == 0 else CHAIN_DATA[i - 1]
    out = CHAIN_DATA[i]

    def body(ctx: pc.BuilderContext, x: Any) -> BaseModel:
        _work(x.work)
        return out(v=x.v + 1, work=x.work)

    return _builder(f"Chain{i + 1}", [src], out, body, time_limit=CHAIN_TIME_LIMIT,
                    max_retries=RETRIES)


Chain = _workflow("Chain", [_chain_step(i) for i in range(5)], CHAIN_DATA[-1])


def chain_expected(seed: Seed) -> dict[str, dict[str, Any]]:
    return {f"K{i}": {"v": seed.v + i, "work": seed.work} for i in range(1, 6)}


# -- fan: Seed -> Split -> P1..P4 -> Join (target Total = 10 * seed) -----------------------------

Parts = _num("Parts")
FAN_DATA = [_num(f"P{i}") for i in range(1, 5)]
Total = _num("Total")


def _split(ctx: pc.BuilderContext, seed: Seed) -> BaseModel:
    _work(seed.work)
    return Parts(v=seed.v, work=seed.work)


def _part(k: int) -> type[pc.Builder]:
    def body(ctx: pc.BuilderContext, parts: Num) -> BaseModel:
        _work(parts.work)
        return FAN_DATA[k - 1](v=parts.v * k, work=parts.work)

    return _builder(f"Part{k}", [Parts], FAN_DATA[k - 1], body, time_limit=CHAIN_TIME_LIMIT,
                    max_retries=RETRIES)


def _join(ctx: pc.BuilderContext, *parts: Num) -> BaseModel:
    _work(parts[0].work)
    return Total(v=sum(p.v for p in parts), work=parts[0].work)


Fan = _workflow("Fan", [
    _builder("Split", [Seed], Parts, _split, time_limit=CHAIN_TIME_LIMIT, max_retries=RETRIES),
    *(_part(k) for k in range(1, 5)),
    _builder("Join", FAN_DATA, Total, _join, time_limit=CHAIN_TIME_LIMIT, max_retries=RETRIES),
], Total)


def fan_expected(seed: Seed) -> dict[str, dict[str, Any]]:
    w = seed.work
    exp = {"Parts": {"v": seed.v, "work": w}, "Total": {"v": 10 * seed.v, "work": w}}
    exp.update({f"P{k}": {"v": seed.v * k, "work": w} for k in range(1, 5)})
    return exp


# -- slow: a builder slower than its time_limit on its first attempt, or on every attempt --------

SlowDone = _num("SlowDone")


def _slow(ctx: pc.BuilderContext, seed: Seed) -> BaseModel:
    if ctx.attempt == 1:
        time.sleep(seed.work)  # past time_limit (and past the lease on a threads pool)
    return SlowDone(v=seed.v)


def _always_slow(ctx: pc.BuilderContext, seed: Seed) -> BaseModel:
    time.sleep(seed.work)
    return SlowDone(v=seed.v)


Slow = _workflow("Slow", [_builder("Slow", [Seed], SlowDone, _slow, time_limit=SLOW_TIME_LIMIT,
                                   max_retries=2)], SlowDone)
AlwaysSlow = _workflow("AlwaysSlow", [
    _builder("AlwaysSlow", [Seed], SlowDone, _always_slow, time_limit=SLOW_TIME_LIMIT,
             max_retries=1)], SlowDone)


# -- crash: a builder that kills its own process on every attempt --------------------------------

CrashDone = _num("CrashDone")


def _crash(ctx: pc.BuilderContext, seed: Seed) -> BaseModel:
    os.kill(os.getpid(), signal.SIGKILL)
    return CrashDone(v=seed.v)  # pragma: no cover


Crash = _workflow("Crash", [_builder("Crash", [Seed], CrashDone, _crash,
                                     time_limit=CRASH_TIME_LIMIT, max_retries=CRASH_RETRIES)],
                  CrashDone)


# -- wide crash: a fan-out packed into shared messages (chunks.py), whose first part kills its
#    process on its first attempt, taking the rest of its message with it ---------------------

WIDE_CRASH = 70  # > 2 x chunks.SPREAD: two builders per message
WIDE_DATA = [_num(f"WN{k}") for k in range(WIDE_CRASH)]
WideDone = _num("WideDone")


def _wide_part(k: int) -> type[pc.Builder]:
    def body(ctx: pc.BuilderContext, seed: Seed) -> BaseModel:
        if k == 0 and ctx.attempt == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return WIDE_DATA[k](v=seed.v + k)

    return _builder(f"WPart{k}", [Seed], WIDE_DATA[k], body, time_limit=CHAIN_TIME_LIMIT,
                    max_retries=RETRIES)


def _wide_join(ctx: pc.BuilderContext, *parts: Num) -> BaseModel:
    return WideDone(v=sum(p.v for p in parts))


WideCrash = _workflow("WideCrash", [
    *(_wide_part(k) for k in range(WIDE_CRASH)),
    _builder("WJoin", WIDE_DATA, WideDone, _wide_join, time_limit=CHAIN_TIME_LIMIT,
             max_retries=RETRIES),
], WideDone)


# -- hold: a builder that keeps its first attempt long enough for its whole worker to be killed ---

HoldDone = _num("HoldDone")


def _hold(ctx: pc.BuilderContext, seed: Seed) -> BaseModel:
    if ctx.attempt == 1:
        time.sleep(seed.work)
    return HoldDone(v=seed.v)


Hold = _workflow("Hold", [_builder("Hold", [Seed], HoldDone, _hold, time_limit=HOLD_TIME_LIMIT,
                                   max_retries=3)], HoldDone)


# -- block: one long builder that holds a pool slot (a backlog behind it) ----------------------

BLOCK_TIME_LIMIT = 15.0
BlockDone = _num("BlockDone")


def _block(ctx: pc.BuilderContext, seed: Seed) -> BaseModel:
    time.sleep(seed.work)
    return BlockDone(v=seed.v)


Block = _workflow("Block", [_builder("Block", [Seed], BlockDone, _block,
                                     time_limit=BLOCK_TIME_LIMIT)], BlockDone)


# -- pair: two steps, the first slowish, for duplicated messages and blips -----------------------

Mid = _num("Mid")
PairDone = _num("PairDone")


def _first(ctx: pc.BuilderContext, seed: Seed) -> BaseModel:
    time.sleep(seed.work)
    return Mid(v=seed.v + 1)


def _second(ctx: pc.BuilderContext, mid: Num) -> BaseModel:
    return PairDone(v=mid.v + 1)


Pair = _workflow("Pair", [
    _builder("First", [Seed], Mid, _first, time_limit=CHAIN_TIME_LIMIT),
    _builder("Second", [Mid], PairDone, _second, time_limit=CHAIN_TIME_LIMIT),
], PairDone)

# -- inline: two steps each using 60% of its own time_limit; no retries ----------------------------

InMid = _num("InMid")
InDone = _num("InDone")


def _in1(ctx: pc.BuilderContext, seed: Seed) -> BaseModel:
    time.sleep(seed.work)
    return InMid(v=seed.v)


def _in2(ctx: pc.BuilderContext, mid: Num) -> BaseModel:
    time.sleep(0.6 * SLOW_TIME_LIMIT)
    return InDone(v=mid.v)


Inline = _workflow("Inline", [
    _builder("In1", [Seed], InMid, _in1, time_limit=SLOW_TIME_LIMIT),
    _builder("In2", [InMid], InDone, _in2, time_limit=SLOW_TIME_LIMIT),
], InDone)


# -- storm: a transient Ping per delta, echoed into the target Pong -----------------------------

class Ping(BaseModel):
    id: str


class Pong(BaseModel):
    id: str


def _echo(ctx: pc.BuilderContext, ping: Ping) -> BaseModel:
    return Pong(id=ping.id)


Storm = _workflow("Storm", [_builder("Echo", [Ping], Pong, _echo, time_limit=CHAIN_TIME_LIMIT,
                                     max_retries=RETRIES)], Pong, transients=[Ping])


WORKFLOWS: dict[str, type[pc.Workflow]] = {
    "chain": Chain, "fan": Fan, "slow": Slow, "always-slow": AlwaysSlow, "crash": Crash,
    "hold": Hold, "block": Block, "pair": Pair, "inline": Inline, "storm": Storm,
    "wide-crash": WideCrash,
}


# -- the app -----------------------------------------------------------------------------------

def store_url() -> str:
    url = os.environ.get("POLARIS_REDIS_URL")
    if not url:
        raise RuntimeError("tests.faults.app needs POLARIS_REDIS_URL (a private redis-server)")
    return url


def broker_url() -> str:
    url = os.environ.get("POLARIS_BROKER_URL")
    if url:
        return url
    return store_url().rsplit("/", 1)[0] + "/1"


def make_executor(store: str, broker: str, *, reconciler: bool = True,
                  name: str = "polaris-faults", **settings: Any) -> Any:
    """A Celery app, a registry on `store` with every test workflow, and its CeleryExecutor."""
    app = Celery(name, broker=broker, set_as_current=False)
    registry = pc.Registry(pc.RedisStore(store))
    for key, wf in WORKFLOWS.items():
        registry.register(key, wf)
    return pc.CeleryExecutor(app, registry, reconciler=reconciler, **settings)


def env_settings() -> dict[str, Any]:
    return {
        "reconcile_interval": float(os.environ.get("POLARIS_RECONCILE_INTERVAL", "0.5")),
        "dispatch_timeout": float(os.environ.get("POLARIS_DISPATCH_TIMEOUT", "3")),
        "lease_grace": float(os.environ.get("POLARIS_LEASE_GRACE", "1")),
        "inline": os.environ.get("POLARIS_INLINE", "1") != "0",
    }


_built: Any = None


def __getattr__(name: str) -> Any:
    """`app`, `executor`, `registry`: built from the environment on first use."""
    global _built
    if name not in ("app", "executor", "registry"):
        raise AttributeError(name)
    if _built is None:
        _built = make_executor(store_url(), broker_url(), **env_settings())
    return _built.app if name == "app" else getattr(_built, name)
