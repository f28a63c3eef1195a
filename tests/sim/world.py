"""One simulated deployment per seed: a clock, a network of messages, worker processes (real
Coordinators, each with its own Registry and store over the lab's private redis-server), and the
record of what producers were told. Every call into the library goes through `act`, which turns
what can happen at an action's boundary into an outcome: it returned, it was refused (a
PolarisError), Redis was unreachable, or the process died (`Crash`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import polaris_celery as pc
from polaris_celery.coordinator import Coordinator
from polaris_celery.errors import PolarisError, StoreUnavailable
from polaris_celery.instance import Settings
from polaris_celery.testing import RedisServer

from . import compat, flows, invariants
from .faults import Crash, FaultPlan, Faults, SimStore, crash_points
from .invariants import Violation
from .observe import LogTail, View, client, key, observe
from .record import Record
from .ttl import Expiry

START = 1_000_000.0
WORKERS = 3
WF = flows.WORKFLOW


class Lab:
    """A private redis-server's database for many worlds (each flushes it first), and the
    stores of the workers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis = client(url)
        self.stores = [SimStore(url) for _ in range(WORKERS)]

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[Lab]:
        with RedisServer() as server:
            lab = cls(server.url)
            try:
                yield lab
            finally:
                for store in lab.stores:
                    store.close()
                lab.redis.close()


@dataclass
class Message:
    dispatch: Any  # polaris_celery.instance.Dispatch
    not_before: float

    def __str__(self) -> str:
        d = self.dispatch
        inc = getattr(d, "incarnation", "")
        run = f"{inc}:{d.run}" if inc else str(d.run)
        return f"{d.instance_id}/{run}/{d.builder}#{d.token}v{d.version}"


@dataclass
class Worker:
    name: str
    store: SimStore
    registry: pc.Registry
    coordinator: Coordinator

    @property
    def versions(self) -> list[int]:
        return self.registry.versions(WF)


class World:
    """The state of one seeded schedule."""

    def __init__(self, lab: Lab, seed: int, trace: Callable[[str], None] | None = None) -> None:
        self.lab = lab
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = START
        self.step = 0
        self.trace = trace
        self.settings = Settings(dispatch_timeout=30.0, lease_grace=5.0, result_ttl=200,
                                 retention=self.rng.choice((None, 50)), reconcile_interval=5.0)
        self.plan = FaultPlan.draw(self.rng)
        self.faults = Faults(self.plan, random.Random(f"{seed}/faults"))
        # A write in flight lets another process act: the faults call `_interleave`, which
        # runs `interleaving` (set by the scheduler, which owns the choice of actions).
        self.faults.interleave = self._interleave
        if trace is not None:
            self.faults.on_fire = self._fired
        self.instances = [f"i{n}" for n in range(self.rng.choice((2, 3)))]
        self.record = Record(self.instances)
        self.expiry = Expiry()
        self.tails = {i: LogTail() for i in self.instances}
        self.network: list[Message] = []
        self.violations: dict[str, tuple[int, Violation]] = {}
        self.depth = 0  # > 0 while an action runs inside another's write
        self.nested = 0  # actions that ran inside another's write, so far
        self.focus: str | None = None  # the instance the current step is about, if any
        self.touched = True  # whether Redis may have changed since the last check
        #: Called with the store of a write in flight, to run another process's action.
        self.interleaving: Callable[[World, SimStore], None] | None = None
        self._ids = itertools.count(1)
        self.workers = [self._worker(n, store) for n, store in enumerate(lab.stores)]
        if self.rng.random() < 0.3:
            self.workers[0].registry.register(WF, flows.FlowV2, version=2)

    def _worker(self, n: int, store: SimStore) -> Worker:
        store.faults, store.looked, store.poisoned = self.faults, [], set()
        registry = pc.Registry(store)
        registry.register(WF, flows.FlowV1, version=1)
        name = f"w{n}"
        options = compat.coordinator_options(self.clock, self._new_id,
                                             random.Random(f"{self.seed}/{name}"))
        c = Coordinator(registry, self._sender(name), self.settings, worker_name=name, **options)
        return Worker(name, store, registry, c)

    def clock(self) -> float:
        return self.now

    def _new_id(self) -> str:
        return f"{next(self._ids):012x}"

    def say(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"{self.step:3d} t+{self.now - START:8.3f} {'  ' * self.depth}{text}")

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Install this world's clock, faults and builder fates for the duration."""
        self.lab.redis.flushdb()
        random.seed(f"{self.seed}/library")  # whatever the library draws from `random`
        logger = logging.getLogger("polaris_celery")
        level = logger.level
        logger.setLevel(logging.WARNING if self.trace else logging.CRITICAL)
        flows.FATES.decide = self._fate
        try:
            with compat.legacy_time(self.clock), crash_points(self.faults):
                yield
        finally:
            flows.FATES.decide = None
            logger.setLevel(level)

    def _fate(self, builder: str, instance: str) -> bool:
        if self.faults.roll("builder_fails"):
            self.record.facts[instance].told_to_fail.add(builder)
            self.say(f"  ! {builder} told to fail")
            return True
        return False

    def _fired(self, kind: str) -> None:
        if kind != "builder_fails":
            self.say(f"  ! {kind}")

    def _sender(self, name: str) -> Callable[[Sequence[Any]], None]:
        def send(batch: Sequence[Any]) -> None:
            for d in batch:
                if self.faults.roll("send_crash"):
                    raise Crash(f"{name} died while sending")
                self.network.append(Message(d, self.now + d.countdown))

        return send

    def _interleave(self, store: SimStore) -> None:
        if self.depth or self.interleaving is None:
            return
        self.depth += 1
        self.nested += 1
        try:
            self.interleaving(self, store)
        finally:
            self.depth -= 1

    # -- acting ------------------------------------------------------------------------------

    def act(self, label: str, instance: str | None, fn: Callable[[], Any]) -> tuple[str, Any]:
        """Run one call into the library as one process would; returns (outcome, value)."""
        self.say(label)
        self.touched = True
        try:
            value = fn()
        except Crash as exc:
            if instance is not None:
                self.record.facts[instance].tainted = True
            self.say(f"  = the process died ({exc})")
            return "crash", exc
        except StoreUnavailable as exc:
            if instance is not None:  # it gave up mid-call: an attempt may be left holding
                self.record.facts[instance].tainted = True
            self.say(f"  = {exc}")
            return "unavailable", exc
        except PolarisError as exc:
            self.say(f"  = refused: {type(exc).__name__}: {exc}")
            return "refused", exc
        except Exception as exc:
            self.violate(Violation("internal-error", f"{label} raised {type(exc).__name__}: "
                                   f"{exc}\n{traceback.format_exc()}"))
            return "error", exc
        if value is not None:
            self.say(f"  = {value!r}")
        return "ok", value

    def poisoned(self) -> set[str]:
        """Instances a reconciler's look failed on (put back by a backoff, not judged)."""
        return set().union(*(w.store.poisoned for w in self.workers))

    def violate(self, v: Violation) -> None:
        """Keep the first violation of each invariant (later ones tend to be its echoes)."""
        if v.invariant not in self.violations:
            self.say(f"VIOLATION {v}")
            self.violations[v.invariant] = (self.step, v)

    def check(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Violation as v:
            self.violate(v)

    def worker_with(self, version: int) -> Worker | None:
        able = [w for w in self.workers if version in w.versions]
        return self.rng.choice(able) if able else None

    # -- time and observation --------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the clock on, and expire the keys Redis would have expired meanwhile."""
        self.now = round(self.now + seconds, 3)
        gone = self.expiry.expire(self.lab.redis, self.now)
        self.touched = self.touched or bool(gone)
        for i in self.instances:
            facts = self.record.facts[i]
            if key(WF, i, "data") in gone:
                facts.dropped(flows.KEPT, sure=True)
            if key(WF, i, "deltas") in gone or key(WF, i, "state") in gone:
                facts.epoch.clear()
        if gone:
            self.say(f"expired {', '.join(gone)}")

    def look(self) -> View:
        view = observe(self.lab.redis, WF, self.tails, self.now)
        self.expiry.note(view.expiry, self.now)
        return view

    def check_step(self) -> View | None:
        """After every step that may have changed Redis: the invariants that must hold at any
        moment. Returns what it read (None: nothing changed, nothing read)."""
        if not self.touched:
            return None
        self.touched = False
        view = self.look()
        self.check(invariants.single_commit, view, self.record)
        self.check(invariants.attempts_lost_for_a_reason, view, self.record)
        self.check(invariants.inputs_kept, view, self.record)
        self.check(invariants.retired_unused, view, self.record)
        self.check(invariants.no_leftover_fields, view)
        self.check(invariants.no_immortal_keys, view,
                   {i: key(WF, i, "state") for i in self.instances})
        self.check(invariants.incarnations, view, self.record)
        self.check(invariants.watched, view, WF, self.poisoned())
        self.check(invariants.listed, self.lab.redis, WF, view)
        return view

    def look_now(self) -> View:
        """`check_step`, reading Redis even if nothing changed (the clock may have)."""
        self.touched = True
        view = self.check_step()
        assert view is not None
        return view

    def read_inc(self, instance: str) -> str:
        return str(self.lab.redis.hget(key(WF, instance, "state"), "inc") or "")
