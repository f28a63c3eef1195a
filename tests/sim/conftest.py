"""The simulator's one private redis-server for the whole session (each seed flushes the
database it runs on), and the processes that share the seeds (SIM_PROCESSES, by default the
machine's cores up to 4; 1 runs every seed in the test process)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .runner import Pool
from .world import Lab


@pytest.fixture(scope="session")
def sim_lab() -> Iterator[Lab]:
    with Lab.start() as lab:
        yield lab


@pytest.fixture(scope="session")
def sim_pool(sim_lab: Lab) -> Iterator[Pool | None]:
    processes = int(os.environ.get("SIM_PROCESSES", str(min(os.cpu_count() or 1, 4))))
    if processes <= 1:
        yield None
        return
    pool = Pool(sim_lab, processes)
    try:
        yield pool
    finally:
        pool.close()
