"""The invariants, as plain functions over what Redis holds (`observe.View`, or a client) and the
harness's `Record`. Each raises `Violation(invariant, detail)`; none calls the library.

1. single-commit   no builder commits twice in one run of one incarnation (log entries)
2. an acknowledged delta is never lost, in three parts:
   lost-delta      its inputs are kept until a later delta replaces them or something drops
                   them (a restart without data, a delete, an expiry)
   lost-run        its run settles and wakes its waiters (or expires by TTL after settling)
   stale-outcome   nothing of another run answers for it: not an older outcome, not a wake
3. settles         after quiescing, no run is left in flight
4. retired         nothing is pinned to a version once a retire of it succeeded
5. expiry          once an instance's state is gone (or expiring), none of its keys lives forever
6. incarnation     run numbers only grow within an incarnation, and a state created from
                   nothing never reuses an earlier incarnation
7. watched         the reconciler's index looks at an instance by each lease's end and by its
                   deadline, so a crashed builder is re-run within its lease, not later
8. deadline        after a reconciler pass, no open instance is past its deadline with work left
9. fair-reconcile  an instance whose look failed is put back, not left first in line; and
   fair-version    one a worker cannot judge (it lacks the version) is left for one that can
10. delta-id       a repeated delta id returns its first run; other data under it is refused
11. failure-cause  a run fails only for a failure the harness caused (a builder told to raise,
                   or a process that died while holding an attempt)
12. lost-attempt   an attempt is given up as lost (its lease ran out) only on an instance where
                   a process died or gave up mid-call: a commit that applied but whose reply
                   was lost, or an old message claiming a new life's builder, leaves an
                   attempt stranded, and is found here even when a re-run hides it
13. listed         on one node, each instance's entry in its workflow's listing is, at every
                   moment, its state's status (its own rule here, not the library's), in that
                   status's set and the workflow's, and of its incarnation (the step's own
                   script writes it)
14. leftovers      the state hash holds fields (`r:N`, `a:N:B`, `x:N:B`, ...) only of the runs
                   its document lists in flight: settling a run removes all of its fields
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from typing import Any

import redis

from polaris_celery.errors import InvalidInput

from . import flows
from .observe import PREFIX, View, outcomes, run_key, wake_key
from .record import Ack, Facts, Record
from .ttl import Expiry

#: Error types the reconciler gives an attempt whose process died.
LOST = frozenset({"LeaseExpired", "WorkerLost", "AttemptLost"})
EPSILON = 0.0015  # index scores and lease deadlines are written with 3 decimals


class Violation(Exception):
    """An invariant does not hold."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(invariant, detail)
        self.invariant = invariant
        self.detail = detail

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.detail}"


def _raise(invariant: str, problems: Iterable[str]) -> None:
    found = list(problems)
    if found:
        raise Violation(invariant, "; ".join(found))


def single_commit(view: View, record: Record) -> None:
    problems = []
    for i, iv in sorted(view.instances.items()):
        facts = record.facts[i]
        for e in iv.log:
            f = e.fields
            if f.get("ev") != "builder" or f.get("result", "").startswith("error:"):
                continue
            k = (f.get("inc", ""), int(f.get("run", 0)), f.get("b", ""))
            seen = facts.commits.setdefault(k, (e.gen, e.id, f.get("attempt", "?")))
            if seen[:2] != (e.gen, e.id):
                problems.append(f"{i}: {k[2]} committed twice in run {k[1]} of incarnation "
                                f"{k[0]!r} (attempts {seen[2]} and {f.get('attempt', '?')})")
    _raise("single-commit", problems)


def attempts_lost_for_a_reason(view: View, record: Record) -> None:
    problems = []
    for i, iv in sorted(view.instances.items()):
        facts = record.facts[i]
        for e in iv.log:
            f = e.fields
            lost = f.get("result", "")[len("error:"):] if f.get("ev") == "builder" else ""
            if lost in LOST and not facts.tainted:
                problems.append(f"{i}: attempt {f.get('attempt')} of {f.get('b')} in run "
                                f"{f.get('run')} was lost ({lost}), yet no process died or gave "
                                "up acting on this instance")
    _raise("lost-attempt", problems)


def inputs_kept(view: View, record: Record) -> None:
    problems = []
    for i, iv in sorted(view.instances.items()):
        for name in flows.KEPT:
            allowed = record.facts[i].allowed(name)
            if iv.data.get(name) not in allowed:
                shown = sorted(map(str, allowed))
                problems.append(f"{i}: {name} holds {iv.data.get(name)}, but the deltas "
                                f"acknowledged leave it one of {shown}")
    _raise("lost-delta", problems)


def fresh_run(r: redis.Redis, workflow: str, ack: Ack, facts: Facts) -> None:
    """Right after a new run was acknowledged: nothing of another run answers for it, and its
    number is above every run acknowledged before in its incarnation."""
    k = (run_key(workflow, ack.instance, ack.inc, ack.run),
         wake_key(workflow, ack.instance, ack.inc, ack.run))
    outcome, woken = outcomes(r, [k])[k[0]]
    name = f"{ack.instance} run {ack.run} (incarnation {ack.inc!r})"
    if outcome is not None and json.loads(outcome).get("started") not in ack.starts:
        raise Violation("stale-outcome", f"{name} was just submitted, and a waiter would read "
                        f"the outcome of an earlier run: {outcome}")
    if outcome is None and woken:
        raise Violation("stale-outcome", f"{name} was just submitted, and its waiters would "
                        "wake at once: its wake list is already pushed")
    before = facts.acked_max.get(ack.inc, 0)
    facts.acked_max[ack.inc] = max(before, ack.run)
    if ack.run <= before:
        raise Violation("incarnation", f"{name} acknowledged after run {before} of the same "
                        "incarnation: run numbers went back")


def acks_settled(r: redis.Redis, workflow: str, record: Record, expiry: Expiry,
                 view: View) -> None:
    """At the end: every acknowledged run settled with its own outcome and woke its waiters,
    and failed only for a reason the harness caused."""
    acks = [record.acks[k] for k in sorted(record.acks)]
    pairs = [(run_key(workflow, a.instance, a.inc, a.run),
              wake_key(workflow, a.instance, a.inc, a.run)) for a in acks]
    got = outcomes(r, pairs)
    lost, stale, causes = [], [], []
    for a, (rk, wk) in zip(acks, pairs, strict=True):
        outcome, woken = got[rk]
        name = f"{a.instance} run {a.run} (incarnation {a.inc!r})"
        iv = view.instances[a.instance]
        in_flight = iv.inc == a.inc and any(run.get("id") == a.run for run in iv.runs)
        born = min(a.starts)
        if outcome is None:
            if not expiry.expired_since(rk, born) and not in_flight:
                lost.append(f"{name} was acknowledged and never settled: no outcome, and "
                            "no longer among the instance's runs")
            continue
        o: dict[str, Any] = json.loads(outcome)
        if o.get("started") not in a.starts or (a.delta_id and o.get("delta_id") != a.delta_id):
            stale.append(f"{name} holds the outcome of another run: {outcome}")
        if not woken and not expiry.expired_since(wk, born):
            lost.append(f"{name} settled ({o.get('status')}) but its waiters are never "
                        f"woken: {wk} is missing")
        causes += _unexplained(name, o, record.facts[a.instance])
    _raise("lost-run", lost)
    _raise("stale-outcome", stale)
    _raise("failure-cause", causes)


def _unexplained(name: str, o: dict[str, Any], facts: Facts) -> list[str]:
    if o.get("status") != "failed":
        return []
    err = o.get("error") or {}
    if err.get("type") in (flows.SimFailure.__name__, "InvalidOutput") \
            and err.get("builder") in facts.told_to_fail:
        return []
    if err.get("type") in LOST and facts.tainted:
        return []
    return [f"{name} failed with {err.get('type')} in {err.get('builder')} "
            f"({err.get('message')}), and no process died nor was any builder told to fail"]


def nothing_in_flight(view: View) -> None:
    _raise("settles", (
        f"{i}: run(s) {sorted(int(run['id']) for run in iv.runs)} still in flight after "
        "quiescing (every message delivered, every reconciler run, the clock past every lease)"
        for i, iv in sorted(view.instances.items()) if iv.runs))


def no_leftover_fields(view: View) -> None:
    problems = []
    for i, iv in sorted(view.instances.items()):
        open_runs = {str(r) for r in iv.doc.get("runs", [])}
        left = sorted(f for f in iv.state if f not in ("v", "inc", "doc")
                      and f.split(":")[1] not in open_runs)
        if left:
            problems.append(f"{i}: fields {left[:6]} of runs no longer in flight "
                            f"(in flight: {sorted(open_runs)})")
    _raise("leftovers", problems)


def retired_unused(view: View, record: Record) -> None:
    problems = []
    for v in sorted(record.retired):
        if view.live.get(v):
            problems.append(f"v{v} was retired, yet instances {sorted(view.live[v])} are "
                            "pinned to it")
        problems += [f"{i} has runs in flight on retired v{v}"
                     for i, iv in sorted(view.instances.items())
                     if iv.doc.get("version") == v and iv.runs]
    _raise("retired", problems)


def no_immortal_keys(view: View, state_of: dict[str, str]) -> None:
    """`state_of`: instance -> its state key. Once the state is gone or has a TTL (the instance
    was deleted or expires), every other key of the instance must have a TTL too."""
    problems = []
    for i, iv in sorted(view.instances.items()):
        state_ttl = iv.keys.get(state_of[i])
        if state_ttl is not None and state_ttl < 0:
            continue  # the instance lives on
        forever = sorted(k for k, pttl in iv.keys.items() if pttl < 0)
        if forever:
            why = "is gone" if state_ttl is None else "expires"
            problems.append(f"{i}: its state {why}, but {forever} would live forever")
    _raise("expiry", problems)


def incarnations(view: View, record: Record) -> None:
    problems = []
    for i, iv in sorted(view.instances.items()):
        facts = record.facts[i]
        if not iv.exists:
            facts.present_inc = None
            continue
        inc = iv.inc
        if inc != facts.present_inc and inc in facts.incs:
            problems.append(f"{i}: its state was gone and came back as incarnation {inc!r}, "
                            "which an earlier life had: run numbers restart and meet that "
                            "life's runs, messages and waiters")
        facts.incs.add(inc)
        facts.present_inc = inc
        nxt = iv.doc.get("next")
        if isinstance(nxt, int):
            if nxt < facts.next_max.get(inc, 0):
                problems.append(f"{i}: the run counter of incarnation {inc!r} went back from "
                                f"{facts.next_max[inc]} to {nxt}")
            facts.next_max[inc] = max(nxt, facts.next_max.get(inc, 0))
    _raise("incarnation", problems)


def _lease_deadline(value: str) -> float | None:
    parts = value.split("|")
    try:
        return float(parts[2])
    except (IndexError, ValueError):
        return None


def watched(view: View, workflow: str, excused: set[str]) -> None:
    """`excused`: instances a reconciler's look failed on, which it puts back by a backoff
    (fair-reconcile) even past their leases: a look that keeps failing cannot judge them."""
    problems = []
    for i, iv in sorted(view.instances.items()):
        if i in excused:
            continue
        doc = iv.doc
        look = view.index.get(f"{workflow}/{i}", float("inf"))
        for run in iv.runs:
            for b in sorted(run.get("active", {})):
                end = _lease_deadline(iv.leases.get(f"{run['id']}/{b}", ""))
                if end is not None and look > end + EPSILON:
                    problems.append(f"{i}: the lease of {b} in run {run['id']} ends at "
                                    f"{end:.3f}, the reconciler looks at {look:.3f}")
        deadline = doc.get("deadline")
        if _overdue_by(doc, iv.runs, look - EPSILON):
            problems.append(f"{i}: its deadline is {deadline:.3f} with {_work(doc, iv.runs)}, "
                            f"the reconciler looks at {look:.3f}")
    _raise("watched", problems)


def _overdue_by(doc: dict[str, Any], runs: list[dict[str, Any]], when: float) -> bool:
    """Open with work left (runs in flight, or the target unmet), and its deadline at or
    before `when`."""
    deadline = doc.get("deadline")
    return (doc.get("status") == "open" and deadline is not None and deadline <= when
            and bool(runs or not doc.get("completed")))


def _work(doc: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "its target unmet"
    done = ", though an earlier run completed it" if doc.get("completed") else ""
    return f"runs {sorted(int(r['id']) for r in runs)} in flight{done}"


def deadlines_enforced(view: View, excused: frozenset[str] = frozenset()) -> None:
    """`excused`: instances a failed look put back by a backoff, not yet due again."""
    _raise("deadline", (
        f"{i}: open past its deadline {iv.doc['deadline']:.3f} (now {view.now:.3f}) with "
        f"{_work(iv.doc, iv.runs)}, after every worker ran the reconciler"
        for i, iv in sorted(view.instances.items())
        if i not in excused and _overdue_by(iv.doc, iv.runs, view.now)))


def failed_looks_put_back(index: dict[str, float], now: float, looked: list[str],
                          due_before: int, limit: int) -> None:
    """After a pass that had more due than its `limit`: what it looked at is no longer due."""
    if due_before <= limit:
        return
    _raise("fair-reconcile", (
        f"{m} was looked at and left due (at {index[m]:.3f}, now {now:.3f}): a look that "
        f"fails keeps it first in line, ahead of the {due_before - limit} other(s) due, for "
        f"every pass of limit {limit}"
        for m in sorted(set(looked)) if index.get(m, float("inf")) <= now))


def unjudged_left_due(index: dict[str, float], now: float, worker: str,
                      unjudged: dict[str, int]) -> None:
    """A worker lacking the version an instance is pinned to leaves it due for one that has
    it: putting it back lets every such worker that runs first starve it."""
    _raise("fair-version", (
        f"{worker} lacks v{v}, which {m} is pinned to, and put its look back to "
        f"{index[m]:.3f} (now {now:.3f}), out of reach of the workers that have v{v}"
        for m, v in sorted(unjudged.items()) if index.get(m, float("-inf")) > now))


def repeated_delta(facts: Facts, delta_id: str, payload: str, answer: object) -> None:
    """A delta id acknowledged in this life of the instance was submitted again. With its data
    it answers its first run (or is refused for another reason, never as a conflict); with
    other data it is refused, never applied nor answered with the first run.
    `answer`: (run, incarnation) when the submit returned, else the error it raised."""
    if delta_id not in facts.epoch:
        return
    first, first_payload = facts.epoch[delta_id]
    returned = isinstance(answer, tuple)
    if payload == first_payload and returned and answer != (first.run, first.inc):
        raise Violation("delta-id", f"delta {delta_id!r} repeated with its data answered "
                        f"{answer}, its first submission run {first.run} ({first.inc!r})")
    if payload == first_payload and isinstance(answer, InvalidInput):
        raise Violation("delta-id", f"delta {delta_id!r} repeated with its own data was refused "
                        f"as invalid: {answer}")
    if payload != first_payload and returned:
        raise Violation("delta-id", f"delta {delta_id!r} (run {first.run}, {first_payload}) "
                        f"repeated with {payload} was answered {answer}, not refused "
                        "(InvalidInput)")


STATUSES = ("open", "running", "paused", "completed", "failed", "cancelled", "timed_out")


def _status(doc: dict[str, Any]) -> str:
    """The instance's status from its document, written again from the query API's docs."""
    if doc.get("status", "open") != "open":
        return str(doc["status"])
    if doc["runs"]:
        return "running"
    last = doc.get("last", "")
    if last == "failed":
        return "failed"
    if doc["completed"]:
        return "completed"
    return "paused" if last else "open"


def listed(r: redis.Redis, workflow: str, view: View) -> None:
    """13. Every instance that exists has its listing entry, exactly (one node)."""
    problems: list[str] = []
    pipe = r.pipeline(transaction=False)
    shown = [(i, iv) for i, iv in sorted(view.instances.items()) if iv.state.get("doc")]
    for i, _ in shown:
        tag = f"{PREFIX}:{{inst:{workflow}:{zlib.crc32(f'{workflow}/{i}'.encode()) % 16}}}"
        pipe.hget(f"{tag}:id", i)
        pipe.zscore(f"{tag}:all", i)
        for s in STATUSES:
            pipe.zscore(f"{tag}:s:{s}", i)
    got = pipe.execute()
    width = 2 + len(STATUSES)
    for n, (i, iv) in enumerate(shown):
        entry, in_all, *sets = got[n * width:(n + 1) * width]
        want = _status(json.loads(iv.state["doc"]))
        where = [s for s, score in zip(STATUSES, sets, strict=True) if score is not None]
        inc, _, rest = (entry or "").partition("|")
        v, _, status = rest.partition("|")
        if (status != want or inc != iv.state.get("inc") or not v.isdigit()
                or int(v) > int(iv.state.get("v", 0)) or in_all is None or where != [want]):
            problems.append(f"{i}: is {want} (v{iv.state.get('v')}, inc {iv.state.get('inc')})"
                            f" but listed as {entry!r}, in sets {where}, in all: "
                            f"{in_all is not None}")
    _raise("listed", problems)
