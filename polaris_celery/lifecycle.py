"""The life of an instance beyond its runs: cancel, restart, delete, retire a version.

Each is one fenced compare-and-set on the instance's document, like every other change, so it
composes safely with workers committing and reconcilers recovering at the same moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import codec
from .errors import UnknownWorkflow, VersionInUse
from .graph import Graph
from .instance import InstanceDoc
from .registry import check_instance_id
from .stores.redis import Keys, Ops, Snapshot

if TYPE_CHECKING:
    from .coordinator import Coordinator


def close(c: Coordinator, graph: Graph, k: Keys, doc: InstanceDoc, ops: Ops, now: float,
           status: str) -> None:
    """Close every run in flight as `status` and mark the instance so; nothing more runs.
    Attempts still running find their commit refused and keep their datum aside (late)."""
    doc.status = status
    ops.add("DEL", k.lease)
    if not doc.runs:
        _place_closed(c, graph, k, doc, ops)
    for run in list(doc.runs.values()):  # the last one closed does what _place_closed does
        run.close(graph, status)
        c._place(graph, k, doc, run, ops, now, empty_delta=False, present=set())

def _place_closed(c: Coordinator, graph: Graph, k: Keys, doc: InstanceDoc, ops: Ops) -> None:
    if doc.version:
        ops.add("SREM", c.store.live_key(graph.key, doc.version), k.instance_id)
    ops.add("ZREM", c.store.index_key, k.member)
    if c.settings.retention is not None:
        for key in k.lasting:
            ops.add("EXPIRE", key, c.settings.retention)

def _mutate(c: Coordinator, workflow: str, instance_id: str,
            change: Callable[[Graph, InstanceDoc, Ops, Snapshot, float], bool]) -> bool:
    """Apply `change` to the instance under the fenced CAS; False if it changed nothing."""
    check_instance_id(instance_id)
    c.registry.graph(workflow)
    k = c.store.keys(workflow, instance_id)
    while True:
        snap, _ = c.store.snapshot(k)
        graph, doc = c._load(workflow, snap)
        ops = Ops(k.state, k.data)
        now = time.time()
        if not change(graph, doc, ops, snap, now):
            return False
        doc.updated = now
        ops.hset(k.state, {"v": snap.version + 1, "doc": doc.dump()})
        ok, _ = c.store.cas(ops, snap.version)
        if ok:
            return True

def cancel(c: Coordinator, workflow: str, instance_id: str) -> bool:
    """Cancel the instance: nothing more runs; runs in flight end "cancelled"; builders still
    running may finish, and what they produce is kept apart as late data. Further deltas
    are refused until a restart. Returns False if it was not open."""
    k = c.store.keys(workflow, instance_id)

    def change(graph: Graph, doc: InstanceDoc, ops: Ops, snap: Snapshot, now: float) -> bool:
        if doc.status != "open" or not snap.doc:
            return False
        close(c, graph, k, doc, ops, now, "cancelled")
        return True

    return _mutate(c, workflow, instance_id, change)

def restart(c: Coordinator, workflow: str, instance_id: str, keep_data: bool = True) -> int | None:
    """Start the instance again from the beginning, on the newest version.

    Runs in flight are cancelled. With `keep_data` its input data (those no builder
    produces) are submitted again as a new delta, so every builder runs afresh: returns
    that run. Without, all its data are dropped and it waits for new deltas: returns None.
    """
    k = c.store.keys(workflow, instance_id)
    inputs: dict[str, bytes] = {}

    def change(graph: Graph, doc: InstanceDoc, ops: Ops, snap: Snapshot, now: float) -> bool:
        if doc.status == "open" and doc.runs:
            close(c, graph, k, doc, ops, now, "cancelled")
        elif doc.version:
            ops.add("SREM", c.store.live_key(graph.key, doc.version), k.instance_id)
        ops.add("DEL", k.lease)
        ops.add("ZREM", c.store.index_key, k.member)
        for key in k.lasting:
            ops.add("PERSIST", key)
        doc.runs.clear()
        doc.status, doc.completed, doc.version, doc.deadline = "open", False, 0, None
        inputs.clear()
        if keep_data:
            inputs.update(c.store.read_data(workflow, instance_id, graph.inputs))
        else:
            ops.add("DEL", k.data)
        ops.add("XADD", k.log, "MAXLEN", "~", c.settings.log_length, "*", "ev", "restart",
                "run", doc.next_run, "at", f"{now:.6f}", "by", c.worker_name)
        return True

    _mutate(c, workflow, instance_id, change)
    if not keep_data or not inputs:
        return None
    graph = c.registry.graph(workflow)
    data = [codec.decode(graph, n, raw) for n, raw in sorted(inputs.items())
            if n in graph.types]
    return c.submit(workflow, instance_id, data)

def delete(c: Coordinator, workflow: str, instance_id: str) -> None:
    """Remove the instance and everything it holds (run results expire on their own)."""
    k = c.store.keys(workflow, instance_id)

    def change(graph: Graph, doc: InstanceDoc, ops: Ops, snap: Snapshot, now: float) -> bool:
        for key in k.lasting:
            if key != k.state:
                ops.add("DEL", key)
        if doc.version:
            ops.add("SREM", c.store.live_key(graph.key, doc.version), k.instance_id)
        ops.add("ZREM", c.store.index_key, k.member)
        # The state survives as a tombstone for a while: its version and run counter keep
        # climbing, so an attempt from before the delete can never match a later state.
        ops.add("EXPIRE", k.state, c.settings.result_ttl)
        doc.runs.clear()
        doc.completed, doc.version, doc.status, doc.deadline = False, 0, "open", None
        doc.created = 0.0
        return True

    _mutate(c, workflow, instance_id, change)

def retire(c: Coordinator, workflow: str, version: int) -> None:
    """Forget `version` of `workflow` in this process, once no live instance runs on it;
    raises VersionInUse naming the instances otherwise."""
    if version not in c.registry.versions(workflow):
        raise UnknownWorkflow(f"{workflow} v{version}")
    live = c.store.live_instances(workflow, version)
    if live:
        raise VersionInUse(workflow, version, live)
    c.registry.unregister(workflow, version)
