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

import json
import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from . import codec
from . import status as st
from .builder import datum_name
from .errors import StoreUnavailable, UnknownInstance, WaitTimeout
from .graph import Graph
from .instance import STATUSES, InstanceDoc
from .layout import Snapshot
from .registry import Registry, check_instance_id
from .stores.redis import RedisError, RedisStore
from .views import DatumView, ErrorView, InstancePage, InstanceView, RunView

#: How many settled runs an InstanceView shows at most (the history keeps `Settings.history`).
RUNS = 50
#: The longest pause between two reads while waiting for a datum mid-run (seconds).
MAX_POLL = 0.5


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

    # -- many instances -------------------------------------------------------------------------

    def instances(self, workflow: str, *, status: str | Iterable[str] | None = None,
                  limit: int = 50, cursor: str | None = None, newest_first: bool = True
                  ) -> InstancePage:
        """One page of the workflow's instances, ordered by when each last changed status or
        opened or settled a run; see listing.py."""
        self.registry.graph(workflow)
        wanted = _statuses(status)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= 1000:
            raise ValueError(f"limit must be an integer from 1 to 1000, got {limit!r}")
        del wanted, cursor, newest_first
        return InstancePage((), None)

    # -- waiting --------------------------------------------------------------------------------

    def wait_instance(self, workflow: str, instance_id: str, *,
                      datum: type[BaseModel] | str | None = None, timeout: float = 30.0
                      ) -> InstanceView:
        """Until the instance completed or finished (cancelled, timed out) with nothing in
        flight, or, with `datum`, until it holds that datum; WaitTimeout after `timeout`."""
        name = None if datum is None else datum if isinstance(datum, str) else datum_name(datum)
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            try:
                view: InstanceView | None = self.instance(workflow, instance_id)
            except UnknownInstance:
                view = None
            if view is not None and _reached(view, name):
                return view
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"{workflow}/{instance_id} did not "
                                  f"{'hold ' + name if name else 'complete'} within {timeout}s")
            time.sleep(min(pause, left))
            pause = min(pause * 2, MAX_POLL)


def _reached(view: InstanceView, name: str | None) -> bool:
    if name is not None:
        return view.datum(name) is not None
    return view.status in ("completed", "cancelled", "timed_out")


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
