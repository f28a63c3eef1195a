"""What one process can do to the system, and what the harness learns from each answer.

Each operation calls the real Coordinator through `World.act` and then records what a producer
or operator would know: an acknowledged run, data that were (or may have been) stored or
dropped, a retired version, a message handed on or redelivered.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from polaris_celery.instance import UnknownVersion

from . import compat, flows, invariants
from .observe import key, read_index
from .record import Ack
from .world import WF, Message, Worker, World


def deliver(world: World, index: int, worker: Worker) -> None:
    """Take message `index` off the network and execute it on `worker`."""
    msg = world.network.pop(index)
    d = msg.dispatch
    status, err = world.act(f"deliver {msg} on {worker.name}", d.instance_id,
                            lambda: compat.deliver(worker.coordinator, d))
    if status == "refused" and isinstance(err, UnknownVersion):
        world.network.append(Message(d, world.now + 1.0))  # handed on to another worker
    elif status == "crash" and world.rng.random() < 0.5:
        world.network.append(Message(d, world.now))  # unacked: the broker delivers it again


def deliverable(world: World) -> list[int]:
    return [n for n, m in enumerate(world.network) if m.not_before <= world.now]


def submit(world: World, worker: Worker, instance: str, data: list[BaseModel],
           delta_id: str | None = None, deadline: float | None = None) -> None:
    facts = world.record.facts[instance]
    payload = ",".join(sorted(f"{type(m).__name__}={m.model_dump_json()}" for m in data))
    known = delta_id is not None and delta_id in facts.payloads
    if delta_id is not None:
        facts.payloads.setdefault(delta_id, set()).add(payload)
        facts.sent.setdefault(delta_id, tuple(data))
        facts.submitted_at.setdefault(delta_id, set()).add(world.now)
    kept = {type(m).__name__: m.model_dump_json() for m in data
            if type(m).__name__ in flows.KEPT}
    nested = world.nested
    label = (f"{worker.name} submits {payload or '(empty)'} to {instance}"
             f"{f' as {delta_id}' if delta_id else ''}"
             f"{f' deadline {deadline:g}s' if deadline else ''}")
    status, value = world.act(label, instance, lambda: worker.coordinator.submit(
        WF, instance, data, delta_id=delta_id, deadline=deadline))
    if status == "ok":
        run, told = compat.run_of(value)
        inc = told if told is not None else world.read_inc(instance)
        starts = frozenset(facts.submitted_at[delta_id]) if delta_id else frozenset({world.now})
        _acknowledged(world, Ack(instance, inc, run, starts, delta_id), fresh=not known)
        facts.stored(kept, sure=not known and world.nested == nested)
        if delta_id is not None:
            world.check(invariants.repeated_delta, facts, delta_id, payload, (run, inc))
            if delta_id not in facts.epoch and len(facts.payloads[delta_id]) == 1:
                facts.epoch[delta_id] = (world.record.acks[(instance, inc, run)], payload)
    elif status in ("crash", "unavailable"):
        facts.stored(kept, sure=False)
    elif status == "refused" and delta_id is not None:
        world.check(invariants.repeated_delta, facts, delta_id, payload, value)


def _acknowledged(world: World, ack: Ack, *, fresh: bool) -> None:
    world.record.ack(ack)
    if fresh:
        world.check(invariants.fresh_run, world.lab.redis, WF, ack,
                    world.record.facts[ack.instance])


def cancel(world: World, worker: Worker, instance: str) -> None:
    world.act(f"{worker.name} cancels {instance}", instance,
              lambda: worker.coordinator.cancel(WF, instance))


def restart(world: World, worker: Worker, instance: str, keep_data: bool) -> None:
    facts = world.record.facts[instance]
    nested = world.nested
    status, value = world.act(
        f"{worker.name} restarts {instance}{'' if keep_data else ' dropping its data'}",
        instance, lambda: worker.coordinator.restart(WF, instance, keep_data=keep_data))
    facts.epoch.clear()
    if status == "refused":
        return
    if not keep_data:
        facts.dropped(flows.KEPT, sure=status == "ok" and world.nested == nested)
    if status == "ok" and value is not None:
        run, told = compat.run_of(value)
        inc = told if told is not None else world.read_inc(instance)
        _acknowledged(world, Ack(instance, inc, run, frozenset({world.now}), None), fresh=True)


def delete(world: World, worker: Worker, instance: str) -> None:
    facts = world.record.facts[instance]
    nested = world.nested
    status, _ = world.act(f"{worker.name} deletes {instance}", instance,
                          lambda: worker.coordinator.delete(WF, instance))
    if status != "refused":
        facts.epoch.clear()
        facts.dropped(flows.KEPT, sure=status == "ok" and world.nested == nested)


def retire(world: World, worker: Worker, version: int) -> None:
    status, _ = world.act(f"{worker.name} retires v{version}", None,
                          lambda: worker.coordinator.retire(WF, version))
    if status == "ok":
        world.record.retired.add(version)


def register_v2(world: World, worker: Worker) -> None:
    worker.registry.register(WF, flows.FlowV2, version=2)
    world.say(f"{worker.name} registers v2")


def reconcile(world: World, worker: Worker, limit: int) -> None:
    """One reconciler pass; then, if no other process acted meanwhile, the fair-reconcile
    checks: what it could not judge is left for others (fair-version), and what it looked at
    is no longer first in line (fair-reconcile)."""
    r = world.lab.redis
    before = read_index(r)
    due = [m for m, when in sorted(before.items()) if when <= world.now]
    pipe = r.pipeline(transaction=False)
    for i in world.instances:
        pipe.hget(key(WF, i, "state"), "doc")
    docs = pipe.execute()
    pinned = {f"{WF}/{i}": int(json.loads(doc).get("version", 0)) if doc else 0
              for i, doc in zip(world.instances, docs, strict=True)}
    worker.store.looked = []
    nested = world.nested
    status, _ = world.act(f"{worker.name} reconciles (limit {limit})", None,
                          lambda: worker.coordinator.reconcile(limit=limit))
    if status != "ok" or world.nested != nested:
        return
    held = {v for w in world.workers for v in w.versions}
    unjudged = {m: pinned[m] for m in due if pinned.get(m, 0) in held - set(worker.versions)}
    index = read_index(r)
    world.check(invariants.unjudged_left_due, index, world.now, worker.name, unjudged)
    if not unjudged:
        world.check(invariants.failed_looks_put_back, index, world.now, worker.store.looked,
                    len(due), limit)
