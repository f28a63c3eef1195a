"""Read-only views of an instance for operators: its data, what is in flight, what ran where.

Everything here reads the keys listed in `stores.redis` through the store's own client and
`Keys`, and returns frozen dataclasses; rendering them is the CLI's business, so these views can
be tested (and reused, e.g. by a web page) without a terminal. Nothing here writes to Redis.

Sources, per instance:
  state   the coordinator's `InstanceDoc` (completed flag, timestamps), and beside it each run
          in flight: a header and one field per builder or datum (frontier.py)
  lease   `run/builder -> token|q|deadline|resends` (queued) or `token|r|deadline|claim`
  data    the instance's data (only their sizes are read, with HSTRLEN)
  history summaries of settled runs, newest first
  log     the stream with one entry per delta and per builder attempt (who, where, when, how long)

Reading is best-effort consistent: one MULTI/EXEC for everything but the data sizes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import StoreUnavailable
from .graph import Graph
from .instance import runs_json
from .stores.redis import Keys, RedisError, RedisStore
from .views import ActiveBuilder

T = TypeVar("T")

#: How many log entries the views read at most (the coordinator keeps about 1000).
LOG_LIMIT = 2000


@dataclass(frozen=True)
class LogEntry:
    """One entry of an instance's log stream: a delta, or one builder attempt."""

    id: str
    event: str  # "delta" or "builder"
    run: int
    at: float  # when the delta was stored, or when the attempt started
    seconds: float
    by: str  # the worker (host:pid) or producer that wrote the entry
    builder: str | None = None
    attempt: int | None = None
    result: str | None = None  # produced datum, "-" (returned None) or "error:Type"
    data: tuple[str, ...] = ()  # the delta's data names

    @property
    def ended(self) -> float:
        return self.at + self.seconds

    @property
    def produced(self) -> str | None:
        if self.event != "builder" or not self.result or self.result == "-":
            return None
        return None if self.result.startswith("error:") else self.result

    @property
    def failed(self) -> bool:
        return bool(self.result and self.result.startswith("error:"))


@dataclass(frozen=True)
class Datum:
    """One datum the instance holds, and who wrote its current value (from the log)."""

    name: str
    size: int  # bytes, as stored (JSON)
    producer: str | None  # a builder's name, "delta", or None once the log no longer says
    run: int | None
    at: float | None
    is_input: bool
    is_target: bool


@dataclass(frozen=True)
class RunInFlight:
    """A run that has not settled: what it brought, what ran, what is still to come."""

    run: int
    started: float
    new: tuple[str, ...]
    done: tuple[str, ...]
    produced: tuple[str, ...]
    delta_id: str | None
    error: Mapping[str, str] | None
    target_hit: bool


@dataclass(frozen=True)
class SettledRun:
    """A run from the instance's history: how it ended and what it produced."""

    run: int
    status: str  # "completed", "paused" or "failed"
    completed: bool
    produced: tuple[str, ...]
    started: float
    ended: float
    error: Mapping[str, str] | None
    delta_id: str | None

    @property
    def seconds(self) -> float:
        return max(self.ended - self.started, 0.0)


@dataclass(frozen=True)
class InstanceStatus:
    """Everything `polaris status` shows about one instance."""

    workflow: str
    instance_id: str
    target: str
    version: int
    completed: bool
    created: float
    updated: float
    data: tuple[Datum, ...]
    builders: tuple[ActiveBuilder, ...]
    runs: tuple[RunInFlight, ...]
    history: tuple[SettledRun, ...]
    absent_inputs: tuple[str, ...]  # inputs (data no builder produces) no delta brought yet
    read_at: float
    closed: str = "open"  # "open", "cancelled" or "timed_out"
    workflow_version: int = 0  # the workflow version the instance is pinned to (0: none)
    deadline: float | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0 or bool(self.data) or bool(self.history)

    @property
    def state(self) -> str:
        """"running" while a run is in flight, else "completed", "paused" or "unknown"."""
        if not self.exists:
            return "unknown"
        if self.closed != "open":
            return self.closed
        if self.runs:
            return "running"
        return "completed" if self.completed else "paused"



@dataclass(frozen=True)
class Bar:
    """One builder attempt on the timeline."""

    builder: str
    attempt: int
    worker: str
    start: float
    seconds: float
    result: str


@dataclass(frozen=True)
class RunTimeline:
    """One run: the delta that started it and each attempt it set off, in start order."""

    run: int
    started: float
    delta: tuple[str, ...]
    producer: str | None
    bars: tuple[Bar, ...]
    status: str | None  # from the history; None while in flight or once forgotten

    @property
    def ended(self) -> float:
        return max((b.start + b.seconds for b in self.bars), default=self.started)

    @property
    def seconds(self) -> float:
        return max(self.ended - self.started, 0.0)


# -- reading ----------------------------------------------------------------------------------


def _redis(fn: Callable[[], T], what: str) -> T:
    try:
        return fn()
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"Redis unreachable while {what}: {exc}") from exc


def _s(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else v


def parse_log(entries: Iterable[Any]) -> list[LogEntry]:
    """Stream entries (as redis-py returns them) to `LogEntry`s, skipping any malformed one."""
    out: list[LogEntry] = []
    for sid, raw in entries:
        try:
            if isinstance(raw, list):  # a cluster's MULTI/EXEC replies without callbacks
                raw = dict(zip(raw[::2], raw[1::2], strict=True))
            f = {_s(k): _s(v) for k, v in (raw or {}).items()}
            ev = f["ev"]
            common: dict[str, Any] = {
                "id": _s(sid), "event": ev, "run": int(f["run"]), "at": float(f["at"]),
                "by": f.get("by", ""),
            }
            if ev == "delta":
                names = tuple(n for n in f.get("data", "").split(",") if n)
                out.append(LogEntry(seconds=0.0, data=names, **common))
            elif ev == "builder":
                out.append(LogEntry(seconds=float(f.get("secs", 0.0)), builder=f["b"],
                                    attempt=int(f.get("attempt", 0)), result=f.get("result"),
                                    **common))
        except (KeyError, ValueError, AttributeError):
            continue
    return out


def parse_history(raw: Iterable[bytes | str]) -> list[SettledRun]:
    out: list[SettledRun] = []
    for blob in raw:
        try:
            d = json.loads(blob)
            out.append(SettledRun(
                run=int(d["run"]), status=str(d["status"]), completed=bool(d["completed"]),
                produced=tuple(d.get("produced", ())), started=float(d.get("started", 0.0)),
                ended=float(d.get("ended", 0.0)), error=d.get("error"),
                delta_id=d.get("delta_id"),
            ))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def parse_leases(raw: Mapping[bytes, bytes]) -> dict[tuple[int, str], tuple[int, str, float]]:
    out: dict[tuple[int, str], tuple[int, str, float]] = {}
    for fld, value in raw.items():
        try:
            run, _, builder = _s(fld).partition("/")
            token, state, deadline = _s(value).split("|")[:3]
            out[(int(run), builder)] = (int(token), state, float(deadline))
        except ValueError:
            continue
    return out


def in_flight(state: Mapping[str, str],
               leases: dict[tuple[int, str], tuple[int, str, float]]
               ) -> tuple[list[RunInFlight], list[ActiveBuilder]]:
    runs: list[RunInFlight] = []
    builders: list[ActiveBuilder] = []
    for r in runs_json(state):
        run_id = int(r["id"])
        runs.append(RunInFlight(
            run=run_id, started=float(r.get("started", 0.0)), new=tuple(sorted(r["new"])),
            done=tuple(sorted(r["done"])), produced=tuple(r.get("produced", ())),
            delta_id=r.get("delta_id"), error=r.get("error"),
            target_hit=bool(r.get("target_hit", False)),
        ))
        for builder, token in sorted(r.get("active", {}).items()):
            lease = leases.get((run_id, builder))
            if lease is None:
                builders.append(ActiveBuilder(run_id, builder, int(token), "unsent", None))
                continue
            ltoken, lstate, deadline = lease
            shown = {"q": "queued", "r": "running"}.get(lstate, lstate)
            builders.append(ActiveBuilder(run_id, builder, ltoken, shown, deadline))
        for builder in sorted(r.get("waiting", ())):
            builders.append(ActiveBuilder(run_id, builder, None, "waiting", None))
    return runs, builders


def read_log(store: RedisStore, keys: Keys, limit: int = LOG_LIMIT) -> list[LogEntry]:
    """The newest `limit` entries of the instance's log, oldest first."""
    got: list[Any] = _redis(lambda: list(store.client.xrevrange(keys.log, count=limit) or []),
                            "reading the log")
    return parse_log(reversed(got))


def read_status(store: RedisStore, graph: Graph, instance_id: str, *,
                history: int = 20, now: float | None = None) -> InstanceStatus:
    """Read one instance's state, leases, data sizes, history and log into an InstanceStatus."""
    k = store.keys(graph.key, instance_id)

    def first() -> list[Any]:
        pipe = store.client.pipeline(transaction=True)
        pipe.hgetall(k.state)
        pipe.hgetall(k.lease)
        pipe.hkeys(k.data)
        pipe.lrange(k.history, 0, history - 1)
        pipe.xrevrange(k.log, count=LOG_LIMIT)
        return list(pipe.execute())

    state_raw, lease_raw, names_raw, history_raw, log_raw = _redis(first, "reading status")
    state = {_s(f): _s(x) for f, x in state_raw.items()}
    v, doc_raw = state.get("v"), state.get("doc")
    names = sorted(_s(n) for n in names_raw)

    def sizes() -> list[int]:
        pipe = store.client.pipeline(transaction=False)
        for n in names:
            pipe.hstrlen(k.data, n)
        return [int(x) for x in pipe.execute()]

    size_of = dict(zip(names, _redis(sizes, "reading data sizes"), strict=True)) if names else {}
    doc: dict[str, Any] = json.loads(doc_raw) if doc_raw else {}
    runs, builders = in_flight(state, parse_leases(lease_raw))
    writers = last_writers(parse_log(reversed(list(log_raw or []))))
    data = []
    for n in names:
        producer, run, at = writers.get(n, (None, None, None))
        data.append(Datum(name=n, size=size_of.get(n, 0), producer=producer, run=run, at=at,
                          is_input=n in graph.inputs, is_target=n == graph.target))
    return InstanceStatus(
        workflow=graph.key, instance_id=instance_id, target=graph.target,
        version=int(v or 0), completed=bool(doc.get("completed", False)),
        created=float(doc.get("created", 0.0)), updated=float(doc.get("updated", 0.0)),
        data=tuple(data), builders=tuple(builders), runs=tuple(runs),
        history=tuple(parse_history(history_raw)),
        absent_inputs=tuple(sorted(graph.inputs - set(names) - graph.transients)),
        read_at=time.time() if now is None else now,
        closed=str(doc.get("status", "open")),
        workflow_version=int(doc.get("version", 0)),
        deadline=doc.get("deadline"),
    )


def last_writers(log: Iterable[LogEntry]) -> dict[str, tuple[str, int, float]]:
    """datum name -> (who wrote its latest value: a builder or "delta", run, when)."""
    out: dict[str, tuple[str, int, float]] = {}
    for e in log:
        if e.event == "delta":
            for n in e.data:
                out[n] = ("delta", e.run, e.at)
        elif e.produced is not None and e.builder is not None:
            out[e.produced] = (e.builder, e.run, e.ended)
    return out


def timeline(log: Iterable[LogEntry], history: Iterable[SettledRun] = ()) -> list[RunTimeline]:
    """Group log entries by run: per run its delta and its builder attempts, in start order."""
    status = {h.run: h.status for h in history}
    deltas: dict[int, LogEntry] = {}
    bars: dict[int, list[Bar]] = {}
    for e in log:
        if e.event == "delta":
            deltas[e.run] = e
            bars.setdefault(e.run, [])
        elif e.builder is not None:
            bars.setdefault(e.run, []).append(
                Bar(e.builder, e.attempt or 0, e.by, e.at, e.seconds, e.result or ""))
    out: list[RunTimeline] = []
    for run in sorted(bars):
        items = sorted(bars[run], key=lambda b: b.start)
        d = deltas.get(run)
        started = d.at if d is not None else min((b.start for b in items), default=0.0)
        out.append(RunTimeline(run=run, started=started, delta=d.data if d else (),
                               producer=d.by if d else None, bars=tuple(items),
                               status=status.get(run)))
    return out


def read_timeline(store: RedisStore, graph: Graph, instance_id: str, runs: int = 10
                  ) -> list[RunTimeline]:
    """The last `runs` runs of an instance as timelines."""
    k = store.keys(graph.key, instance_id)
    log = read_log(store, k)
    history = parse_history(_redis(lambda: store.client.lrange(k.history, 0, -1),
                                   "reading history"))
    return timeline(log, history)[-runs:] if runs > 0 else []


__all__ = [
    "ActiveBuilder",
    "Bar",
    "Datum",
    "InstanceStatus",
    "LogEntry",
    "RunInFlight",
    "RunTimeline",
    "SettledRun",
    "in_flight",
    "last_writers",
    "parse_history",
    "parse_leases",
    "parse_log",
    "read_log",
    "read_status",
    "read_timeline",
    "timeline",
]
