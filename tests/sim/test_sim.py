"""The simulator in the test suite: 2,000 seeds in `make test`, many more in `make soak`.

Seeds are batched (a test per 250) so a failure lists every failing seed of its batch with the
command that replays it; `python -m tests.sim --seed N -v` prints its step trace.
"""

from __future__ import annotations

import os

import pytest

from .runner import Pool, run_seeds
from .world import Lab

CHUNKS = 8
PER_CHUNK = 250


@pytest.mark.sim
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_seeds(sim_lab: Lab, sim_pool: Pool | None, chunk: int) -> None:
    summary = run_seeds(sim_lab, range(chunk * PER_CHUNK, (chunk + 1) * PER_CHUNK),
                        pool=sim_pool)
    if summary.failed:
        pytest.fail(summary.report(shown=len(summary.failed)), pytrace=False)


@pytest.mark.soak
@pytest.mark.timeout(0)
def test_soak(sim_lab: Lab, sim_pool: Pool | None) -> None:
    """SIM_SEEDS seeds (50,000 by default) from SIM_START (after the regular ones)."""
    count = int(os.environ.get("SIM_SEEDS", "50000"))
    start = int(os.environ.get("SIM_START", str(CHUNKS * PER_CHUNK)))
    summary = run_seeds(sim_lab, range(start, start + count), pool=sim_pool)
    print(summary.report())
    if summary.failed:
        pytest.fail(summary.report(shown=50), pytrace=False)
