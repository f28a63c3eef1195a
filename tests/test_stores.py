"""The store contract, over the in-memory store and a real Redis; hooks; re-opened stores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import polaris_celery as pc
from polaris_celery.stores.redis import redact

from . import scenarios
from .scenarios import DBF, A, B, C, D, F


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[pc.stores.Store]:
    if request.param == "memory":
        yield pc.MemoryStore()
    else:
        s = pc.RedisStore(request.getfixturevalue("redis_url"))
        yield s
        s.close()


def test_write_read_and_names(store, iid):
    assert store.data_names("w", iid) == set()
    store.write_data("w", iid, {"A": b'{"v":1}', "B": b'{"v":2}'})
    store.write_data("w", iid, {"A": b'{"v":3}'})  # later values replace earlier ones
    assert store.read_data("w", iid, ["A", "B", "Z"]) == {"A": b'{"v":3}', "B": b'{"v":2}'}
    assert store.data_names("w", iid) == {"A", "B"}
    assert store.data_names("other", iid) == set()  # keyed by workflow too


def test_run_numbers_increase(store, iid):
    assert [store.next_run("w", iid) for _ in range(3)] == [1, 2, 3]
    assert store.next_run("w", iid + "x") == 1


def test_stores_keep_bytes_so_mutating_results_changes_nothing(store, iid):
    reg = scenarios.register_all(pc.Registry(store))
    ex = pc.Executor(reg)
    r = ex.sequential("maybe", iid, A(v=2))
    got = r.get(B)
    got.v = 99  # a caller mutating what it was given
    assert store.read_data("maybe", iid, ["B"]) == {"B": b'{"v":2}'}


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_runs_against_a_reopened_redis_store(redis_url, iid, mode):
    """Data arriving in separate runs, each through a freshly opened store and registry."""
    def fresh() -> pc.Executor:
        reg = pc.Registry(pc.RedisStore(redis_url))
        reg.register("dbf", DBF)
        return pc.Executor(reg)

    getattr(fresh(), mode)("dbf", iid, A(v=1))
    getattr(fresh(), mode)("dbf", iid, B(v=1))
    r = getattr(fresh(), mode)("dbf", iid, D(v=0))
    assert r.completed and r.get(F) == F(v=21)


def test_hooks_see_new_inputs_and_produced_data(memory_registry, iid):
    before: list[tuple[str, list]] = []
    after: list[tuple[str, object]] = []
    ex = pc.Executor(memory_registry, before=lambda b, d: before.append((b.__name__, d)),
                     after=lambda b, p: after.append((b.__name__, p)))
    ex.sequential("dbf", iid, A(v=1), B(v=2))
    assert before == [("BA", [A(v=1), B(v=2)])]
    assert after == [("BA", C(v=3))]
    ex.parallel("dbf", iid, D(v=0))
    assert [b for b, _ in before] == ["BA", "BB", "BC"]
    assert before[1][1] == [D(v=0)] or sorted(map(repr, before[1][1])) == sorted(
        map(repr, [C(v=3), D(v=0)]))


def test_a_raising_hook_fails_the_builder_only_under_strict_hooks(memory_registry, iid):
    def boom(builder, delta):
        raise ValueError("hook refused")

    with pytest.raises(pc.BuilderFailed, match="hook refused"):
        pc.Executor(memory_registry, before=boom, strict_hooks=True).sequential(
            "dbf", iid, A(v=1), B(v=1))
    r = pc.Executor(memory_registry, before=boom).sequential("dbf", iid + "x", A(v=1), B(v=1))
    assert r.get(C) == C(v=2)  # tests/test_hooks.py has the rest


def test_urls_with_passwords_are_redacted():
    assert redact("redis://user:s3cret@host:6380/0") == "redis://user:***@host:6380/0"
    assert redact("rediss://:s3cret@host/1") == "rediss://:***@host/1"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"
    assert "s3cret" not in repr(pc.RedisStore("redis://u:s3cret@127.0.0.1:1/0"))
