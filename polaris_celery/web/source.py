"""What the pages read: instance lists and one instance's view, in the query API's shapes.

The web view reads through `Source`, never Redis directly, so the pages stay the same whether
the lists come from the query API's index (`CeleryExecutor.instances`, when present) or from the
fallback here: a SCAN of the instances' state keys with `status.read_status` for each page. The
fallback is O(instances) per list request; it keeps the view usable on any deployment and is
replaced by the index as soon as the executor offers one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import status as st
from ..errors import PolarisError
from ..executors.celery import CeleryExecutor
from ..graph import Graph
from ..stores.redis import RedisStore


class UnknownInstance(PolarisError):
    """No such instance of the workflow (never created, deleted, or expired)."""

    def __init__(self, workflow: str, instance_id: str) -> None:
        super().__init__(f"no instance {instance_id!r} of workflow {workflow!r}")
        self.workflow = workflow
        self.instance_id = instance_id


STATUSES = ("open", "running", "paused", "completed", "failed", "cancelled", "timed_out")


@dataclass(frozen=True)
class InstanceSummary:
    workflow: str
    instance_id: str
    status: str
    created: float
    updated: float
    workflow_version: int


@dataclass(frozen=True)
class InstancePage:
    items: tuple[InstanceSummary, ...]
    cursor: str | None  # the next page, None on the last


@dataclass(frozen=True)
class DatumView:
    name: str
    value: Any  # the decoded pydantic model, or None when it does not decode
    size: int
    producer: str | None
    run: int | None
    at: float | None


@dataclass(frozen=True)
class RunView:
    run: int
    status: str  # "running" while in flight, else the settled run's outcome
    started: float
    ended: float | None
    produced: tuple[str, ...]
    error: Mapping[str, str] | None
    delta_id: str | None


@dataclass(frozen=True)
class ActiveBuilder:
    run: int
    builder: str
    attempt: int | None
    state: str  # queued, running, waiting (or unsent)
    deadline: float | None


@dataclass(frozen=True)
class ErrorView:
    run: int
    builder: str
    type: str
    message: str
    at: float | None


@dataclass(frozen=True)
class InstanceView:
    workflow: str
    instance_id: str
    status: str
    workflow_version: int
    version: int
    created: float
    updated: float
    deadline: float | None
    target: str
    data: tuple[DatumView, ...]
    runs: tuple[RunView, ...]  # newest first
    in_flight: tuple[ActiveBuilder, ...]
    errors: tuple[ErrorView, ...]
    late: tuple[str, ...]
    absent_inputs: tuple[str, ...]


def status_of(doc: Mapping[str, Any], last_outcome: str | None) -> str:
    """An instance's one-word status from its state document and its newest settled run."""
    if not doc:
        return "open"
    closed = str(doc.get("status", "open"))
    if closed != "open":
        return closed
    if doc.get("runs"):
        return "running"
    if doc.get("completed"):
        return "completed"
    if last_outcome == "failed":
        return "failed"
    return "paused" if last_outcome else "open"


class Source:
    """Reads instances for the pages: through the executor's query API when it has one, else
    over Redis with `status`."""

    def __init__(self, executor: CeleryExecutor) -> None:
        self.executor = executor
        store = executor.registry.store
        if not isinstance(store, RedisStore):  # CeleryExecutor already requires it
            raise TypeError("the web view needs a RedisStore")
        self.store = store

    def graph(self, workflow: str, version: int = 0) -> Graph:
        """The graph an instance runs on: its pinned version when known here, else newest."""
        reg = self.executor.registry
        if version and version in reg.versions(workflow):
            return reg.graph(workflow, version)
        return reg.graph(workflow)

    # -- lists ----------------------------------------------------------------------------

    def _ids(self, workflow: str) -> list[str]:
        pattern = f"{self.store.prefix}:{{{workflow}/*}}:state"
        head = len(f"{self.store.prefix}:{{{workflow}/")
        ids = []
        for key in self.store.client.scan_iter(match=pattern, count=500):
            text = key.decode() if isinstance(key, bytes) else str(key)
            ids.append(text[head:-len("}:state")])
        return ids

    def _summaries(self, workflow: str) -> list[InstanceSummary]:
        ids = self._ids(workflow)
        pipe = self.store.client.pipeline(transaction=False)
        for i in ids:
            k = self.store.keys(workflow, i)
            pipe.hget(k.state, "doc")
            pipe.lindex(k.history, 0)
        got = pipe.execute() if ids else []
        out = []
        for n, i in enumerate(ids):
            raw_doc, raw_last = got[2 * n], got[2 * n + 1]
            doc = json.loads(raw_doc) if raw_doc else {}
            last = json.loads(raw_last).get("status") if raw_last else None
            out.append(InstanceSummary(workflow, i, status_of(doc, last),
                                       float(doc.get("created", 0.0)),
                                       float(doc.get("updated", 0.0)),
                                       int(doc.get("version", 0))))
        return out

    def instances(self, workflow: str, *, status: Iterable[str] | None = None, limit: int = 50,
                  cursor: str | None = None) -> InstancePage:
        """One page of a workflow's instances, newest updated first."""
        wanted = set(status) if status is not None else None
        rows = [s for s in self._summaries(workflow) if wanted is None or s.status in wanted]
        rows.sort(key=lambda s: (-s.updated, s.instance_id))
        start = int(cursor) if cursor and cursor.isdigit() else 0
        page = rows[start:start + limit]
        more = start + limit < len(rows)
        return InstancePage(tuple(page), str(start + limit) if more else None)

    def counts(self) -> dict[tuple[str, str], int]:
        """(workflow, status) -> instances, for the list's header and /metrics."""
        out: dict[tuple[str, str], int] = {}
        for wf in self.executor.registry.keys():  # noqa: SIM118
            for s in self._summaries(wf):
                out[(wf, s.status)] = out.get((wf, s.status), 0) + 1
        return out

    # -- one instance ---------------------------------------------------------------------

    def instance(self, workflow: str, instance_id: str) -> InstanceView:
        """One instance, with its data decoded; raises UnknownInstance."""
        graph = self.executor.registry.graph(workflow)
        s = st.read_status(self.store, graph, instance_id, history=50)
        if not s.exists:
            raise UnknownInstance(workflow, instance_id)
        graph = self.graph(workflow, s.workflow_version)
        values = self._values(graph, instance_id, [d.name for d in s.data])
        data = tuple(DatumView(d.name, values.get(d.name), d.size, d.producer, d.run, d.at)
                     for d in s.data)
        runs = [RunView(r.run, "running", r.started, None, r.produced, r.error, r.delta_id)
                for r in sorted(s.runs, key=lambda r: -r.run)]
        runs += [RunView(h.run, h.status, h.started, h.ended, h.produced, h.error, h.delta_id)
                 for h in s.history]
        errors = tuple(ErrorView(r.run, str(r.error.get("builder", "?")),
                                 str(r.error.get("type", "?")), str(r.error.get("message", "")),
                                 r.ended) for r in runs if r.error)
        last = next((h.status for h in s.history), None)
        doc = {"status": s.closed, "runs": [r.run for r in s.runs], "completed": s.completed}
        late = tuple(sorted(self._names(self.store.keys(workflow, instance_id).late)))
        return InstanceView(
            workflow=workflow, instance_id=instance_id, status=status_of(doc, last),
            workflow_version=s.workflow_version, version=s.version, created=s.created,
            updated=s.updated, deadline=s.deadline, target=s.target, data=data,
            runs=tuple(runs),
            in_flight=tuple(ActiveBuilder(b.run, b.builder, b.attempt, b.state, b.deadline)
                            for b in s.builders),
            errors=errors, late=late, absent_inputs=s.absent_inputs)

    def _names(self, key: str) -> list[str]:
        return [n.decode() if isinstance(n, bytes) else str(n)
                for n in self.store.client.hkeys(key)]

    def _values(self, graph: Graph, instance_id: str, names: list[str]) -> dict[str, Any]:
        raw = self.store.read_data(graph.key, instance_id, names) if names else {}
        out: dict[str, Any] = {}
        for name, blob in raw.items():
            model = graph.types.get(name)
            try:
                out[name] = model.model_validate_json(blob) if model is not None else None
            except ValueError:
                out[name] = None  # written under another version's model: shown as raw size
        return out

    def timeline(self, workflow: str, instance_id: str, runs: int = 10
                 ) -> list[st.RunTimeline]:
        return st.read_timeline(self.store, self.executor.registry.graph(workflow),
                                instance_id, runs=runs)

    def changed_marker(self, workflow: str, instance_id: str) -> tuple[str, int]:
        """Something cheap that changes whenever the instance does: its state version and the
        length of its log (an attempt logged without a state change still shows)."""
        k = self.store.keys(workflow, instance_id)
        pipe = self.store.client.pipeline(transaction=False)
        pipe.hget(k.state, "v")
        pipe.xlen(k.log)
        v, n = pipe.execute()
        return (v.decode() if isinstance(v, bytes) else str(v or ""), int(n or 0))
