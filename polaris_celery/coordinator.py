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

import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from . import attempts, codec, lifecycle, reads, recovery, transitions, waiting
from .attempts import task_budget
from .errors import (
    ConfigurationError,
    DeltaConflict,
    InvalidInput,
    UnknownWorkflow,
)
from .fields import NeedMore
from .graph import Graph
from .hooks import NO_HOOKS, HookInfo, Hooks
from .instance import Dispatch, InstanceDoc, Settings, UnknownVersion
from .layout import Keys, Snapshot
from .machine import Machine, Step
from .observe import Observer, Observers  # observe
from .registry import Registry, check_instance_id
from .result import RunRef, RunResult
from .stores.redis import RedisStore, retry_unavailable

log = logging.getLogger("polaris_celery")

MAX_DELTA_ID = 200
T = TypeVar("T")


def new_id() -> str:
    """A claim or incarnation id: time-ordered (so incarnations sort by age), then random."""
    return f"{int(time.time() * 1000):x}{uuid.uuid4().hex[:8]}"


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

    def retrying(self, fn: Callable[[], T]) -> T:
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
        trace = self.observer.run_context()  # observe: kept with the run (tracing.py)
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
                    self.clock(), trace)
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
        attempts.execute(self, workflow, instance_id, run, builder, token, queue, worker,
                         version, incarnation)

    execute.__doc__ = attempts.execute.__doc__

    def applied(self, k: Keys, inc: str, step: Step) -> None:
        """What follows a step that applied: its failures logged, the runs it settled
        reported (after_run hooks, waiters), then its messages sent."""
        self._log_failures(k, step)
        self._settled(k, inc, step)
        if step.sends:
            self.send(step.sends)

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
                self.applied(k, snap.inc, step)
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


__all__ = ["Coordinator", "Dispatch", "InstanceDoc", "RunRef", "Settings", "UnknownVersion",
           "task_budget"]
