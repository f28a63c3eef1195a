"""The pytest plugin itself: its ini option and entry point (in a pytest of its own), the Flow
helper's errors, worker processes, and the one in-process worker shared by registries."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
from celery import Celery
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery import status
from polaris_celery.testing import Flow, InProcessWorker
from polaris_celery.testing.plugin import load_registry
from worker.cab_ride import (
    ArrivedAtDestination,
    CabbieArrived,
    CabRide,
    PaymentMade,
    RideEnded,
    RideRequested,
    cabbie_for,
)

REPO = Path(__file__).resolve().parent.parent


class Ask(BaseModel):
    n: int


class Half(BaseModel):
    n: int


class Done(BaseModel):
    n: int


class Halve(pc.Builder):
    consumes = [Ask]
    produces = Half

    def process(self, ctx: pc.BuilderContext) -> Half:
        ask = ctx.get(Ask)
        assert ask is not None
        return Half(n=ask.n // 2)


class Refuse(pc.Builder):
    consumes = [Half]
    produces = Done

    def process(self, ctx: pc.BuilderContext) -> Done:
        raise ValueError("no odd halves")


class Refusing(pc.Workflow):
    builders = [Halve, Refuse]
    target = Done


@pytest.fixture(scope="session")
def polaris_registry() -> pc.Registry:
    registry = pc.Registry(pc.MemoryStore())
    registry.register("refusing", Refusing)
    return registry


def test_a_failed_run_raises_and_keeps_its_partial_result(polaris_flow):
    flow = polaris_flow("refusing")
    with pytest.raises(pc.BuilderFailed, match="no odd halves"):
        flow.send(Ask(n=7))
    assert flow.result.get(Half) == Half(n=3) and not flow.completed
    assert [(a.builder, a.result) for a in flow.attempts] == [("Halve", "Half"),
                                                             ("Refuse", "error:ValueError")]
    assert flow.ran == ["Halve"]
    assert flow.data == {Ask: Ask(n=7), Half: Half(n=3)}


def test_bad_input_to_a_flow_is_named(polaris_flow):
    with pytest.raises(pc.UnknownWorkflow, match="nope"):
        polaris_flow("nope")
    flow = polaris_flow("refusing")
    with pytest.raises(pc.InvalidInput, match="delta 1 must be a pydantic model"):
        flow.play([Ask(n=2)], "Ask(n=2)")
    with pytest.raises(AssertionError, match="no delta was sent yet"):
        _ = polaris_flow("refusing").result


def test_one_in_process_worker_refuses_two_workflows_under_one_key(
        polaris_in_process: InProcessWorker):
    key = f"k-{uuid.uuid4().hex[:8]}"
    first, second = pc.Registry(pc.MemoryStore()), pc.Registry(pc.MemoryStore())
    first.register(key, Refusing)
    second.register(key, CabRide)
    polaris_in_process.adopt(first)
    polaris_in_process.adopt(first)  # the same workflow again: nothing to do
    with pytest.raises(pc.ConfigurationError, match=f"{key}.*Refusing and as CabRide"):
        polaris_in_process.adopt(second)


def test_load_registry_names_what_is_wrong():
    assert "cab-ride" in load_registry("worker:registry")
    with pytest.raises(pytest.UsageError, match="module:attribute"):
        load_registry("worker")
    with pytest.raises(pytest.UsageError, match="has no attribute 'nothing'"):
        load_registry("worker:nothing")
    with pytest.raises(pytest.UsageError, match=r"is a ModelMetaclass, not a pc\.Registry"):
        load_registry("worker.cab_ride:RideEnded")


@pytest.mark.slow
def test_a_worker_process_runs_the_cab_ride(polaris_worker_process, polaris_redis,
                                            polaris_broker):
    """A `celery worker` process on the plugin's Redis: builders run across a process
    boundary, and the instance's log names that worker."""
    worker = polaris_worker_process("worker", env={"POLARIS_CAB_RIDE_WORK": "0"}, cwd=REPO,
                                    concurrency=1)
    registry = pc.Registry(pc.RedisStore(polaris_redis))
    registry.register("cab-ride", CabRide)
    app = Celery("producer", broker=polaris_broker, set_as_current=False)
    producer = pc.CeleryExecutor(app, registry, reconciler=False)
    flow = Flow(producer, "cab-ride", f"p-{uuid.uuid4().hex[:8]}")
    flow.play(RideRequested(user_id="u2", source="a", dest="b"),
              CabbieArrived(cabbie_id=cabbie_for("u2")), ArrivedAtDestination(distance_km=1),
              PaymentMade(user_id="u2", amount=4.7))
    assert flow.completed and flow.get(RideEnded) is not None
    log = status.read_log(registry.store, registry.store.keys("cab-ride", flow.instance_id))
    ran_by = {e.by.split("@")[0] for e in log if e.event == "builder"}
    assert ran_by == {worker.name}, ran_by
    registry.store.close()


@pytest.mark.slow
def test_the_plugin_loads_by_entry_point_and_finds_the_registry_by_ini(pytester, monkeypatch):
    """A user's project: no conftest, an ini line naming the registry, a test in chaos mode."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeini(textwrap.dedent("""
        [pytest]
        polaris_registry = worker:registry
        polaris_worker_concurrency = 2
    """))
    pytester.makepyfile(test_ride=textwrap.dedent("""
        import pytest
        from worker.cab_ride import RideRequested, CabbieMatched

        @pytest.mark.polaris_chaos(kill=1.0)
        def test_match(polaris_flow, polaris_chaos):
            flow = polaris_flow("cab-ride")
            flow.send(RideRequested(user_id="u1", source="a", dest="b"))
            assert flow.ran == ["MatchCabbie"]
            assert [a.attempt for a in flow.attempts] == [1, 2]
            assert flow.get(CabbieMatched) is not None
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1)


def test_the_readme_shows_the_example_test_that_ci_runs():
    readme = (REPO / "README.md").read_text()
    example = (REPO / "tests" / "test_plugin_example.py").read_text()
    section = readme[readme.index("## Testing your workflows"):]
    shown = section[section.index("```python\n") + 10:section.index("```\n")]
    assert shown == example[example.index("import pytest"):]
