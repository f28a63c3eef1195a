"""The life of an instance beyond its runs: cancel, restart, delete, retire a version, and the
reconciler's look. Each is one transition (`transitions`) applied by the coordinator's fenced
loop (`Instances.change`), so it composes safely with workers committing and reconcilers
recovering at the same moment, and never runs half-done.

These functions see the coordinator only through the `Instances` protocol: its public loop,
its machine, its store and its clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

from . import codec, transitions
from .errors import StoreUnavailable, UnknownWorkflow, VersionInUse
from .graph import Graph
from .instance import InstanceDoc
from .layout import Snapshot
from .machine import Machine, Step
from .observe import Observer
from .registry import Registry, check_instance_id
from .result import RunRef
from .stores.redis import RedisStore


class Instances(Protocol):
    """What lifecycle operations need of a coordinator."""

    registry: Registry
    store: RedisStore
    machine: Machine
    clock: Callable[[], float]
    observer: Observer

    def change(self, workflow: str, instance_id: str,
               decide: Callable[[Graph, Snapshot], Step | None], seen: float | None = None
               ) -> Step | None: ...


def _checked(c: Instances, workflow: str, instance_id: str) -> Graph:
    check_instance_id(instance_id)
    return c.registry.graph(workflow)


def cancel(c: Instances, workflow: str, instance_id: str) -> bool:
    """Cancel the instance: nothing more runs; runs in flight end "cancelled"; builders still
    running may finish, and what they produce is kept apart as late data. Further deltas are
    refused until a restart. Returns False if it was not open."""
    _checked(c, workflow, instance_id)
    k = c.store.keys(workflow, instance_id)
    return c.change(workflow, instance_id, lambda graph, snap: transitions.cancel(
        c.machine, graph, k, snap, c.clock())) is not None


def restart(c: Instances, workflow: str, instance_id: str, keep_data: bool = True
            ) -> RunRef | None:
    """Start the instance again from the beginning, on the newest version, in one step.

    Runs in flight are cancelled. With `keep_data` its input data (those no builder produces)
    start a new run at once: returns that run. Without, all its data are dropped and it waits
    for new deltas: returns None. Inputs that do not validate under the newest version raise
    InvalidInput, and nothing changes."""
    newest = _checked(c, workflow, instance_id)
    k = c.store.keys(workflow, instance_id)
    started: list[RunRef] = []
    trace = c.observer.run_context()  # observe: kept with the new run (tracing.py)

    def decide(graph: Graph, snap: Snapshot) -> Step | None:
        inputs: dict[str, bytes] | None = None
        if keep_data:
            raw = c.store.read_data(workflow, instance_id,
                                    sorted(n for n in newest.inputs if n in (snap.names or ())))
            inputs = {n: codec.encode(codec.decode(newest, n, v)) for n, v in raw.items()}
        got = transitions.restart(c.machine, graph, newest, k, snap, inputs, c.clock(), trace)
        if got is None:
            return None
        step, run = got
        started[:] = [RunRef(run, snap.inc)] if run is not None else []
        return step

    return started[0] if c.change(workflow, instance_id, decide) and started else None


def delete(c: Instances, workflow: str, instance_id: str) -> None:
    """Remove the instance and everything it holds; runs in flight end "deleted" (their
    waiters wake). Settled runs' results expire on their own (`result_ttl`). A later delta
    creates a new incarnation."""
    _checked(c, workflow, instance_id)
    k = c.store.keys(workflow, instance_id)
    c.change(workflow, instance_id, lambda graph, snap: transitions.delete(
        c.machine, graph, k, snap, c.clock()))


def retire(c: Instances, workflow: str, version: int) -> None:
    """Retire `version` of `workflow` for good, once no live instance runs on it (raises
    VersionInUse naming them otherwise), and forget it in this process. Safe against submits
    racing it on any worker: none can pin an instance to it afterwards (stores/shared.py)."""
    if version not in c.registry.versions(workflow):
        raise UnknownWorkflow(f"{workflow} v{version}")
    store = c.store
    token = uuid.uuid4().hex
    store.begin_retiring(workflow, version, token)
    in_use: list[str] = []
    ended = False
    try:
        for instance_id in store.live_instances(workflow, version):
            if _holds(c, workflow, instance_id, version):
                in_use.append(instance_id)
            else:
                store.drop_live(workflow, version, store.keys(workflow, instance_id))
        ended = store.end_retiring(workflow, version, token, retired=not in_use)
    finally:
        if not ended:  # an error, or the mark ran out: leave nothing pending
            store.end_retiring(workflow, version, token, retired=False)
    if in_use:
        raise VersionInUse(workflow, version, in_use)
    if not ended:
        raise StoreUnavailable(f"retiring {workflow} v{version} took longer than its pending "
                               "mark lasts; nothing was retired: try again")
    c.registry.unregister(workflow, version)


def _holds(c: Instances, workflow: str, instance_id: str, version: int) -> bool:
    """Whether the instance is pinned to `version`; if not, its state is bumped (fenced), so
    that a submit that read it before fails its script and meets the retirement's mark."""
    k = c.store.keys(workflow, instance_id)
    while True:
        snap, _ = c.store.snapshot(k)
        if snap.exists and InstanceDoc.version_of(snap) == version:
            return True
        status, _ = c.store.cas(transitions.bump(k, snap), snap, k)
        if status == "applied":
            return False


def look(c: Instances, workflow: str, instance_id: str, seen: float, counts: dict[str, int]
         ) -> None:
    """The reconciler's look at one instance (see recovery.py for which, and when)."""
    k = c.store.keys(workflow, instance_id)
    inc: list[str] = [""]  # observe: the incarnation the applied step was decided from

    def decide(graph: Graph, snap: Snapshot) -> Step | None:
        inc[0] = snap.inc
        if not snap.exists:  # deleted or expired: only its index entry was left
            return transitions.forget(c.machine, k)
        return transitions.look(c.machine, graph, k, snap, c.store.leases(k), c.clock())

    counts["instances"] += 1
    step = c.change(workflow, instance_id, decide, seen)
    if step is not None:
        counts["lost"] += len(step.failures)
        counts["resent"] += len(step.sends) - len(step.failures)
        c.observer.recovered(workflow, instance_id, inc[0], step)  # observe
