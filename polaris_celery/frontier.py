"""The state of one run and the rules that decide what may run next. Pure: no I/O, no clocks.

Every executor drives a `RunState` through the same four calls, which is what makes local and
distributed runs behave identically:

    run = RunState.start(graph, run_id, delta_names, present)   # -> run.take_ready()
    run.dispatched(builder, token)                               # executor hands it out
    run.finished(graph, builder, produced_name_or_None, present) # -> newly ready builders
    run.failed_for_good(builder, error)                          # the run stops dispatching

Eligibility (DESIGN section 3): something among a builder's consumes or optionals is new in
this run, all its consumes are present, and it has not run in this run. A builder that is
eligible but has an eligible or active builder upstream of it waits in `waiting`, so it runs
once, on fresh inputs. `pending` (active plus waiting) is kept as a bitmask so the upstream test
is one AND per candidate; only the consumers of what just changed and the waiting builders are
ever examined, so the cost of a step follows the builders touched, not the graph's size.

Two rules make every executor run the same builders whatever the declaration order:
- A builder returned as ready is dispatched at once by every executor (the sequential one runs
  them one by one, in rank order). Stopping a run (target produced, a failure) only keeps new
  builders from becoming ready; it never drops one already returned.
- Passes, as DBF's level-by-level executor runs them: a datum a builder produces triggers only
  the consumers ranked after that builder (`Graph.what_follows`); one fed back around a cycle
  waits for the pass to end. When nothing is ready, waiting or active and the run has not
  stopped, the data produced in that pass (transients aside) trigger the next pass, in which
  builders that have not run yet may run. `passed` is where in `produced` the pass began.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from .graph import Graph


@dataclass
class BuilderError:
    builder: str
    type: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"builder": self.builder, "type": self.type, "message": self.message}

    @classmethod
    def from_json(cls, d: dict[str, str]) -> BuilderError:
        return cls(d["builder"], d["type"], d["message"])


@dataclass
class RunState:
    """What one run (one delta and everything it sets off) has seen, done and has in flight."""

    id: int
    new: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    active: dict[str, int] = field(default_factory=dict)  # builder -> attempt token
    waiting: set[str] = field(default_factory=set)
    produced: list[str] = field(default_factory=list)
    error: BuilderError | None = None
    target_hit: bool = False
    delta_id: str | None = None
    started: float = 0.0
    closed: str | None = None  # "cancelled", "timed_out" or "deleted" when the instance closed
    # Per builder: attempts that failed (spend max_retries) and attempts lost with their
    # process (spend max_lost). Attempt tokens count both, so every attempt has its own token.
    fails: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    passed: int = 0  # produced[passed:] were made in the current pass (DBF's level pass)
    # Bitmasks of active | waiting builders per graph component; derived, never serialized.
    _pending: dict[int, int] = field(default_factory=dict)

    # -- transitions ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls, graph: Graph, run_id: int, delta: Iterable[str], present: Set[str], **kw: Any
    ) -> tuple[RunState, list[str]]:
        run = cls(id=run_id, **kw)
        names = list(delta)
        run.new.update(names)
        if graph.target in run.new:
            run.target_hit = True
        return run, run._advance(graph, names, present)

    def dispatched(self, graph: Graph, builder: str, token: int) -> None:
        """Record that `builder` was handed out under attempt `token` (a retry re-dispatches)."""
        if builder not in self.active:
            self._mark(graph, builder)
        self.active[builder] = token

    def finished(
        self, graph: Graph, builder: str, produced: str | None, present: Set[str]
    ) -> list[str]:
        """`builder` returned; `produced` names its datum (None = "not now"). Returns what is
        newly ready. Data committed after the run failed or hit its target is still kept by the
        caller, but triggers nothing more."""
        self._retire(graph, builder)
        self.done.add(builder)
        if produced is None:
            return self._advance(graph, (), present)
        self.new.add(produced)
        self.produced.append(produced)
        if produced == graph.target:
            self.target_hit = True
        return self._advance(graph, (produced,), present, fed=True)

    def failed_for_good(self, graph: Graph, builder: str, error: BuilderError) -> None:
        self._retire(graph, builder)
        self.done.add(builder)
        if self.error is None:
            self.error = error
        self.waiting.clear()
        self._recompute_pending(graph)

    def close(self, graph: Graph, status: str) -> None:
        """The instance was cancelled or timed out: nothing of this run is in flight any more
        (attempts still running will find their commit refused)."""
        self.closed = status
        self.active.clear()
        self.waiting.clear()
        self._recompute_pending(graph)

    # -- questions -----------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """A run stops dispatching once it failed, produced the target or was closed."""
        return self.error is not None or self.target_hit or self.closed is not None

    @property
    def settled(self) -> bool:
        return not self.active and (self.stopped or not self.waiting)

    @property
    def outcome(self) -> str:
        if self.closed is not None:
            return self.closed
        if self.error is not None:
            return "failed"
        return "completed" if self.target_hit else "paused"

    # -- internals -----------------------------------------------------------------------------

    def _retire(self, graph: Graph, builder: str) -> None:
        if self.active.pop(builder, None) is not None:
            self._unmark(graph, builder)

    def _mark(self, graph: Graph, builder: str) -> None:
        c = graph.component[builder]
        self._pending[c] = self._pending.get(c, 0) | graph.bits[builder]

    def _unmark(self, graph: Graph, builder: str) -> None:
        c = graph.component[builder]
        mask = self._pending.get(c, 0)
        if mask & graph.bits[builder]:
            self._pending[c] = mask ^ graph.bits[builder]

    def _recompute_pending(self, graph: Graph) -> None:
        self._pending = {}
        for b in (*self.active, *self.waiting):
            self._mark(graph, b)

    def _advance(self, graph: Graph, changed: Sequence[str], present: Set[str],
                 fed: bool = False) -> list[str]:
        consumers = graph.what_follows if fed else graph.what_consumes  # fed: made by a builder
        if self.stopped:
            self.waiting.clear()
            self._recompute_pending(graph)
            return []
        previously_waiting = self.waiting
        if not previously_waiting and len(changed) == 1:
            # The common step (one datum produced, nothing waiting): its consumers are already
            # in rank order.
            ordered: Iterable[str] = consumers(changed[0])
        else:
            candidates = set(previously_waiting)
            for d in changed:
                candidates.update(consumers(d))
            ordered = sorted(candidates, key=graph.rank.__getitem__)
        self.waiting = set()
        ready: list[str] = []
        # In rank order, every upstream candidate has set its pending bit before a downstream
        # one is examined.
        for b in ordered:
            if b in self.done or b in self.active:
                continue
            if graph.ancestors[b] & self._pending.get(graph.component[b], 0):
                # Something upstream is pending, so whatever b's inputs are now, b cannot run
                # yet; its presence check is deferred until it is re-examined.
                self.waiting.add(b)
                self._mark(graph, b)
            elif all(c in present for c in graph.specs[b].consume_names):
                ready.append(b)  # pending until dispatched() makes it active (same bit)
                self._mark(graph, b)
            elif b in previously_waiting:
                self._unmark(graph, b)
        if not ready and not self.waiting and not self.active:  # the pass is over
            return self._next_pass(graph, present)
        return ready

    def _next_pass(self, graph: Graph, present: Set[str]) -> list[str]:
        """DBF's next level pass: what the pass that just ended produced (transients aside)
        triggers every consumer that has not run in this run, fed back or not."""
        made = [d for d in self.produced[self.passed:] if d not in graph.transients]
        self.passed = len(self.produced)
        return self._advance(graph, made, present) if made else []

    # -- serialization (the distributed executor stores runs in Redis) --------------------------

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "new": sorted(self.new),
            "done": sorted(self.done),
            "active": self.active,
            "waiting": sorted(self.waiting),
            "produced": self.produced,
            "started": self.started,
        }
        if self.error is not None:
            d["error"] = self.error.to_json()
        if self.target_hit:
            d["target_hit"] = True
        if self.delta_id is not None:
            d["delta_id"] = self.delta_id
        if self.closed is not None:
            d["closed"] = self.closed
        if self.fails:
            d["fails"] = self.fails
        if self.lost:
            d["lost"] = self.lost
        if self.passed:
            d["passed"] = self.passed
        return d

    @classmethod
    def from_json(cls, graph: Graph, d: dict[str, Any]) -> RunState:
        run = cls(
            id=int(d["id"]),
            new=set(d["new"]),
            done=set(d["done"]),
            active={k: int(v) for k, v in d["active"].items()},
            waiting=set(d["waiting"]),
            produced=list(d["produced"]),
            error=BuilderError.from_json(d["error"]) if "error" in d else None,
            target_hit=bool(d.get("target_hit", False)),
            delta_id=d.get("delta_id"),
            started=float(d.get("started", 0.0)),
            closed=d.get("closed"),
            fails={k: int(v) for k, v in d.get("fails", {}).items()},
            lost={k: int(v) for k, v in d.get("lost", {}).items()},
            passed=int(d.get("passed", 0)),
        )
        run._recompute_pending(graph)
        return run
