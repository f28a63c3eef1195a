"""Workflows the benchmarks run, built dynamically (builder classes with `type(...)`, data types
with `pydantic.create_model`) since some need thousands of builders.

The Celery worker processes (bench/app.py) and the producer (the bench process) both call
`register_distributed`, so both sides know the same workflows and tasks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pydantic
from pydantic import BaseModel

import polaris_celery as pc

DataType = type[BaseModel]

# -- building blocks ----------------------------------------------------------------------------


def data_types(prefix: str, n: int) -> list[DataType]:
    """`n` distinct pydantic models named prefix0 .. prefix{n-1}, each with one int field."""
    return [pydantic.create_model(f"{prefix}{i}", v=(int, 0)) for i in range(n)]


def _noop(self: pc.Builder, ctx: pc.BuilderContext) -> BaseModel:
    """A builder that does nothing but produce its (empty) datum."""
    return self.spec.produces()


def _sleeper(seconds: float) -> Callable[[pc.Builder, pc.BuilderContext], BaseModel]:
    def process(self: pc.Builder, ctx: pc.BuilderContext) -> BaseModel:
        time.sleep(seconds)
        return self.spec.produces()

    return process


def make_builder(
    name: str,
    consumes: list[DataType],
    produces: DataType,
    process: Callable[..., Any] = _noop,
    **options: Any,
) -> type[pc.Builder]:
    attrs: dict[str, Any] = {
        "consumes": list(consumes),
        "produces": produces,
        "process": process,
        "__module__": __name__,
    }
    attrs.update(options)
    return type(name, (pc.Builder,), attrs)


def make_workflow(name: str, builders: list[type[pc.Builder]], target: DataType) -> type:
    return type(name, (pc.Workflow,), {"builders": builders, "target": target,
                                       "__module__": __name__})


# -- shapes -------------------------------------------------------------------------------------


def chain(n: int, prefix: str = "C", process: Callable[..., Any] = _noop,
          **options: Any) -> tuple[type, DataType]:
    """D0 -> B1 -> D1 -> ... -> Bn -> Dn (target). Returns (workflow, the delta's type D0)."""
    ds = data_types(f"{prefix}D", n + 1)
    bs = [make_builder(f"{prefix}B{i}", [ds[i - 1]], ds[i], process, **options)
          for i in range(1, n + 1)]
    return make_workflow(f"{prefix}Chain{n}", bs, ds[n]), ds[0]


def fan(n: int, prefix: str = "F", process: Callable[..., Any] = _noop,
        **options: Any) -> tuple[type, DataType]:
    """D0 -> F1..Fn (each producing its own E_i) -> Join (consumes E1..En) -> Done (target)."""
    d0 = pydantic.create_model(f"{prefix}D0", v=(int, 0))
    es = data_types(f"{prefix}E", n)
    done = pydantic.create_model(f"{prefix}Done", v=(int, 0))
    bs = [make_builder(f"{prefix}F{i}", [d0], es[i], process, **options) for i in range(n)]
    join = make_builder(f"{prefix}Join", es, done, _noop, **options)
    return make_workflow(f"{prefix}Fan{n}", [*bs, join], done), d0


def padded_chain(core: int, total: int, prefix: str, *, upstream: bool = False,
                 **options: Any) -> tuple[type, DataType]:
    """A `core`-builder chain fed by the delta's type, inside a workflow of `total` builders:
    the other builders form a chain fed by an input the delta never brings, so a delta of the
    core's input touches exactly the same builders whatever `total` is.

    upstream=False: the extra chain is a separate part of the graph. upstream=True: the extra
    chain's last datum is an optional input of the core's first builder, so all `total`
    builders form one connected graph and the extra ones are all upstream of the core (the
    core's builders rank last, with the widest ancestor sets)."""
    ks = data_types(f"{prefix}KD", core + 1)
    extra = total - core
    xs = data_types(f"{prefix}X", extra + 1) if extra > 0 else []
    builders = [
        make_builder(f"{prefix}KB{i}", [ks[i - 1]], ks[i], **options,
                     **({"optionals": [xs[-1]]} if upstream and i == 1 and xs else {}))
        for i in range(1, core + 1)
    ]
    builders += [make_builder(f"{prefix}XB{i}", [xs[i - 1]], xs[i], **options)
                 for i in range(1, extra + 1)]
    return make_workflow(f"{prefix}Padded{total}", builders, ks[core]), ks[0]


# -- the cab ride of worker/cab_ride.py, its simulated service calls set to take no time ------

os.environ["POLARIS_CAB_RIDE_WORK"] = "0"  # read by worker.cab_ride at import; workers import this

from worker.cab_ride import (  # noqa: E402
    ArrivedAtDestination,
    CabbieArrived,
    CabRide,
    PaymentMade,
    RideRequested,
    cabbie_for,
)


def cab_first_delta(i: int) -> list[BaseModel]:
    return [RideRequested(user_id=f"user-{i}", source="Koramangala", dest="Indiranagar")]


def cab_whole_ride(i: int) -> list[BaseModel]:
    """All of a ride's inputs in one delta: the instance runs to completion in one run."""
    user = f"user-{i}"
    return [
        RideRequested(user_id=user, source="Koramangala", dest="Indiranagar"),
        CabbieArrived(cabbie_id=cabbie_for(user)),
        ArrivedAtDestination(distance_km=7.5),
        PaymentMade(user_id=user, amount=100.0),
    ]


# -- what the distributed benchmarks register (workers and producer alike) ----------------------

SLEEP_SECONDS = 0.05
NOINLINE = "-noinline"


class Distributed:
    """The distributed benchmarks' workflows: key -> (workflow class, delta type)."""

    def __init__(self) -> None:
        self.workflows: dict[str, tuple[type, DataType | None]] = {
            "chain20": chain(20, "C"),
            "fan20": fan(20, "F"),
            **{f"fan{w}": fan(w, f"W{w}x") for w in (10, 100, 200, 1000)},
            "chain5": chain(5, "P"),
            "sleep5": chain(5, "S", _sleeper(SLEEP_SECONDS)),
            "cab": (CabRide, None),
        }

    def delta(self, key: str) -> BaseModel:
        tp = self.workflows[key.removesuffix(NOINLINE)][1]
        assert tp is not None
        return tp()

    def register(self, registry: pc.Registry, suffix: str = "") -> pc.Registry:
        for key, (wf, _) in self.workflows.items():
            registry.register(key + suffix, wf)
        return registry


DISTRIBUTED = Distributed()
