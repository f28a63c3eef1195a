"""The distributed state machine: submit a delta, run one attempt, reconcile. No Celery here.

Each instance's coordination state is one JSON document (`InstanceDoc`: its active runs, each a
`RunState` from the shared core) plus a lease per dispatched builder. Every step follows one
pattern:

    1. read the document (the same round trip that claims a builder and loads its inputs),
    2. decide in Python with the shared core what changes and what must be dispatched,
    3. apply all of it with cas.lua, which refuses if the document moved on meanwhile,
    4. on refusal recompute from the newer document; on success send the messages.

Because the decision is checked against the version it was made from, a stale attempt, a
re-delivered message or a second reconciler can never commit; because the successors' leases
are written in the same atomic step as the datum (an outbox), a worker that dies before it sends
them loses nothing: the reconciler finds the overdue leases and sends again.

A hop costs two Redis round trips when it goes through the broker (claim+load, commit) and one
when the only successor runs inline in the same worker (the commit claims it and returns its
inputs).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import codec, faults, lifecycle, recovery
from .errors import (
    BuilderFailed,
    ConfigurationError,
    InstanceClosed,
    InvalidInput,
    MessageRejected,
    UnknownWorkflow,
    WaitTimeout,
)
from .frontier import BuilderError, RunState
from .graph import Graph
from .instance import (
    Dispatch,
    InstanceDoc,
    Settings,
    UnknownVersion,
    lease_field,
    queued_lease,
    running_lease,
)
from .invoke import AfterHook, BeforeHook, Outcome, attempt
from .registry import Registry, check_instance_id
from .result import RunResult
from .stores.redis import Keys, Ops, RedisStore, Snapshot, retry_unavailable

log = logging.getLogger("polaris_celery")

MAX_DELTA_ID = 200


def task_budget(time_limit: float) -> float:
    """The time a delivered task may take: its builder's time_limit, and as much again for
    successors run inline in it. Celery's soft time limit for the task is set to this."""
    return 2 * time_limit


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
    """Submits deltas, executes claimed attempts and reconciles, for one registry on Redis."""

    def __init__(
        self,
        registry: Registry,
        send: Callable[[Sequence[Dispatch]], None],
        settings: Settings | None = None,
        *,
        before: BeforeHook | None = None,
        after: AfterHook | None = None,
        worker_name: str | None = None,
    ) -> None:
        if not isinstance(registry.store, RedisStore):
            raise ConfigurationError(
                f"the distributed executor needs a registry on a RedisStore, got {registry.store!r}"
            )
        self.registry = registry
        self.store: RedisStore = registry.store
        self.send = send
        self.settings = settings or Settings()
        self.before = before
        self.after = after
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"

    # -- producers ----------------------------------------------------------------------------

    def submit(
        self,
        workflow: str,
        instance_id: str,
        data: Iterable[object],
        delta_id: str | None = None,
        deadline: float | None = None,
    ) -> int:
        """Store a delta, mark and send its runnable builders; returns the run number.

        With a `delta_id` the same delta applies once however often it is submitted: a repeat
        returns the run of the first submission. `deadline` (seconds from now) sets the
        instance's deadline, after which nothing more runs and it is marked timed out; without
        it a new instance takes its workflow's `deadline`, if any.
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
        k = self.store.keys(workflow, instance_id)
        while True:
            snap, seen = self.store.snapshot(k, delta_id)
            if seen is not None:
                return seen
            _, doc = self._load(workflow, snap)
            now = time.time()
            if doc.status != "open":
                raise InstanceClosed(f"{workflow}/{instance_id} was {doc.status.replace('_', ' ')}"
                                     "; restart it to send it data again")
            if doc.deadline is not None and now >= doc.deadline:
                raise InstanceClosed(f"{workflow}/{instance_id} passed its deadline")
            graph = self._graph(workflow, doc.version) if doc.pinned else newest
            delta = newest_delta if graph is newest else codec.encode_delta(
                graph, data, self.settings.max_datum_bytes)
            lasting = {n: v for n, v in delta.items() if n not in graph.transients}
            transient = {n: v for n, v in delta.items() if n in graph.transients}
            ops = Ops(k.state, k.data)
            if doc.version != graph.version:
                if doc.version:
                    ops.add("SREM", self.store.live_key(workflow, doc.version), instance_id)
                ops.add("SADD", self.store.live_key(workflow, graph.version), instance_id)
                doc.version = graph.version
            if deadline is not None:
                doc.deadline = now + deadline
            elif not doc.created and graph.workflow.deadline:
                doc.deadline = now + float(graph.workflow.deadline)
            if doc.deadline is not None:
                self._index(k, ops, doc.deadline)
            doc.next_run += 1
            doc.created = doc.created or now
            doc.updated = now
            present = snap.names | set(delta)
            run, ready = RunState.start(
                graph, doc.next_run, delta, present, started=now, delta_id=delta_id
            )
            if delta:
                doc.completed = False  # a new delta re-opens a completed instance
            ops.hset(k.data, lasting)
            ops.hset(k.run(run.id), transient)
            if delta_id is not None:
                ops.hset(k.deltas, {delta_id: run.id})
            if self.settings.retention is not None:
                for key in k.lasting:
                    ops.add("PERSIST", key)
            dispatches, _ = self._dispatch(graph, k, run, ready, ops, now)
            ops.add("XADD", k.log, "MAXLEN", "~", self.settings.log_length, "*",
                    "ev", "delta", "run", run.id, "data", ",".join(sorted(delta)),
                    "at", f"{now:.6f}", "by", self.worker_name)
            self._place(graph, k, doc, run, ops, now, empty_delta=not delta,
                        present=present)
            ops.hset(k.state, {"v": snap.version + 1, "doc": doc.dump()})
            ok, _ = self.store.cas(ops, snap.version)
            if ok:
                if dispatches:
                    self.send(dispatches)
                return run.id

    def result(self, workflow: str, instance_id: str, run: int, timeout: float) -> RunResult:
        """Wait (blocking on Redis, not polling) until `run` settles and return its result."""
        self.registry.graph(workflow)
        k = self.store.keys(workflow, instance_id)
        deadline = time.monotonic() + timeout
        while True:
            # The wake token is pushed in the same atomic step as the outcome: wait for it
            # first (returns at once for a settled run), then read. Two round trips.
            self.store.wait_wake(k, run, max(deadline - time.monotonic(), 0.01))
            outcome, raw = self.store.run_outcome(k, run)
            if outcome is not None:
                return self._to_result(workflow, instance_id, json.loads(outcome), raw)
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"run {run} of {workflow}/{instance_id} did not settle within {timeout}s"
                )

    async def result_async(
        self, workflow: str, instance_id: str, run: int, timeout: float
    ) -> RunResult:
        """`result` for asyncio code: waits on an asyncio Redis connection, blocking no thread."""
        self.registry.graph(workflow)
        k = self.store.keys(workflow, instance_id)
        deadline = time.monotonic() + timeout
        async with self.store.async_client() as client:
            while True:
                left = max(deadline - time.monotonic(), 0.01)
                await client.blmove(k.wake(run), k.wake(run), left, "LEFT", "RIGHT")
                got = await client.hgetall(k.run(run))
                outcome = got.pop(b"_outcome", None)
                if outcome is not None:
                    raw = {f.decode(): v for f, v in got.items() if not f.startswith(b"_")}
                    return self._to_result(workflow, instance_id, json.loads(outcome), raw)
                if time.monotonic() >= deadline:
                    raise WaitTimeout(
                        f"run {run} of {workflow}/{instance_id} did not settle within {timeout}s"
                    )

    def _to_result(
        self, workflow: str, instance_id: str, outcome: dict[str, Any], raw: dict[str, bytes]
    ) -> RunResult:
        graph = self._graph(workflow, int(outcome.get("version", 0)))
        data = {n: codec.decode(graph, n, raw[n]) for n in outcome["produced"] if n in raw}
        result = RunResult(
            workflow=graph.key, instance_id=instance_id, run=outcome["run"],
            status=outcome["status"], completed=outcome["completed"], data=data,
            error=outcome.get("error"),
        )
        err = outcome.get("error")
        if err:
            raise BuilderFailed(err["builder"], err["type"], err["message"], result)
        return result

    # -- workers ------------------------------------------------------------------------------

    def execute(self, workflow: str, instance_id: str, run: int, builder: str, token: int,
                queue: str | None = None, worker: str | None = None, version: int = 1) -> None:
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
        now = time.time()
        task = _Task(claim=uuid.uuid4().hex[:16], queue=queue,
                     by=f"{worker or socket.gethostname()}/{os.getpid()}",
                     budget_ends=now + task_budget(spec.time_limit))
        lease = running_lease(token, now + spec.time_limit + self.settings.lease_grace,
                              task.claim)
        status, snap, raw = retry_unavailable(lambda: self.store.begin(
            k, lease_field(run, builder), token, lease, task.claim,
            *self._input_names(graph, builder), run,
        ))
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
        run_state = InstanceDoc.load(graph, c.snap).runs.get(c.run)
        if run_state is None or run_state.active.get(c.builder) != c.token:
            return None
        new = frozenset(n for n in spec.readable_names if n in run_state.new)
        started = time.time()
        try:
            inputs = codec.decode_many(graph, c.raw)
        except Exception as exc:
            out = Outcome(None, BuilderError(c.builder, type(exc).__name__, str(exc)), 0.0)
        else:
            out = attempt(
                spec, inputs, new, workflow=graph.key, instance_id=c.keys.instance_id,
                run=c.run, attempt_no=c.token, before=self.before, after=self.after,
            )
        faults.point("before_commit")
        return retry_unavailable(lambda: self._commit(c, out, started, task))

    def _commit(self, c: _Claimed, out: Outcome, started: float, task: _Task
                ) -> _Claimed | None:
        graph, k = c.graph, c.keys
        spec = graph.specs[c.builder]
        snap = c.snap
        produced_raw = codec.encode(out.produced) if out.produced is not None else None
        # Names this commit, so a retry after a lost reply recognises it as already applied.
        op = f"{task.claim}/{c.run}/{c.builder}/{c.token}"
        while True:
            if InstanceDoc.version_of(snap) != graph.version:
                return None  # the instance was deleted or restarted on another version
            doc = InstanceDoc.load(graph, snap)
            run = doc.runs.get(c.run)
            if run is None or run.active.get(c.builder) != c.token:
                if doc.status != "open" and out.produced is not None and produced_raw:
                    self.store.record_late(k, spec.produces_name, produced_raw, {
                        "ev": "late", "run": c.run, "b": c.builder, "attempt": c.token,
                        "at": f"{started:.6f}", "secs": f"{out.seconds:.6f}",
                        "result": spec.produces_name, "by": task.by})
                log.info("polaris: attempt %s of %s in %s run %s was superseded; not committed",
                         c.token, c.builder, k.member, c.run)
                return None
            now = time.time()
            doc.updated = now
            ops = Ops(k.state, k.data)
            ops.add("HDEL", k.lease, lease_field(c.run, c.builder))
            present = set(snap.names) | (run.new & graph.transients)
            dispatches: list[Dispatch] = []
            if out.error is None:
                name = spec.produces_name if out.produced is not None else None
                if name is not None and produced_raw is not None:
                    if name not in graph.transients:
                        ops.hset(k.data, {name: produced_raw})
                    ops.hset(k.run(c.run), {name: produced_raw})
                    present.add(name)
                ready = run.finished(graph, c.builder, name, present)
                result = name or "-"
            else:
                dispatches += self._failed_attempt(graph, k, run, c.builder, c.token,
                                                   out.error, ops, now)
                ready = []
                result = f"error:{out.error.type}"
            # Inline only if the successor's whole time_limit fits in what is left of the task's
            # budget: Celery's time limits count from the task's start, not the successor's.
            allow_inline = (self.settings.inline and len(ready) == 1
                            and graph.specs[ready[0]].queue == task.queue
                            and now + graph.specs[ready[0]].time_limit <= task.budget_ends)
            sent, inline = self._dispatch(graph, k, run, ready, ops, now,
                                          inline_claim=task.claim if allow_inline else None)
            dispatches += sent
            ops.add("XADD", k.log, "MAXLEN", "~", self.settings.log_length, "*",
                    "ev", "builder", "run", c.run, "b", c.builder, "attempt", c.token,
                    "at", f"{started:.6f}", "secs", f"{out.seconds:.6f}", "result", result,
                    "by", task.by)
            self._place(graph, k, doc, run, ops, now, empty_delta=False, present=present)
            new_doc = doc.dump()
            ops.hset(k.state, {"v": snap.version + 1, "doc": new_doc, "op": op})
            ok, reply = self.store.cas(ops, snap.version)
            reads: list[Any] | None = None
            if ok:
                assert isinstance(reply, list)
                reads = reply
            else:
                assert isinstance(reply, Snapshot)
                if reply.op != op or reply.version != snap.version + 1:
                    snap = reply
                    continue
                # Ours, applied, but its reply was lost: carry on as applied.
            faults.point("after_commit")
            if out.error is not None:
                self._log_failure(k, run, c.builder, c.token, out.error)
            if dispatches:
                self.send(dispatches)
            if inline is None:
                return None
            names = self._input_names(graph, inline)
            if reads is None:  # the reads went with the lost reply: read them again
                raw = self.store.read_data(k.workflow, k.instance_id, names[0])
                raw.update(self.store.read_run(k, c.run, names[1]))
            else:
                raw = {n: v for n, v in zip(names[0], reads[0], strict=False) if v is not None}
                raw.update({n: v for n, v in zip(names[1], reads[1], strict=False)
                            if v is not None})
            next_snap = Snapshot(snap.version + 1, new_doc, present - graph.transients, op)
            return _Claimed(graph, k, c.run, inline, 1, next_snap, raw)

    # -- shared steps -------------------------------------------------------------------------

    @staticmethod
    def _input_names(graph: Graph, builder: str) -> tuple[list[str], list[str]]:
        names = sorted(graph.specs[builder].readable_names)
        return ([n for n in names if n not in graph.transients],
                [n for n in names if n in graph.transients])

    def _dispatch(
        self, graph: Graph, k: Keys, run: RunState, ready: list[str], ops: Ops, now: float,
        *, inline_claim: str | None = None,
    ) -> tuple[list[Dispatch], str | None]:
        """Mark `ready` builders dispatched (attempt 1) with their leases, in `ops`.

        With `inline`, the single ready builder is claimed right here (a running lease) and its
        inputs are read back by the same script, so it runs without a broker message.
        """
        out: list[Dispatch] = []
        for b in ready:
            run.dispatched(graph, b, 1)
            if inline_claim is not None:
                spec = graph.specs[b]
                deadline = now + spec.time_limit + self.settings.lease_grace
                ops.hset(k.lease, {lease_field(run.id, b): running_lease(1, deadline,
                                                                         inline_claim)})
                data_names, run_names = self._input_names(graph, b)
                # cas.lua's HMGET needs at least one field; a dummy one reads back as nil.
                ops.add("HMGET", k.data, *(data_names or ["\x00"]))
                ops.add("HMGET", k.run(run.id), *(run_names or ["\x00"]))
                self._index(k, ops, deadline)
                return out, b
            deadline = now + self.settings.dispatch_timeout
            ops.hset(k.lease, {lease_field(run.id, b): queued_lease(1, deadline)})
            self._index(k, ops, deadline)
            out.append(Dispatch(graph.key, k.instance_id, run.id, b, 1, version=graph.version))
        return out, None

    def _failed_attempt(
        self, graph: Graph, k: Keys, run: RunState, builder: str, token: int,
        error: BuilderError, ops: Ops, now: float,
    ) -> list[Dispatch]:
        """Retry per the builder's policy, or fail the run once its retries are spent."""
        spec = graph.specs[builder]
        if token <= spec.max_retries:
            delay = spec.backoff(token)
            run.dispatched(graph, builder, token + 1)
            deadline = now + delay + self.settings.dispatch_timeout
            ops.hset(k.lease, {lease_field(run.id, builder): queued_lease(token + 1, deadline)})
            self._index(k, ops, deadline)
            return [Dispatch(graph.key, k.instance_id, run.id, builder, token + 1, delay,
                             version=graph.version)]
        run.failed_for_good(graph, builder, error)
        return []

    @staticmethod
    def _log_failure(k: Keys, run: RunState, builder: str, token: int,
                     error: BuilderError) -> None:
        """Log a failed attempt once its outcome is committed (retried, or dead)."""
        if builder not in run.active:  # a retry re-dispatches it; a dead builder is retired
            log.error("polaris: %s in %s run %s failed for good after %s attempt(s): %s: %s",
                      builder, k.member, run.id, token, error.type, error.message)
        else:
            log.warning("polaris: %s in %s run %s failed attempt %s (%s: %s); retrying",
                        builder, k.member, run.id, token, error.type, error.message)

    def _index(self, k: Keys, ops: Ops, when: float) -> None:
        ops.add("ZADD", self.store.index_key, "LT", f"{when:.3f}", k.member)

    def _place(
        self, graph: Graph, k: Keys, doc: InstanceDoc, run: RunState, ops: Ops, now: float,
        *, empty_delta: bool, present: set[str],
    ) -> None:
        """Keep an unsettled run in the document, or close a settled one: write its outcome,
        wake its waiters, append it to the history and drop it from the document."""
        if not run.settled:
            doc.runs[run.id] = run
            return
        doc.runs.pop(run.id, None)
        if run.target_hit:
            doc.completed = True
        completed = run.target_hit or (empty_delta and graph.target in present)
        outcome: dict[str, Any] = {
            "run": run.id, "status": run.outcome, "completed": completed,
            "produced": run.produced, "started": run.started, "ended": now,
            "version": graph.version,
        }
        if run.error is not None:
            outcome["error"] = run.error.to_json()
        if run.delta_id is not None:
            outcome["delta_id"] = run.delta_id
        blob = json.dumps(outcome, separators=(",", ":"))
        ttl = self.settings.result_ttl
        ops.hset(k.run(run.id), {"_outcome": blob})
        ops.add("EXPIRE", k.run(run.id), ttl)
        ops.add("RPUSH", k.wake(run.id), "1")
        ops.add("EXPIRE", k.wake(run.id), ttl)
        ops.add("LPUSH", k.history, blob)
        ops.add("LTRIM", k.history, 0, self.settings.history - 1)
        if doc.runs:
            return
        finished = doc.completed or doc.status != "open"
        if finished and doc.version:
            # Completed (or closed) with nothing in flight: the instance no longer holds its
            # version, and a later delta starts it on the newest one.
            ops.add("SREM", self.store.live_key(graph.key, doc.version), k.instance_id)
        if doc.status == "open" and doc.deadline is not None and not doc.completed:
            self._index(k, ops, doc.deadline)  # keep watching for the deadline
        else:
            ops.add("ZREM", self.store.index_key, k.member)
        if finished and self.settings.retention is not None:
            for key in k.lasting:
                ops.add("EXPIRE", key, self.settings.retention)

    def _graph(self, workflow: str, version: int) -> Graph:
        """The graph of `version` (0: the newest), or a clear error naming what is missing."""
        if not version:
            return self.registry.graph(workflow)
        if version not in self.registry.versions(workflow):
            raise UnknownWorkflow(f"{workflow} v{version} (the instance is pinned to it, and "
                                  "this process has not registered it)")
        return self.registry.graph(workflow, version)

    def _load(self, workflow: str, snap: Snapshot) -> tuple[Graph, InstanceDoc]:
        """The document, parsed with the graph of the version it is pinned to. A finished
        instance with nothing in flight is pinned to nothing, so it loads even after its old
        version was retired (and its next delta starts it on the newest)."""
        version = InstanceDoc.version_of(snap)
        if version and version not in self.registry.versions(workflow):
            d = json.loads(snap.doc)
            if not d["runs"] and (d["completed"] or d.get("status", "open") != "open"):
                version = 0
        graph = self._graph(workflow, version)
        return graph, InstanceDoc.load(graph, snap)

    # -- recovery and the life of an instance (see recovery.py and lifecycle.py) -------------

    def reconcile(self, limit: int = 200) -> dict[str, int]:
        """One reconciler pass; safe anywhere, any number of times at once."""
        return recovery.reconcile(self, limit)

    def cancel(self, workflow: str, instance_id: str) -> bool:
        return lifecycle.cancel(self, workflow, instance_id)

    def restart(self, workflow: str, instance_id: str, keep_data: bool = True) -> int | None:
        return lifecycle.restart(self, workflow, instance_id, keep_data)

    def delete(self, workflow: str, instance_id: str) -> None:
        lifecycle.delete(self, workflow, instance_id)

    def retire(self, workflow: str, version: int) -> None:
        lifecycle.retire(self, workflow, version)


__all__ = ["Coordinator", "Dispatch", "InstanceDoc", "Settings", "UnknownVersion"]
