"""The reconciler: one idempotent pass over the instances due for a look.

It re-sends builders that were dispatched but never started (a message lost, or never sent by a
worker that died between its commit and its send), fails attempts whose lease expired (a dead
worker, or a builder over its time_limit) so they are retried per their policy, closes runs left
with nothing in flight, and times out instances past their deadline. Every change is a fenced
compare-and-set, and only the process whose CAS won sends messages, so any number of workers may
run it at once (each worker does, every `reconcile_interval`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import lifecycle
from .frontier import BuilderError, RunState
from .instance import (
    Dispatch,
    InstanceDoc,
    UnknownVersion,
    lease_field,
    parse_lease,
    queued_lease,
)
from .stores.redis import Keys, Ops

if TYPE_CHECKING:
    from .coordinator import Coordinator

log = logging.getLogger("polaris_celery")

#: The longest wait between two re-sends of one queued builder (seconds).
MAX_RESEND_WAIT = 600.0


def reconcile(c: Coordinator, limit: int = 200) -> dict[str, int]:
    """One pass of the reconciler over instances due for a look. Safe to run anywhere, any
    number of times at once: every change is a fenced CAS, and only its winner sends."""
    counts = {"instances": 0, "resent": 0, "expired": 0, "closed": 0}
    now = time.time()
    for member in c.store.due(now, limit):
        workflow, _, instance_id = member.partition("/")
        if workflow not in c.registry:
            # Another app's workflow: look again later rather than finding it first in line
            # every pass (due() returns the oldest entries), which would starve the rest.
            c.store.reschedule(member, now + c.settings.reconcile_interval * 4)
            continue
        counts["instances"] += 1
        try:
            _reconcile_instance(c, workflow, c.store.keys(workflow, instance_id), counts)
        except UnknownVersion:
            # Pinned to a version this process lacks: a worker that has it reconciles it.
            c.store.reschedule(member, now + c.settings.reconcile_interval * 4)
        except Exception:
            log.exception("polaris: reconciling %s failed; will retry", member)
    return counts

def _reconcile_instance(c: Coordinator, workflow: str, k: Keys, counts: dict[str, int]
                        ) -> None:
    snap, _ = c.store.snapshot(k)
    leases = c.store.leases(k)
    version = InstanceDoc.version_of(snap)
    if version and version not in c.registry.versions(workflow):
        raise UnknownVersion(f"{workflow} v{version}")
    graph = c._graph(workflow, version)
    doc = InstanceDoc.load(graph, snap)
    now = time.time()
    ops = Ops(k.state, k.data)
    dispatches: list[Dispatch] = []
    failures: list[tuple[RunState, str, int, BuilderError]] = []
    next_look = float("inf")
    changed = False
    if doc.status == "open" and doc.deadline is not None and not doc.completed:
        if now >= doc.deadline:
            counts["timed_out"] = counts.get("timed_out", 0) + 1
            lifecycle.close(c, graph, k, doc, ops, now, "timed_out")
            doc.updated = now
            ops.hset(k.state, {"v": snap.version + 1, "doc": doc.dump()})
            c.store.cas(ops, snap.version)
            return
        next_look = doc.deadline
    for run in list(doc.runs.values()):
        for builder, token in list(run.active.items()):
            fld = lease_field(run.id, builder)
            value = leases.pop(fld, None)
            lease = parse_lease(value) if value is not None else None
            if lease is not None:
                if lease.token == token and lease.deadline > now:
                    next_look = min(next_look, lease.deadline)
                    continue
                ops.add("EXPECT", k.lease, fld, value)
            else:
                ops.add("EXPECT", k.lease, fld, "")
            changed = True
            if lease is None or lease.state == "q" or lease.token != token:
                # Dispatched but not started: the message was lost or never sent, or it is
                # still queued behind a backlog. Either way send it again, but back off per
                # resend so that a long backlog is not fed a copy every period.
                resends = lease.resends + 1 if lease is not None else 0
                wait = min(c.settings.dispatch_timeout * 2 ** resends, MAX_RESEND_WAIT)
                deadline = now + wait
                ops.hset(k.lease, {fld: queued_lease(token, deadline, resends)})
                next_look = min(next_look, deadline)
                dispatches.append(Dispatch(graph.key, k.instance_id, run.id, builder, token,
                                           version=graph.version))
                counts["resent"] += 1
            else:
                # Running past its lease: the worker died or the builder overran time_limit.
                counts["expired"] += 1
                ops.add("HDEL", k.lease, fld)
                limit = graph.specs[builder].time_limit
                err = BuilderError(builder, "LeaseExpired",
                                   f"attempt {token} held no live lease (worker lost, or "
                                   f"over its time_limit of {limit}s)")
                dispatches += c._failed_attempt(graph, k, run, builder, token, err, ops, now)
                failures.append((run, builder, token, err))
                ops.add("XADD", k.log, "MAXLEN", "~", c.settings.log_length, "*",
                        "ev", "builder", "run", run.id, "b", builder, "attempt", token,
                        "at", f"{now:.6f}", "secs", "0", "result", "error:LeaseExpired",
                        "by", c.worker_name)
        if run.settled:
            c._place(graph, k, doc, run, ops, now, empty_delta=False,
                        present=set(snap.names))
            counts["closed"] += 1
            changed = True
    for orphan in leases:  # leases of builders no run has active any more
        ops.add("HDEL", k.lease, orphan)
        changed = True
    if doc.runs or next_look != float("inf"):
        when = next_look if next_look != float("inf") else now + c.settings.dispatch_timeout
        ops.add("ZADD", c.store.index_key, f"{when:.3f}", k.member)
    else:
        ops.add("ZREM", c.store.index_key, k.member)
    if changed:
        doc.updated = now
        ops.hset(k.state, {"v": snap.version + 1, "doc": doc.dump()})
    ok, _ = c.store.cas(ops, snap.version)
    if ok:
        for run, builder, token, err in failures:
            c._log_failure(k, run, builder, token, err)
    if ok and dispatches:
        c.send(dispatches)
