"""The state of one run and the rules that decide what may run next. Pure: no I/O, no clocks.

Every executor drives a `RunState` through the same four calls, which is what makes local and
distributed runs behave identically:

    run = RunState.start(graph, run_id, delta_names, present)   # -> newly ready builders
    run.dispatched(builder, token)                               # executor hands it out
    run.finished(graph, builder, produced_name_or_None, present) # -> newly ready builders
    run.failed_for_good(builder, error)                          # the run stops dispatching

Eligibility (DESIGN section 3): something among a builder's consumes or optionals is new in
this run, all its consumes are present, and it has not run in this run. A builder that is
eligible but has an eligible or active builder upstream of it waits in `waiting`, so it runs
once, on fresh inputs.

What a run holds is split so that one step touches O(1) of it in the number of builders in
flight (issue 12): a small header (counts, the waiting builders, the outcome so far) and one
field per builder or datum (`a:B` its attempt token while active, `x:B` it ran, `f:B` / `l:B`
failed / lost attempts, `n:D` datum D is new in this run, `p:D` the order D was produced in).
The distributed executor keeps those fields in the instance's state hash and reads only the ones
a step needs: `Fields` (fields.py) answers from what was read and raises `NeedMore` for anything
else, and the caller reads that too and decides again. Each waiting builder keeps the count of
its active ancestors, updated as builders start and finish, so a join behind a fan-out of W
builders is re-examined in O(1) per branch, not by looking at the W branches each time.

Two rules make every executor run the same builders whatever the declaration order:
- A builder returned as ready is dispatched at once by every executor (the sequential one runs
  them one by one, in rank order). Stopping a run (target produced, a failure) only keeps new
  builders from becoming ready; it never drops one already returned.
- Passes, as DBF's level-by-level executor runs them: a datum a builder produces triggers only
  the consumers ranked after that builder (`Graph.what_follows`); one fed back around a cycle
  waits for the pass to end. When nothing is ready, waiting or active and the run has not
  stopped, the data produced in that pass (transients aside) trigger the next pass, in which
  builders that have not run yet may run. `passed` counts the data produced before the
  current pass began (their `p:D` order is at most `passed`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from .fields import Fields, NeedMore, Presence
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


@functools.lru_cache(maxsize=65536)
def upstream(graph: Graph, builder: str) -> tuple[str, ...]:
    """The builders upstream of `builder` (its `ancestors` bitmask, as names)."""
    return tuple(b for b in graph.specs if graph.is_upstream(b, builder))


@dataclass
class RunState:
    """What one run (one delta and everything it sets off) has seen, done and has in flight."""

    id: int
    error: BuilderError | None = None
    target_hit: bool = False
    delta_id: str | None = None
    started: float = 0.0
    closed: str | None = None  # "cancelled", "timed_out" or "deleted" when the instance closed
    trace: str | None = None  # the run's trace context, opaque (tracing.py); None: untraced
    # Waiting builders -> how many of their ancestors are active (kept up to date as builders
    # start and finish, so re-examining one costs no reads).
    waiting: dict[str, int] = field(default_factory=dict)
    n_active: int = 0
    n_produced: int = 0
    passed: int = 0  # data produced before the current pass (DBF's level pass) began
    fields: Fields = field(default_factory=lambda: Fields(0))

    def __post_init__(self) -> None:
        if self.fields.run_id != self.id:
            self.fields = Fields(self.id)

    # -- transitions ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls, graph: Graph, run_id: int, delta: Iterable[str], present: Set[str], **kw: Any
    ) -> tuple[RunState, list[str]]:
        run = cls(id=run_id, **kw)
        names = list(delta)
        for n in names:
            run.fields.put(f"n:{n}", "1")
        if graph.target in names:
            run.target_hit = True
        return run, run._advance(graph, names, present)

    def dispatched(self, graph: Graph, builder: str, token: int) -> None:
        """Record that `builder` was handed out under attempt `token` (a retry re-dispatches)."""
        if self.token(builder) is None:
            self.n_active += 1
            for w in self.waiting:
                if graph.is_upstream(builder, w):
                    self.waiting[w] += 1
        self.fields.put(f"a:{builder}", str(token))

    def finished(
        self, graph: Graph, builder: str, produced: str | None, present: Set[str]
    ) -> list[str]:
        """`builder` returned; `produced` names its datum (None = "not now"). Returns what is
        newly ready. Data committed after the run failed or hit its target is still kept by the
        caller, but triggers nothing more."""
        self._retire(graph, builder)
        self.fields.put(f"x:{builder}", "1")
        if produced is None:
            return self._advance(graph, (), present)
        self.fields.put(f"n:{produced}", "1")
        if self.fields.get(f"p:{produced}") is None:
            self.n_produced += 1
            self.fields.put(f"p:{produced}", str(self.n_produced))
        if produced == graph.target:
            self.target_hit = True
        return self._advance(graph, (produced,), present, fed=True)

    def failed_for_good(self, graph: Graph, builder: str, error: BuilderError) -> None:
        self._retire(graph, builder)
        self.fields.put(f"x:{builder}", "1")
        if self.error is None:
            self.error = error
        self.waiting.clear()

    def close(self, graph: Graph, status: str) -> None:
        """The instance was cancelled or timed out: nothing of this run is in flight any more
        (attempts still running will find their commit refused)."""
        for builder in self.active:
            self.fields.put(f"a:{builder}", None)
        self.closed = status
        self.n_active = 0
        self.waiting.clear()

    # -- questions -----------------------------------------------------------------------------

    def token(self, builder: str) -> int | None:
        """The attempt token `builder` is active under, or None."""
        got = self.fields.get(f"a:{builder}")
        return int(got) if got is not None else None

    def count(self, kind: str, builder: str) -> int:
        """Attempts of `builder` that failed (`f`) or were lost (`l`) in this run."""
        return int(self.fields.get(f"{kind}:{builder}") or 0)

    def add(self, kind: str, builder: str) -> int:
        n = self.count(kind, builder) + 1
        self.fields.put(f"{kind}:{builder}", str(n))
        return n

    def is_new(self, name: str) -> bool:
        return self.fields.get(f"n:{name}") is not None

    @property
    def active(self) -> dict[str, int]:
        """Every active builder -> its token (needs every field read)."""
        return {b: int(t) for b, t in self.fields.kind("a").items()}

    @property
    def done(self) -> set[str]:
        return set(self.fields.kind("x"))

    @property
    def new(self) -> set[str]:
        return set(self.fields.kind("n"))

    @property
    def produced(self) -> list[str]:
        """The data produced in this run, in the order they were produced."""
        seq = self.fields.kind("p")
        return sorted(seq, key=lambda d: int(seq[d]))

    @property
    def stopped(self) -> bool:
        """A run stops dispatching once it failed, produced the target or was closed."""
        return self.error is not None or self.target_hit or self.closed is not None

    @property
    def settled(self) -> bool:
        return self.n_active == 0 and (self.stopped or not self.waiting)

    @property
    def outcome(self) -> str:
        if self.closed is not None:
            return self.closed
        if self.error is not None:
            return "failed"
        return "completed" if self.target_hit else "paused"

    # -- internals -----------------------------------------------------------------------------

    def _retire(self, graph: Graph, builder: str) -> None:
        if self.token(builder) is not None:
            self.fields.put(f"a:{builder}", None)
            self.n_active -= 1
            for w in self.waiting:
                if graph.is_upstream(builder, w):
                    self.waiting[w] -= 1

    def _present(self, graph: Graph, present: Set[str], name: str) -> bool:
        # A transient lives only in its run: it is there if it is new in this run.
        return self.is_new(name) if name in graph.transients else name in present

    def _active_upstream(self, graph: Graph, builder: str) -> int:
        if not self.n_active:
            return 0
        names = upstream(graph, builder)
        self.fields.need(f"a:{b}" for b in names)
        return sum(1 for b in names if self.token(b) is not None)

    def _advance(self, graph: Graph, changed: Sequence[str], present: Set[str],
                 fed: bool = False) -> list[str]:
        consumers = graph.what_follows if fed else graph.what_consumes  # fed: made by a builder
        if self.stopped:
            self.waiting.clear()
            return []
        before = self.waiting
        if not before and not self.n_active and len(changed) == 1 \
                and self.fields.known is None and not isinstance(present, Presence):
            return self._advance_quiet(graph, consumers(changed[0]), present)
        if not before and len(changed) == 1:
            # The common step (one datum produced, nothing waiting): its consumers are already
            # in rank order.
            ordered: Sequence[str] = consumers(changed[0])
        else:
            candidates = set(before)
            for d in changed:
                candidates.update(consumers(d))
            ordered = sorted(candidates, key=graph.rank.__getitem__)
        # Ask for everything this pass may read at once, so a partial view costs one more read
        # at most per kind, not one per candidate.
        fresh = [b for b in ordered if b not in before]
        partial = not self.fields.complete
        if partial:
            self.fields.need([f"a:{b}" for b in fresh] + [f"x:{b}" for b in fresh])
        fresh = [b for b in fresh if self.token(b) is None and self.fields.get(f"x:{b}") is None]
        active_up = {b: self._active_upstream(graph, b) for b in fresh}
        active_up.update(before)
        if partial or isinstance(present, Presence):
            self._need_inputs(graph, present, [b for b, n in active_up.items() if not n])
        # Bits of the builders pending in this pass beyond the active ones (waiting, or found
        # ready), per component: a candidate with one of them upstream waits too.
        pending: dict[int, int] = {}
        for b in before:
            pending[graph.component[b]] = pending.get(graph.component[b], 0) | graph.bits[b]
        self.waiting = {}
        ready: list[str] = []
        # In rank order, every upstream candidate has set its pending bit before a downstream
        # one is examined.
        for b in ordered:
            if b not in active_up:
                continue  # active or done already
            c = graph.component[b]
            pending[c] = pending.get(c, 0) & ~graph.bits[b]
            if active_up[b] or graph.ancestors[b] & pending[c]:
                self.waiting[b] = active_up[b]
                pending[c] |= graph.bits[b]
            elif all(self._present(graph, present, n) for n in graph.specs[b].consume_names):
                ready.append(b)  # pending until dispatched() makes it active
                pending[c] |= graph.bits[b]
        if not ready and not self.waiting and not self.n_active:  # the pass is over
            return self._next_pass(graph, present)
        return ready

    def _advance_quiet(self, graph: Graph, ordered: Sequence[str], present: Set[str]
                       ) -> list[str]:
        """`_advance` of one datum's consumers (in rank order) with nothing active or waiting
        and every field known: a local executor's common step, by the same rules without the
        bookkeeping that active and waiting builders and a partial view need."""
        values = self.fields.values
        pending: dict[int, int] = {}
        ready: list[str] = []
        for b in ordered:
            if f"x:{b}" in values or f"a:{b}" in values:
                continue  # done (or active: not while nothing is active)
            c = graph.component[b]
            bits = pending.get(c, 0)
            if graph.ancestors[b] & bits:
                self.waiting[b] = 0
            elif all(self._present(graph, present, n) for n in graph.specs[b].consume_names):
                ready.append(b)
            else:
                continue
            pending[c] = bits | graph.bits[b]
        if not ready and not self.waiting:  # the pass is over
            return self._next_pass(graph, present)
        return ready

    def _next_pass(self, graph: Graph, present: Set[str]) -> list[str]:
        """DBF's next level pass: what the pass that just ended produced (transients aside)
        triggers every consumer that has not run in this run, fed back or not. Needs the run's
        produced data (a whole read in the distributed executor, once per pass)."""
        if self.n_produced == self.passed:
            return []
        made = [d for d in self.produced[self.passed:] if d not in graph.transients]
        self.passed = self.n_produced
        return self._advance(graph, made, present) if made else []

    def _need_inputs(self, graph: Graph, present: Set[str], builders: Iterable[str]) -> None:
        """Ask at once for what deciding whether `builders` have their consumes needs: the
        presence of lasting data, and whether transients are new in this run."""
        names = {n for b in builders for n in graph.specs[b].consume_names}
        fields = [f"n:{n}" for n in names if n in graph.transients]
        missing_fields: frozenset[str] = frozenset()
        try:
            self.fields.need(fields)
        except NeedMore as e:
            missing_fields = e.fields
        missing = present.missing(n for n in names if n not in graph.transients) \
            if isinstance(present, Presence) else []
        if missing_fields or missing:
            raise NeedMore(missing_fields, missing)

    # -- storage (the distributed executor keeps runs in the instance's state hash) ------------

    def header(self) -> str:
        d: dict[str, Any] = {"id": self.id, "started": self.started, "active": self.n_active,
                             "produced": self.n_produced}
        if self.waiting:
            d["waiting"] = self.waiting
        if self.error is not None:
            d["error"] = self.error.to_json()
        if self.target_hit:
            d["target_hit"] = True
        if self.delta_id is not None:
            d["delta_id"] = self.delta_id
        if self.closed is not None:
            d["closed"] = self.closed
        if self.passed:
            d["passed"] = self.passed
        if self.trace is not None:
            d["trace"] = self.trace
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def load(cls, header: str, fields: Fields) -> RunState:
        d = json.loads(header)
        return cls(
            id=int(d["id"]),
            error=BuilderError.from_json(d["error"]) if "error" in d else None,
            target_hit=bool(d.get("target_hit", False)),
            delta_id=d.get("delta_id"),
            started=float(d.get("started", 0.0)),
            closed=d.get("closed"),
            waiting={k: int(v) for k, v in d.get("waiting", {}).items()},
            n_active=int(d.get("active", 0)),
            n_produced=int(d.get("produced", 0)),
            fields=fields,
            passed=int(d.get("passed", 0)),
            trace=d.get("trace"),
        )

    def to_json(self) -> dict[str, Any]:
        """The whole run as one document (status pages, tests); needs every field."""
        d: dict[str, Any] = json.loads(self.header())
        d.update(new=sorted(self.new), done=sorted(self.done), active=self.active,
                 waiting=sorted(self.waiting), produced=self.produced,
                 fails={b: int(n) for b, n in self.fields.kind("f").items()},
                 lost={b: int(n) for b, n in self.fields.kind("l").items()})
        return d
