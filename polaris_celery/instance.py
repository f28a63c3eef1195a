"""An instance's coordination state in Redis, and the small value types around it.

`InstanceDoc` is the JSON document kept at `pc:{wf/id}:state`: the runs in flight (each a
`RunState` from the shared core), whether the instance completed, the workflow version it is
pinned to, and whether it is open, cancelled or timed out. Leases live beside it, one hash
field per dispatched builder: `token|q|deadline|resends` while queued, `token|r|deadline|claim`
while running (the claim names the one `execute` call holding it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .errors import ConfigurationError, PolarisError
from .fields import Fields, NeedMore, header_name
from .frontier import RunState
from .graph import Graph
from .layout import Snapshot


@dataclass(frozen=True)
class Dispatch:
    """One message to send: run `builder` of `run` under attempt `token`."""

    workflow: str
    instance_id: str
    run: int
    builder: str
    token: int
    countdown: float = 0.0
    version: int = 1
    incarnation: str = ""
    trace: str | None = None  # observe: the run's trace context (RunState.trace)


@dataclass(frozen=True)
class Settings:
    """Timings and switches of the distributed executor (see the README's configuration table).

    dispatch_timeout: a builder dispatched but not started within this many seconds is sent
      again (covers a worker that died between its commit and its send, and lost messages).
    lease_grace: added to a builder's time_limit to form the lease of a running attempt; a
      lease that expires counts as a lost attempt and the builder is re-dispatched.
    max_lost: attempts of one builder in one run that may be lost with their process (a
      SIGKILLed pool child, a worker gone) before the builder is given up as `WorkerLost`.
      Lost attempts never spend the builder's `max_retries`.
    inline: a builder whose completion leaves exactly one runnable successor bound for the same
      queue runs that successor in the same worker, saving a broker hop.
    dispatch_chunk: the most builders of one fan-out that share one broker message (1: one
      message each); see chunks.py for when they do.
    pack_spill: a worker running a packed message that has spent more than this many seconds
      on it sends the builders it still carries as messages of their own, so slow builders
      spread over every worker instead of queueing behind each other.
    result_ttl: how long a settled run's outcome and produced data stay readable.
    retention: seconds a completed instance's keys live after its last run settles (None: kept).
    reconcile_interval: how often each worker runs the reconciler.
    """

    dispatch_timeout: float = 30.0
    lease_grace: float = 10.0
    max_lost: int = 3
    inline: bool = True
    dispatch_chunk: int = 8
    pack_spill: float = 0.5
    result_ttl: int = 86400
    retention: int | None = None
    reconcile_interval: float = 5.0
    history: int = 50
    log_length: int = 1000
    max_datum_bytes: int = codec.DEFAULT_MAX_DATUM_BYTES

    def __post_init__(self) -> None:
        chunk = self.dispatch_chunk
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ConfigurationError(f"dispatch_chunk must be a whole number >= 1, got {chunk!r}")
        spill = self.pack_spill
        if not isinstance(spill, (int, float)) or isinstance(spill, bool) or spill < 0:
            raise ConfigurationError(f"pack_spill must be a number of seconds >= 0, got {spill!r}")


#: An instance's status as the query API and the listing show it (InstanceDoc.state_name).
STATUSES = ("open", "running", "paused", "completed", "failed", "cancelled", "timed_out")

#: Outcomes of a settled run that the document remembers (`last`): the others close the
#: instance ("cancelled", "timed_out", "deleted") or leave it as it was ("late").
REMEMBERED = ("completed", "paused", "failed")


@dataclass
class InstanceDoc:
    """An instance's coordination state: which runs are in flight, whether it completed, the
    workflow version it is pinned to, and whether it is open, cancelled or timed out.

    The document itself is small and the same size whatever the runs hold; each run in flight
    keeps a header (`r:N`) and one field per builder or datum beside it in the state hash
    (frontier.py), and `runs` holds those this step read."""

    next_run: int = 0
    open: list[int] = field(default_factory=list)  # runs in flight, oldest first
    runs: dict[int, RunState] = field(default_factory=dict)  # ... those loaded
    completed: bool = False
    created: float = 0.0
    updated: float = 0.0
    version: int = 0  # 0: not pinned (new, or completed with nothing in flight)
    status: str = "open"  # "open", "cancelled" or "timed_out"
    deadline: float | None = None
    last: str = ""  # outcome of the last run settled since creation or restart (REMEMBERED)

    @staticmethod
    def brief(raw: str) -> tuple[str, int]:
        """The status and the run counter of a stored document ("" and 0: none), without
        loading its runs: what a step compares to decide whether the listing changes."""
        if not raw:
            return "", 0
        d = json.loads(raw)
        doc = InstanceDoc(next_run=d["next"], open=d["runs"], completed=d["completed"],
                          status=d.get("status", "open"), last=d.get("last", ""))
        return doc.state_name, doc.next_run

    @property
    def state_name(self) -> str:
        """The instance's status (one of STATUSES), from this document alone:

        - "cancelled" / "timed_out": closed (a restart re-opens it);
        - "running": a run is in flight;
        - "failed": nothing in flight, and the last run settled failed (a builder's retries
          were spent), even if an earlier run had completed it;
        - "completed": nothing in flight, and the target was produced;
        - "paused": nothing in flight, the last run settled without the target: it waits for
          more data;
        - "open": nothing in flight and no run settled since it was created or restarted
          (a restart without data, or a delta that started no run yet).
        """
        if self.status != "open":
            return self.status
        if self.open:
            return "running"
        if self.last == "failed":
            return "failed"
        if self.completed:
            return "completed"
        return "paused" if self.last else "open"

    @property
    def finished(self) -> bool:
        """Nothing in flight and nothing more expected: completed, cancelled or timed out.
        Only a finished instance is unpinned from its version and may expire (`retention`)."""
        return not self.open and (self.completed or self.status != "open")

    def overdue(self, now: float) -> bool:
        """Open, with work in flight or still to come, and past its deadline."""
        return (self.status == "open" and self.deadline is not None and now >= self.deadline
                and (bool(self.open) or not self.completed))

    @staticmethod
    def version_of(snap: Snapshot) -> int:
        return int(json.loads(snap.doc).get("version", 0)) if snap.doc else 0

    @classmethod
    def load(cls, graph: Graph, snap: Snapshot) -> InstanceDoc:
        """The document, with every open run whose header the snapshot holds."""
        if not snap.doc:
            return cls()
        d = json.loads(snap.doc)
        doc = cls(
            next_run=d["next"],
            open=[int(r) for r in d["runs"]],
            completed=d["completed"],
            created=d.get("created", 0.0),
            updated=d.get("updated", 0.0),
            version=d.get("version", 0),
            status=d.get("status", "open"),
            deadline=d.get("deadline"),
            last=d.get("last", ""),
        )
        grouped = run_fields(snap.fields)
        for run_id in doc.open:
            header = snap.fields.get(header_name(run_id))
            if header is None:
                continue
            known = None if snap.known is None else {
                local for run, local in map(_local, snap.known) if run == run_id}
            doc.runs[run_id] = RunState.load(
                header, Fields(run_id, grouped.get(run_id, {}), known))
        return doc

    def run(self, run_id: int) -> RunState | None:
        """Run `run_id` if it is in flight (NeedMore if its header was not read)."""
        if run_id in self.runs:
            return self.runs[run_id]
        if run_id in self.open:
            raise NeedMore(fields=[header_name(run_id)])
        return None

    def every_run(self) -> list[RunState]:
        """Every run in flight; needs them all read."""
        missing = [header_name(r) for r in self.open if r not in self.runs]
        if missing:
            raise NeedMore(fields=missing)
        return [self.runs[r] for r in self.open]

    @property
    def pinned(self) -> bool:
        """An instance stays on its version until it completes with nothing in flight."""
        return self.version > 0 and not (self.completed and not self.open)

    def dump(self) -> str:
        d: dict[str, Any] = {
            "next": self.next_run,
            "runs": self.open,
            "completed": self.completed,
            "created": self.created,
            "updated": self.updated,
            "version": self.version,
            "status": self.status,
        }
        if self.deadline is not None:
            d["deadline"] = self.deadline
        if self.last:
            d["last"] = self.last
        return json.dumps(d, separators=(",", ":"))


def _local(full: str) -> tuple[int, str]:
    """`a:3:B` -> (3, `a:B`); (0, "") for a field that is not a run's."""
    kind, _, rest = full.partition(":")
    run, sep, name = rest.partition(":")
    if not sep or not run.isdigit() or len(kind) != 1:
        return 0, ""
    return int(run), f"{kind}:{name}"


def run_fields(fields: Mapping[str, str]) -> dict[int, dict[str, str]]:
    """The state hash's per-run fields, grouped by run (local names: `a:B`)."""
    out: dict[int, dict[str, str]] = {}
    for full, value in fields.items():
        run, local = _local(full)
        if run:
            out.setdefault(run, {})[local] = value
    return out


def runs_json(state: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every run in flight as one document each (status pages, tests), from the whole state
    hash."""
    if not state.get("doc"):
        return []
    grouped = run_fields(state)
    out = []
    for run_id in json.loads(state["doc"])["runs"]:
        header = state.get(header_name(int(run_id)))
        if header is not None:
            out.append(RunState.load(header, Fields(int(run_id), grouped.get(int(run_id), {})))
                       .to_json())
    return out


def lease_field(run: int, builder: str) -> str:
    return f"{run}/{builder}"


@dataclass(frozen=True)
class Lease:
    token: int
    state: str  # "q" (dispatched, not started) or "r" (running)
    deadline: float
    tag: str  # resends so far while queued; the claim id while running

    @property
    def resends(self) -> int:
        return int(self.tag) if self.state == "q" and self.tag.isdigit() else 0


def parse_lease(value: str) -> Lease:
    token, state, deadline, *tag = value.split("|", 3)
    return Lease(int(token), state, float(deadline), tag[0] if tag else "")


def queued_lease(token: int, deadline: float, resends: int = 0) -> str:
    return f"{token}|q|{deadline:.3f}|{resends}"


def running_lease(token: int, deadline: float, claim: str) -> str:
    return f"{token}|r|{deadline:.3f}|{claim}"


class UnknownVersion(PolarisError):
    """A message for a workflow version this process does not have (another worker may)."""
