"""Waiting for a run to settle: block on its wake list, then read its outcome.

The outcome and the wake token are written in the same atomic step when a run settles, so a
waiter blocks on the token (returning at once for a run that settled before it came) and then
reads; nothing polls. Runs are named by incarnation and number, so a waiter of one life of an
instance can never be answered by another's run of the same number.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from . import codec
from .errors import BuilderFailed, WaitTimeout
from .graph import Graph
from .hooks import HookInfo, Hooks
from .layout import Keys
from .result import RunRef, RunResult
from .stores.redis import RedisStore

log = logging.getLogger("polaris_celery")

#: The graph of a workflow version (0: the newest), raising UnknownWorkflow if it is not here.
GraphOf = Callable[[str, int], Graph]


def result(store: RedisStore, graph_of: GraphOf, workflow: str, instance_id: str, ref: RunRef,
           timeout: float) -> RunResult:
    k = store.keys(workflow, instance_id)
    deadline = time.monotonic() + timeout
    while True:
        store.wait_wake(k, ref.incarnation, ref.run, max(deadline - time.monotonic(), 0.01))
        outcome, raw = store.run_outcome(k, ref.incarnation, ref.run)
        if outcome is not None:
            return to_result(graph_of, workflow, instance_id, json.loads(outcome), raw)
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"run {ref.run} of {workflow}/{instance_id} did not settle "
                              f"within {timeout}s")


async def result_async(store: RedisStore, graph_of: GraphOf, workflow: str, instance_id: str,
                       ref: RunRef, timeout: float) -> RunResult:
    k = store.keys(workflow, instance_id)
    key, wake = k.run(ref.incarnation, ref.run), k.wake(ref.incarnation, ref.run)
    deadline = time.monotonic() + timeout
    async with store.async_client() as client:
        while True:
            left = max(deadline - time.monotonic(), 0.01)
            await client.blmove(wake, wake, left, "LEFT", "RIGHT")
            got = await client.hgetall(key)
            outcome = got.pop(b"_outcome", None)
            if outcome is not None:
                raw = {f.decode(): v for f, v in got.items() if not f.startswith(b"_")}
                return to_result(graph_of, workflow, instance_id, json.loads(outcome), raw)
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"run {ref.run} of {workflow}/{instance_id} did not settle "
                                  f"within {timeout}s")


def after_runs(store: RedisStore, graph_of: GraphOf, hooks: Hooks, k: Keys, inc: str,
               runs: list[int]) -> None:
    """The after_run hook for each run that a step applied by this process settled. Never
    raises, even for strict hooks: the run has settled, and the caller must still send what the
    step decided."""
    if "after_run" not in hooks:
        return
    for run in runs:
        try:
            got = settled_result(store, graph_of, k.workflow, k.instance_id, RunRef(run, inc))
            if got is not None:
                hooks.call("after_run", got, info=HookInfo(k.workflow, k.instance_id, run))
        except Exception:
            log.exception("polaris: the after_run hook of %s run %s raised", k.member, run)


def settled_result(store: RedisStore, graph_of: GraphOf, workflow: str, instance_id: str,
                   ref: RunRef) -> RunResult | None:
    """The result of a run known to have settled (for after_run hooks), failed or not; None if
    its outcome is gone (expired)."""
    outcome, raw = store.run_outcome(store.keys(workflow, instance_id), ref.incarnation, ref.run)
    if outcome is None:
        return None
    try:
        return to_result(graph_of, workflow, instance_id, json.loads(outcome), raw)
    except BuilderFailed as failed:
        return failed.result


def to_result(graph_of: GraphOf, workflow: str, instance_id: str, outcome: dict[str, Any],
              raw: dict[str, bytes]) -> RunResult:
    """The RunResult of a settled run; raises BuilderFailed (carrying it) for a failed one."""
    graph = graph_of(workflow, int(outcome.get("version", 0)))
    data = {n: codec.decode(graph, n, raw[n]) for n in outcome["produced"] if n in raw}
    got = RunResult(
        workflow=graph.key, instance_id=instance_id, run=outcome["run"],
        status=outcome["status"], completed=outcome["completed"], data=data,
        error=outcome.get("error"), incarnation=outcome.get("inc", ""),
    )
    err = outcome.get("error")
    if err:
        raise BuilderFailed(err["builder"], err["type"], err["message"], got)
    return got
