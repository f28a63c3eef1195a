"""The pure core: declaration checks, registration errors, compiled graph, frontier. No I/O."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery.fields import Fields, NeedMore, Presence
from polaris_celery.frontier import BuilderError, RunState

from ..scenarios import BA, BB, BC, DBF, A, B, C, Cycle, D, Diamond, E, F, Resolved


def builder(name: str, consumes=(), produces=None, optionals=(), **opts) -> type[pc.Builder]:
    def process(self, ctx):
        return None

    attrs = {"consumes": consumes, "optionals": optionals, "produces": produces,
             "process": process, **opts}
    return type(name, (pc.Builder,), attrs)


def workflow(builders, target, **attrs) -> type[pc.Workflow]:
    return type("W", (pc.Workflow,), {"builders": builders, "target": target, **attrs})


# -- declaration --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("attrs", "needle"),
    [
        ({"consumes": [A], "produces": None}, "produces is not set"),
        ({"consumes": [A], "produces": int}, "produces must be a pydantic model"),
        ({"consumes": [int], "produces": B}, "non-pydantic"),
        ({"consumes": A, "produces": B}, "must be a list"),
        ({"consumes": [], "produces": B}, "nothing can trigger it"),
        ({"consumes": [A], "produces": B, "max_retries": -1}, "max_retries"),
        ({"consumes": [A], "produces": B, "time_limit": 0}, "time_limit"),
        ({"consumes": [A], "produces": B, "retry_backoff": -2}, "retry_backoff"),
        ({"consumes": [A], "optionals": [A], "produces": B}, "declared more than once"),
        ({"consumes": [A], "produces": B, "queue": 5}, "queue"),
    ],
)
def test_invalid_builder_declarations_raise_at_class_creation(attrs, needle):
    with pytest.raises(pc.DeclarationError, match=needle):
        builder("Bad", **attrs)


def test_builder_without_process_is_rejected():
    with pytest.raises(pc.DeclarationError, match="process"):
        type("NoProcess", (pc.Builder,), {"consumes": [A], "produces": B})


def test_abstract_builder_base_is_not_validated():
    class Base(pc.Builder, abstract=True):
        max_retries = 2

    class Concrete(Base):
        consumes = [A]
        produces = B

        def process(self, ctx):
            return None

    assert Concrete.spec.max_retries == 2 and Concrete.spec.name == "Concrete"


def test_function_builder_reads_its_signature():
    @pc.builder(max_retries=2, accesses=[C])
    def combine(a: A, b: B | None = None) -> D | None:
        return D()

    s = combine.spec
    assert s.consumes == (A,) and s.optionals == (B,) and s.accesses == (C,)
    assert s.produces is D and s.max_retries == 2 and s.name == "combine"


@pytest.mark.parametrize(
    ("src", "needle"),
    [
        ("def f(a: int) -> B: ...", "not annotated with a pydantic model"),
        ("def f(a: A) -> int: ...", "return annotation"),
        ("def f(a: A | None) -> B: ...", "must default to None"),
    ],
)
def test_function_builder_errors(src, needle):
    ns = {"A": A, "B": B}
    exec(src, ns)
    with pytest.raises(pc.DeclarationError, match=needle):
        pc.builder(ns["f"])


# -- registration ---------------------------------------------------------------------------------

def test_registration_lists_every_problem_at_once():
    b1 = builder("Same", [A], B)
    b2 = builder("Same", [B], C)
    selfish = builder("Selfish", [A], A)
    p1 = builder("P1", [A], D)
    p2 = builder("P2", [B], D)
    with pytest.raises(pc.GraphError) as info:
        pc.Registry(pc.MemoryStore()).register("bad", workflow([b1, b2, selfish, p1, p2], None))
    problems = "\n".join(info.value.problems)
    assert "no target" in problems
    assert "two builders are named 'Same'" in problems
    assert "Selfish consumes its own output A" in problems
    assert "data D is produced by P1, P2" in problems
    assert len(info.value.problems) == 4


def test_optional_self_consumption_is_rejected():
    b = builder("Loop", [A], B, optionals=[B])
    with pytest.raises(pc.GraphError, match="consumes its own output B"):
        pc.compile_workflow("w", workflow([b], B))


def test_resolution_must_name_a_real_producer():
    p1 = builder("P1", [A], D)
    p2 = builder("P2", [B], D)
    other = builder("Other", [A], C)
    with pytest.raises(pc.GraphError, match="produces C"):
        pc.compile_workflow("w", workflow([p1, p2, other], D, resolution={D: other}))


def test_target_must_be_part_of_the_graph():
    with pytest.raises(pc.GraphError, match="target F"):
        pc.compile_workflow("w", workflow([builder("Q", [A], B)], F))


def test_two_classes_with_one_name_are_rejected():
    class A(BaseModel):  # shadows scenarios.A by name
        w: int = 0

    from ..scenarios import A as OtherA
    b1 = builder("U1", [A], B)
    b2 = builder("U2", [OtherA], C)
    with pytest.raises(pc.GraphError, match="two different data types are named 'A'"):
        pc.compile_workflow("w", workflow([b1, b2], C))


def test_no_builders():
    with pytest.raises(pc.GraphError, match="declares no builders"):
        pc.compile_workflow("w", workflow([], A))


def test_bad_workflow_key():
    with pytest.raises(pc.InvalidInput, match="workflow key"):
        pc.Registry(pc.MemoryStore()).register("has space", DBF)


# -- the compiled graph ---------------------------------------------------------------------------

def test_dbf_graph_index_ranks_and_ancestors():
    g = pc.compile_workflow("dbf", DBF)
    assert g.what_consumes("A") == ("BA", "BC")
    assert g.what_consumes("C") == ("BB",)
    assert g.rank["BA"] < g.rank["BB"] < g.rank["BC"]
    assert g.is_upstream("BA", "BC") and g.is_upstream("BB", "BC")
    assert not g.is_upstream("BC", "BA")
    assert g.inputs == {"A", "B", "D"} and g.target == "F"
    assert g.builder_names == ["BA", "BB", "BC"]


def test_cycle_edges_are_ignored_for_ranks_and_ancestors():
    g = pc.compile_workflow("cycle", Cycle)
    assert g.rank["Fwd"] < g.rank["Back"] < g.rank["CycleDone"]
    assert g.is_upstream("Fwd", "Back")
    assert not g.is_upstream("Back", "Fwd")  # the edge closing the cycle


def test_resolution_drops_the_unchosen_producer():
    g = pc.compile_workflow("r", Resolved)
    assert set(g.specs) == {"MakeXSlow"} and g.producer["X"] == "MakeXSlow"


# -- the frontier ---------------------------------------------------------------------------------

def test_frontier_start_finish_and_settle():
    g = pc.compile_workflow("dbf", DBF)
    present = {"A", "B", "D"}
    run, ready = RunState.start(g, 1, ["A", "B", "D"], present)
    assert ready == ["BA"]  # BC eligible? no: E missing. BB: C missing.
    run.dispatched(g, "BA", 1)
    assert not run.settled
    present.add("C")
    assert run.finished(g, "BA", "C", present) == ["BB"]
    run.dispatched(g, "BB", 1)
    present.add("E")
    assert run.finished(g, "BB", "E", present) == ["BC"]
    run.dispatched(g, "BC", 1)
    present.add("F")
    assert run.finished(g, "BC", "F", present) == []
    assert run.settled and run.outcome == "completed" and run.produced == ["C", "E", "F"]


def test_frontier_waits_for_pending_upstream():
    g = pc.compile_workflow("diamond", Diamond)
    run, ready = RunState.start(g, 1, ["A"], {"A"})
    assert set(ready) == {"Left", "Right"} and set(run.waiting) == {"Waiter"}


def test_frontier_failure_stops_dispatch():
    g = pc.compile_workflow("diamond", Diamond)
    run, ready = RunState.start(g, 1, ["A"], {"A"})
    for b in ready:
        run.dispatched(g, b, 1)
    run.failed_for_good(g, "Left", BuilderError("Left", "E", "boom"))
    assert run.finished(g, "Right", "C", {"A", "C"}) == []
    assert run.settled and run.outcome == "failed"


def _stored(run: RunState) -> RunState:
    """`run` as the distributed executor stores and loads it: a header and its fields."""
    values = {**run.fields.values, **run.fields.dirty}
    return RunState.load(run.header(), Fields(run.id, {k: v for k, v in values.items()
                                                       if v is not None}))


def test_frontier_round_trips_through_its_fields():
    g = pc.compile_workflow("diamond", Diamond)
    run, ready = RunState.start(g, 3, ["A"], {"A"}, delta_id="d1")
    for b in ready:
        run.dispatched(g, b, 1)
    again = _stored(run)
    assert again.to_json() == run.to_json() and again.waiting == {"Waiter": 1}
    # Waiter's only upstream is Left (through its optional B); Join also needs Right's C.
    assert again.finished(g, "Left", "B", {"A", "B"}) == ["Waiter"]
    again.dispatched(g, "Waiter", 1)
    assert again.finished(g, "Right", "C", {"A", "B", "C"}) == ["Join"]


def test_builders_in_a_run_are_dbf_specs():
    g = pc.compile_workflow("dbf", DBF)
    assert g.spec("BA") is BA.spec and g.spec("BB") is BB.spec and g.spec("BC") is BC.spec
    assert E.__name__ in g.types


def test_a_partial_view_asks_for_what_it_lacks_and_decides_the_same_with_it():
    """A commit reads only some fields; deciding from that view raises NeedMore naming the
    rest, and given them it decides exactly as from the whole state."""
    g = pc.compile_workflow("diamond", Diamond)
    run, ready = RunState.start(g, 3, ["A"], {"A"})
    for b in ready:
        run.dispatched(g, b, 1)
    whole = _stored(run)
    stored = {f"{k[0]}:3:{k[2:]}": v for k, v in whole.fields.values.items()}
    asked: set[str] = {"a:3:Left"}
    data: dict[str, bool] = {}
    for _ in range(10):
        view = RunState.load(run.header(), Fields(3, {k[:1] + k[3:]: v for k, v in
                                                      stored.items() if k in asked},
                                                  {k[:1] + k[3:] for k in asked}))
        try:
            got = view.finished(g, "Left", "B", Presence(dict(data)))
            break
        except NeedMore as more:
            assert more.fields - asked or set(more.data) - set(data), "asked again"
            asked |= more.fields
            data.update({d: d in {"A", "B"} for d in more.data})
    else:
        raise AssertionError("never had enough")
    assert got == _stored(run).finished(g, "Left", "B", {"A", "B"}) == ["Waiter"]


def test_dbf_cycle_closes_where_dbf_closes_it_whatever_the_declaration_order():
    """Searching back from the target (DBF's ExecutionGraphGenerator), OMSP's edges back to
    OCRDB and PODB close the checkout cycle; OMSP made by OMSPD triggers only PSDB and PPDB in
    the same pass. The order of the workflow's builders list changes none of it."""
    from ..scenarios_dbf import WORKFLOWS

    for key in ("dbf-flow", "dbf-flow-reversed", "dbf-loop", "dbf-loop-reversed"):
        g = pc.compile_workflow(key, WORKFLOWS[key])
        assert g.builder_names == ["OOB", "OCRDB", "PODB", "ILDB", "IPDB", "DPDB", "OMSPD",
                                   "PSDB", "PPDB", "OCDB"], key
        assert g.what_consumes("OMSP") == ("OCRDB", "PODB", "PSDB", "PPDB")
        assert g.what_follows("OMSP") == ("PSDB", "PPDB")
        assert g.what_follows("CAID") == ("OOB", "PODB")  # an input triggers all its consumers
        assert not g.is_upstream("OMSPD", "OCRDB") and g.is_upstream("OCRDB", "OMSPD")
