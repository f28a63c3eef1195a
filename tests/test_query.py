"""The query API (issue 13 part 1) on a real Redis and real Celery worker threads."""

from __future__ import annotations

import pytest

import polaris_celery as pc

from . import scenarios
from .conftest import CeleryEnv
from .scenarios import A, B, D, F


@pytest.fixture(scope="module")
def ex(celery_env: CeleryEnv) -> pc.CeleryExecutor:
    return celery_env.executor  # type: ignore[no-any-return]


def test_a_completed_instance(ex: pc.CeleryExecutor, iid: str) -> None:
    ex.submit_delta("dbf", iid, A(v=1), B(v=1), D(v=0)).wait(10)
    view = ex.instance("dbf", iid)
    assert view.status == "completed"
    assert view.datum("F") is not None and view.datum("F").value == F(v=21)  # type: ignore[union-attr]
    assert view.datum("F").producer == "BC"  # type: ignore[union-attr]
    assert [r.status for r in view.runs] == ["completed"]
    with pytest.raises(pc.UnknownInstance):
        ex.instance("dbf", iid + "-none")
    assert scenarios is not None
