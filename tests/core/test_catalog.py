"""Dynamic flows from a catalog (issue 11, item 4): DBF's ExecutionGraphGeneratorTest, ported.

DBF's catalog: BuilderA {A,B}->C, BuilderB {C,D}->E, BuilderC {C,E}->F, BuilderD {F}->G,
BuilderE {E,C}->G. G has two producers, a conflict that matters only on a path to G. DBF's
dependency hierarchy has one builder per level in these cases, so the rank order is the level
order.
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import polaris_celery as pc

from ..scenarios import A, B, C, D, E, F, G


class X(BaseModel):  # produced by nobody
    v: int = 0


def _b(name: str, consumes: list[type[BaseModel]], produces: type[BaseModel]
       ) -> type[pc.Builder]:
    def process(self: pc.Builder, ctx: pc.BuilderContext) -> BaseModel:
        return produces()

    return type(name, (pc.Builder,), {"consumes": consumes, "produces": produces,
                                      "process": process})


BuilderA = _b("BuilderA", [A, B], C)
BuilderB = _b("BuilderB", [C, D], E)
BuilderC = _b("BuilderC", [C, E], F)
BuilderD = _b("BuilderD", [F], G)
BuilderE = _b("BuilderE", [E, C], G)
CATALOG = [BuilderE, BuilderD, BuilderC, BuilderB, BuilderA]  # order does not matter


def levels(flow: type[pc.Workflow]) -> list[str]:
    return pc.compile_workflow("dyn", flow).builder_names


def test_generate():
    assert levels(pc.Workflow.from_catalog(CATALOG, C)) == ["BuilderA"]


def test_generate_two_step():
    """The conflict on G is off the path to E: it does not matter."""
    assert levels(pc.Workflow.from_catalog(CATALOG, E)) == ["BuilderA", "BuilderB"]


def test_generate_interdependent_step():
    assert levels(pc.Workflow.from_catalog(CATALOG, F)) == ["BuilderA", "BuilderB", "BuilderC"]


def test_generate_interdependent_step_conflict():
    with pytest.raises(pc.GraphError, match="G is produced by BuilderD, BuilderE"):
        pc.Workflow.from_catalog(CATALOG, G)


def test_generate_interdependent_step_with_resolution():
    flow = pc.Workflow.from_catalog(CATALOG, G, resolution={G: BuilderE})
    assert levels(flow) == ["BuilderA", "BuilderB", "BuilderE"]


def test_generate_interdependent_step_with_resolution_alt():
    flow = pc.Workflow.from_catalog(CATALOG, G, resolution={G: BuilderD})
    assert levels(flow) == ["BuilderA", "BuilderB", "BuilderC", "BuilderD"]


def test_generate_interdependent_step_conflict_no_builder():
    """DBF's ...ConflictNoData: the resolution names a builder the catalog lacks."""
    stray = _b("Stray", [A], G)
    with pytest.raises(pc.GraphError, match="not in the catalog"):
        pc.Workflow.from_catalog(CATALOG, G, resolution={G: stray})


def test_generate_graph_no_executors():
    """A target no builder produces: DBF's empty execution graph; registering it says why."""
    flow = pc.Workflow.from_catalog(CATALOG, X)
    assert list(flow.builders) == []
    with pytest.raises(pc.GraphError, match="declares no builders"):
        pc.compile_workflow("dyn", flow)


def test_bad_catalog_entries_are_named():
    with pytest.raises(pc.GraphError, match="'nope' is not a Builder"):
        pc.Workflow.from_catalog([BuilderA, "nope"], C)  # type: ignore[list-item]


def test_resolution_off_the_path_is_dropped_and_the_flow_runs():
    flow = pc.Workflow.from_catalog(CATALOG, E, resolution={G: BuilderD})
    assert dict(flow.resolution) == {} and flow.target is E
    reg = pc.Registry(pc.MemoryStore())
    reg.register("dyn", flow)
    r = pc.Executor(reg).sequential("dyn", "i-1", A(), B(), D())
    assert r.completed and sorted(r.data) == ["C", "E"]


def test_plain_workflow_keeps_every_listed_builder():
    """Go Polaris semantics: a Workflow runs all it lists, on the path to its target or not."""
    plain = type("Plain", (pc.Workflow,), {"builders": [BuilderA, BuilderB, BuilderC],
                                           "target": E})
    assert set(pc.compile_workflow("p", plain).specs) == {"BuilderA", "BuilderB", "BuilderC"}
