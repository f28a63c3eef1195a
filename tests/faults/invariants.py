"""An invariant checker independent of the code under test.

It reads Redis with plain redis-py, from the key layout the store documents, never through the
library's classes, and compares three sources that the library does not control together:

- what producers sent (the test's `Expect` records: seeds, delta ids, the runs they were told),
- what builders actually executed (each execution pushes to `fx:{workflow}:{instance}` on a
  Redis of its own, see tests/faults/app.py),
- what the store says happened (the state document, leases, the per-instance log stream,
  the deltas hash, run outcomes, the data hash, the reconciler's index).

Invariants (each one a way the library could lose or duplicate work):

1. every instance settled: its state document holds no runs, and it reached its target (the
   expected data are stored and every run's outcome is `completed`) or its documented end
   (the run `failed`, naming the dead builder);
2. nothing in flight: no lease left, no index member for the instance;
3. no datum committed twice: per (run, builder) at most one `ev=builder` log entry whose result
   is a datum; the builders the workflow must run committed exactly once per run; the committed
   attempt is one that really executed to its end;
4. no attempt executed twice: per (run, builder, attempt) at most one execution started;
5. every delta applied exactly once: one `ev=delta` log entry per run, run numbers 1..n without
   gaps, every delta id in the deltas hash mapped to one run, different ids to different runs,
   the run each producer was told, and that run's outcome carries the id;
6. the data stored are the data the producers' seeds imply.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

PREFIX = "pc"


def index_key(member: str) -> str:
    """The index bucket of an instance: crc32 of `wf/id` over 16 buckets (layout.py)."""
    return f"{PREFIX}:{{index:{zlib.crc32(member.encode()) % 16}}}"


def key(workflow: str, instance: str, kind: str) -> str:
    return f"{PREFIX}:{{{workflow}/{instance}}}:{kind}"


def fx_key(workflow: str, instance: str) -> str:
    return f"fx:{workflow}:{instance}"


@dataclass
class Expect:
    """What the producers did to one instance and what must therefore hold."""

    workflow: str
    instance: str
    data: dict[str, Any] = field(default_factory=dict)  # datum -> its expected JSON
    builders: Sequence[str] = ()  # must commit exactly once in every run
    delta_ids: dict[str, int | None] = field(default_factory=dict)  # id -> run told (or None)
    runs: int = 1  # deltas that must have applied
    failed: str | None = None  # the last run must fail naming this builder


@dataclass
class Stats:
    instances: int = 0
    runs: int = 0
    executions: int = 0  # builder executions started (fx)
    commits: int = 0  # builder outcomes committed with a datum
    failed_attempts: int = 0  # log entries with result error:*
    lease_expired: int = 0  # of which the reconciler found the lease expired
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, other: Stats) -> None:
        self.instances += other.instances
        self.runs += other.runs
        self.executions += other.executions
        self.commits += other.commits
        self.failed_attempts += other.failed_attempts
        self.lease_expired += other.lease_expired
        self.errors.update(other.errors)

    @property
    def reruns(self) -> int:
        """Executions beyond one per commit: the work faults cost."""
        return self.executions - self.commits


class Checker:
    def __init__(self, store_url: str, fx_url: str) -> None:
        self.r = redis.Redis.from_url(store_url, decode_responses=True, socket_timeout=30)
        self.fx = redis.Redis.from_url(fx_url, decode_responses=True, socket_timeout=30)

    def close(self) -> None:
        self.r.close()
        self.fx.close()

    # -- reading -------------------------------------------------------------------------------

    def doc(self, workflow: str, instance: str) -> dict[str, Any] | None:
        raw = self.r.hget(key(workflow, instance, "state"), "doc")
        return json.loads(raw) if raw else None

    def executions(self, workflow: str, instance: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.fx.lrange(fx_key(workflow, instance), 0, -1)]

    def log(self, workflow: str, instance: str) -> list[dict[str, str]]:
        return [f for _, f in self.r.xrange(key(workflow, instance, "log"))]

    def outcome(self, workflow: str, instance: str, run: int) -> dict[str, Any] | None:
        inc = (self.r.hget(key(workflow, instance, "state"), "inc") or "")
        raw = self.r.hget(key(workflow, instance, f"run:{inc}:{run}"), "_outcome")
        return json.loads(raw) if raw else None

    def unsettled(self, expects: Iterable[Expect]) -> list[Expect]:
        """Instances whose state document still holds runs, or that have fewer runs than
        expected."""
        expects = list(expects)
        out: list[Expect] = []
        for i in range(0, len(expects), 500):
            batch = expects[i:i + 500]
            pipe = self.r.pipeline(transaction=False)
            for e in batch:
                pipe.hget(key(e.workflow, e.instance, "state"), "doc")
            for e, raw in zip(batch, pipe.execute(), strict=True):
                d = json.loads(raw) if raw else None
                if d is None or d["runs"] or d["next"] < e.runs:
                    out.append(e)
        return out

    def wait_settled(self, expects: Sequence[Expect], timeout: float,
                     poll: float = 0.25) -> float:
        """Seconds until every instance settled; fails naming what did not, with its state."""
        t0 = time.monotonic()
        while True:
            left = self.unsettled(expects)
            if not left:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(
                    f"{len(left)} of {len(expects)} instances unsettled after {timeout}s; first: "
                    + "; ".join(self.describe(e) for e in left[:3]))
            time.sleep(poll)

    def describe(self, e: Expect) -> str:
        return (f"{e.workflow}/{e.instance} doc={self.doc(e.workflow, e.instance)} "
                f"leases={self.r.hgetall(key(e.workflow, e.instance, 'lease'))} "
                f"log={self.log(e.workflow, e.instance)[-6:]}")

    # -- checking ------------------------------------------------------------------------------

    def check(self, expects: Sequence[Expect]) -> Stats:
        """Assert every invariant for every instance; returns the figures."""
        problems: list[str] = []
        total = Stats()
        for e in expects:
            stats = Stats(instances=1)
            problems += [f"{e.workflow}/{e.instance}: {p}" for p in self._check_one(e, stats)]
            total.add(stats)
        assert not problems, (f"{len(problems)} invariant violation(s):\n  "
                              + "\n  ".join(problems[:25]))
        return total

    def _check_one(self, e: Expect, stats: Stats) -> list[str]:
        p: list[str] = []
        wf, iid = e.workflow, e.instance
        doc = self.doc(wf, iid)
        if doc is None:
            return ["no state document"]
        # 1. settled, at the target or the documented end
        if doc["runs"]:
            p.append(f"runs still in flight: {doc['runs']}")
        n = int(doc["next"])
        stats.runs = n
        if n != e.runs:
            p.append(f"{n} runs applied, producers sent {e.runs} distinct deltas")
        outcomes = {r: self.outcome(wf, iid, r) for r in range(1, n + 1)}
        for r, out in outcomes.items():
            if out is None:
                p.append(f"run {r} has no outcome")
                continue
            last_fails = e.failed is not None and r == n
            want = "failed" if last_fails else "completed"
            if out["status"] != want:
                p.append(f"run {r} ended {out['status']} ({out.get('error')}), expected {want}")
            if last_fails and (out.get("error") or {}).get("builder") != e.failed:
                p.append(f"run {r} failed naming {out.get('error')}, expected {e.failed}")
        if e.failed is None and not doc["completed"]:
            p.append("instance not completed")
        # 2. nothing in flight
        leases = self.r.hgetall(key(wf, iid, "lease"))
        if leases:
            p.append(f"leases left: {leases}")
        if self.r.zscore(index_key(f"{wf}/{iid}"), f"{wf}/{iid}") is not None:
            p.append("still in the index")
        # 3./4./5. the log against the executions
        log = self.log(wf, iid)
        execs = self.executions(wf, iid)
        starts = Counter((x["run"], x["b"], x["attempt"]) for x in execs if x["ev"] == "start")
        ends = {(x["run"], x["b"], x["attempt"]) for x in execs if x["ev"] == "end"}
        stats.executions = sum(starts.values())
        for k, c in starts.items():
            if c > 1:
                p.append(f"attempt executed {c} times: run {k[0]} {k[1]} attempt {k[2]}")
        commits: Counter[tuple[int, str]] = Counter()
        deltas: Counter[int] = Counter()
        for f in log:
            if f.get("ev") == "delta":
                deltas[int(f["run"])] += 1
            elif f.get("ev") == "builder":
                result = f["result"]
                if result.startswith("error:"):
                    stats.failed_attempts += 1
                    stats.errors[result[6:]] += 1
                    if result == "error:AttemptLost":
                        stats.lease_expired += 1
                    continue
                run, b, attempt = int(f["run"]), f["b"], int(f["attempt"])
                commits[(run, b)] += 1
                if result != "-":
                    stats.commits += 1
                if (run, b, attempt) not in ends:
                    p.append(f"run {run} {b} committed attempt {attempt}, which never "
                             f"finished executing (executions: {sorted(starts)})")
        for (run, b), c in commits.items():
            if c > 1:
                p.append(f"run {run} {b} committed {c} times")
        for r in range(1, n + 1):
            if deltas[r] != 1:
                p.append(f"run {r} has {deltas[r]} delta log entries")
            if e.failed is None or r < n:
                for b in e.builders:
                    if commits[(r, b)] != 1:
                        p.append(f"run {r} {b} committed {commits[(r, b)]} times, expected 1")
        if set(deltas) - set(range(1, n + 1)):
            p.append(f"delta log entries for unknown runs {sorted(set(deltas))}")
        stored_ids = {k: int(v.partition("|")[0])
                      for k, v in self.r.hgetall(key(wf, iid, "deltas")).items()}
        if set(stored_ids) != set(e.delta_ids):
            p.append(f"delta ids stored {sorted(stored_ids)} != sent {sorted(e.delta_ids)}")
        if len(set(stored_ids.values())) != len(stored_ids):
            p.append(f"two delta ids share a run: {stored_ids}")
        for did, told in e.delta_ids.items():
            run_of = stored_ids.get(did)
            if told is not None and run_of != told:
                p.append(f"delta {did} stored as run {run_of}, producer was told {told}")
            out = outcomes.get(run_of or -1)
            if out is not None and out.get("delta_id") != did:
                p.append(f"run {run_of} outcome names delta {out.get('delta_id')}, not {did}")
        # 6. the data
        data = self.r.hgetall(key(wf, iid, "data"))
        for name, want in e.data.items():
            got = json.loads(data[name]) if name in data else None
            if got != want:
                p.append(f"datum {name} is {got}, expected {want}")
        return p
