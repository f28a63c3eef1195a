"""Running delivered attempts: claim, run the builder, commit its outcome, and run inline
the successor a commit claimed, for as long as the task's time budget allows. Each commit is
decided by `transitions.commit` and applied by one fenced script, decided again from a fresh
read when another step got there first.

These functions see the coordinator only through the `Runner` protocol: its registry, store,
machine, clock and ids, its observers and hooks, and what it does once a step applied.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from . import codec, faults, reads, transitions
from .errors import MessageRejected
from .fields import NeedMore, field_name
from .frontier import BuilderError
from .graph import Graph
from .hooks import HookInfo, Hooks
from .instance import InstanceDoc, Settings, UnknownVersion, lease_field, running_lease
from .invoke import Outcome, attempt, failed
from .layout import Keys, Snapshot
from .machine import Machine, Step, input_names
from .observe import Observer
from .registry import Registry
from .stores.redis import RedisStore, whole_fields

log = logging.getLogger("polaris_celery")
T = TypeVar("T")


def task_budget(time_limit: float) -> float:
    """The time a delivered task may take: its builder's time_limit, and as much again for
    successors run inline in it. Celery's soft time limit for the task is set to this."""
    return 2 * time_limit


class Runner(Protocol):
    """What running attempts needs of a coordinator."""

    registry: Registry
    store: RedisStore
    machine: Machine
    hooks: Hooks
    observer: Observer
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    ids: Callable[[], str]

    @property
    def settings(self) -> Settings: ...

    def retrying(self, fn: Callable[[], T]) -> T: ...

    def applied(self, k: Keys, inc: str, step: Step) -> None: ...


@dataclass(frozen=True)
class _Task:
    """One delivered task: its claim id, queue, worker name, and when its time is up."""

    claim: str
    queue: str | None
    by: str
    budget_ends: float


@dataclass
class _Claimed:
    """An attempt that holds its lease: what it needs to run and then commit."""

    graph: Graph
    keys: Keys
    run: int
    builder: str
    token: int
    snap: Snapshot
    raw: dict[str, bytes]


def execute(co: Runner, workflow: str, instance_id: str, run: int, builder: str, token: int,
            queue: str | None = None, worker: str | None = None, version: int = 1,
            incarnation: str = "") -> None:
    """Run one delivered attempt and every successor it may run inline, committing each.

    `worker` names who ran it in the instance's log (the Celery node name, by default
    host:pid). Raises UnknownVersion when this process does not have the instance's
    workflow version (the task adapter hands the message on to another worker)."""
    if workflow not in co.registry:
        raise MessageRejected(f"no builder {builder!r} in a workflow {workflow!r} here")
    if version not in co.registry.versions(workflow):
        raise UnknownVersion(f"{workflow} v{version} is not registered in this process")
    graph = co.registry.graph(workflow, version)
    if builder not in graph.specs:
        raise MessageRejected(f"no builder {builder!r} in workflow {workflow!r} v{version}")
    spec = graph.specs[builder]
    k = co.store.keys(workflow, instance_id)
    now = co.clock()
    task = _Task(claim=co.ids(), queue=queue,
                 by=f"{worker or socket.gethostname()}/{os.getpid()}",
                 budget_ends=now + task_budget(spec.time_limit))
    ends = now + spec.time_limit + co.settings.lease_grace
    data_names, run_names = input_names(graph, builder)
    want = reads.commit(graph, run, builder)  # read now, for a commit with nothing changed
    status, snap, raw = co.retrying(lambda: co.store.begin(
        k, incarnation, lease_field(run, builder), token,
        running_lease(token, ends, task.claim), ends, task.claim, data_names, run_names,
        run, sorted(reads.claim(graph, run, builder) | want.fields), sorted(want.data),
        want.whole))
    if status != "ok" or snap is None:
        log.info("polaris: skipped %s/%s run %s %s attempt %s: %s",
                 workflow, instance_id, run, builder, token, status)
        return
    claimed: _Claimed | None = _Claimed(graph, k, run, builder, token, snap, raw)
    while claimed is not None:
        claimed = _run_claimed(co, claimed, task)


def _run_claimed(co: Runner, c: _Claimed, task: _Task) -> _Claimed | None:
    graph, spec = c.graph, c.graph.specs[c.builder]
    if InstanceDoc.version_of(c.snap) != graph.version:
        return None
    fields = c.snap.fields
    if fields.get(field_name("a", c.run, c.builder)) != str(c.token):
        return None
    new = frozenset(n for n in spec.readable_names if field_name("n", c.run, n) in fields)
    started = co.clock()
    co.observer.started(graph.key, c.keys.instance_id, c.run, c.builder, c.token)  # observe
    try:
        inputs = codec.decode_many(graph, c.raw)
    except Exception as exc:
        out = failed(spec, Outcome(None, BuilderError(c.builder, type(exc).__name__, str(exc)),
                                   0.0), co.hooks,
                     HookInfo(graph.key, c.keys.instance_id, c.run, c.token))
    else:
        out = attempt(
            spec, inputs, new, workflow=graph.key, instance_id=c.keys.instance_id,
            run=c.run, attempt_no=c.token, hooks=co.hooks,
            max_bytes=co.settings.max_datum_bytes,
        )
    faults.strike("before_commit", faults.Attempt(graph.key, c.keys.instance_id, c.run,
                                                  c.builder, c.token, c.snap.inc))
    return _commit(co, c, out, started, task)


def _commit(co: Runner, c: _Claimed, out: Outcome, started: float, task: _Task
            ) -> _Claimed | None:
    graph, k = c.graph, c.keys
    # Names this commit, so a retry after a lost reply recognises it as already applied.
    once = f"{task.claim}/{c.run}/{c.builder}/{c.token}"
    want = reads.commit(graph, c.run, c.builder)
    # First from what the claim read (or what the step that claimed it wrote): if nothing
    # changed since, the commit costs one round trip; else it reads again, fenced as ever.
    seen: Snapshot | None = c.snap
    while True:
        snap = seen or co.retrying(functools.partial(co.store.view, k, want))[0]
        seen = None
        if InstanceDoc.version_of(snap) not in (0, graph.version) or snap.inc != c.snap.inc:
            _observe_finished(co, c, out, committed=False)  # observe
            return None  # deleted, or restarted on another version
        now = co.clock()

        def may_inline(b: str, now: float = now) -> bool:
            # Only if the successor's whole time_limit fits in what is left of the task's
            # budget (Celery's time limits count from the task's start), on this queue.
            spec = graph.specs[b]
            return spec.queue == task.queue and now + spec.time_limit <= task.budget_ends

        try:
            step = transitions.commit(
                co.machine, graph, k, snap, c.run, c.builder, c.token, out.raw,
                out.error, by=task.by, started=started, seconds=out.seconds, once=once,
                inline_claim=task.claim if co.settings.inline else None,
                may_inline=may_inline, now=now)
        except NeedMore as more:
            # From the claim's snapshot anything may be missing; from a read of `want`,
            # only what `want` lacked (grow insists on that, so no decision loops).
            want = reads.grow(want, more, strict=snap is not c.snap)
            continue
        if step is None:
            log.info("polaris: attempt %s of %s in %s run %s was superseded; not committed",
                     c.token, c.builder, k.member, c.run)
            _observe_finished(co, c, out, committed=False)  # observe
            return None
        # Redis errors are retried around this very step: if its write applied and only
        # the reply was lost, the retry meets the step's own mark ("done") and carries on
        # with what this step decided (its sends, its inline successor), never with a
        # step decided afresh from an older state.
        status, reply = co.retrying(functools.partial(
            faults.reply("commit", once, co.store.cas), step.ops, snap, k, step.fx,
            sleep=co.sleep))
        if status == "conflict":
            co.observer.conflict(k.workflow)  # observe
            continue
        faults.point("after_commit")
        co.observer.applied(k.workflow, step)  # observe
        _observe_finished(co, c, out, committed=True)  # observe
        co.applied(k, snap.inc, step)
        if step.inline is None:
            return None
        return _inline(co, c, step, snap, reply if status == "applied" else None)


def _inline(co: Runner, c: _Claimed, step: Step, snap: Snapshot, got: list[Any] | None
            ) -> _Claimed:
    """The successor this commit claimed, with its inputs (read back by the commit, or read
    again if that reply was lost) and what it needs of the run's state."""
    graph, k, inline = c.graph, c.keys, step.inline
    assert inline is not None
    data_names, run_names = input_names(graph, inline)
    if got is None:
        raw = co.store.read_data(k.workflow, k.instance_id, data_names)
        raw.update(co.store.read_run(k, snap.inc, c.run, run_names))
    else:
        raw = {n: v for n, v in zip(data_names, got[0], strict=False) if v is not None}
        raw.update({n: v for n, v in zip(run_names, got[1], strict=False) if v is not None})
    want = step.inline_want
    assert want is not None
    if got is None:  # the reply was lost: read what it would have said
        next_snap, _ = co.retrying(lambda: co.store.view(k, want))
    else:  # read by the very script that claimed it, after its writes
        fields = sorted(want.fields)
        data = sorted(want.data)
        values, known = (whole_fields(got[2]), None) if want.whole else (
            {f: x.decode() for f, x in zip(fields, got[2], strict=True) if x is not None},
            frozenset(fields))
        next_snap = Snapshot(snap.version + 1, step.doc, snap.inc, values, known,
                             {d: bool(x) for d, x in zip(data, got[3], strict=True)})
    return _Claimed(graph, k, c.run, inline, 1, next_snap, raw)


def _observe_finished(co: Runner, c: _Claimed, out: Outcome, committed: bool) -> None:  # observe
    co.observer.finished(c.graph.key, c.keys.instance_id, c.run, c.builder, c.token,
                           out, committed)
