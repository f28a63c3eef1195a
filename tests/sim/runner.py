"""Run seeds, in this process or in a pool of them, collect what they found, and say how to
replay each failure exactly (a replay always runs in one process: a seed's schedule does not
depend on where it runs)."""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import schedule
from .invariants import Violation
from .world import Lab, World

REPLAY = ".venv/bin/python -m tests.sim --seed {seed} -v"
BATCH = 10  # seeds per task handed to a pool process


@dataclass
class Result:
    """What one seed found."""

    seed: int
    steps: int
    violations: dict[str, tuple[int, Violation]]
    faults: Counter[str]
    harness_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and self.harness_error is None

    def report(self) -> str:
        lines = [f"seed {self.seed}: replay with `{REPLAY.format(seed=self.seed)}`"]
        for name, (step, v) in sorted(self.violations.items()):
            detail = v.detail if len(v.detail) < 600 else v.detail[:600] + " ..."
            lines.append(f"  step {step} {name}: {detail}")
        if self.harness_error:
            lines.append(f"  the harness itself failed: {self.harness_error}")
        return "\n".join(lines)


def run_seed(lab: Lab, seed: int, trace: Callable[[str], None] | None = None) -> Result:
    world = World(lab, seed, trace)
    if trace is not None:
        trace(f"seed {seed}: {len(world.instances)} instances, retention "
              f"{world.settings.retention}, faults: {world.plan}")
    error = None
    try:
        schedule.run(world)
    except Exception as exc:  # a bug in the harness, not a finding: still reported, loudly
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    return Result(seed, world.step, world.violations, world.faults.fired, error)


@dataclass
class Summary:
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    def by_invariant(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for r in self.failed:
            for name in r.violations:
                found.setdefault(name, []).append(r.seed)
            if r.harness_error:
                found.setdefault("harness-error", []).append(r.seed)
        return dict(sorted(found.items()))

    def report(self, shown: int = 10) -> str:
        n = len(self.results)
        lines = [f"{n} seeds in {self.seconds:.1f}s ({1000 * self.seconds / max(n, 1):.1f} ms "
                 f"per seed), {len(self.failed)} failing"]
        for name, seeds in self.by_invariant().items():
            more = f" ... (+{len(seeds) - shown})" if len(seeds) > shown else ""
            lines.append(f"  {name}: {len(seeds)} seeds: {seeds[:shown]}{more}")
        for r in self.failed[:shown]:
            lines.append(r.report())
        return "\n".join(lines)


# -- a pool of processes, each on a database of its own of the lab's server -----------------

_LAB: Lab | None = None  # the lab of a pool process


def _start(url: str, counter: Any) -> None:
    global _LAB
    with counter.get_lock():
        counter.value += 1
        db = counter.value
    _LAB = Lab(f"{url.rsplit('/', 1)[0]}/{db}")


def _run_batch(seeds: list[int]) -> list[Result]:
    assert _LAB is not None, "not a pool process"
    return [run_seed(_LAB, seed) for seed in seeds]


class Pool:
    """`processes` processes running seeds against one server, each on its own database
    (Redis has 16; a flush or a key scan sees only its own). Spawned, not forked: the test
    session may have threads running."""

    def __init__(self, lab: Lab, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.executor = ProcessPoolExecutor(processes, mp_context=ctx, initializer=_start,
                                            initargs=(lab.url, ctx.Value("i", 0)))

    def map(self, seeds: list[int]) -> Iterator[Result]:
        batches = [seeds[i:i + BATCH] for i in range(0, len(seeds), BATCH)]
        for results in self.executor.map(_run_batch, batches):
            yield from results

    def close(self) -> None:
        self.executor.shutdown(cancel_futures=True)


def run_seeds(lab: Lab, seeds: Iterable[int], progress: Callable[[Result], None] | None = None,
              pool: Pool | None = None) -> Summary:
    summary = Summary()
    t0 = time.perf_counter()
    ordered = list(seeds)
    results = pool.map(ordered) if pool else (run_seed(lab, seed) for seed in ordered)
    for result in results:
        summary.results.append(result)
        if progress is not None:
            progress(result)
    summary.seconds = time.perf_counter() - t0
    return summary
