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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import codec, faults
from .errors import (
    BuilderFailed,
    ConfigurationError,
    InstanceClosed,
    InvalidInput,
    MessageRejected,
    PolarisError,
    UnknownWorkflow,
    VersionInUse,
    WaitTimeout,
)
from .frontier import BuilderError, RunState
from .graph import Graph
from .invoke import AfterHook, BeforeHook, Outcome, attempt
from .registry import Registry, check_instance_id
from .result import RunResult
from .stores.redis import Keys, Ops, RedisStore, Snapshot, retry_unavailable

log = logging.getLogger("polaris_celery")

MAX_DELTA_ID = 200


@dataclass(frozen=True)
class Dispatch:
    """One message to send: run `builder` of `run` under attempt `token`."""

    workflow: str
    instance_id: str
    run: int
    builder: str
    token: int
    countdown: float = 0.0
    version: int = 1


@dataclass(frozen=True)
class Settings:
    """Timings and switches of the distributed executor (see the README's configuration table).

    dispatch_timeout: a builder dispatched but not started within this many seconds is sent
      again (covers a worker that died between its commit and its send, and lost messages).
    lease_grace: added to a builder's time_limit to form the lease of a running attempt; a
      lease that expires counts as a failed attempt and the builder is re-dispatched.
    inline: a builder whose completion leaves exactly one runnable successor bound for the same
      queue runs that successor in the same worker, saving a broker hop.
    result_ttl: how long a settled run's outcome and produced data stay readable.
    retention: seconds a completed instance's keys live after its last run settles (None: kept).
    reconcile_interval: how often each worker runs the reconciler.
    """

    dispatch_timeout: float = 30.0
    lease_grace: float = 10.0
    inline: bool = True
    result_ttl: int = 86400
    retention: int | None = None
    reconcile_interval: float = 5.0
    history: int = 50
    log_length: int = 1000
    max_datum_bytes: int = codec.DEFAULT_MAX_DATUM_BYTES


@dataclass
class InstanceDoc:
    """An instance's coordination state: the runs still in flight, whether it completed, the
    workflow version it is pinned to, and whether it is open, cancelled or timed out."""

    next_run: int = 0
    runs: dict[int, RunState] = field(default_factory=dict)
    completed: bool = False
    created: float = 0.0
    updated: float = 0.0
    version: int = 0  # 0: not pinned (new, or completed with nothing in flight)
    status: str = "open"  # "open", "cancelled" or "timed_out"
    deadline: float | None = None

    @staticmethod
    def version_of(snap: Snapshot) -> int:
        return int(json.loads(snap.doc).get("version", 0)) if snap.doc else 0

    @classmethod
    def load(cls, graph: Graph, snap: Snapshot) -> InstanceDoc:
        if not snap.doc:
            return cls()
        d = json.loads(snap.doc)
        return cls(
            next_run=d["next"],
            runs={int(r["id"]): RunState.from_json(graph, r) for r in d["runs"]},
            completed=d["completed"],
            created=d.get("created", 0.0),
            updated=d.get("updated", 0.0),
            version=d.get("version", 0),
            status=d.get("status", "open"),
            deadline=d.get("deadline"),
        )

    @property
    def pinned(self) -> bool:
        """An instance stays on its version until it completes with nothing in flight."""
        return self.version > 0 and not (self.completed and not self.runs)

    def dump(self) -> str:
        d: dict[str, Any] = {
            "next": self.next_run,
            "runs": [r.to_json() for r in self.runs.values()],
            "completed": self.completed,
            "created": self.created,
            "updated": self.updated,
            "version": self.version,
            "status": self.status,
        }
        if self.deadline is not None:
            d["deadline"] = self.deadline
        return json.dumps(d, separators=(",", ":"))


def lease_field(run: int, builder: str) -> str:
    return f"{run}/{builder}"


def parse_lease(value: str) -> tuple[int, str, float]:
    token, state, deadline = value.split("|")
    return int(token), state, float(deadline)


class UnknownVersion(PolarisError):
    """A message for a workflow version this process does not have (another worker may)."""


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
        codec.encode_delta(newest, data, self.settings.max_datum_bytes)  # fail fast, store nothing
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
            delta = codec.encode_delta(graph, data, self.settings.max_datum_bytes)
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
            dispatches, _ = self._dispatch(graph, k, run, ready, ops, now, inline=False)
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
            outcome, raw = self.store.run_outcome(k, run)
            if outcome is not None:
                return self._to_result(workflow, instance_id, json.loads(outcome), raw)
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    f"run {run} of {workflow}/{instance_id} did not settle within {timeout}s"
                )
            self.store.wait_wake(k, run, left)

    async def result_async(
        self, workflow: str, instance_id: str, run: int, timeout: float
    ) -> RunResult:
        """`result` for asyncio code: waits on an asyncio Redis connection, blocking no thread."""
        self.registry.graph(workflow)
        k = self.store.keys(workflow, instance_id)
        deadline = time.monotonic() + timeout
        async with self.store.async_client() as client:
            while True:
                got = await client.hgetall(k.run(run))
                outcome = got.pop(b"_outcome", None)
                if outcome is not None:
                    raw = {f.decode(): v for f, v in got.items() if not f.startswith(b"_")}
                    return self._to_result(workflow, instance_id, json.loads(outcome), raw)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(
                        f"run {run} of {workflow}/{instance_id} did not settle within {timeout}s"
                    )
                if await client.blpop([k.wake(run)], timeout=max(left, 0.01)) is not None:
                    await client.rpush(k.wake(run), b"1")

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
        status, snap, raw = self.store.begin(
            k, lease_field(run, builder), token, self._running_lease(token, spec.time_limit),
            *self._input_names(graph, builder), run,
        )
        if status != "ok" or snap is None:
            log.info("polaris: skipped %s/%s run %s %s attempt %s: %s",
                     workflow, instance_id, run, builder, token, status)
            return
        claimed: _Claimed | None = _Claimed(graph, k, run, builder, token, snap, raw)
        by = f"{worker or socket.gethostname()}/{os.getpid()}"
        while claimed is not None:
            claimed = self._run_claimed(claimed, queue, by)

    def _run_claimed(self, c: _Claimed, queue: str | None, by: str) -> _Claimed | None:
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
        return retry_unavailable(lambda: self._commit(c, out, started, queue, by))

    def _commit(self, c: _Claimed, out: Outcome, started: float, queue: str | None, by: str
                ) -> _Claimed | None:
        graph, k = c.graph, c.keys
        spec = graph.specs[c.builder]
        snap = c.snap
        produced_raw = codec.encode(out.produced) if out.produced is not None else None
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
                        "result": spec.produces_name, "by": by})
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
            allow_inline = (self.settings.inline and len(ready) == 1
                            and graph.specs[ready[0]].queue == queue)
            sent, inline = self._dispatch(graph, k, run, ready, ops, now, inline=allow_inline)
            dispatches += sent
            ops.add("XADD", k.log, "MAXLEN", "~", self.settings.log_length, "*",
                    "ev", "builder", "run", c.run, "b", c.builder, "attempt", c.token,
                    "at", f"{started:.6f}", "secs", f"{out.seconds:.6f}", "result", result,
                    "by", by)
            self._place(graph, k, doc, run, ops, now, empty_delta=False, present=present)
            new_doc = doc.dump()
            ops.hset(k.state, {"v": snap.version + 1, "doc": new_doc})
            ok, reply = self.store.cas(ops, snap.version)
            if not ok:
                assert isinstance(reply, Snapshot)
                snap = reply
                continue
            faults.point("after_commit")
            if dispatches:
                self.send(dispatches)
            if inline is None:
                return None
            assert isinstance(reply, list)
            names = self._input_names(graph, inline)
            raw = {n: v for n, v in zip(names[0], reply[0], strict=False) if v is not None}
            raw.update({n: v for n, v in zip(names[1], reply[1], strict=False) if v is not None})
            next_snap = Snapshot(snap.version + 1, new_doc, present - graph.transients)
            return _Claimed(graph, k, c.run, inline, 1, next_snap, raw)

    # -- shared steps -------------------------------------------------------------------------

    def _running_lease(self, token: int, time_limit: float) -> str:
        return f"{token}|r|{time.time() + time_limit + self.settings.lease_grace:.3f}"

    @staticmethod
    def _input_names(graph: Graph, builder: str) -> tuple[list[str], list[str]]:
        names = sorted(graph.specs[builder].readable_names)
        return ([n for n in names if n not in graph.transients],
                [n for n in names if n in graph.transients])

    def _dispatch(
        self, graph: Graph, k: Keys, run: RunState, ready: list[str], ops: Ops, now: float,
        *, inline: bool,
    ) -> tuple[list[Dispatch], str | None]:
        """Mark `ready` builders dispatched (attempt 1) with their leases, in `ops`.

        With `inline`, the single ready builder is claimed right here (a running lease) and its
        inputs are read back by the same script, so it runs without a broker message.
        """
        out: list[Dispatch] = []
        for b in ready:
            run.dispatched(graph, b, 1)
            if inline:
                spec = graph.specs[b]
                deadline = now + spec.time_limit + self.settings.lease_grace
                ops.hset(k.lease, {lease_field(run.id, b): f"1|r|{deadline:.3f}"})
                data_names, run_names = self._input_names(graph, b)
                # cas.lua's HMGET needs at least one field; a dummy one reads back as nil.
                ops.add("HMGET", k.data, *(data_names or ["\x00"]))
                ops.add("HMGET", k.run(run.id), *(run_names or ["\x00"]))
                self._index(k, ops, deadline)
                return out, b
            deadline = now + self.settings.dispatch_timeout
            ops.hset(k.lease, {lease_field(run.id, b): f"1|q|{deadline:.3f}"})
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
            ops.hset(k.lease, {lease_field(run.id, builder): f"{token + 1}|q|{deadline:.3f}"})
            self._index(k, ops, deadline)
            log.warning("polaris: %s in %s run %s failed attempt %s (%s: %s); retrying in %.1fs",
                        builder, k.member, run.id, token, error.type, error.message, delay)
            return [Dispatch(graph.key, k.instance_id, run.id, builder, token + 1, delay,
                             version=graph.version)]
        log.error("polaris: %s in %s run %s failed for good after %s attempt(s): %s: %s",
                  builder, k.member, run.id, token, error.type, error.message)
        run.failed_for_good(graph, builder, error)
        return []

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

    # -- recovery -----------------------------------------------------------------------------

    def reconcile(self, limit: int = 200) -> dict[str, int]:
        """One pass of the reconciler over instances due for a look. Safe to run anywhere, any
        number of times at once: every change is a fenced CAS, and only its winner sends."""
        counts = {"instances": 0, "resent": 0, "expired": 0, "closed": 0}
        now = time.time()
        for member in self.store.due(now, limit):
            workflow, _, instance_id = member.partition("/")
            if workflow not in self.registry:
                continue
            counts["instances"] += 1
            try:
                self._reconcile_instance(workflow, self.store.keys(workflow, instance_id), counts)
            except UnknownVersion:
                pass  # pinned to a version this process lacks: a worker that has it reconciles
            except Exception:
                log.exception("polaris: reconciling %s failed; will retry", member)
        return counts

    def _reconcile_instance(self, workflow: str, k: Keys, counts: dict[str, int]) -> None:
        snap, _ = self.store.snapshot(k)
        leases = self.store.leases(k)
        version = InstanceDoc.version_of(snap)
        if version and version not in self.registry.versions(workflow):
            raise UnknownVersion(f"{workflow} v{version}")
        graph = self._graph(workflow, version)
        doc = InstanceDoc.load(graph, snap)
        now = time.time()
        ops = Ops(k.state, k.data)
        dispatches: list[Dispatch] = []
        next_look = float("inf")
        changed = False
        if doc.status == "open" and doc.deadline is not None and not doc.completed:
            if now >= doc.deadline:
                counts["timed_out"] = counts.get("timed_out", 0) + 1
                self._close(graph, k, doc, ops, now, "timed_out")
                doc.updated = now
                ops.hset(k.state, {"v": snap.version + 1, "doc": doc.dump()})
                self.store.cas(ops, snap.version)
                return
            next_look = doc.deadline
        for run in list(doc.runs.values()):
            for builder, token in list(run.active.items()):
                fld = lease_field(run.id, builder)
                value = leases.pop(fld, None)
                if value is not None:
                    ltoken, state, deadline = parse_lease(value)
                    if ltoken == token and deadline > now:
                        next_look = min(next_look, deadline)
                        continue
                    ops.add("EXPECT", k.lease, fld, value)
                else:
                    ltoken, state = token, "q"
                    ops.add("EXPECT", k.lease, fld, "")
                changed = True
                if state == "q" or ltoken != token:
                    # Dispatched but never started: the message was lost or never sent.
                    deadline = now + self.settings.dispatch_timeout
                    ops.hset(k.lease, {fld: f"{token}|q|{deadline:.3f}"})
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
                    dispatches += self._failed_attempt(graph, k, run, builder, token, err, ops, now)
                    ops.add("XADD", k.log, "MAXLEN", "~", self.settings.log_length, "*",
                            "ev", "builder", "run", run.id, "b", builder, "attempt", token,
                            "at", f"{now:.6f}", "secs", "0", "result", "error:LeaseExpired",
                            "by", self.worker_name)
            if run.settled:
                self._place(graph, k, doc, run, ops, now, empty_delta=False,
                            present=set(snap.names))
                counts["closed"] += 1
                changed = True
        for orphan in leases:  # leases of builders no run has active any more
            ops.add("HDEL", k.lease, orphan)
            changed = True
        if doc.runs or next_look != float("inf"):
            when = next_look if next_look != float("inf") else now + self.settings.dispatch_timeout
            ops.add("ZADD", self.store.index_key, f"{when:.3f}", k.member)
        else:
            ops.add("ZREM", self.store.index_key, k.member)
        if changed:
            doc.updated = now
            ops.hset(k.state, {"v": snap.version + 1, "doc": doc.dump()})
        ok, _ = self.store.cas(ops, snap.version)
        if ok and dispatches:
            self.send(dispatches)

    # -- the life of an instance ---------------------------------------------------------------

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

    def _close(self, graph: Graph, k: Keys, doc: InstanceDoc, ops: Ops, now: float,
               status: str) -> None:
        """Close every run in flight as `status` and mark the instance so; nothing more runs.
        Attempts still running find their commit refused and keep their datum aside (late)."""
        doc.status = status
        ops.add("DEL", k.lease)
        if not doc.runs:
            self._place_closed(graph, k, doc, ops)
        for run in list(doc.runs.values()):  # the last one closed does what _place_closed does
            run.close(graph, status)
            self._place(graph, k, doc, run, ops, now, empty_delta=False, present=set())

    def _place_closed(self, graph: Graph, k: Keys, doc: InstanceDoc, ops: Ops) -> None:
        if doc.version:
            ops.add("SREM", self.store.live_key(graph.key, doc.version), k.instance_id)
        ops.add("ZREM", self.store.index_key, k.member)
        if self.settings.retention is not None:
            for key in k.lasting:
                ops.add("EXPIRE", key, self.settings.retention)

    def _mutate(self, workflow: str, instance_id: str,
                change: Callable[[Graph, InstanceDoc, Ops, Snapshot, float], bool]) -> bool:
        """Apply `change` to the instance under the fenced CAS; False if it changed nothing."""
        check_instance_id(instance_id)
        self.registry.graph(workflow)
        k = self.store.keys(workflow, instance_id)
        while True:
            snap, _ = self.store.snapshot(k)
            graph, doc = self._load(workflow, snap)
            ops = Ops(k.state, k.data)
            now = time.time()
            if not change(graph, doc, ops, snap, now):
                return False
            doc.updated = now
            ops.hset(k.state, {"v": snap.version + 1, "doc": doc.dump()})
            ok, _ = self.store.cas(ops, snap.version)
            if ok:
                return True

    def cancel(self, workflow: str, instance_id: str) -> bool:
        """Cancel the instance: nothing more runs; runs in flight end "cancelled"; builders still
        running may finish, and what they produce is kept apart as late data. Further deltas
        are refused until a restart. Returns False if it was not open."""
        k = self.store.keys(workflow, instance_id)

        def change(graph: Graph, doc: InstanceDoc, ops: Ops, snap: Snapshot, now: float) -> bool:
            if doc.status != "open" or not snap.doc:
                return False
            self._close(graph, k, doc, ops, now, "cancelled")
            return True

        return self._mutate(workflow, instance_id, change)

    def restart(self, workflow: str, instance_id: str, keep_data: bool = True) -> int | None:
        """Start the instance again from the beginning, on the newest version.

        Runs in flight are cancelled. With `keep_data` its input data (those no builder
        produces) are submitted again as a new delta, so every builder runs afresh: returns
        that run. Without, all its data are dropped and it waits for new deltas: returns None.
        """
        k = self.store.keys(workflow, instance_id)
        inputs: dict[str, bytes] = {}

        def change(graph: Graph, doc: InstanceDoc, ops: Ops, snap: Snapshot, now: float) -> bool:
            if doc.status == "open" and doc.runs:
                self._close(graph, k, doc, ops, now, "cancelled")
            elif doc.version:
                ops.add("SREM", self.store.live_key(graph.key, doc.version), k.instance_id)
            ops.add("DEL", k.lease)
            ops.add("ZREM", self.store.index_key, k.member)
            for key in k.lasting:
                ops.add("PERSIST", key)
            doc.runs.clear()
            doc.status, doc.completed, doc.version, doc.deadline = "open", False, 0, None
            inputs.clear()
            if keep_data:
                inputs.update(self.store.read_data(workflow, instance_id, graph.inputs))
            else:
                ops.add("DEL", k.data)
            ops.add("XADD", k.log, "MAXLEN", "~", self.settings.log_length, "*", "ev", "restart",
                    "run", doc.next_run, "at", f"{now:.6f}", "by", self.worker_name)
            return True

        self._mutate(workflow, instance_id, change)
        if not keep_data or not inputs:
            return None
        graph = self.registry.graph(workflow)
        data = [codec.decode(graph, n, raw) for n, raw in sorted(inputs.items())
                if n in graph.types]
        return self.submit(workflow, instance_id, data)

    def delete(self, workflow: str, instance_id: str) -> None:
        """Remove the instance and everything it holds (run results expire on their own)."""
        k = self.store.keys(workflow, instance_id)

        def change(graph: Graph, doc: InstanceDoc, ops: Ops, snap: Snapshot, now: float) -> bool:
            for key in k.lasting:
                if key != k.state:
                    ops.add("DEL", key)
            if doc.version:
                ops.add("SREM", self.store.live_key(graph.key, doc.version), k.instance_id)
            ops.add("ZREM", self.store.index_key, k.member)
            # The state survives as a tombstone for a while: its version and run counter keep
            # climbing, so an attempt from before the delete can never match a later state.
            ops.add("EXPIRE", k.state, self.settings.result_ttl)
            doc.runs.clear()
            doc.completed, doc.version, doc.status, doc.deadline = False, 0, "open", None
            doc.created = 0.0
            return True

        self._mutate(workflow, instance_id, change)

    def retire(self, workflow: str, version: int) -> None:
        """Forget `version` of `workflow` in this process, once no live instance runs on it;
        raises VersionInUse naming the instances otherwise."""
        if version not in self.registry.versions(workflow):
            raise UnknownWorkflow(f"{workflow} v{version}")
        live = self.store.live_instances(workflow, version)
        if live:
            raise VersionInUse(workflow, version, live)
        self.registry.unregister(workflow, version)
