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
    InvalidInput,
    MessageRejected,
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
    """An instance's coordination state: the runs still in flight, and whether it completed."""

    next_run: int = 0
    runs: dict[int, RunState] = field(default_factory=dict)
    completed: bool = False
    created: float = 0.0
    updated: float = 0.0

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
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "next": self.next_run,
                "runs": [r.to_json() for r in self.runs.values()],
                "completed": self.completed,
                "created": self.created,
                "updated": self.updated,
            },
            separators=(",", ":"),
        )


def lease_field(run: int, builder: str) -> str:
    return f"{run}/{builder}"


def parse_lease(value: str) -> tuple[int, str, float]:
    token, state, deadline = value.split("|")
    return int(token), state, float(deadline)


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
        self, workflow: str, instance_id: str, data: Iterable[object], delta_id: str | None = None
    ) -> int:
        """Store a delta, mark and send its runnable builders; returns the run number.

        With a `delta_id` the same delta applies once however often it is submitted: a repeat
        returns the run of the first submission.
        """
        graph = self.registry.graph(workflow)
        check_instance_id(instance_id)
        if delta_id is not None and (
            not isinstance(delta_id, str) or not 0 < len(delta_id) <= MAX_DELTA_ID
        ):
            raise InvalidInput(f"delta_id must be a string of 1 to {MAX_DELTA_ID} characters")
        delta = codec.encode_delta(graph, data, self.settings.max_datum_bytes)
        k = self.store.keys(workflow, instance_id)
        lasting = {n: v for n, v in delta.items() if n not in graph.transients}
        transient = {n: v for n, v in delta.items() if n in graph.transients}
        while True:
            snap, seen = self.store.snapshot(k, delta_id)
            if seen is not None:
                return seen
            doc = InstanceDoc.load(graph, snap)
            now = time.time()
            doc.next_run += 1
            doc.created = doc.created or now
            doc.updated = now
            present = snap.names | set(delta)
            run, ready = RunState.start(
                graph, doc.next_run, delta, present, started=now, delta_id=delta_id
            )
            if delta:
                doc.completed = False  # a new delta re-opens a completed instance
            ops = Ops(k.state, k.data)
            ops.hset(k.data, lasting)
            ops.hset(k.run(run.id), transient)
            if delta_id is not None:
                ops.hset(k.deltas, {delta_id: run.id})
            if self.settings.retention is not None:
                for key in (k.data, k.state, k.deltas, k.log, k.history, k.lease):
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
        graph = self.registry.graph(workflow)
        k = self.store.keys(workflow, instance_id)
        deadline = time.monotonic() + timeout
        while True:
            outcome, raw = self.store.run_outcome(k, run)
            if outcome is not None:
                return self._to_result(graph, instance_id, json.loads(outcome), raw)
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    f"run {run} of {workflow}/{instance_id} did not settle within {timeout}s"
                )
            self.store.wait_wake(k, run, left)

    @staticmethod
    def _to_result(
        graph: Graph, instance_id: str, outcome: dict[str, Any], raw: dict[str, bytes]
    ) -> RunResult:
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
                queue: str | None = None, worker: str | None = None) -> None:
        """Run one delivered attempt and every successor it may run inline, committing each.

        `worker` names who ran it in the instance's log (the Celery node name, by default
        host:pid)."""
        if workflow not in self.registry or builder not in self.registry.graph(workflow).specs:
            raise MessageRejected(f"no builder {builder!r} in a workflow {workflow!r} here")
        graph = self.registry.graph(workflow)
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
            doc = InstanceDoc.load(graph, snap)
            run = doc.runs.get(c.run)
            if run is None or run.active.get(c.builder) != c.token:
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
            out.append(Dispatch(graph.key, k.instance_id, run.id, b, 1))
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
            return [Dispatch(graph.key, k.instance_id, run.id, builder, token + 1, delay)]
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
        if not doc.runs:
            ops.add("ZREM", self.store.index_key, k.member)
            if doc.completed and self.settings.retention is not None:
                for key in (k.data, k.state, k.deltas, k.log, k.history, k.lease):
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
                self._reconcile_instance(self.registry.graph(workflow),
                                         self.store.keys(workflow, instance_id), counts)
            except Exception:
                log.exception("polaris: reconciling %s failed; will retry", member)
        return counts

    def _reconcile_instance(self, graph: Graph, k: Keys, counts: dict[str, int]) -> None:
        snap, _ = self.store.snapshot(k)
        leases = self.store.leases(k)
        doc = InstanceDoc.load(graph, snap)
        now = time.time()
        ops = Ops(k.state, k.data)
        dispatches: list[Dispatch] = []
        next_look = float("inf")
        changed = False
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
                    dispatches.append(Dispatch(graph.key, k.instance_id, run.id, builder, token))
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
        if doc.runs:
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
