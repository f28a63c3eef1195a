"""Fixtures of the fault tests: a `cluster` of real processes per test, always torn down.

Parametrize it indirectly for a broker on a redis-server of its own:
`@pytest.mark.parametrize("cluster", [{"separate_broker": True}], indirect=True)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Cluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path, **getattr(request, "param", {}))
    try:
        yield c
    finally:
        if request.node.stash.get(_FAILED, False):
            print(f"\n===== worker logs ({tmp_path}) =====\n{c.logs()}")
        c.close()
