"""The API a newcomer cannot trip on (issue 11, items 6 to 9).

- `ctx.need(T)` / `ctx[T]`: a typed read that fails naming the missing datum;
- abstract base builders that share options, and workflow-wide defaults a builder's own
  setting overrides;
- registration warnings for what looks like a mistake (errors under strict), and the message
  for a model class passed where an instance belongs;
- a `@pc.builder` function still callable as the plain function;
- the deliberate differences from DBF: a datum listed twice by one builder is refused.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery.builder import is_abstract
from polaris_celery.context import BuilderContext

from . import scenarios
from .conftest import CeleryEnv


class In(BaseModel):
    v: int = 0


class Opt(BaseModel):
    v: int = 0


class Out(BaseModel):
    v: int = 0


class Extra(BaseModel):
    v: int = 0


def registry() -> pc.Registry:
    return pc.Registry(pc.MemoryStore())


def register_quietly(reg: pc.Registry, key: str, wf: type[pc.Workflow]) -> pc.Graph:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pc.GraphWarning)
        return reg.register(key, wf)


# -- 6. ctx.need / ctx[T] -------------------------------------------------------------------------


class NeedsOpt(pc.Builder):
    consumes = [In]
    optionals = [Opt]
    produces = Out

    def process(self, ctx: pc.BuilderContext) -> Out:
        return Out(v=ctx[In].v + ctx.need(Opt).v)


def context(data: dict[str, BaseModel]) -> BuilderContext:
    return BuilderContext(NeedsOpt.spec, data, workflow="wf", instance_id="i-1", run=1, attempt=1)


def test_need_and_getitem_return_the_value_and_in_asks_without_reading() -> None:
    ctx = context({"In": In(v=2), "Opt": Opt(v=3)})
    assert ctx.need(In) == In(v=2) and ctx[Opt] == Opt(v=3)
    assert In in ctx and Opt in ctx
    assert Opt not in context({"In": In()})


def test_need_names_the_missing_datum_and_its_role() -> None:
    with pytest.raises(pc.MissingData) as info:
        context({"In": In()}).need(Opt)
    msg = str(info.value)
    assert "NeedsOpt needs Opt (an optional)" in msg and "wf/i-1" in msg, msg
    with pytest.raises(pc.MissingData, match="needs Opt"):
        context({"In": In()})[Opt]


def test_need_of_undeclared_data_is_undeclared_not_missing() -> None:
    with pytest.raises(pc.UndeclaredData, match="Extra"):
        context({"In": In()}).need(Extra)
    with pytest.raises(pc.UndeclaredData, match="Extra"):
        _ = Extra in context({"In": In()})
    with pytest.raises(TypeError, match="pydantic model class"):
        _ = "In" in context({"In": In()})


class NeedFlow(pc.Workflow):
    builders = [NeedsOpt]
    target = Out
    inputs = [In, Opt]


@pytest.mark.parametrize("kind", ["sequential", "parallel"])
def test_a_missing_need_fails_the_builder_naming_it(kind: str) -> None:
    reg = registry()
    reg.register("need", NeedFlow)
    run = getattr(pc.Executor(reg), kind)
    with pytest.raises(pc.BuilderFailed) as info:
        run("need", "i-1", In(v=1))
    assert info.value.builder == "NeedsOpt" and info.value.error_type == "MissingData"
    assert "needs Opt" in info.value.message
    assert run("need", "i-2", In(v=1), Opt(v=4)).get(Out) == Out(v=5)


# -- 7. abstract bases and workflow defaults ----------------------------------------------------


class Patient(pc.Builder):
    """Only options: a base class without saying so."""

    max_retries = 4
    retry_backoff = 0.5


class Marked(pc.Builder):
    abstract = True
    consumes = [In]
    time_limit = 12


class Keyword(pc.Builder, abstract=True):
    produces = Out


class FromPatient(Patient):
    consumes = [In]
    produces = Out

    def process(self, ctx: pc.BuilderContext) -> Out:
        return Out(v=ctx[In].v)


class FromMarked(Marked):
    produces = Opt

    def process(self, ctx: pc.BuilderContext) -> Opt:
        return Opt(v=ctx[In].v)


class FromKeyword(Keyword):
    consumes = [Opt]

    def process(self, ctx: pc.BuilderContext) -> Out:
        return Out(v=ctx[Opt].v)


def test_abstract_bases_are_allowed_and_share_their_options() -> None:
    for base in (Patient, Marked, Keyword):
        assert is_abstract(base) and "spec" not in base.__dict__, base
    assert FromPatient.spec.max_retries == 4 and FromPatient.spec.retry_backoff == 0.5
    assert FromMarked.spec.consumes == (In,) and FromMarked.spec.time_limit == 12
    assert FromKeyword.spec.produces is Out
    assert not is_abstract(FromMarked)


def test_a_half_declared_builder_is_still_refused_at_import() -> None:
    with pytest.raises(pc.DeclarationError, match="produces is not set"):
        class NoProduces(pc.Builder):
            consumes = [In]

            def process(self, ctx: pc.BuilderContext) -> None:
                return None


def test_registering_an_abstract_builder_names_it() -> None:
    class Listed(pc.Workflow):
        builders = [FromPatient, Marked]
        target = Out

    with pytest.raises(pc.GraphError, match="Marked is an abstract builder"):
        registry().register("abstract", Listed)


class Plain(pc.Builder):
    consumes = [In]
    produces = Opt

    def process(self, ctx: pc.BuilderContext) -> Opt:
        return Opt(v=ctx[In].v)


@pc.builder(time_limit=30)
def finish(o: Opt) -> Out:
    return Out(v=o.v)


class Defaults(pc.Workflow):
    builders = [Plain, finish]
    target = Out
    inputs = [In]
    max_retries = 2
    time_limit = 60
    retry_backoff = 0.25


def test_workflow_defaults_fill_what_a_builder_leaves_unset() -> None:
    g = registry().register("defaults", Defaults)
    plain, fin = g.spec("Plain"), g.spec("finish")
    assert (plain.max_retries, plain.time_limit, plain.retry_backoff) == (2, 60.0, 0.25)
    assert (fin.max_retries, fin.time_limit) == (2, 30.0)  # its own time_limit wins
    assert Plain.spec.max_retries == 0  # the class itself is untouched: defaults are per graph

    class Inherited(Defaults):
        builders = [FromPatient]
        inputs = [In]

    own = registry().register("inherited", Inherited).spec("FromPatient")
    assert (own.max_retries, own.retry_backoff, own.time_limit) == (4, 0.5, 60.0)


FLAKY: list[int] = []


class Flaky(pc.Builder):
    consumes = [In]
    produces = Out

    def process(self, ctx: pc.BuilderContext) -> Out:
        FLAKY.append(ctx.attempt)
        if len(FLAKY) < 3:
            raise RuntimeError("not yet")
        return Out(v=len(FLAKY))


class Retrying(pc.Workflow):
    builders = [Flaky]
    target = Out
    inputs = [In]
    max_retries = 2


def test_the_workflow_default_is_what_runs() -> None:
    reg = registry()
    reg.register("retrying", Retrying)
    FLAKY.clear()
    assert pc.Executor(reg).sequential("retrying", "i-1", In()).get(Out) == Out(v=3)
    assert FLAKY == [1, 2, 3]


@pytest.mark.parametrize(("attr", "value", "want"), [
    ("max_retries", -1, "an int >= 0"), ("max_retries", 1.5, "an int >= 0"),
    ("time_limit", 0, "a positive number"), ("retry_backoff", "1", "a non-negative number"),
])
def test_bad_workflow_defaults_are_refused(attr: str, value: object, want: str) -> None:
    wf = type("Bad", (pc.Workflow,), {"builders": [Plain], "target": Opt, "inputs": [In],
                                      attr: value})
    with pytest.raises(pc.GraphError, match=f"workflow default {attr} must be {want}"):
        registry().register("bad", wf)


# -- 8. registration warnings, strict, and a class for an instance ------------------------------


def make_extra(o: Opt) -> Extra:
    return Extra(v=o.v)


class Suspect(pc.Workflow):
    """In is read and never produced; Extra is produced and never read."""

    builders = [Plain, finish, pc.builder(make_extra)]
    target = Out


def test_registration_warns_about_unproduced_inputs_and_unread_outputs() -> None:
    with pytest.warns(pc.GraphWarning) as caught:
        registry().register("suspect", Suspect)
    msgs = sorted(str(w.message) for w in caught)
    assert len(msgs) == 2, msgs
    assert "Extra is produced by make_extra but read by no builder" in msgs[0]
    assert "In is read by Plain but produced by no builder: deltas must bring it" in msgs[1]


def test_inputs_and_outputs_say_it_is_intended() -> None:
    wf = type("Said", (Suspect,), {"inputs": [In], "outputs": [Extra]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry().register("said", wf, strict=True)


def test_strict_turns_the_warnings_into_one_graph_error() -> None:
    with pytest.raises(pc.GraphError) as info:
        registry().register("suspect", Suspect, strict=True)
    assert len(info.value.problems) == 2
    with pytest.raises(pc.GraphError, match="deltas must bring it"):
        pc.Registry(pc.MemoryStore(), strict=True).register("suspect", Suspect)
    reg = pc.Registry(pc.MemoryStore(), strict=True)
    with pytest.warns(pc.GraphWarning):
        reg.register("suspect", Suspect, strict=False)  # the call overrides the registry


@pytest.mark.parametrize(("inputs", "error"), [
    ([In, "Opt"], "inputs holds 'Opt', which is not a pydantic model class"),
    ([In, Extra], "inputs lists Extra, which no builder of the workflow names"),
    (In, "inputs must be a list of pydantic models"),
])
def test_a_wrong_inputs_list_is_an_error_even_without_strict(inputs: object, error: str) -> None:
    wf = type("Wrong", (pc.Workflow,), {"builders": [Plain], "target": Opt, "inputs": inputs})
    with pytest.raises(pc.GraphError, match=error):
        registry().register("wrong", wf)


def test_the_cab_ride_is_clean_under_strict() -> None:
    from worker.cab_ride import CabRide

    registry().register("cab-ride", CabRide, strict=True)


PASS_AN_INSTANCE = r"the class A itself, not a datum: pass an instance: A\(\.\.\.\)"


@pytest.mark.parametrize("kind", ["sequential", "parallel"])
def test_a_model_class_instead_of_an_instance_says_so_in_process(kind: str) -> None:
    reg = scenarios.register_all(registry())
    ex = pc.Executor(reg)
    with pytest.raises(pc.InvalidInput, match=PASS_AN_INSTANCE):
        getattr(ex, kind)("diamond", "i-1", scenarios.A)
    assert reg.store.data_names("diamond", "i-1") == set()


def test_a_model_class_instead_of_an_instance_says_so_on_celery(
        celery_env: CeleryEnv, iid: str) -> None:
    with pytest.raises(pc.InvalidInput, match=PASS_AN_INSTANCE):
        celery_env.executor.submit_delta("diamond", iid, scenarios.A(), scenarios.A)


# -- 9. a function builder is still the function ------------------------------------------------


@pc.builder
def add(i: In, o: Opt | None = None) -> Out:
    return Out(v=i.v + (o.v if o else 0))


def test_a_function_builder_stays_callable_as_the_function() -> None:
    assert add(In(v=2)) == Out(v=2)
    assert add(In(v=2), o=Opt(v=3)) == Out(v=5)
    assert str(inspect.signature(add)) == str(inspect.signature(add.func))
    assert issubclass(add, pc.Builder) and add.spec.consumes == (In,)
    reg = registry()
    register_quietly(reg, "add", type("AddFlow", (pc.Workflow,), {"builders": [add],
                                                                  "target": Out}))
    assert pc.Executor(reg).sequential("add", "i-1", In(v=1), Opt(v=1)).get(Out) == Out(v=2)


def test_the_framework_does_not_call_the_function_to_make_a_builder() -> None:
    calls: list[In] = []

    @pc.builder
    def spy(i: In) -> Out:
        calls.append(i)
        return Out(v=i.v)

    obj = spy.spec.new_builder()
    assert isinstance(obj, spy) and calls == []


# -- deliberate differences from DBF --------------------------------------------------------------


@pytest.mark.parametrize("attr", ["consumes", "optionals", "accesses"])
def test_a_datum_listed_twice_in_one_list_is_refused(attr: str) -> None:
    body = {"consumes": [Opt], "produces": Out, attr: [In, In],
            "process": lambda self, ctx: None}
    with pytest.raises(pc.DeclarationError, match="In is declared more than once"):
        type("Twice", (pc.Builder,), body)
