"""DBF's checkout flow (its FlowTest and LoopTest) and the declaration-order parity scenarios.

The builders and their consumes are DBF's, in DBF's order (flowtest/tests/FlowTest.java): a
cycle OCRDB -> PODB -> ILDB -> IPDB -> DPDB -> OMSPD -> (OMSP back to OCRDB and PODB), then
PSDB -> PPDB -> OCDB producing the target OCD. Each flow is registered twice, once with its
builders reversed, since declaration order must not change what runs.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from pydantic import BaseModel

import polaris_celery as pc

from .scenarios import A, B, C, record


class CAID(BaseModel):
    v: int = 0


class CR(BaseModel):
    v: int = 0


class OMSP(BaseModel):
    v: int = 0


class SPD(BaseModel):
    v: int = 0


class EPD(BaseModel):
    v: int = 0


class OO(BaseModel):
    v: int = 0


class OCRD(BaseModel):
    v: int = 0


class POD(BaseModel):
    v: int = 0


class ILD(BaseModel):
    v: int = 0


class IPD(BaseModel):
    v: int = 0


class DPD(BaseModel):
    v: int = 0


class PSD(BaseModel):
    v: int = 0


class PPD(BaseModel):
    v: int = 0


class OCD(BaseModel):
    v: int = 0


def _dbf(name: str, consumes: list[type[BaseModel]], produces: type[BaseModel]
         ) -> type[pc.Builder]:
    def process(self: pc.Builder, ctx: pc.BuilderContext) -> BaseModel:
        record(ctx, name)
        return produces()

    return type(name, (pc.Builder,), {"consumes": consumes, "produces": produces,
                                      "process": process, "__module__": __name__})


OOB = _dbf("OOB", [CR, CAID], OO)
OCRDB = _dbf("OCRDB", [OO, OMSP], OCRD)
PODB = _dbf("PODB", [OO, CAID, OMSP, OCRD], POD)
ILDB = _dbf("ILDB", [SPD, OO, OCRD, POD], ILD)
IPDB = _dbf("IPDB", [SPD, ILD, OO, OCRD], IPD)
DPDB = _dbf("DPDB", [IPD, EPD, OO], DPD)
OMSPD = _dbf("OMSPD", [DPD, IPD, OO], OMSP)
PSDB = _dbf("PSDB", [OMSP, OO, DPD], PSD)
PPDB = _dbf("PPDB", [PSD, OMSP, OO], PPD)
OCDB = _dbf("OCDB", [PPD, PSD], OCD)

_lock = threading.Lock()
_counts: dict[str, int] = defaultdict(int)


class CountingOCDB(pc.Builder):
    """DBF's CountingOCBuilder: "not now" twice (per instance here, not per JVM), then OCD."""

    name = "OCDB"
    consumes = [PPD, PSD]
    produces = OCD

    def process(self, ctx: pc.BuilderContext) -> OCD | None:
        record(ctx, "OCDB")
        with _lock:
            if _counts[ctx.instance_id] > 1:
                return OCD()
            _counts[ctx.instance_id] += 1
        return None


CHECKOUT = [OOB, OCRDB, PODB, ILDB, IPDB, DPDB, OMSPD, PSDB, PPDB]


def _flow(builders: list[type[pc.Builder]], transients: list[type[BaseModel]] | None = None
          ) -> type[pc.Workflow]:
    return type("Checkout", (pc.Workflow,), {"builders": builders, "target": OCD,
                                             "transients": transients or []})


# -- item 1: the target's producer and another builder become ready together ----------------

class MakeTargetToo(pc.Builder):
    consumes = [A]
    produces = B

    def process(self, ctx: pc.BuilderContext) -> B:
        record(ctx, "MakeTargetToo")
        return B(v=1)


class Beside(pc.Builder):
    consumes = [A]
    produces = C

    def process(self, ctx: pc.BuilderContext) -> C:
        record(ctx, "Beside")
        return C(v=1)


def _together(builders: list[type[pc.Builder]]) -> type[pc.Workflow]:
    return type("Together", (pc.Workflow,), {"builders": builders, "target": B})


WORKFLOWS: dict[str, type[pc.Workflow]] = {
    "dbf-flow": _flow([*CHECKOUT, OCDB]),
    "dbf-flow-reversed": _flow([OCDB, *reversed(CHECKOUT)]),
    "dbf-loop": _flow([*CHECKOUT, CountingOCDB], [SPD, EPD, DPD]),
    "dbf-loop-reversed": _flow([CountingOCDB, *reversed(CHECKOUT)], [SPD, EPD, DPD]),
    "together": _together([MakeTargetToo, Beside]),
    "together-reversed": _together([Beside, MakeTargetToo]),
}
