"""Part A: the core, in process (`Executor.sequential` on a MemoryStore registry)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polaris_celery as pc

from . import workflows as W
from .util import ROOT, Row, Section, fmt_ms, fmt_us, log, median, paired

PER_BUILDER_TARGET_US = 20.0


@dataclass
class BigGraphs:
    """The 10- and 10,000-builder workflows around one 3-builder chain (A3 and B6 share them).
    Their builders are routed to a queue no worker listens on, so B6 measures the producer."""

    small: type
    small_delta: type
    big: type
    big_delta: type
    big_up: type  # the same size, all one connected graph, extra builders upstream of the core
    big_up_delta: type
    build_seconds: float


SINK_QUEUE = "bench-sink"


def build_big_graphs(total: int) -> BigGraphs:
    t0 = time.perf_counter()
    small, d_small = W.padded_chain(3, 10, "Y", queue=SINK_QUEUE)
    big, d_big = W.padded_chain(3, total, "Z", queue=SINK_QUEUE)
    up, d_up = W.padded_chain(3, total, "U", upstream=True, queue=SINK_QUEUE)
    return BigGraphs(small, d_small, big, d_big, up, d_up, time.perf_counter() - t0)


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _per_builder(ex: pc.Executor, key: str, delta: type, builders: int, reps: int,
                 tag: str) -> list[float]:
    ex.sequential(key, f"{tag}-warm", delta())
    out = []
    for r in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        res = ex.sequential(key, f"{tag}-{r}", delta())
        dt = time.perf_counter() - t0
        assert res.completed, res
        out.append(dt / builders)
    return out


def _body_cost(workflow: type) -> float:
    """What the no-op builders themselves cost (instantiate, process, build the datum)."""
    specs = [b.spec for b in workflow.builders]
    t0 = time.perf_counter()
    for s in specs:
        s.builder_cls().process(None)  # type: ignore[arg-type]
    return (time.perf_counter() - t0) / len(specs)


def _cprofile(fn: Callable[[], Any], what: str, top: int = 10) -> str:
    """Self time by function under cProfile (deterministic, so it inflates small functions;
    read the shares as indicative)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values()) or 1.0
    rows = sorted(((v[2], v[1], f"{k[0].split(f'{ROOT}/')[-1]}:{k[2]}")
                   for k, v in stats.items()), reverse=True)[:top]
    return (f"Where the time goes in {what} (cProfile, self time; indicative): "
            + "; ".join(f"`{name}` {tt / total:.0%} ({calls} calls)" for tt, calls, name in rows)
            + ".")


def _drive(graph: Any) -> None:
    """One run of the graph's first chain through the shared frontier, as the executors do."""
    from polaris_celery.frontier import RunState

    first = next(iter(graph.specs.values()))
    d0 = first.consume_names[0]
    present = {d0}
    run, ready = RunState.start(graph, 1, [d0], present)
    while ready:
        b = ready.pop()
        run.dispatched(graph, b, 1)
        name = graph.specs[b].produces_name
        present.add(name)
        ready += run.finished(graph, b, name, present)
    assert run.target_hit


def run(quick: bool, big: BigGraphs, sec: Section) -> None:
    n = 200 if quick else 1000
    reps = 3 if quick else 9

    # A1: per-builder overhead, chain and fan-in.
    log(f"A1: per-builder overhead on a {n}-builder chain and a {n}-wide fan-in")
    chain_wf, chain_d0 = W.chain(n, "AC")
    fan_wf, fan_d0 = W.fan(n, "AF")
    reg = pc.Registry(pc.MemoryStore())
    t_compile_1k = min(_time(lambda: pc.compile_workflow("x", chain_wf)) for _ in range(3))
    reg.register("a-chain", chain_wf)
    reg.register("a-fan", fan_wf)
    ex = pc.Executor(reg)
    chain_t = _per_builder(ex, "a-chain", chain_d0, n, reps, "c")
    fan_t = _per_builder(ex, "a-fan", fan_d0, n + 1, reps, "f")
    body = min(_body_cost(chain_wf) for _ in range(5))
    sec.text.append(_cprofile(lambda: [ex.sequential("a-chain", f"p-{i}", chain_d0())
                                       for i in range(3)], f"the {n}-builder chain"))
    sec.text.append(_cprofile(lambda: pc.compile_workflow("big", big.big),
                              f"compiling the {len(big.big.builders)}-builder graph"))
    for what, ts in ((f"{n}-builder chain", chain_t), (f"{n}-wide fan-in (+1 join)", fan_t)):
        best, m = min(ts), median(ts)
        sec.add(Row(
            f"Per-builder time, {what}", f"{fmt_us(best)} best, {fmt_us(m)} median", "", "",
            f"< {PER_BUILDER_TARGET_US:.0f} us (best)", best * 1e6 < PER_BUILDER_TARGET_US,
            f"{reps} runs; the best run is the code's cost with the least interference from "
            f"other load on this shared machine; includes the no-op builder's own work, "
            f"{body * 1e6:.1f} us (instantiate, build its datum)",
        ))

    # A2: compile time.
    total = big.big.builders.__len__()
    log(f"A2: compile time of a {total}-builder graph")
    t_big = [_time(lambda: pc.compile_workflow("big", big.big)) for _ in range(1 if quick else 3)]
    t_small = [_time(lambda: pc.compile_workflow("small", big.small)) for _ in range(5)]
    scale = min(t_big) / t_compile_1k
    sec.add(Row(
        f"compile_workflow, {total} builders (chain-shaped: the deepest ancestor masks)",
        fmt_ms(min(t_big)), f"{n} builders: {fmt_ms(t_compile_1k)}",
        f"{scale:.1f}x for {total / n:.0f}x builders", "none given (linear would be ~"
        f"{total / n:.0f}x)", None,
        f"best of {len(t_big)}; 10 builders: {fmt_ms(min(t_small))}; building the "
        f"{total + 10} builder classes and their data types with type()/create_model took "
        f"{big.build_seconds:.1f} s (not part of compile)",
    ))

    # A3: one delta's cost does not grow with the graph.
    log(f"A3: a 3-builder run inside a 10- and a {total}-builder workflow")
    reg2 = pc.Registry(pc.MemoryStore())
    reg2.register("small", big.small)
    reg2.register("big", big.big)
    ex2 = pc.Executor(reg2)
    small_d, big_d = big.small_delta, big.big_delta
    batch = 100 if quick else 200
    rounds = 5 if quick else 15
    for key, d in (("small", small_d), ("big", big_d)):
        for i in range(50):
            assert ex2.sequential(key, f"w{i}", d()).completed
    reg2.register("big-up", big.big_up)
    for i in range(50):
        assert ex2.sequential("big-up", f"w{i}", big.big_up_delta()).completed
    g_small = reg2.graph("small")
    shapes = (
        ("big", big.big_delta, "extra builders in a separate part of the graph", "separate"),
        ("big-up", big.big_up_delta, "one connected graph, the extra builders all upstream of "
         "the 3 (an optional input of the first)", "connected, upstream"),
    )
    for key, delta, shape, short in shapes:
        pr = paired(lambda i: ex2.sequential("small", f"r{i}", small_d()),
                    lambda i, k=key, d=delta: ex2.sequential(k, f"r{i}", d()), rounds, batch)
        sec.add(Row(
            f"One 3-builder delta: {total}- vs 10-builder workflow, {shape}",
            fmt_us(median(pr.b)), fmt_us(median(pr.a)), f"{pr.ratio:.2f}", "~1.0 (<= 1.2)",
            pr.ratio <= 1.2, f"Executor.sequential, per run; {pr.describe()}; batches of {batch}",
        ))
        # The same, the frontier alone (RunState, no store, no builders), which isolates what
        # could depend on the graph's size.
        g_big = reg2.graph(key)
        fr = paired(lambda i: _drive(g_small), lambda i, g=g_big: _drive(g), rounds, batch * 5)
        core_ranks = [g_big.rank[f"{g_big.workflow.builders[j].spec.name}"] for j in range(3)]
        sec.add(Row(
            f"... the frontier alone (RunState start/dispatched/finished), {short}",
            fmt_us(median(fr.b)), fmt_us(median(fr.a)), f"{fr.ratio:.2f}", "~1.0 (<= 1.2)",
            fr.ratio <= 1.2,
            f"per 3-builder run; {fr.describe()}; the 3 builders rank {core_ranks} of {total}",
        ))
