"""In-process executors: `sequential` (one builder at a time, in rank order) and `parallel`
(every ready builder on a thread pool as soon as it is ready).

Both drive the shared `RunState` from the calling thread only; pool threads run builders and
hand back outcomes, so no run state is ever written by two threads (the Go original crashed on
concurrent map writes here).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from pydantic import BaseModel

from .. import codec
from ..errors import BuilderFailed, InstanceClosed
from ..fields import Fields
from ..frontier import BuilderError, RunState
from ..graph import Graph
from ..hooks import Hook, HookInfo, Hooks
from ..invoke import AfterHook, BeforeHook, Outcome, attempt, failed
from ..registry import Registry, check_instance_id
from ..result import RunResult


class Executor:
    """Runs deltas in the calling process against the registry's store.

    Hooks (see `polaris_celery.hooks`): before(builder_cls, new_inputs) before each attempt,
    with the inputs new in the run; after(builder_cls, produced) after a successful one;
    on_error(builder_cls, error) after a failed one; before_run(delta) once the delta is stored
    and the run numbered; after_run(result) when it has settled. Each may take a `HookInfo`
    (instance id, run, attempt) as one more argument. A raising hook is logged and ignored
    unless `strict_hooks=True`.
    """

    def __init__(
        self,
        registry: Registry,
        before: BeforeHook | None = None,
        after: AfterHook | None = None,
        max_workers: int | None = None,
        *,
        on_error: Hook | None = None,
        before_run: Hook | None = None,
        after_run: Hook | None = None,
        strict_hooks: bool = False,
    ) -> None:
        self.registry = registry
        self.hooks = Hooks(before=before, after=after, on_error=on_error, before_run=before_run,
                           after_run=after_run, strict=strict_hooks)
        self.max_workers = max_workers

    # -- public ----------------------------------------------------------------------------

    def sequential(self, key: str, instance_id: str, *data: BaseModel) -> RunResult:
        """Run the delta to its end, one builder at a time in rank order."""
        return self._run(key, instance_id, data, pool=None)

    def parallel(self, key: str, instance_id: str, *data: BaseModel) -> RunResult:
        """Run the delta to its end, running builders that are ready together on threads."""
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="polaris") as pool:
            return self._run(key, instance_id, data, pool=pool)

    # -- the run ------------------------------------------------------------------------------

    def _run(
        self,
        key: str,
        instance_id: str,
        data: tuple[BaseModel, ...],
        pool: ThreadPoolExecutor | None,
    ) -> RunResult:
        graph = self.registry.graph(key)
        check_instance_id(instance_id)
        delta = codec.encode_delta(graph, data)
        store = self.registry.store
        if delta and graph.workflow.on_complete != "reopen" \
                and graph.target in store.data_names(key, instance_id):
            # No late-data area in process: "late" refuses too, and nothing is stored.
            raise InstanceClosed(f"{key}/{instance_id} completed, and its workflow has "
                                 f"on_complete={graph.workflow.on_complete!r}")
        transient = {n: v for n, v in delta.items() if n in graph.transients}
        lasting = {n: v for n, v in delta.items() if n not in graph.transients}
        if lasting:
            store.write_data(key, instance_id, lasting)  # stored before anything runs
        run_id = store.next_run(key, instance_id)
        self.hooks.call("before_run", list(data), info=HookInfo(key, instance_id, run_id))
        present = store.data_names(key, instance_id) | set(transient)
        run, ready = RunState.start(graph, run_id, delta, present, started=time.time(),
                                    fields=Fields(run_id, track=False))
        # Transient values live only in this dict for the duration of the run.
        scratch: dict[str, bytes] = dict(transient)
        produced: dict[str, BaseModel] = {}

        def commit(builder: str, out: Outcome) -> list[str]:
            if out.error is not None:
                run.failed_for_good(graph, builder, out.error)
                return []
            if out.produced is None:
                return run.finished(graph, builder, None, present)
            name = graph.specs[builder].produces_name
            raw = out.raw if out.raw is not None else codec.encode(out.produced)
            if name in graph.transients:
                scratch[name] = raw
            else:
                store.write_data(key, instance_id, {name: raw})
            produced[name] = out.produced
            present.add(name)
            return run.finished(graph, builder, name, present)

        def execute(builder: str, new: frozenset[str]) -> Outcome:
            return self._attempts(graph, instance_id, run.id, builder, new, scratch)

        def new_inputs(builder: str) -> frozenset[str]:
            # Computed on the driving thread: pool threads never read the mutable run state.
            # Only the before-hook needs it.
            if "before" not in self.hooks:
                return frozenset()
            return frozenset(n for n in graph.specs[builder].readable_names if n in run.new)

        if pool is None:
            # Every builder the core returns as ready is dispatched at once, as the parallel
            # and Celery executors do, and then run one by one in rank order, even once the run
            # has stopped (frontier.py): so all executors run the same builders.
            heap: list[tuple[int, str, frozenset[str]]] = []

            def queue(builders: list[str]) -> None:
                for b in builders:
                    run.dispatched(graph, b, 1)
                    heapq.heappush(heap, (graph.rank[b], b, new_inputs(b)))

            queue(ready)
            while heap:
                _, b, new = heapq.heappop(heap)
                queue(commit(b, execute(b, new)))
        else:
            futures: dict[Future[Outcome], str] = {}

            def submit(builders: list[str]) -> None:
                for b in builders:
                    run.dispatched(graph, b, 1)
                    futures[pool.submit(execute, b, new_inputs(b))] = b

            submit(ready)
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in done:
                    b = futures.pop(fut)
                    submit(commit(b, fut.result()))
        return self._result(graph, instance_id, run, produced, present, not delta, self.hooks)

    def _attempts(
        self,
        graph: Graph,
        instance_id: str,
        run_id: int,
        builder: str,
        new: frozenset[str],
        scratch: Mapping[str, bytes],
    ) -> Outcome:
        """Attempt a builder until it succeeds or its retries are spent (sleeping its backoff)."""
        spec = graph.specs[builder]
        names = spec.readable_names
        for n in range(1, spec.max_retries + 2):
            raw = self.registry.store.read_data(graph.key, instance_id, names)
            if scratch:
                raw.update({k: v for k, v in scratch.items() if k in names})
            try:
                inputs = codec.decode_many(graph, raw)
            except Exception as exc:
                return failed(spec, Outcome(None, BuilderError(builder, type(exc).__name__,
                                                               str(exc)), 0.0),
                              self.hooks, HookInfo(graph.key, instance_id, run_id, n))
            out = attempt(
                spec, inputs, new, workflow=graph.key, instance_id=instance_id, run=run_id,
                attempt_no=n, hooks=self.hooks,
            )
            if out.error is None or n > spec.max_retries:
                return out
            time.sleep(spec.backoff(n))
        raise AssertionError("unreachable")

    @staticmethod
    def _result(
        graph: Graph,
        instance_id: str,
        run: RunState,
        produced: dict[str, BaseModel],
        present: set[str],
        empty_delta: bool,
        hooks: Hooks,
    ) -> RunResult:
        completed = run.target_hit or (empty_delta and graph.target in present)
        result = RunResult(
            workflow=graph.key,
            instance_id=instance_id,
            run=run.id,
            status=run.outcome,
            completed=completed,
            data=produced,
            error=run.error.to_json() if run.error else None,
        )
        hooks.call("after_run", result, info=HookInfo(graph.key, instance_id, run.id))
        if run.error is not None:
            raise BuilderFailed(run.error.builder, run.error.type, run.error.message, result)
        return result
