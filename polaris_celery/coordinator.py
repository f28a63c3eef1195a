"""The distributed executor's loop around the instance state machine. No Celery here.

Every change to an instance follows one pattern:

    1. read the state (the same round trip that claims a builder and loads its inputs),
    2. decide with a pure transition (`transitions`) what changes and what must be sent,
    3. apply all of it with cas.lua, which refuses if the state moved on meanwhile,
    4. on refusal recompute from the newer state; on success send the messages.

Because the decision is checked against the version and incarnation it was made from, a stale
attempt, a re-delivered message, a second reconciler or anything from before a delete can never
apply; because the successors' leases are written in the same atomic step as the datum (an
outbox), a worker that dies before it sends them loses nothing: the reconciler finds the
overdue leases and sends again. Time comes from an injected clock and ids from an injected
source, so the simulator (tests/sim) can drive all of it deterministically.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from . import codec, faults, lifecycle, reads, recovery, transitions, waiting
from .errors import (
    ConfigurationError,
    DeltaConflict,
    InvalidInput,
    MessageRejected,
    UnknownWorkflow,
)
from .frontier import BuilderError, NeedMore, field_name
from .graph import Graph
from .hooks import NO_HOOKS, HookInfo, Hooks
from .instance import Dispatch, InstanceDoc, Settings, UnknownVersion, lease_field, running_lease
from .invoke import Outcome, attempt, failed
from .layout import Keys, Snapshot
from .machine import Machine, Step, input_names
from .observe import Observer, Observers  # observe
from .registry import Registry, check_instance_id
from .result import RunRef, RunResult
from .stores.redis import RedisStore, retry_unavailable, whole_fields

log = logging.getLogger("polaris_celery")

MAX_DELTA_ID = 200
T = TypeVar("T")


def task_budget(time_limit: float) -> float:
    """The time a delivered task may take: its builder's time_limit, and as much again for
    successors run inline in it. Celery's soft time limit for the task is set to this."""
    return 2 * time_limit


def new_id() -> str:
    """A claim or incarnation id: time-ordered (so incarnations sort by age), then random."""
    return f"{int(time.time() * 1000):x}{uuid.uuid4().hex[:8]}"


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


class Coordinator:
    """Submits deltas, executes claimed attempts and reconciles, for one registry on Redis.

    `clock` (seconds, like time.time), `sleep`, `ids` and `rng` (where a reconciler pass
    starts) are injectable, so a simulation can drive it deterministically."""

    def __init__(
        self,
        registry: Registry,
        send: Callable[[Sequence[Dispatch]], None],
        settings: Settings | None = None,
        *,
        hooks: Hooks = NO_HOOKS,
        worker_name: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        ids: Callable[[], str] = new_id,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(registry.store, RedisStore):
            raise ConfigurationError(
                f"the distributed executor needs a registry on a RedisStore, got {registry.store!r}"
            )
        self.registry = registry
        self.store: RedisStore = registry.store
        self.send = send
        self.hooks = hooks
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self.sleep = sleep
        self.ids = ids
        self.rng = rng or random.Random()
        self.settings = settings or Settings()
        self.observer: Observer = Observers()  # observe: metrics, traces, Flower events

    @property
    def settings(self) -> Settings:
        return self.machine.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self.machine = Machine(settings, self.worker_name)

    def _retrying(self, fn: Callable[[], T]) -> T:
        return retry_unavailable(fn, sleep=self.sleep)

    # -- producers ----------------------------------------------------------------------------

    def submit(self, workflow: str, instance_id: str, data: Iterable[object],
               delta_id: str | None = None, deadline: float | None = None) -> RunRef:
        """Store a delta, mark and send its runnable builders; returns the run.

        With a `delta_id` the same delta applies once however often it is submitted: a repeat
        returns the run of the first submission (a different delta under the same id raises
        DeltaConflict). `deadline` (seconds from now) sets the instance's deadline, after which
        nothing more runs and it is marked timed out; without it a new instance takes its
        workflow's `deadline`, if any.
        """
        newest = self.registry.graph(workflow)
        check_instance_id(instance_id)
        if delta_id is not None and (
            not isinstance(delta_id, str) or not 0 < len(delta_id) <= MAX_DELTA_ID
        ):
            raise InvalidInput(f"delta_id must be a string of 1 to {MAX_DELTA_ID} characters")
        if deadline is not None and not (isinstance(deadline, (int, float)) and deadline > 0):
            raise InvalidInput(f"deadline must be a positive number of seconds, got {deadline!r}")
        data = list(data)
        # Validated before anything is read or stored; re-encoded below only for an instance
        # pinned to an older version.
        newest_delta = codec.encode_delta(newest, data, self.settings.max_datum_bytes)
        digest = _digest(newest_delta)
        k = self.store.keys(workflow, instance_id)
        want = reads.submit(newest, newest_delta)
        while True:
            snap, seen = self.store.view(k, want, delta_id)
            if seen is not None:
                return self._seen(k, snap, delta_id, seen, digest)
            doc = self._load(workflow, snap)[1]
            graph = self._graph(workflow, doc.version) if doc.pinned else newest
            delta = newest_delta if graph is newest else codec.encode_delta(
                graph, data, self.settings.max_datum_bytes)
            inc = snap.inc if snap.exists else self.ids()
            try:
                step, run = transitions.submit(
                    self.machine, graph, k, snap, doc, inc, delta,
                    "{run}|" + digest if delta_id is not None else None, delta_id, deadline,
                    self.clock())
            except NeedMore as more:
                want = reads.grow(want, more)
                continue
            status, _ = self.store.cas(step.ops, snap, k, step.fx, sleep=self.sleep)
            if status == "retired":
                # Another process retired this version: forget it here too, and go again
                # with the newest left (or fail: nothing runs the workflow any more).
                self.registry.unregister(workflow, graph.version)
                newest = self.registry.graph(workflow)
                newest_delta = codec.encode_delta(newest, data, self.settings.max_datum_bytes)
                continue
            if status == "applied":
                self.observer.applied(workflow, step)  # observe
                self._started(k, RunRef(run, inc), data, step)  # hooks, then send
                return RunRef(run, inc)
            self.observer.conflict(workflow)  # observe

    @staticmethod
    def _seen(k: Keys, snap: Snapshot, delta_id: str | None, seen: str, digest: str) -> RunRef:
        run, _, was = seen.partition("|")
        if was and was != digest:
            raise DeltaConflict(f"delta_id {delta_id!r} of {k.member} was first used for "
                                f"run {run} with other data; a delta_id names one delta")
        return RunRef(int(run), snap.inc)

    def result(self, workflow: str, instance_id: str, ref: RunRef, timeout: float) -> RunResult:
        """Wait (blocking on Redis, not polling) until the run settles and return its result."""
        self.registry.graph(workflow)
        return waiting.result(self.store, self._graph, workflow, instance_id, ref, timeout)

    async def result_async(self, workflow: str, instance_id: str, ref: RunRef, timeout: float
                           ) -> RunResult:
        """`result` for asyncio code: waits on an asyncio Redis connection, blocking no thread."""
        self.registry.graph(workflow)
        return await waiting.result_async(self.store, self._graph, workflow, instance_id, ref,
                                          timeout)

    # -- workers ------------------------------------------------------------------------------

    def execute(self, workflow: str, instance_id: str, run: int, builder: str, token: int,
                queue: str | None = None, worker: str | None = None, version: int = 1,
                incarnation: str = "") -> None:
        """Run one delivered attempt and every successor it may run inline, committing each.

        `worker` names who ran it in the instance's log (the Celery node name, by default
        host:pid). Raises UnknownVersion when this process does not have the instance's
        workflow version (the task adapter hands the message on to another worker)."""
        if workflow not in self.registry:
            raise MessageRejected(f"no builder {builder!r} in a workflow {workflow!r} here")
        if version not in self.registry.versions(workflow):
            raise UnknownVersion(f"{workflow} v{version} is not registered in this process")
        graph = self.registry.graph(workflow, version)
        if builder not in graph.specs:
            raise MessageRejected(f"no builder {builder!r} in workflow {workflow!r} v{version}")
        spec = graph.specs[builder]
        k = self.store.keys(workflow, instance_id)
        now = self.clock()
        task = _Task(claim=self.ids(), queue=queue,
                     by=f"{worker or socket.gethostname()}/{os.getpid()}",
                     budget_ends=now + task_budget(spec.time_limit))
        ends = now + spec.time_limit + self.settings.lease_grace
        data_names, run_names = input_names(graph, builder)
        want = reads.commit(graph, run, builder)  # read now, for a commit with nothing changed
        status, snap, raw = self._retrying(lambda: self.store.begin(
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
            claimed = self._run_claimed(claimed, task)

    def _run_claimed(self, c: _Claimed, task: _Task) -> _Claimed | None:
        graph, spec = c.graph, c.graph.specs[c.builder]
        if InstanceDoc.version_of(c.snap) != graph.version:
            return None
        fields = c.snap.fields
        if fields.get(field_name("a", c.run, c.builder)) != str(c.token):
            return None
        new = frozenset(n for n in spec.readable_names if field_name("n", c.run, n) in fields)
        started = self.clock()
        self.observer.started(graph.key, c.keys.instance_id, c.run, c.builder, c.token)  # observe
        try:
            inputs = codec.decode_many(graph, c.raw)
        except Exception as exc:
            out = failed(spec, Outcome(None, BuilderError(c.builder, type(exc).__name__, str(exc)),
                                       0.0), self.hooks,
                         HookInfo(graph.key, c.keys.instance_id, c.run, c.token))
        else:
            out = attempt(
                spec, inputs, new, workflow=graph.key, instance_id=c.keys.instance_id,
                run=c.run, attempt_no=c.token, hooks=self.hooks,
                max_bytes=self.settings.max_datum_bytes,
            )
        faults.strike("before_commit", faults.Attempt(graph.key, c.keys.instance_id, c.run,
                                                      c.builder, c.token, c.snap.inc))
        return self._commit(c, out, started, task)

    def _commit(self, c: _Claimed, out: Outcome, started: float, task: _Task
                ) -> _Claimed | None:
        graph, k = c.graph, c.keys
        # Names this commit, so a retry after a lost reply recognises it as already applied.
        once = f"{task.claim}/{c.run}/{c.builder}/{c.token}"
        want = reads.commit(graph, c.run, c.builder)
        # First from what the claim read (or what the step that claimed it wrote): if nothing
        # changed since, the commit costs one round trip; else it reads again, fenced as ever.
        seen: Snapshot | None = c.snap
        while True:
            snap = seen or self._retrying(functools.partial(self.store.view, k, want))[0]
            seen = None
            if InstanceDoc.version_of(snap) not in (0, graph.version) or snap.inc != c.snap.inc:
                self._observe_finished(c, out, committed=False)  # observe
                return None  # deleted, or restarted on another version
            now = self.clock()

            def may_inline(b: str, now: float = now) -> bool:
                # Only if the successor's whole time_limit fits in what is left of the task's
                # budget (Celery's time limits count from the task's start), on this queue.
                spec = graph.specs[b]
                return spec.queue == task.queue and now + spec.time_limit <= task.budget_ends

            try:
                step = transitions.commit(
                    self.machine, graph, k, snap, c.run, c.builder, c.token, out.raw,
                    out.error, by=task.by, started=started, seconds=out.seconds, once=once,
                    inline_claim=task.claim if self.settings.inline else None,
                    may_inline=may_inline, now=now)
            except NeedMore as more:
                # From the claim's snapshot anything may be missing; from a read of `want`,
                # only what `want` lacked (grow insists on that, so no decision loops).
                want = reads.grow(want, more, strict=snap is not c.snap)
                continue
            if step is None:
                log.info("polaris: attempt %s of %s in %s run %s was superseded; not committed",
                         c.token, c.builder, k.member, c.run)
                self._observe_finished(c, out, committed=False)  # observe
                return None
            # Redis errors are retried around this very step: if its write applied and only
            # the reply was lost, the retry meets the step's own mark ("done") and carries on
            # with what this step decided (its sends, its inline successor), never with a
            # step decided afresh from an older state.
            status, reply = self._retrying(functools.partial(
                faults.reply("commit", once, self.store.cas), step.ops, snap, k, step.fx,
                sleep=self.sleep))
            if status == "conflict":
                self.observer.conflict(k.workflow)  # observe
                continue
            faults.point("after_commit")
            self.observer.applied(k.workflow, step)  # observe
            self._observe_finished(c, out, committed=True)  # observe
            self._log_failures(k, step)
            self._settled(k, snap.inc, step)
            if step.sends:
                self.send(step.sends)
            if step.inline is None:
                return None
            return self._inline(c, step, snap, reply if status == "applied" else None)

    def _inline(self, c: _Claimed, step: Step, snap: Snapshot, got: list[Any] | None
                ) -> _Claimed:
        """The successor this commit claimed, with its inputs (read back by the commit, or read
        again if that reply was lost) and what it needs of the run's state."""
        graph, k, inline = c.graph, c.keys, step.inline
        assert inline is not None
        data_names, run_names = input_names(graph, inline)
        if got is None:
            raw = self.store.read_data(k.workflow, k.instance_id, data_names)
            raw.update(self.store.read_run(k, snap.inc, c.run, run_names))
        else:
            raw = {n: v for n, v in zip(data_names, got[0], strict=False) if v is not None}
            raw.update({n: v for n, v in zip(run_names, got[1], strict=False) if v is not None})
        want = step.inline_want
        assert want is not None
        if got is None:  # the reply was lost: read what it would have said
            next_snap, _ = self._retrying(lambda: self.store.view(k, want))
        else:  # read by the very script that claimed it, after its writes
            fields = sorted(want.fields)
            data = sorted(want.data)
            values, known = (whole_fields(got[2]), None) if want.whole else (
                {f: x.decode() for f, x in zip(fields, got[2], strict=True) if x is not None},
                frozenset(fields))
            next_snap = Snapshot(snap.version + 1, step.doc, snap.inc, values, known,
                                 {d: bool(x) for d, x in zip(data, got[3], strict=True)})
        return _Claimed(graph, k, c.run, inline, 1, next_snap, raw)

    def _observe_finished(self, c: _Claimed, out: Outcome, committed: bool) -> None:  # observe
        self.observer.finished(c.graph.key, c.keys.instance_id, c.run, c.builder, c.token,
                               out, committed)

    def _log_failures(self, k: Keys, step: Step) -> None:
        for run, builder, token, error in step.failures:
            if run.token(builder) is not None:  # re-dispatched
                log.warning("polaris: %s in %s run %s: attempt %s %s (%s: %s); running it "
                            "again", builder, k.member, run.id, token,
                            "lost" if error.type == "AttemptLost" else "failed",
                            error.type, error.message)
            else:
                log.error("polaris: %s in %s run %s failed for good after %s attempt(s): %s: "
                          "%s", builder, k.member, run.id, token, error.type, error.message)

    def _started(self, k: Keys, ref: RunRef, data: list[object], step: Step) -> None:
        """A submitted run was stored: its before_run hook (and after_run if it settled at once),
        then its messages, sent even if a strict hook raised (the run exists either way)."""
        try:
            self.hooks.call("before_run", data, info=HookInfo(k.workflow, k.instance_id, ref.run))
        finally:
            self._settled(k, ref.incarnation, step)
            if step.sends:
                self.send(step.sends)

    def _settled(self, k: Keys, inc: str, step: Step) -> None:
        waiting.after_runs(self.store, self._graph, self.hooks, k, inc, step.settled)

    def lose(self, workflow: str, instance_id: str, run: int, builder: str, token: int,
             incarnation: str, why: str) -> bool:
        """Attempt `token` died with its process (the worker saw its pool child go): re-run it
        now, without spending a retry. False if that attempt no longer holds the builder."""
        if workflow not in self.registry:
            return False
        k = self.store.keys(workflow, instance_id)

        def decide(graph: Graph, snap: Snapshot) -> Step | None:
            if snap.inc != incarnation or not snap.exists:
                return None
            return transitions.lose(self.machine, graph, k, snap, self.store.leases(k), run,
                                    builder, token, why, self.clock())

        try:
            return self.change(workflow, instance_id, decide) is not None
        except UnknownWorkflow:
            return False

    # -- shared steps -------------------------------------------------------------------------

    def _graph(self, workflow: str, version: int) -> Graph:
        """The graph of `version` (0: the newest), or a clear error naming what is missing."""
        if not version:
            return self.registry.graph(workflow)
        if version not in self.registry.versions(workflow):
            raise UnknownWorkflow(f"{workflow} v{version} (the instance is pinned to it, and "
                                  "this process has not registered it)")
        return self.registry.graph(workflow, version)

    def _load(self, workflow: str, snap: Snapshot) -> tuple[Graph, InstanceDoc]:
        """The document, parsed with the graph of the version it is pinned to (a finished
        instance is pinned to none, and its next delta starts it on the newest)."""
        graph = self._graph(workflow, InstanceDoc.version_of(snap))
        return graph, InstanceDoc.load(graph, snap)

    # -- recovery and the life of an instance ------------------------------------------------

    def reconcile(self, limit: int = 200) -> dict[str, int]:
        """One reconciler pass; safe anywhere, any number of times at once."""
        return recovery.reconcile(self._look, self.store, self.registry, self.clock(),
                                  limit, self.settings.reconcile_interval, self.rng)

    def _look(self, workflow: str, instance_id: str, seen: float, counts: dict[str, int]
              ) -> None:
        lifecycle.look(self, workflow, instance_id, seen, counts)

    def change(self, workflow: str, instance_id: str,
               decide: Callable[[Graph, Snapshot], Step | None], seen: float | None = None
               ) -> Step | None:
        """Apply one transition under the fence: read, `decide`, apply, and on a conflict
        decide again from the newer state. Returns the step that applied (its messages sent),
        or None if `decide` found nothing to do. `seen`: the index score a reconciler read."""
        k = self.store.keys(workflow, instance_id)
        while True:
            snap, _ = self.store.snapshot(k)
            graph = self._graph(workflow, InstanceDoc.version_of(snap))
            step = decide(graph, snap)  # a whole read: it never needs more
            if step is None:
                return None
            status, _ = self.store.cas(step.ops, snap, k, step.fx, seen, self.sleep)
            if status == "conflict":
                self.observer.conflict(workflow)  # observe
            if status == "applied":
                self.observer.applied(workflow, step)  # observe
                self._log_failures(k, step)
                self._settled(k, snap.inc, step)
                if step.sends:
                    self.send(step.sends)
                return step

    def cancel(self, workflow: str, instance_id: str) -> bool:
        return lifecycle.cancel(self, workflow, instance_id)

    def restart(self, workflow: str, instance_id: str, keep_data: bool = True
                ) -> RunRef | None:
        return lifecycle.restart(self, workflow, instance_id, keep_data)

    def delete(self, workflow: str, instance_id: str) -> None:
        lifecycle.delete(self, workflow, instance_id)

    def retire(self, workflow: str, version: int) -> None:
        lifecycle.retire(self, workflow, version)

    cancel.__doc__ = lifecycle.cancel.__doc__
    restart.__doc__ = lifecycle.restart.__doc__
    delete.__doc__ = lifecycle.delete.__doc__
    retire.__doc__ = lifecycle.retire.__doc__


def _digest(delta: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(delta):
        h.update(name.encode() + b"\0" + delta[name] + b"\0")
    return h.hexdigest()[:32]


__all__ = ["Coordinator", "Dispatch", "InstanceDoc", "RunRef", "Settings", "UnknownVersion"]
