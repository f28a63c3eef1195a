"""What the pages read: the query API (`CeleryExecutor.instance` / `.instances`), plus the
few reads it does not offer: counts per status, the runs' timelines, and a cheap marker of
change for the live updates.

The web view reads through `Source`, never through the executor or Redis directly, so what a
page needs is listed in one place.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import status as st
from ..executors.celery import CeleryExecutor
from ..graph import Graph
from ..instance import STATUSES
from ..stores.redis import RedisStore
from ..stores.shared import BUCKETS
from ..views import InstancePage, InstanceView

__all__ = ["STATUSES", "Source"]


class Source:
    """Reads instances for the pages (the executor's store must be a RedisStore, as
    CeleryExecutor requires)."""

    def __init__(self, executor: CeleryExecutor) -> None:
        self.executor = executor
        store = executor.registry.store
        if not isinstance(store, RedisStore):
            raise TypeError(f"the web view reads a RedisStore, got {store!r}")
        self.store = store

    def graph(self, workflow: str, version: int = 0) -> Graph:
        """The graph an instance runs on: its pinned version when known here, else newest."""
        reg = self.executor.registry
        if version and version in reg.versions(workflow):
            return reg.graph(workflow, version)
        return reg.graph(workflow)

    def instances(self, workflow: str, *, status: Iterable[str] | None = None, limit: int = 50,
                  cursor: str | None = None) -> InstancePage:
        """One page of a workflow's instances, newest first (the query API's listing)."""
        return self.executor.instances(workflow, status=status, limit=limit, cursor=cursor)

    def instance(self, workflow: str, instance_id: str) -> InstanceView:
        """One instance; raises UnknownInstance."""
        return self.executor.instance(workflow, instance_id)

    def counts(self) -> dict[tuple[str, str], int]:
        """(workflow, status) -> instances, from the listing's per-status sets (one ZCARD per
        bucket, status and workflow, in one pipeline). The listing is confirmed lazily by the
        pages that read it, so a count may lag an instance that changed a moment ago."""
        listings = self.store.listings
        cells = [(wf, s) for wf in self.executor.registry.keys()  # noqa: SIM118
                 for s in STATUSES]
        pipe = self.store.client.pipeline(transaction=False)
        for wf, s in cells:
            for b in range(BUCKETS):
                pipe.zcard(listings.status_key(wf, b, s))
        got = [int(n) for n in pipe.execute()] if cells else []
        return {cell: sum(got[i * BUCKETS:(i + 1) * BUCKETS]) for i, cell in enumerate(cells)}

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
