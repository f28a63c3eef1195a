"""The instance state machine: every change to an instance, decided without I/O.

Each transition takes what was read (a `Snapshot` of the state, the parsed `InstanceDoc`, the
leases, `now` from the caller's clock) and returns a `Step`: the writes for cas.lua and the
messages to send once they are applied. Submit, commit, a lost attempt, a reconciler look,
cancel, deadline, restart and delete are all such transitions, so every one of them goes
through the same fenced script, and none can interleave half-done with another. The
coordinator is the loop around them (read, decide, apply, send); the simulator in tests/sim
drives that loop through faults and clock jumps.

What every step ends with (`Machine.seal`): the state's new version, and the instance's keys
made lasting (an instance re-opened) or set to expire (finished, with `retention`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import reads
from .fields import Presence, header_name
from .frontier import BuilderError, RunState
from .graph import Graph
from .instance import (
    REMEMBERED,
    Dispatch,
    InstanceDoc,
    Settings,
    lease_field,
    queued_lease,
    running_lease,
)
from .layout import Effects, Keys, Listing, Ops, Snapshot, Want


@dataclass
class Step:
    """What a transition decided: writes for cas.lua, and what to send once they applied."""

    ops: Ops
    sends: list[Dispatch] = field(default_factory=list)
    inline: str | None = None  # a successor claimed by this step, to run in the same process
    doc: str = ""  # the document as this step writes it
    inline_want: Want | None = None  # what the reply reads for the inline successor
    fx: Effects = field(default_factory=Effects)  # on the keys shared by every instance
    failures: list[tuple[RunState, str, int, BuilderError]] = field(default_factory=list)
    settled: list[int] = field(default_factory=list)  # runs this step settled (after_run hooks)
    outcomes: list[str] = field(default_factory=list)  # observe: statuses of runs it settled
    ended: list[RunState] = field(default_factory=list)  # observe: the runs it settled
    instance_id: str = ""  # observe: whose step it is


def new_step(k: Keys) -> Step:
    return Step(Ops(k.state, k.data), instance_id=k.instance_id)


class Machine:
    """Pure decisions for every instance: settings, global key names and who is deciding."""

    def __init__(self, settings: Settings, worker_name: str) -> None:
        self.settings = settings
        self.worker_name = worker_name

    # -- building blocks --------------------------------------------------------------------

    @staticmethod
    def index(k: Keys, step: Step, when: float) -> None:
        """Bring the instance's next look by the reconciler forward to `when` (never later)."""
        step.fx.touch = min(step.fx.touch, when)

    @staticmethod
    def pin(graph: Graph, k: Keys, doc: InstanceDoc, step: Step) -> None:
        """Pin the instance to `graph`'s version (refused by the store if it was retired)."""
        if doc.version == graph.version:
            return
        if doc.version:
            Machine.unpin(graph.key, k, doc, step)
        # The last word of a step on one version counts: pinning again what it gave up (a
        # restart on the same version) must not leave the instance out of the version's set.
        taken = (graph.key, graph.version)
        step.fx.unpins = [u for u in step.fx.unpins if u != taken]
        step.fx.pins.append(taken)
        doc.version = graph.version

    @staticmethod
    def unpin(workflow: str, k: Keys, doc: InstanceDoc, step: Step) -> None:
        """The instance no longer holds its version (it finished, restarts or goes)."""
        if doc.version:
            given = (workflow, doc.version)
            step.fx.pins = [p for p in step.fx.pins if p != given]
            step.fx.unpins.append(given)
            doc.version = 0

    def dispatch(self, graph: Graph, k: Keys, inc: str, run: RunState, ready: list[str],
                 step: Step, now: float, *, inline_claim: str | None = None,
                 may_inline: Callable[[str], bool] | None = None) -> None:
        """Mark `ready` builders dispatched (attempt 1) with their leases.

        With `inline_claim`, a single ready builder that `may_inline` accepts is claimed right
        here (a running lease) and its inputs are read back by the same script, so it runs
        without a broker message.
        """
        inline = (inline_claim is not None and len(ready) == 1
                  and (may_inline is None or may_inline(ready[0])))
        for b in ready:
            run.dispatched(graph, b, 1)
            if inline and inline_claim is not None:
                deadline = now + graph.specs[b].time_limit + self.settings.lease_grace
                step.ops.hset(k.lease, {lease_field(run.id, b):
                                        running_lease(1, deadline, inline_claim)})
                data_names, run_names = input_names(graph, b)
                # cas.lua's HMGET needs at least one field; a dummy one reads back as nil.
                step.ops.add("HMGET", k.data, *(data_names or ["\x00"]))
                step.ops.add("HMGET", k.run(inc, run.id), *(run_names or ["\x00"]))
                # ... and, as the step leaves it, what the successor's own claim and commit
                # will read (reads.py): it decides from this reply, fenced on the next version.
                want = reads.commit(graph, run.id, b)
                step.inline_want = Want(want.fields | reads.claim(graph, run.id, b), want.data,
                                        want.whole)
                if want.whole:
                    step.ops.add("HGETALL", k.state)
                else:
                    step.ops.add("HMGET", k.state, *sorted(step.inline_want.fields))
                step.ops.add("HEXISTSM", k.data, *sorted(step.inline_want.data))
                self.index(k, step, deadline)
                step.inline = b
                return
            self.requeue(graph, k, inc, run, b, 1, step, now)

    def requeue(self, graph: Graph, k: Keys, inc: str, run: RunState, builder: str,
                token: int, step: Step, now: float, delay: float = 0.0) -> None:
        run.dispatched(graph, builder, token)
        deadline = now + delay + self.settings.dispatch_timeout
        step.ops.hset(k.lease, {lease_field(run.id, builder): queued_lease(token, deadline)})
        self.index(k, step, deadline)
        step.sends.append(Dispatch(graph.key, k.instance_id, run.id, builder, token, delay,
                                   version=graph.version, incarnation=inc, trace=run.trace))

    def failed(self, graph: Graph, k: Keys, inc: str, run: RunState, builder: str,
               token: int, error: BuilderError, step: Step, now: float) -> None:
        """A builder failed: retry per its policy, or fail the run once its retries are spent."""
        spec = graph.specs[builder]
        fails = run.add("f", builder)
        if fails <= spec.max_retries:
            self.requeue(graph, k, inc, run, builder, token + 1, step, now, spec.backoff(fails))
        else:
            run.failed_for_good(graph, builder, error)
        step.failures.append((run, builder, token, error))

    def lost(self, graph: Graph, k: Keys, inc: str, run: RunState, builder: str, token: int,
             why: str, step: Step, now: float) -> None:
        """An attempt was lost with its process: run it again at once under a new token
        (without spending retries), until `max_lost` such losses end it as WorkerLost."""
        count = run.add("l", builder)
        step.ops.add("HDEL", k.lease, lease_field(run.id, builder))
        if count <= self.settings.max_lost:
            self.requeue(graph, k, inc, run, builder, token + 1, step, now)
            error = BuilderError(builder, "AttemptLost", f"attempt {token}: {why}")
        else:
            error = BuilderError(builder, "WorkerLost",
                                 f"lost {count} attempts with their process (last: {why}); "
                                 f"max_lost is {self.settings.max_lost}")
            run.failed_for_good(graph, builder, error)
        step.failures.append((run, builder, token, error))
        step.ops.log(k, self.settings.log_length, ev="builder", inc=inc, run=run.id,
                     b=builder, attempt=token, at=f"{now:.6f}", secs="0",
                     result=f"error:{error.type}", by=self.worker_name)

    def place(self, graph: Graph, k: Keys, inc: str, doc: InstanceDoc, run: RunState,
              step: Step, now: float, *, completed: bool = False) -> None:
        """Keep an unsettled run in the document, or close a settled one: write its outcome,
        wake its waiters, append it to the history and drop it from the document."""
        if not run.settled:
            doc.runs[run.id] = run
            if run.id not in doc.open:
                doc.open.append(run.id)
            return
        produced = run.produced  # needs the whole run read (once per run)
        gone = [run.fields.full(f) for f in sorted(run.fields.names())]
        if run.id in doc.open:
            doc.open.remove(run.id)
            gone.append(header_name(run.id))
        doc.runs.pop(run.id, None)
        if gone:
            step.ops.add("HDEL", k.state, *gone)
        step.settled.append(run.id)
        step.outcomes.append(run.outcome)  # observe: for the runs-settled metric
        step.ended.append(run)  # observe: for the run's span
        if run.target_hit:
            doc.completed = True
        if run.outcome in REMEMBERED:
            doc.last = run.outcome  # the instance's status (InstanceDoc.state_name)
        outcome: dict[str, Any] = {
            "run": run.id, "inc": inc, "status": run.outcome,
            "completed": run.target_hit or completed, "produced": produced,
            "started": run.started, "ended": now, "version": graph.version,
        }
        if run.error is not None:
            outcome["error"] = run.error.to_json()
        if run.delta_id is not None:
            outcome["delta_id"] = run.delta_id
        blob = json.dumps(outcome, separators=(",", ":"))
        ttl = self.settings.result_ttl
        ops = step.ops
        ops.hset(k.run(inc, run.id), {"_outcome": blob})
        ops.add("EXPIRE", k.run(inc, run.id), ttl)
        ops.add("RPUSH", k.wake(inc, run.id), "1")
        ops.add("EXPIRE", k.wake(inc, run.id), ttl)
        ops.add("LPUSH", k.history, blob)
        ops.add("LTRIM", k.history, 0, self.settings.history - 1)

    def close(self, graph: Graph, k: Keys, inc: str, doc: InstanceDoc, step: Step, now: float,
              status: str) -> None:
        """Close every run in flight as `status`; nothing of them runs any more. Attempts
        still running find their commit refused (and keep their datum aside as late)."""
        step.ops.add("DEL", k.lease)
        for run in doc.every_run():
            run.close(graph, status)
            self.place(graph, k, inc, doc, run, step, now)

    def seal(self, graph: Graph, k: Keys, snap: Snapshot, reopened: bool, doc: InstanceDoc,
             step: Step, now: float, *, write: bool = True, inc: str = "") -> None:
        """End a step: watch what is left to watch, unpin a finished instance, set its keys'
        lifetime, and write the new version (which fences every step made from the old).
        `reopened`: the instance was new or finished before this step. Without `write` (a
        look that found nothing to change) only the index is kept up to date."""
        ops = step.ops
        if doc.finished:
            self.unpin(graph.key, k, doc, step)
            step.fx.watch = math.inf
        elif not doc.open and doc.deadline is not None and doc.status == "open":
            step.fx.watch = doc.deadline  # paused: the deadline is all there is left to watch
        elif not doc.open:
            step.fx.watch = math.inf
        if not write:
            return
        was, runs = InstanceDoc.brief(snap.doc)
        if doc.state_name != was or doc.next_run != runs or step.settled:
            # The listing moves only with the status, or as a run opens or settles: a builder's
            # plain commit adds nothing to write.
            step.fx.listing = Listing(doc.state_name, now, was, inc or snap.inc)
        doc.updated = now
        step.doc = doc.dump()
        writes: dict[str, Any] = {"v": snap.version + 1, "doc": step.doc}
        gone: list[str] = []
        for run in doc.runs.values():
            writes[header_name(run.id)] = run.header()
            for name, value in run.fields.dirty.items():
                if value is None:
                    gone.append(run.fields.full(name))
                else:
                    writes[run.fields.full(name)] = value
        if gone:
            ops.add("HDEL", k.state, *gone)
        ops.hset(k.state, writes)
        if doc.finished and self.settings.retention is not None:
            for key in k.lasting:
                ops.add("EXPIRE", key, self.settings.retention)
        elif reopened:
            # Re-opened (or new): whatever lifetime an earlier finish gave its keys is lifted,
            # whatever this process's own settings.
            for key in k.lasting:
                ops.add("PERSIST", key)


    @staticmethod
    def seal_quiet(k: Keys, snap: Snapshot, doc: InstanceDoc, run: RunState, was: Counts,
                   present: Presence, step: Step) -> bool:
        """End a commit that only moved its run's counters (a branch of a fan-out finishing
        while its siblings run: nothing dispatched, nothing settled, no failure), without the
        version fence, so that its siblings' commits do not conflict with it. False (nothing
        written) for any other step, which `seal` ends as ever.

        Instead of the version, the script checks all the decision read: the document, each
        field it looked at, and the run's header (QUIET in cas.lua: the same waiting builders,
        no error, target or close, the same pass, and every counter it moves still above 0,
        as the decision found them). Counters move by deltas and the datum's order is the
        produced count the script arrives at, so siblings' commits apply in any order. The
        version is still bumped, which fences every other step decided meanwhile."""
        fields = run.fields
        header = snap.fields.get(header_name(run.id))
        produced = run.n_produced - was.produced
        if (header is None or not fields.track or fields.read_all or present.asked
                or run.stopped or run.n_active <= 0 or run.n_active != was.active - 1
                or set(run.waiting) != set(was.waiting) or run.passed != was.passed
                or produced not in (0, 1)
                or any(r.fields.dirty for r in doc.runs.values() if r is not run)):
            return False
        moved = {w: n - was.waiting[w] for w, n in run.waiting.items() if n != was.waiting[w]}
        if any(run.waiting[w] <= 0 for w in moved):
            return False
        ops = step.ops
        ops.fenced = False
        ops.add("EXPECT", k.state, "doc", snap.doc)
        for name, seen in fields.read.items():
            ops.add("EXPECT", k.state, fields.full(name), seen)
        order = ""
        writes: dict[str, str] = {}
        gone: list[str] = []
        for name, value in fields.dirty.items():
            if name.startswith("p:") and produced:
                order = fields.full(name)  # the script numbers it
            elif value is None:
                gone.append(fields.full(name))
            else:
                writes[fields.full(name)] = value
        if gone:
            ops.add("HDEL", k.state, *gone)
        ops.hset(k.state, writes)
        ops.add("QUIET", k.state, header_name(run.id), header, -1, produced, order,
                *(x for w, d in sorted(moved.items()) for x in (w, d)))
        ops.add("HINCRBY", k.state, "v", 1)
        step.doc = snap.doc
        return True


@dataclass(frozen=True)
class Counts:
    """A run's counters as a step found them (what `seal_quiet` moves by deltas)."""

    active: int
    produced: int
    waiting: dict[str, int]
    passed: int

    @classmethod
    def of(cls, run: RunState) -> Counts:
        return cls(run.n_active, run.n_produced, dict(run.waiting), run.passed)


def input_names(graph: Graph, builder: str) -> tuple[list[str], list[str]]:
    """A builder's inputs: those kept in the instance's data, and the run's transients."""
    names = sorted(graph.specs[builder].readable_names)
    return ([n for n in names if n not in graph.transients],
            [n for n in names if n in graph.transients])
