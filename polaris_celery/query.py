"""The query API: read any instance, list a workflow's instances, wait on one, from any process.

A run handle covers only its own run; these need nothing but the store, so a web page, a script
or another service reads the same truth the workers write. Nothing here writes to Redis except
the listing's repairs (a stale entry put right after its instance's state was read).

    instance(wf, id)        one InstanceView: status, data with values and producers, runs,
                            builders in flight, errors (one MULTI/EXEC, then the data sizes)
    instances(wf, ...)      pages of InstanceSummary from the instance listing (listing.py)
    wait_instance(wf, id)   block until the instance completes or holds a datum
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import BaseModel

from . import codec
from . import status as st
from .builder import datum_name
from .errors import StoreUnavailable, UnknownInstance, WaitTimeout
from .graph import Graph
from .instance import STATUSES, InstanceDoc
from .layout import Snapshot
from .registry import Registry, check_instance_id
from .stores.listing import decode_cursor, encode_cursor, now_inc
from .stores.redis import RedisError, RedisStore
from .stores.shared import BUCKETS
from .views import DatumView, ErrorView, InstancePage, InstanceSummary, InstanceView, RunView

#: How many settled runs an InstanceView shows at most (the history keeps `Settings.history`).
RUNS = 50
#: The longest pause between two reads while waiting for a datum mid-run (seconds).
MAX_POLL = 0.5
#: The largest page of instances.
MAX_LIMIT = 1000
T = TypeVar("T")


def _s(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else v


class Query:
    """Reads of a registry's instances (its store must be a RedisStore)."""

    def __init__(self, registry: Registry) -> None:
        if not isinstance(registry.store, RedisStore):
            raise TypeError(f"the query API reads a RedisStore, got {registry.store!r}")
        self.registry = registry
        self.store: RedisStore = registry.store

    # -- one instance ---------------------------------------------------------------------------

    def _graph(self, workflow: str, version: int) -> Graph:
        """The instance's own workflow version if this process has it, else the newest (its
        data then decode as far as the newest types allow)."""
        if version and version in self.registry.versions(workflow):
            return self.registry.graph(workflow, version)
        return self.registry.graph(workflow)

    def instance(self, workflow: str, instance_id: str) -> InstanceView:
        """The instance as it is now; UnknownInstance if it does not exist."""
        newest = self.registry.graph(workflow)  # UnknownWorkflow first
        check_instance_id(instance_id)
        k = self.store.keys(newest.key, instance_id)

        def first() -> list[Any]:
            pipe = self.store.client.pipeline(transaction=True)
            pipe.hgetall(k.state)
            pipe.hgetall(k.lease)
            pipe.hgetall(k.data)
            pipe.lrange(k.history, 0, RUNS - 1)
            pipe.xrevrange(k.log, count=st.LOG_LIMIT)
            pipe.hkeys(k.late)
            return list(pipe.execute())

        try:
            state_raw, lease_raw, data_raw, history_raw, log_raw, late_raw = first()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unreachable while reading {k.member}: {exc}"
                                   ) from exc
        state = {_s(f): _s(x) for f, x in state_raw.items()}
        if not state.get("doc"):
            raise UnknownInstance(workflow, instance_id)
        snap = Snapshot(int(state.get("v") or 0), state["doc"], state.get("inc", ""))
        doc = InstanceDoc.load(newest, snap)
        graph = self._graph(workflow, doc.version or _history_version(history_raw))
        runs_now, builders = st.in_flight(state, st.parse_leases(lease_raw))
        history = st.parse_history(history_raw)
        log = st.parse_log(reversed(list(log_raw or [])))
        writers = st.last_writers(log)
        data: list[DatumView] = []
        for name in sorted(_s(n) for n in data_raw):
            raw = data_raw[name.encode()]
            try:
                value: BaseModel | None = codec.decode(graph, name, raw)
            except Exception:
                value = None
            producer, run, at = writers.get(name, (None, None, None))
            data.append(DatumView(name, value, len(raw), producer, run, at))
        runs = [RunView(r.run, "running", r.started, None, r.produced, r.error, r.delta_id)
                for r in reversed(runs_now)]
        runs += [RunView(h.run, h.status, h.started, h.ended, h.produced, h.error, h.delta_id)
                 for h in history]
        return InstanceView(
            workflow=newest.key, instance_id=instance_id, status=doc.state_name,
            workflow_version=doc.version, version=snap.version, incarnation=snap.inc,
            created=doc.created, updated=doc.updated, deadline=doc.deadline,
            target=graph.target, data=tuple(data), runs=tuple(runs),
            in_flight=tuple(builders), errors=tuple(errors_of(log, runs)),
            late=tuple(sorted(_s(n) for n in late_raw)),
            absent_inputs=tuple(sorted(graph.inputs - {d.name for d in data}
                                       - graph.transients)),
        )

    def timeline(self, workflow: str, instance_id: str, runs: int = 10
                 ) -> list[st.RunTimeline]:
        """The last `runs` runs as timelines, from the instance's log: each builder attempt,
        on which worker, when, for how long (empty: no log, e.g. no such instance)."""
        graph = self.registry.graph(workflow)
        check_instance_id(instance_id)
        return st.read_timeline(self.store, graph, instance_id, runs=runs)

    # -- many instances -------------------------------------------------------------------------

    def instances(self, workflow: str, *, status: str | Iterable[str] | None = None,
                  limit: int = 50, cursor: str | None = None, newest_first: bool = True
                  ) -> InstancePage:
        """One page of the workflow's instances (those of `status`: one or several of
        STATUSES; None: all), ordered by when each last changed status or opened or settled a
        run, newest first unless `newest_first=False`. Pass the page's cursor back for the
        next page (None: no more).

        Reads O(limit) entries of each bucket, never the whole listing, and confirms each
        instance from its state: an instance gone or of another status than listed is left
        out and its entry put right. An instance that changes while it is paged through may
        show on two pages or on none, as with any listing that moves."""
        self.registry.graph(workflow)
        wanted = _statuses(status)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
        after = decode_cursor(cursor) if cursor is not None else None
        listings = self.store.listings
        keys = listings.keys_of(workflow, wanted)
        items: list[InstanceSummary] = []
        while True:
            got, more = self._redis(functools.partial(
                listings.candidates, keys, limit, after, newest_first), "listing")
            ids = [e.instance_id for e in got]
            states = self._states(workflow, ids)
            entries = self._redis(functools.partial(listings.entries, workflow, ids), "listing")
            for i, (e, state, entry) in enumerate(zip(got, states, entries, strict=True)):
                after = (e.score, e.instance_id)
                summary = self._confirm(workflow, e.instance_id, state, entry, e.score)
                if summary is not None and (not wanted or summary.status in wanted):
                    items.append(summary)
                if len(items) == limit:
                    left = more or i + 1 < len(got)
                    return InstancePage(tuple(items), encode_cursor(*after) if left else None)
            if not more:
                return InstancePage(tuple(items), None)

    def _states(self, workflow: str, ids: list[str]) -> list[tuple[int, str, str]]:
        """(v, inc, doc) of each instance's state ("" doc: gone)."""

        def go() -> list[tuple[int, str, str]]:
            pipe = self.store.client.pipeline(transaction=False)
            for instance_id in ids:
                pipe.hmget(self.store.keys(workflow, instance_id).state, ["v", "inc", "doc"])
            return [(int(v or 0), _s(inc), _s(doc)) for v, inc, doc in pipe.execute()]

        return self._redis(go, "reading instances")

    def _confirm(self, workflow: str, instance_id: str, state: tuple[int, str, str],
                 entry: str | None, listed: float | None = None) -> InstanceSummary | None:
        """The instance as its state says, its listing entry put right if that says otherwise
        (None: it is gone). `listed`: the entry's time, shown as `updated` so that a page's
        order and its times agree (else the state's last update)."""
        v, inc, raw = state
        listings = self.store.listings
        if not raw:
            self._redis(lambda: listings.move(workflow, instance_id, now_inc(), 0, "", 0.0),
                        "repairing the listing")
            return None
        d = json.loads(raw)
        status = InstanceDoc.brief(raw)[0]
        updated = float(d.get("updated", 0.0))
        if entry is None or entry.rsplit("|", 1)[-1] != status:
            self._redis(lambda: listings.move(workflow, instance_id, inc, v, status, updated),
                        "repairing the listing")
        return InstanceSummary(workflow, instance_id, status, float(d.get("created", 0.0)),
                               updated if listed is None else listed,
                               int(d.get("version", 0)))

    def reindex(self, workflow: str) -> int:
        """Write every instance's listing entry again from its state, and drop entries of
        instances that are gone: for instances created before the listing existed, or whose
        entry a crash lost. Scans the store's keys (SCAN, on every node of a cluster), so it
        takes time with many keys. Returns how many instances are listed."""
        self.registry.graph(workflow)
        k = self.store.keys(workflow, "*")
        pattern = _glob(f"{self.store.prefix}:{{{workflow}/") + "*}:state"
        head, tail = len(k.tag) - len("*}"), len("}:state")
        ids = sorted({_s(key)[head:-tail] for key in self._redis(
            lambda: list(self.store.client.scan_iter(match=pattern, count=1000)), "scanning")})
        listed = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for instance_id, state in zip(chunk, self._states(workflow, chunk), strict=True):
                if self._confirm(workflow, instance_id, state, None) is not None:
                    listed += 1
        listings = self.store.listings
        for b in range(BUCKETS):
            key = listings.ids_key(workflow, b)
            known = [_s(m) for m in self._redis(
                functools.partial(self.store.client.hkeys, key), "reading the listing")]
            gone = [i for i in known if i not in set(ids)]
            for instance_id, state in zip(gone, self._states(workflow, gone), strict=True):
                self._confirm(workflow, instance_id, state, None)
        return listed

    @staticmethod
    def _redis(fn: Callable[[], T], what: str) -> T:
        try:
            return fn()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis unreachable while {what}: {exc}") from exc

    # -- waiting --------------------------------------------------------------------------------

    def wait_instance(self, workflow: str, instance_id: str, *,
                      datum: type[BaseModel] | str | None = None, timeout: float = 30.0
                      ) -> InstanceView:
        """Until the instance completed, or finished otherwise (cancelled, timed out), with
        nothing in flight; or, with `datum`, until it holds that datum. WaitTimeout after
        `timeout` seconds. A failed or paused instance is waited on: a later delta may still
        complete it.

        While a run is in flight this blocks on that run's wake list (pushed when it settles,
        cancels or is deleted: no polling). A datum appears mid-run, without a wake, so
        waiting for one also re-reads between blocks, backing off from 10 ms to MAX_POLL; and
        an instance with nothing in flight (not created yet, paused) is polled the same way
        until a run starts."""
        self.registry.graph(workflow)
        check_instance_id(instance_id)
        if datum is not None and not isinstance(datum, str):
            datum = datum_name(datum)
        k = self.store.keys(workflow, instance_id)
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            try:
                view: InstanceView | None = self.instance(workflow, instance_id)
            except UnknownInstance:
                view = None
            if view is not None and _reached(view, datum):
                return view
            left = deadline - time.monotonic()
            if left <= 0:
                what = f"hold {datum}" if datum else "complete"
                raise WaitTimeout(f"{workflow}/{instance_id} did not {what} within {timeout}s")
            running = [r.run for r in view.runs if r.status == "running"] if view else []
            if running and view is not None:
                block = left if datum is None else min(pause, left)
                self.store.wait_wake(k, view.incarnation, min(running), block)
            else:
                time.sleep(min(pause, left))
            pause = min(pause * 2, MAX_POLL)


def _reached(view: InstanceView, name: str | None) -> bool:
    if name is not None:
        return view.datum(name) is not None
    return view.status in ("completed", "cancelled", "timed_out")


def _glob(text: str) -> str:
    """`text` matched literally by a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _statuses(status: str | Iterable[str] | None) -> tuple[str, ...]:
    if status is None:
        return ()
    got = (status,) if isinstance(status, str) else tuple(status)
    bad = [s for s in got if s not in STATUSES]
    if bad or not got:
        raise ValueError(f"status must be one or more of {', '.join(STATUSES)}; got "
                         f"{', '.join(map(repr, bad)) or 'none'}")
    return tuple(dict.fromkeys(got))


def _history_version(raw: Iterable[bytes | str]) -> int:
    """The workflow version of the newest settled run (an instance pinned to none)."""
    for blob in raw:
        try:
            return int(json.loads(blob).get("version", 0))
        except (ValueError, AttributeError):
            return 0
    return 0


def errors_of(log: Iterable[st.LogEntry], runs: Iterable[RunView]) -> list[ErrorView]:
    """Every failed attempt the log holds, the run's error message on the one that failed the
    run; then each run error the log no longer holds. Oldest first."""
    final = {(r.run, r.error.get("builder", ""), r.error.get("type", "")): r
             for r in runs if r.error}
    out: list[ErrorView] = []
    last: dict[tuple[int, str, str], int] = {}
    for e in log:
        if e.event != "builder" or not e.failed or e.builder is None or e.result is None:
            continue
        key = (e.run, e.builder, e.result[len("error:"):])
        last[key] = len(out)
        out.append(ErrorView(e.run, e.builder, key[2], "", e.ended))
    for key, r in final.items():
        assert r.error is not None
        message = str(r.error.get("message", ""))
        if key in last:
            i = last[key]
            out[i] = ErrorView(out[i].run, out[i].builder, out[i].type, message, out[i].at)
        else:
            out.append(ErrorView(key[0], key[1], key[2], message, r.ended))
    return out


__all__ = ["Query", "errors_of"]
