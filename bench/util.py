"""Shared helpers: progress output, timing statistics, results tables, Celery worker processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polaris_celery.testing import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


# -- statistics ------------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def quartiles(xs: Sequence[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us"


def spread_ms(xs: Sequence[float]) -> str:
    lo, hi = quartiles(xs)
    return f"IQR {lo * 1e3:.1f}-{hi * 1e3:.1f} ms, n={len(xs)}"


# -- results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured line: what, the measurement, what it is compared with, the ratio, the
    target and whether it holds (None: informational, no target)."""

    what: str
    measured: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    passed: bool | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "info"
        return "PASS" if self.passed else "**MISS**"


@dataclass
class Section:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # markdown paragraphs / extra tables
    columns: tuple[str, str] = ("Measured", "Reference")

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        log(f"  {row.what}: {row.measured}"
            + (f" vs {row.reference}" if row.reference else "")
            + (f" -> ratio {row.ratio}" if row.ratio else "")
            + (f" [{row.verdict}, target {row.target}]" if row.target else ""))
        return row

    def markdown(self) -> str:
        out = [f"## {self.key}. {self.title}", ""]
        if self.rows:
            out += [
                f"| Benchmark | {self.columns[0]} | {self.columns[1]} | Ratio | Target | Result "
                "| Notes |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in self.rows:
                out.append(f"| {r.what} | {r.measured} | {r.reference} | {r.ratio} | {r.target} "
                           f"| {r.verdict} | {r.note} |")
            out.append("")
        for t in self.text:
            out += [t, ""]
        return "\n".join(out)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# -- Celery worker processes ------------------------------------------------------------------


class Workers:
    """`n` real `celery -A bench.app worker` processes of one role, from the shared launcher
    (`polaris_celery.testing.WorkerProcess`: sessions of their own, ended by pid)."""

    def __init__(self, name: str, env: dict[str, str], *, pool: str = "prefork",
                 concurrency: int = 2, processes: int = 1, queues: str | None = None) -> None:
        self.name = name
        self.logdir = tempfile.mkdtemp(prefix=f"polaris-bench-{name}-")
        self.procs = [WorkerProcess(
            "bench.app", {**env, "PYTHONPATH": str(ROOT)}, name=f"{name}-{i}",
            node="{name}@bench", pool=pool, concurrency=concurrency, loglevel="WARNING",
            queues=queues.split(",") if queues else (), cwd=ROOT,
            log_path=f"{self.logdir}/worker-{i}.log") for i in range(processes)]

    def start(self) -> Workers:
        for p in self.procs:
            p.start()
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_ready(self, app: Any, timeout: float = 60.0) -> None:
        """Until every worker answers a ping through the broker (they log at WARNING)."""
        for p in self.procs:
            p.wait_ready(timeout, app=app)

    def stop(self, timeout: float = 15.0) -> None:
        codes = [p.stop(timeout) for p in self.procs]
        # Keep the logs only when a worker ended badly.
        if all(c == 0 for c in codes):
            shutil.rmtree(self.logdir, ignore_errors=True)

    def __enter__(self) -> Workers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- CPU time of processes (from /proc), to say what one instance costs in CPU -----------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text()
                        .split()]
    except OSError:
        pass
    return out


def _run_ns(pid: int) -> int:
    """Nanoseconds on CPU of every live thread of `pid` (/proc/<pid>/task/*/schedstat)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time of these processes and all their live descendants, in seconds (Linux)."""
    total = 0
    stack = list(pids)
    seen: set[int] = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _run_ns(pid)
        stack += _children(pid)
    return total / 1e9


def own_cpu() -> float:
    """CPU time of this process alone (its children are the workers and servers)."""
    return _run_ns(os.getpid()) / 1e9


@dataclass
class Paired:
    """Two operations timed in alternating batches; each round yields one ratio b/a from two
    adjacent batches, so slow drift in the machine's load cancels out."""

    a: list[float]
    b: list[float]

    @property
    def ratios(self) -> list[float]:
        return [y / x for x, y in zip(self.a, self.b, strict=True)]

    @property
    def ratio(self) -> float:
        return median(self.ratios)

    def describe(self) -> str:
        lo, hi = quartiles(self.ratios)
        return (f"median of {len(self.a)} per-round ratios (IQR {lo:.2f}-{hi:.2f}); "
                f"ratio of best batches {min(self.b) / min(self.a):.2f}")


def paired(a: Any, b: Any, rounds: int, batch: int) -> Paired:
    """Time `batch` calls of a(i) and of b(i) per round, alternating which goes first."""
    import gc

    out = Paired([], [])
    for r in range(rounds):
        order = [(a, out.a), (b, out.b)]
        for fn, into in (order if r % 2 == 0 else order[::-1]):
            gc.collect()
            t0 = time.perf_counter()
            for i in range(batch):
                fn(r * batch + i)
            into.append((time.perf_counter() - t0) / batch)
    return out
