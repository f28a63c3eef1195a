"""The scheduler: one seeded schedule of actions, then a quiesce and the final checks.

Each step draws one action from the world's random source: a producer submits (sometimes again
under an earlier delta id, rarely with other data under it), the network delivers a message
(the oldest, or any: reordering), duplicates or drops one, a worker reconciles, an operator
cancels, restarts, deletes, retires a version or deploys v2 on a worker, or the clock moves (a
little, or far past leases, dispatch timeouts, deadlines, retention and result TTLs). Writes in
flight may let another process act first (`interleave`).

The quiesce then stops every fault and drives the system until nothing is pending: deliver
what can be delivered, run every reconciler, move the clock to the next thing due; then the
end-of-schedule invariants are checked, and once more after the clock has passed every TTL.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from . import invariants, ops
from .faults import SimStore
from .flows import A, Hint, Nonce
from .observe import View
from .world import WF, World

MAX_QUIESCE_ROUNDS = 40


def random_delta(world: World) -> list[BaseModel]:
    rng = world.rng
    r = rng.random()
    a = A(v=rng.randint(0, 20))
    if r < 0.6:
        return [a]
    if r < 0.75:
        return [a, Hint(v=rng.randint(0, 5))]
    if r < 0.85:
        return [Hint(v=rng.randint(0, 5))]
    if r < 0.93:
        return [a, Nonce(v=rng.randint(1, 9))]
    return []


def _instance(world: World) -> str:
    world.focus = world.rng.choice(world.instances)
    return world.focus


def submit(world: World) -> None:
    instance = _instance(world)
    facts = world.record.facts[instance]
    delta_id = f"d{len(facts.payloads) + 1}" if world.rng.random() < 0.5 else None
    deadline = world.rng.choice((15.0, 40.0, 90.0)) if world.rng.random() < 0.12 else None
    ops.submit(world, world.rng.choice(world.workers), instance, random_delta(world),
               delta_id, deadline)


def resubmit(world: World, *, same: bool) -> None:
    instance = _instance(world)
    facts = world.record.facts[instance]
    if not facts.sent:
        return submit(world)
    delta_id = world.rng.choice(sorted(facts.sent))
    data = list(facts.sent[delta_id])
    if not same:
        data = [m for m in data if not isinstance(m, A)] + [A(v=world.rng.randint(100, 120))]
    ops.submit(world, world.rng.choice(world.workers), instance, data, delta_id)


def deliver(world: World, *, oldest: bool) -> None:
    ready = ops.deliverable(world)
    if not ready:
        return world.say("nothing to deliver")
    index = ready[0] if oldest else world.rng.choice(ready)
    world.focus = world.network[index].dispatch.instance_id
    ops.deliver(world, index, world.rng.choice(world.workers))


def duplicate(world: World) -> None:
    if world.network:
        msg = world.rng.choice(world.network)
        world.network.append(type(msg)(msg.dispatch, msg.not_before))
        world.say(f"network duplicates {msg}")


def drop(world: World) -> None:
    if world.network:
        world.say(f"network drops {world.network.pop(world.rng.randrange(len(world.network)))}")


def reconcile(world: World) -> None:
    ops.reconcile(world, world.rng.choice(world.workers), world.rng.choice((1, 2, 200)))


def lifecycle(world: World) -> None:
    worker, instance = world.rng.choice(world.workers), _instance(world)
    kind = world.rng.choice(("cancel", "restart", "restart", "delete"))
    if kind == "cancel":
        ops.cancel(world, worker, instance)
    elif kind == "restart":
        ops.restart(world, worker, instance, keep_data=world.rng.random() < 0.6)
    else:
        ops.delete(world, worker, instance)


def retire(world: World) -> None:
    able = [w for w in world.workers if len(w.versions) > 1]
    if not able:
        return world.say("nothing to retire")
    worker = world.rng.choice(able)
    ops.retire(world, worker, world.rng.choice(worker.versions))


def deploy_v2(world: World) -> None:
    lacking = [w for w in world.workers if 2 not in w.versions]
    if lacking and 2 not in world.record.retired:
        ops.register_v2(world, world.rng.choice(lacking))


def tick(world: World) -> None:
    world.advance(world.rng.randint(500, 8000) / 1000)


def jump(world: World) -> None:
    world.advance(world.rng.choice((31, 45, 61, 130, 210)) + world.rng.randint(0, 999) / 1000)


ACTIONS: list[tuple[Callable[[World], None], int]] = [
    (submit, 18),
    (lambda w: resubmit(w, same=True), 4),
    (lambda w: resubmit(w, same=False), 1),
    (lambda w: deliver(w, oldest=True), 20),
    (lambda w: deliver(w, oldest=False), 10),
    (duplicate, 3),
    (drop, 3),
    (reconcile, 8),
    (lifecycle, 5),
    (retire, 2),
    (deploy_v2, 2),
    (tick, 9),
    (jump, 4),
]


def interleave(world: World, store: SimStore) -> None:
    """Another process acts while `store`'s write is in flight: mostly a delivery (a sibling
    builder committing), else a producer, a reconciler or an operator."""
    worker = world.rng.choice([w for w in world.workers if w.store is not store])
    r = world.rng.random()
    ready = ops.deliverable(world)
    if r < 0.6 and ready:
        near = [n for n in ready if world.network[n].dispatch.instance_id == world.focus]
        ops.deliver(world, world.rng.choice(near or ready), worker)
    elif r < 0.8:
        ops.submit(world, worker, world.focus or world.instances[0], random_delta(world))
    elif r < 0.9:
        ops.reconcile(world, worker, 200)
    elif world.focus is not None:
        kind = world.rng.choice(("cancel", "restart", "delete"))
        if kind == "cancel":
            ops.cancel(world, worker, world.focus)
        elif kind == "restart":
            ops.restart(world, worker, world.focus, keep_data=True)
        else:
            ops.delete(world, worker, world.focus)


def run(world: World) -> None:
    """The whole schedule of one seed: its steps, the quiesce, the final checks."""
    steps = world.rng.randint(20, 40)
    actions, weights = zip(*ACTIONS, strict=True)
    world.interleaving = interleave
    with world.running():
        world.check_step()
        for world.step in range(1, steps + 1):
            world.focus = None
            world.rng.choices(actions, weights)[0](world)
            world.check_step()
        world.step += 1
        quiesce(world)


def _deliver_all(world: World) -> None:
    for _ in range(500):
        ready = [n for n in ops.deliverable(world)
                 if any(world.network[n].dispatch.version in w.versions for w in world.workers)]
        if not ready:
            return
        worker = world.worker_with(world.network[ready[0]].dispatch.version)
        assert worker is not None
        ops.deliver(world, ready[0], worker)


def _reconcile_all(world: World) -> None:
    for worker in world.workers:
        ops.reconcile(world, worker, 200)


def _idle(world: World, view: View) -> bool:
    """Nothing left to deliver (to a worker that can take it) and no run in flight."""
    held = {v for w in world.workers for v in w.versions}
    return (not any(m.dispatch.version in held for m in world.network)
            and not any(iv.runs for iv in view.instances.values()))


def quiesce(world: World) -> None:
    world.faults.enabled = False
    world.interleaving = None
    world.say("-- quiesce: no more faults")
    for _ in range(MAX_QUIESCE_ROUNDS):
        _deliver_all(world)
        if _idle(world, world.look_now()):
            break
        _reconcile_all(world)
        view = world.look_now()
        world.check(invariants.deadlines_enforced, view, frozenset(world.poisoned()))
        if _idle(world, view):
            break
        due = [m.not_before for m in world.network] + list(view.index.values())
        later = [t for t in due if t > world.now]
        world.advance(min(later) - world.now if later else world.settings.dispatch_timeout)
    view = world.look_now()
    world.check(invariants.nothing_in_flight, view)
    world.check(invariants.acks_settled, world.lab.redis, WF, world.record, world.expiry, view)
    world.say("-- past every retention and result TTL")
    world.advance((world.settings.retention or 0) + world.settings.result_ttl + 1)
    _reconcile_all(world)
    _deliver_all(world)
    world.check(invariants.deadlines_enforced, world.look_now())
