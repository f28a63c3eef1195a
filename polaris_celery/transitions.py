"""The transitions of an instance's life, each a pure function from what was read to a `Step`.

    submit     a delta arrives: store it, start a run, dispatch what it makes runnable
    commit     an attempt returned: store its datum (or its failure), dispatch what it unlocked
    look       the reconciler's look: re-send lost messages, re-run lost attempts, time out
    lose       an attempt's process died (the worker saw it, or its lease ran out)
    cancel     nothing more runs; runs in flight end "cancelled"
    restart    runs in flight end "cancelled"; the inputs start a new run on the newest version
    delete     runs in flight end "deleted"; every key of the instance goes

Callers (the coordinator) read the state, call one of these with `now` from their clock, apply
the step with cas.lua against the version they read, and send its messages only if it applied.
A deadline is checked by every transition that could run something, not by the reconciler
alone, so nothing runs after it whoever gets there first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

from .errors import InstanceClosed
from .fields import Presence
from .frontier import BuilderError, RunState
from .graph import Graph
from .instance import Dispatch, InstanceDoc, lease_field, parse_lease, queued_lease
from .layout import Keys, Listing, Ops, Snapshot
from .machine import Counts, Machine, Step, new_step

#: The longest wait between two re-sends of one queued builder (seconds).
MAX_RESEND_WAIT = 600.0


def submit(m: Machine, graph: Graph, k: Keys, snap: Snapshot, doc: InstanceDoc, inc: str,
           delta: Mapping[str, bytes], delta_record: str | None, delta_id: str | None,
           deadline: float | None, now: float, trace: str | None = None) -> tuple[Step, int]:
    """Store a delta and start its run. `inc` is the snapshot's incarnation, or a new one when
    the instance does not exist. Raises InstanceClosed for a closed or overdue instance.
    `trace`: the run's trace context, kept with it (tracing.py)."""
    if doc.status != "open":
        what = "timed out at its deadline" if doc.status == "timed_out" else doc.status
        raise InstanceClosed(f"{k.member} was {what}; restart it to send it data again")
    if doc.deadline is not None and now >= doc.deadline:
        raise InstanceClosed(f"{k.member} passed its deadline")
    step = new_step(k)
    reopened = not snap.exists or doc.finished
    after = graph.workflow.on_complete
    if doc.completed and delta and after == "close":
        raise InstanceClosed(f"{k.member} completed, and its workflow closes an instance on "
                             "completion (on_complete='close'); restart it to run it again")
    if doc.completed and delta and after == "late":
        return late(m, graph, k, snap, doc, delta, delta_record, delta_id, now, trace), \
            doc.next_run
    if not snap.exists:
        step.ops.hset(k.state, {"inc": inc})
    m.pin(graph, k, doc, step)
    if deadline is not None:
        doc.deadline = now + deadline
    elif not doc.created and graph.workflow.deadline:
        doc.deadline = now + float(graph.workflow.deadline)
    if doc.deadline is not None:
        m.index(k, step, doc.deadline)
    doc.created = doc.created or now
    lasting = {n: v for n, v in delta.items() if n not in graph.transients}
    step.ops.hset(k.data, lasting)
    if delta_id is not None and delta_record is not None:
        step.ops.hset(k.deltas, {delta_id: delta_record.format(run=doc.next_run + 1)})
    run = start_run(m, graph, k, inc, doc, snap, delta, delta_id, step, now, trace)
    m.seal(graph, k, snap, reopened, doc, step, now, inc=inc)
    return step, run


def late(m: Machine, graph: Graph, k: Keys, snap: Snapshot, doc: InstanceDoc,
         delta: Mapping[str, bytes], delta_record: str | None, delta_id: str | None,
         now: float, trace: str | None = None) -> Step:
    """A delta for a completed instance of an `on_complete="late"` workflow: its data are kept
    apart as late data, nothing runs, and its run ends at once as "late"."""
    step = new_step(k)
    reopened = doc.finished
    doc.next_run += 1
    if delta_id is not None and delta_record is not None:
        step.ops.hset(k.deltas, {delta_id: delta_record.format(run=doc.next_run)})
    step.ops.hset(k.late, delta)
    step.ops.log(k, m.settings.log_length, ev="late", inc=snap.inc, run=doc.next_run,
                 data=",".join(sorted(delta)), at=f"{now:.6f}", by=m.worker_name)
    run = RunState(id=doc.next_run, started=now, delta_id=delta_id, closed="late", trace=trace)
    m.place(graph, k, snap.inc, doc, run, step, now, completed=True)
    m.seal(graph, k, snap, reopened, doc, step, now)
    return step


def start_run(m: Machine, graph: Graph, k: Keys, inc: str, doc: InstanceDoc, snap: Snapshot,
              delta: Mapping[str, bytes], delta_id: str | None, step: Step, now: float,
              trace: str | None = None) -> int:
    """Start the next run on `delta` (already in the data hash, or written by the caller)."""
    doc.next_run += 1
    present = presence(snap)
    for name in delta:
        present.add(name)
    run, ready = RunState.start(graph, doc.next_run, delta, present, started=now,
                                delta_id=delta_id, trace=trace)
    if delta:
        doc.completed = False  # a new delta re-opens a completed instance
    step.ops.hset(k.run(inc, run.id), {n: v for n, v in delta.items() if n in graph.transients})
    m.dispatch(graph, k, inc, run, ready, step, now)
    step.ops.log(k, m.settings.log_length, ev="delta", inc=inc, run=run.id,
                 data=",".join(sorted(delta)), at=f"{now:.6f}", by=m.worker_name)
    m.place(graph, k, inc, doc, run, step, now, completed=not delta and graph.target in present)
    return run.id


def commit(m: Machine, graph: Graph, k: Keys, snap: Snapshot, run_id: int, builder: str,
           token: int, produced: bytes | None, error: BuilderError | None, *, by: str,
           started: float, seconds: float, once: str, inline_claim: str | None,
           may_inline: Callable[[str], bool] | None = None, now: float) -> Step | None:
    """Commit an attempt's outcome. None when the attempt no longer holds its builder (it was
    superseded, or its instance was closed, restarted or deleted): nothing of it is applied,
    except that a datum produced for a closed instance is kept apart as late data."""
    doc = InstanceDoc.load(graph, snap)
    run = doc.run(run_id)
    inc = snap.inc
    step = new_step(k)
    reopened = doc.finished
    spec = graph.specs[builder]
    if run is not None and run.token(builder) == token and doc.overdue(now):
        m.close(graph, k, inc, doc, step, now, "timed_out")
        doc.status = "timed_out"
        run = None
    if run is None or run.token(builder) != token:
        if doc.status == "open" or produced is None or not snap.exists:
            return None
        step.ops.add("ONCE", k.run(inc, run_id), f"_op:{builder}:{token}", once)
        step.ops.add("EXPIRE", k.run(inc, run_id), m.settings.result_ttl)
        step.ops.hset(k.late, {spec.produces_name: produced})
        step.ops.log(k, m.settings.log_length, ev="late", inc=inc, run=run_id, b=builder,
                     attempt=token, at=f"{started:.6f}", secs=f"{seconds:.6f}",
                     result=spec.produces_name, by=by)
        m.seal(graph, k, snap, reopened, doc, step, now)
        return step
    ops = step.ops
    ops.add("ONCE", k.run(inc, run_id), f"_op:{builder}:{token}", once)
    ops.add("HDEL", k.lease, lease_field(run_id, builder))
    present = presence(snap)
    was = Counts.of(run)
    quiet = error is None and not run.stopped and not reopened
    if error is None:
        name = spec.produces_name if produced is not None else None
        if name is not None and produced is not None:
            if name not in graph.transients:
                ops.hset(k.data, {name: produced})
                present.add(name)
            ops.hset(k.run(inc, run_id), {name: produced})
        ready = run.finished(graph, builder, name, present)
        result = name or "-"
    else:
        m.failed(graph, k, inc, run, builder, token, error, step, now)
        ready = []
        result = f"error:{error.type}"
    m.dispatch(graph, k, inc, run, ready, step, now, inline_claim=inline_claim,
               may_inline=may_inline)
    ops.log(k, m.settings.log_length, ev="builder", inc=inc, run=run_id, b=builder,
            attempt=token, at=f"{started:.6f}", secs=f"{seconds:.6f}", result=result, by=by)
    m.place(graph, k, inc, doc, run, step, now)
    if quiet and not ready and m.seal_quiet(k, snap, doc, run, was, present, step):
        return step
    m.seal(graph, k, snap, reopened, doc, step, now)
    return step


def lose(m: Machine, graph: Graph, k: Keys, snap: Snapshot, leases: Mapping[str, str],
         run_id: int, builder: str, token: int, why: str, now: float) -> Step | None:
    """The process running attempt `token` died (its worker saw the pool child go): re-run it
    now rather than when its lease ends. None if that attempt no longer holds the builder."""
    doc = InstanceDoc.load(graph, snap)
    run = doc.run(run_id)
    fld = lease_field(run_id, builder)
    value = leases.get(fld)
    if run is None or run.token(builder) != token or value is None \
            or parse_lease(value).token != token:
        return None
    step = new_step(k)
    reopened = doc.finished
    step.ops.add("EXPECT", k.lease, fld, value)
    m.lost(graph, k, snap.inc, run, builder, token, why, step, now)
    m.place(graph, k, snap.inc, doc, run, step, now)
    m.seal(graph, k, snap, reopened, doc, step, now)
    return step


def presence(snap: Snapshot) -> Presence:
    """Which data exist, as far as `snap` read them."""
    if snap.names is not None:
        return Presence(dict.fromkeys(snap.names, True), complete=True)
    return Presence(dict(snap.data))


def bump(k: Keys, snap: Snapshot) -> Ops:
    """A write that changes nothing but the state's version, so that every step decided from
    the state as it was fails its script. On an instance that does not exist it leaves a
    version behind for a minute (a submit creating it meanwhile keeps and persists it)."""
    ops = Ops(k.state, k.data)
    ops.hset(k.state, {"v": snap.version + 1})
    if not snap.exists:
        ops.add("EXPIRE", k.state, 60)
    return ops


def forget(m: Machine, k: Keys) -> Step:
    """The reconciler found only the index entry of an instance that is gone (deleted, or
    expired): drop it, fenced on the instance still not existing."""
    step = new_step(k)
    step.fx.watch = math.inf
    return step


def look(m: Machine, graph: Graph, k: Keys, snap: Snapshot, leases: Mapping[str, str],
         now: float) -> Step:
    """The reconciler's look at one instance. Re-sends builders whose message was lost, re-runs
    attempts whose lease ran out, closes runs left with nothing in flight and times the
    instance out at its deadline."""
    doc = InstanceDoc.load(graph, snap)
    reopened = doc.finished
    inc = snap.inc
    step = new_step(k)
    if doc.overdue(now):
        m.close(graph, k, inc, doc, step, now, "timed_out")
        doc.status = "timed_out"
        m.seal(graph, k, snap, reopened, doc, step, now)
        return step
    left = dict(leases)
    next_look = doc.deadline if doc.deadline is not None and doc.status == "open" \
        and not doc.finished else math.inf
    changed = False
    for run in doc.every_run():
        for builder, token in list(run.active.items()):
            fld = lease_field(run.id, builder)
            value = left.pop(fld, None)
            lease = parse_lease(value) if value is not None else None
            # Every lease this look relies on is expected unchanged: a claim made meanwhile
            # (which moves the lease, not the version) sends the look round again, instead of
            # the look putting the next look after the claimed attempt's lease.
            step.ops.add("EXPECT", k.lease, fld, value or "")
            if lease is not None and lease.token == token and lease.deadline > now:
                next_look = min(next_look, lease.deadline)
                continue
            changed = True
            if lease is None or lease.state == "q" or lease.token != token:
                # Dispatched but not started: the message was lost or never sent, or it is
                # still queued behind a backlog. Either way send it again, but back off per
                # resend so that a long backlog is not fed a copy every period.
                resends = lease.resends + 1 if lease is not None else 0
                wait = min(m.settings.dispatch_timeout * 2 ** resends, MAX_RESEND_WAIT)
                step.ops.hset(k.lease, {fld: queued_lease(token, now + wait, resends)})
                next_look = min(next_look, now + wait)
                step.sends.append(Dispatch(graph.key, k.instance_id, run.id, builder, token,
                                           version=graph.version, incarnation=inc,
                                           trace=run.trace))
            else:
                limit = graph.specs[builder].time_limit
                m.lost(graph, k, inc, run, builder, token,
                       f"its lease ran out (worker lost, or over its time_limit of {limit}s)",
                       step, now)
                next_look = min(next_look, now + m.settings.dispatch_timeout)
        if run.settled:
            m.place(graph, k, inc, doc, run, step, now)
            changed = True
    for orphan in sorted(left):  # leases of builders no run has active any more
        step.ops.add("HDEL", k.lease, orphan)
        changed = True
    if doc.open:
        step.fx.watch = next_look if next_look != math.inf else now + m.settings.dispatch_timeout
    m.seal(graph, k, snap, reopened, doc, step, now, write=changed)
    return step


def cancel(m: Machine, graph: Graph, k: Keys, snap: Snapshot, now: float) -> Step | None:
    """Nothing more runs; runs in flight end "cancelled"; further deltas are refused until a
    restart. None if the instance is not open."""
    doc = InstanceDoc.load(graph, snap)
    if not snap.exists or doc.status != "open":
        return None
    reopened = doc.finished
    step = new_step(k)
    m.close(graph, k, snap.inc, doc, step, now, "cancelled")
    doc.status = "cancelled"
    step.ops.log(k, m.settings.log_length, ev="cancel", inc=snap.inc, run=doc.next_run,
                 at=f"{now:.6f}", by=m.worker_name)
    m.seal(graph, k, snap, reopened, doc, step, now)
    return step


def restart(m: Machine, old: Graph, newest: Graph, k: Keys, snap: Snapshot,
            inputs: Mapping[str, bytes] | None, now: float, trace: str | None = None
            ) -> tuple[Step, int | None] | None:
    """Runs in flight end "cancelled" and the instance opens again on the newest version. With
    `inputs` (validated by the caller under `newest`) they start a new run at once; with None
    every datum is dropped and it waits for deltas. One step: no delta accepted meanwhile can
    be overwritten, and nothing is written unless all of it is. None if it does not exist."""
    if not snap.exists:
        return None
    doc = InstanceDoc.load(old, snap)
    step = new_step(k)
    m.close(old, k, snap.inc, doc, step, now, "cancelled")
    m.unpin(old.key, k, doc, step)
    doc.status, doc.completed, doc.deadline, doc.last = "open", False, None, ""
    if newest.workflow.deadline:
        doc.deadline = now + float(newest.workflow.deadline)
        m.index(k, step, doc.deadline)
    step.ops.log(k, m.settings.log_length, ev="restart", inc=snap.inc, run=doc.next_run,
                 at=f"{now:.6f}", by=m.worker_name)
    run: int | None = None
    if inputs is None:
        step.ops.add("DEL", k.data)
        snap = dataclasses.replace(snap, data={}, names=frozenset())
    elif inputs:
        m.pin(newest, k, doc, step)
        run = start_run(m, newest, k, snap.inc, doc, snap, inputs, None, step, now, trace)
    # The closed runs are gone from `doc`; seal as for a re-opened instance.
    m.seal(newest, k, snap, True, doc, step, now)
    return step, run


def delete(m: Machine, graph: Graph, k: Keys, snap: Snapshot, now: float) -> Step | None:
    """Runs in flight end "deleted" (their waiters wake), and every key of the instance goes.
    A later delta creates a new incarnation. None if it does not exist."""
    if not snap.exists:
        return None
    doc = InstanceDoc.load(graph, snap)
    step = new_step(k)
    m.close(graph, k, snap.inc, doc, step, now, "deleted")
    m.unpin(graph.key, k, doc, step)
    step.fx.watch = math.inf
    step.fx.listing = Listing("", now, InstanceDoc.brief(snap.doc)[0], snap.inc)
    for key in k.lasting:
        step.ops.add("DEL", key)
    return step
