"""Part B: distributed, on real Celery worker processes and a private redis-server.

Layout of the private server (one redis-server process, several dbs):
  db 0  polaris store            db 1  polaris broker
  db 2  canvas broker            db 3  canvas result backend
  db 4  B6's store               db 5  B4's broker (its store is a second private server)
  db 6  B6's broker (builders routed to a queue no worker reads)

Polaris and canvas workers are the same command: `celery -A bench.app worker --pool prefork -c 2`
(one worker, two pool processes), acks_late and reject_on_worker_lost on both sides.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis
from celery import chain, chord

import polaris_celery as pc
from polaris_celery.testing import RedisServer

from . import workflows as W
from .apps import PolarisApp, canvas_app, polaris_app
from .core import BigGraphs
from .profiling import Profile, Spy, pyspy, wait_attached
from .util import (
    ROOT,
    Row,
    Section,
    Workers,
    cpu_seconds,
    fmt_ms,
    log,
    md_table,
    median,
    own_cpu,
    paired,
    quartiles,
    spread_ms,
)

CHAIN_TARGET = 0.5
FAN_TARGET = 0.8
THROUGHPUT_TARGET = 1.5
RTT_TARGET = 3.0
IO_TARGET = 0.8


def _uid() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Cluster:
    """The private Redis, the producer-side apps and the two sets of worker processes."""

    server: RedisServer
    pol: PolarisApp
    can: Any  # celery.Celery
    pol_workers: Workers
    can_workers: Workers
    extra: list[Any] = field(default_factory=list)  # other servers / worker sets to clean up

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.server.port}/{db}"

    @classmethod
    def start(cls) -> Cluster:
        server = RedisServer().start()
        log(f"private redis-server pid {server.pid} on port {server.port}")
        base = f"redis://127.0.0.1:{server.port}"
        pol = polaris_app(f"{base}/1", f"{base}/0")
        can = canvas_app(f"{base}/2", f"{base}/3")
        pw = Workers("polaris", {"BENCH_ROLE": "polaris", "BENCH_BROKER_URL": f"{base}/1",
                                 "BENCH_STORE_URL": f"{base}/0"})
        cw = Workers("canvas", {"BENCH_ROLE": "canvas", "BENCH_BROKER_URL": f"{base}/2",
                                "BENCH_BACKEND_URL": f"{base}/3"})
        cl = cls(server, pol, can, pw, cw)
        try:
            pw.start()
            cw.start()
            pw.wait_ready(pol.app)
            cw.wait_ready(can)
            log(f"workers up: polaris pid {pw.pids}, canvas pid {cw.pids} "
                "(each: celery worker --pool prefork -c 2)")
            for key in ("chain20", "chain20-noinline", "fan20", "chain5", "chain5-noinline",
                        "cab"):
                for _ in range(3):
                    if key == "cab":
                        cl.pol.inline.submit_delta("cab", _uid(), *W.cab_first_delta(0)).wait(30)
                    else:
                        polaris_once(cl.pol, key)
            for _ in range(3):
                canvas_chain(cl.can, 20)
                canvas_chord(cl.can, 20)
                canvas_many(cl.can, 20, 5)
        except BaseException:
            cl.close()
            raise
        return cl

    def close(self) -> None:
        for w in (self.pol_workers, self.can_workers):
            with contextlib.suppress(Exception):
                w.stop()
        for x in self.extra:
            with contextlib.suppress(Exception):
                x.stop() if isinstance(x, Workers) else x.cleanup()
        self.server.cleanup()


# -- one operation of each kind --------------------------------------------------------------


def polaris_once(pa: PolarisApp, key: str) -> float:
    t0 = time.perf_counter()
    h = pa.executor(key).submit_delta(key, _uid(), W.DISTRIBUTED.delta(key))
    res = h.wait(60)
    dt = time.perf_counter() - t0
    assert res.completed, res
    return dt


def polaris_many(pa: PolarisApp, key: str, n: int) -> float:
    ex = pa.executor(key)
    d = W.DISTRIBUTED.delta(key)
    tag = _uid()
    t0 = time.perf_counter()
    handles = [ex.submit_delta(key, f"{tag}-{i}", d) for i in range(n)]
    for h in handles:
        assert h.wait(120).completed
    return time.perf_counter() - t0


def canvas_chain(app: Any, n: int) -> float:
    noop = app.tasks["bench.noop"]
    t0 = time.perf_counter()
    chain(noop.s(0), *[noop.s() for _ in range(n - 1)]).apply_async().get(timeout=60)
    return time.perf_counter() - t0


def canvas_chord(app: Any, n: int) -> float:
    noop, join = app.tasks["bench.noop"], app.tasks["bench.join"]
    t0 = time.perf_counter()
    got = chord([noop.s(i) for i in range(n)], join.s()).apply_async().get(timeout=60)
    assert got == n
    return time.perf_counter() - t0


def canvas_many(app: Any, n: int, length: int, task: str = "bench.noop") -> float:
    noop = app.tasks[task]
    t0 = time.perf_counter()
    results = [chain(noop.s(i), *[noop.s() for _ in range(length - 1)]).apply_async()
               for i in range(n)]
    for r in results:
        r.get(timeout=120)
    return time.perf_counter() - t0


def interleave(ops: dict[str, Callable[[], float]], rounds: int, what: str,
               cpu: dict[str, Callable[[], float]] | None = None,
               ) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """Each round runs every op once, rotating the order, so drift hits all alike. Returns the
    times, and per op the CPU seconds each process group spent during it (summed)."""
    out: dict[str, list[float]] = {k: [] for k in ops}
    used: dict[str, dict[str, float]] = {k: dict.fromkeys(cpu or {}, 0.0) for k in ops}
    names = list(ops)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()
            # The producer is read last before and first after, so reading /proc for the
            # other groups is not counted as its CPU.
            before = {g: f() for g, f in (cpu or {}).items()}
            out[name].append(ops[name]())
            for g, f in reversed((cpu or {}).items()):
                used[name][g] += f() - before[g]
        if rounds >= 5 and (r + 1) % max(1, rounds // 5) == 0:
            log(f"  {what}: round {r + 1}/{rounds}")
    return out, used


def cpu_groups(cl: Cluster) -> dict[str, Callable[[], float]]:
    return {
        "polaris workers": lambda: cpu_seconds(cl.pol_workers.pids),
        "canvas workers": lambda: cpu_seconds(cl.can_workers.pids),
        "redis-server": lambda: cpu_seconds([cl.server.pid] if cl.server.pid else []),
        "producer": own_cpu,
    }


def cpu_table(used: dict[str, dict[str, float]], per: dict[str, float],
              labels: dict[str, str]) -> str:
    """CPU milliseconds per instance, by process group, for each variant."""
    rows = []
    for name, label in labels.items():
        u = used[name]
        side = "canvas workers" if "canvas" in name or name == "chord" else "polaris workers"
        w, r, p = (u[side] / per[name], u["redis-server"] / per[name], u["producer"] / per[name])
        rows.append([label, f"{w * 1e3:.1f}", f"{r * 1e3:.1f}", f"{p * 1e3:.1f}",
                     f"{(w + r + p) * 1e3:.1f}"])
    return md_table(["Variant", "workers (ms CPU)", "redis-server", "producer", "total"], rows)


# -- B1-B3: latency and throughput against canvas ----------------------------------------------


def b1_b3(cl: Cluster, quick: bool, sec: Section) -> None:
    rounds = 6 if quick else 20
    log(f"B1: 20-builder chain vs canvas chain of 20 no-op tasks, {rounds} interleaved rounds")
    groups = cpu_groups(cl)
    ts, used = interleave({
        "inline": lambda: polaris_once(cl.pol, "chain20"),
        "noinline": lambda: polaris_once(cl.pol, "chain20-noinline"),
        "canvas": lambda: canvas_chain(cl.can, 20),
    }, rounds, "B1", groups)
    sec.text.append(f"CPU time per run of the 20-builder chain (summed over {rounds} rounds "
                    "from /proc, divided by runs):")
    sec.text.append(cpu_table(used, dict.fromkeys(used, rounds), {
        "inline": "polaris, inline on", "noinline": "polaris, inline off",
        "canvas": "canvas chain"}))
    c = median(ts["canvas"])
    for variant, label in (("inline", "inline on (default)"), ("noinline", "inline off")):
        m = median(ts[variant])
        sec.add(Row(
            f"B1 20-builder chain, {label}", fmt_ms(m), fmt_ms(c), f"{m / c:.2f}",
            f"<= {CHAIN_TARGET}", m / c <= CHAIN_TARGET,
            f"per hop {m / 20 * 1e3:.2f} vs {c / 20 * 1e3:.2f} ms; polaris {spread_ms(ts[variant])}"
            f"; canvas {spread_ms(ts['canvas'])}",
        ))

    log(f"B2: 20-wide fan-out + join vs a chord of 20, {rounds} interleaved rounds")
    ts, used = interleave({
        "fan": lambda: polaris_once(cl.pol, "fan20"),
        "chord": lambda: canvas_chord(cl.can, 20),
    }, rounds, "B2", groups)
    sec.text.append("CPU time per run of the 20-wide fan-out + join:")
    sec.text.append(cpu_table(used, dict.fromkeys(used, rounds), {
        "fan": "polaris fan-out + join", "chord": "canvas chord"}))
    m, c = median(ts["fan"]), median(ts["chord"])
    sec.add(Row(
        "B2 20-wide fan-out + join vs chord of 20", fmt_ms(m), fmt_ms(c), f"{m / c:.2f}",
        f"<= {FAN_TARGET}", m / c <= FAN_TARGET,
        f"polaris {spread_ms(ts['fan'])}; canvas {spread_ms(ts['chord'])}",
    ))

    n = 50 if quick else 200
    rounds3 = 2 if quick else 3
    log(f"B3: {n} concurrent 5-builder instances vs {n} canvas chains of 5, {rounds3} rounds")
    ts, used = interleave({
        "inline": lambda: polaris_many(cl.pol, "chain5", n),
        "noinline": lambda: polaris_many(cl.pol, "chain5-noinline", n),
        "canvas": lambda: canvas_many(cl.can, n, 5),
    }, rounds3, "B3", groups)
    sec.text.append(f"CPU time per 5-builder instance in the {n}-instance runs (the machine "
                    "has 2 cores, so total CPU per instance bounds throughput):")
    sec.text.append(cpu_table(used, dict.fromkeys(used, rounds3 * n), {
        "inline": "polaris, inline on", "noinline": "polaris, inline off",
        "canvas": "canvas chains"}))
    c = n / median(ts["canvas"])
    for variant, label in (("inline", "inline on (default)"), ("noinline", "inline off")):
        m = n / median(ts[variant])
        sec.add(Row(
            f"B3 {n} x 5-builder instances, {label}", f"{m:.0f} inst/s", f"{c:.0f} inst/s",
            f"{m / c:.2f}x", f">= {THROUGHPUT_TARGET}x", m / c >= THROUGHPUT_TARGET,
            f"{m * 5:.0f} vs {c * 5:.0f} builders(tasks)/s; median of {rounds3} rounds (submit "
            "all, then wait all)" + ("" if variant == "inline" else "; informational variant"),
        ))
        if variant == "noinline":
            sec.rows[-1].passed = None
            sec.rows[-1].target = ""


# -- profiles ----------------------------------------------------------------------------------


def profiles(cl: Cluster, quick: bool, workdir: Path) -> tuple[list[str], list[str]]:
    """py-spy on the polaris worker (parent + pool children) and on this producer process while
    the 20-chain and the 200 x 5 cases run back to back. Returns (markdown, summary lines)."""
    exe = pyspy()
    if exe is None:
        return (["py-spy could not be installed here, so no profile was taken."],
                ["no profile: py-spy unavailable"])

    md: list[str] = []
    summary: list[str] = []
    seconds = 3.0 if quick else 6.0
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("20-builder chain, inline on", lambda: polaris_once(cl.pol, "chain20")),
        ("20-builder chain, inline off", lambda: polaris_once(cl.pol, "chain20-noinline")),
        ("200 x 5-builder instances, inline on",
         lambda: polaris_many(cl.pol, "chain5", 50 if quick else 200)),
    ]
    for i, (label, op) in enumerate(cases):
        log(f"profile: {label} for ~{seconds:.0f}s (py-spy on workers and producer)")
        wout, pout = workdir / f"workers-{i}.txt", workdir / f"producer-{i}.txt"
        spies = [Spy(exe, cl.pol_workers.pids[0], wout, subprocesses=True),
                 Spy(exe, os.getpid(), pout, subprocesses=False)]
        wait_attached(1.5)
        t0 = time.monotonic()
        runs = 0
        while time.monotonic() - t0 < seconds:
            op()
            runs += 1
        errs = [s.stop() for s in spies]
        wp, pp = Profile.parse(wout), Profile.parse(pout)
        if not wp.samples:
            md.append(f"Profile of {label}: py-spy produced no samples ({errs[0][-200:]!r}).")
            continue
        md.append(f"### Profile: {label} ({runs} runs in {time.monotonic() - t0:.1f} s)")
        md.append(wp.markdown("Celery worker (parent and prefork children)"))
        md.append(pp.markdown("Producer (submit_delta + wait, this process)", top=8))
        summary.append(f"{label} — workers: " + "; ".join(wp.top_lines(6))
                       + " | self by package: " + ", ".join(
                           f"{p} {wp.share(n)}" for p, n in wp.self_by_pkg.most_common(5)))
        summary.append(f"{label} — producer: " + "; ".join(pp.top_lines(4)))
    return md, summary


# -- B4: Redis round trips per builder hop -------------------------------------------------------


class Monitor:
    """MONITOR on one server in a thread; markers (ECHO) delimit measured windows."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lines: list[dict[str, Any]] = []
        self.token = f"bench-stop-{_uid()}"
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.client = redis.Redis.from_url(url)

    def _run(self) -> None:
        with redis.Redis.from_url(self.url).monitor() as m:
            self.ready.set()
            for cmd in m.listen():
                self.lines.append(cmd)
                if cmd.get("command") == f"ECHO {self.token}":
                    return

    def start(self) -> Monitor:
        self.thread.start()
        self.ready.wait(10)
        time.sleep(0.2)
        return self

    def mark(self, label: str) -> None:
        self.client.echo(f"bench-mark-{label}")

    def stop(self) -> None:
        self.client.echo(self.token)
        self.thread.join(30)
        self.client.close()

    def window(self, label: str) -> list[dict[str, Any]]:
        start, end = f"ECHO bench-mark-{label}-start", f"ECHO bench-mark-{label}-end"
        out: list[dict[str, Any]] = []
        inside = False
        for ln in self.lines:
            c = ln.get("command", "")
            if c == start:
                inside = True
            elif c == end:
                break
            elif inside:
                out.append(ln)
        return out


IGNORED = {"ECHO", "INFO", "MONITOR", "HELLO", "CLIENT", "SELECT", "SCRIPT"}


@dataclass
class Trips:
    """Round trips seen in a MONITOR window: MULTI..EXEC counts once, Lua-internal never."""

    producer: int = 0
    workers: int = 0
    reconciler: int = 0
    lua_internal: int = 0
    by_cmd: Counter[str] = field(default_factory=Counter)


def count_trips(lines: list[dict[str, Any]], producer_addrs: set[str],
                dbs: set[int] | None) -> Trips:
    t = Trips()
    in_multi: set[str] = set()
    last: dict[str, str] = {}  # client -> its previous command line
    for ln in lines:
        if dbs is not None and ln.get("db") not in dbs:
            continue
        command = ln.get("command", "")
        name = command.split(" ", 1)[0].upper()
        if ln.get("client_type") == "lua":
            t.lua_internal += 1
            continue
        if name in IGNORED:
            continue
        addr = f"{ln.get('client_address')}:{ln.get('client_port')}"
        prev, last[addr] = last.get(addr, ""), command
        # RedisStore.wait_wake sends RPUSH + EXPIRE of one key as one (non-transactional)
        # pipeline: one round trip, which MONITOR cannot tell from two.
        if name == "EXPIRE" and prev.upper().startswith("RPUSH ") and \
                prev.split(" ", 2)[1] == command.split(" ", 2)[1]:
            continue
        if name == "MULTI":
            in_multi.add(addr)
            continue
        if addr in in_multi:
            if name != "EXEC":
                continue
            in_multi.discard(addr)
            name = "MULTI/EXEC"
        t.by_cmd[name] += 1
        if name in ("ZCOUNT", "ZRANGEBYSCORE"):  # the reconciler scanning the index
            t.reconciler += 1
        elif addr in producer_addrs:
            t.producer += 1
        else:
            t.workers += 1
    return t


def commandstats(client: redis.Redis) -> Counter[str]:
    return Counter({k.removeprefix("cmdstat_"): v["calls"]
                    for k, v in client.info("commandstats").items()})


def b4_round_trips(cl: Cluster, quick: bool, sec: Section) -> None:
    log("B4: Redis round trips per builder hop (store on its own private server, MONITOR + "
        "INFO commandstats)")
    store_srv = RedisServer().start()
    cl.extra.append(store_srv)
    broker = cl.url(5)
    # The producer's connections carry a client name, so MONITOR lines can be told apart.
    pa = polaris_app(broker, store_srv.url, name="bench-rtt", client_name="bench-producer")
    workers = Workers("rtt", {"BENCH_ROLE": "polaris", "BENCH_BROKER_URL": broker,
                              "BENCH_STORE_URL": store_srv.url})
    cl.extra.append(workers)
    workers.start()
    workers.wait_ready(pa.app)
    store = redis.Redis.from_url(store_srv.url)
    main = redis.Redis.from_url(cl.url(0))
    n = 3 if quick else 10
    loads: list[tuple[str, int, int, Callable[[], Any]]] = [
        ("20-builder chain, inline on", n, 20, lambda: polaris_once(pa, "chain20")),
        ("20-builder chain, inline off", n, 20, lambda: polaris_once(pa, "chain20-noinline")),
        ("20-wide fan-out + join", n, 21, lambda: polaris_once(pa, "fan20")),
        ("5-builder chain, inline on", 2 * n, 5, lambda: polaris_once(pa, "chain5")),
        ("5-builder chain, inline off", 2 * n, 5, lambda: polaris_once(pa, "chain5-noinline")),
        ("cab ride, whole ride in one delta", n, 5,
         lambda: pa.inline.submit_delta("cab", _uid(), *W.cab_whole_ride(1)).wait(30)),
    ]
    for _, _, _, op in loads:  # warm: connections open, scripts loaded
        op()
        op()
    # Every connection the producer holds now, by address as MONITOR prints it.
    producer_addrs = {c["addr"] for c in store.client_list() if c.get("name") == "bench-producer"}
    # Connections opened later by the producer's pools would be counted as workers'; there
    # should be none in a single-threaded producer, and the check below says so if there are.
    mon = Monitor(store_srv.url).start()
    bmon = Monitor(cl.url(0)).start()
    rows: list[list[str]] = []
    try:
        for i, (label, runs, hops, op) in enumerate(loads):
            before = commandstats(store)
            mon.mark(f"{i}-start")
            bmon.mark(f"{i}-start")
            for _ in range(runs):
                op()
            time.sleep(0.3)  # acks of the last messages
            mon.mark(f"{i}-end")
            bmon.mark(f"{i}-end")
            after = commandstats(store)
            delta = {k: after[k] - before.get(k, 0) for k in after
                     if k.upper() not in IGNORED and after[k] - before.get(k, 0) > 0}
            rows.append([label, runs, hops, delta])
        # And canvas, for comparison: its broker and result-backend commands per task.
        mon_c = "canvas"
        bmon.mark(f"{mon_c}-start")
        for _ in range(n):
            canvas_chain(cl.can, 20)
        time.sleep(0.3)
        bmon.mark(f"{mon_c}-end")
    finally:
        mon.stop()
        bmon.stop()
    new_producer = {c["addr"] for c in store.client_list()
                    if c.get("name") == "bench-producer"} - producer_addrs
    table = []
    for i, (label, runs, hops, delta) in enumerate(rows):
        t = count_trips(mon.window(str(i)), producer_addrs, None)
        b = count_trips(bmon.window(str(i)), set(), {5})
        total_hops = runs * hops
        per_hop = (t.producer + t.workers) / total_hops
        worker_hop = t.workers / total_hops
        stats_total = sum(delta.values())
        sec.add(Row(
            f"B4 store round trips per hop: {label}", f"{per_hop:.2f}", f"{worker_hop:.2f}", "",
            f"<= {RTT_TARGET:.0f} (all in)", per_hop <= RTT_TARGET,
            f"producer (submit_delta + wait) {t.producer / runs:.1f} per run; "
            f"{runs} runs x {hops} hops",
        ))
        table.append([
            label, total_hops, f"{per_hop:.2f}", f"{worker_hop:.2f}", f"{t.producer / runs:.1f}",
            ", ".join(f"{k} {v / total_hops:.2f}" for k, v in t.by_cmd.most_common()),
            f"{stats_total / total_hops:.1f} (Lua-internal {t.lua_internal / total_hops:.1f})",
            ", ".join(f"{k} {v / total_hops:.2f}" for k, v in sorted(delta.items(),
                                                                    key=lambda kv: -kv[1])),
            f"{(b.workers + b.producer) / total_hops:.1f}",
        ])
    cb = count_trips(bmon.window(mon_c), set(), {2, 3})
    canvas_cmds = sum(v for k, v in cb.by_cmd.items()) / (n * 20)
    sec.text.append(
        "Round trips are counted from MONITOR on the store's own redis-server: a command sent "
        "by a client is one round trip, a MULTI..EXEC block is one, commands run inside Lua "
        "scripts are none; the producer's connections are told apart by client name. "
        "`INFO commandstats` counts every command, those inside Lua scripts included, so its "
        "total is larger; both are shown. Broker commands are from MONITOR on the broker's "
        "server (its db only; pipelined commands counted one by one)."
        + (f" Warning: the producer opened {len(new_producer)} connection(s) during the "
           "measurement, counted as workers'." if new_producer else "")
    )
    sec.text.append(md_table(
        ["Run", "Builder hops", "Store round trips / hop", "of which workers", "producer / run",
         "Round trips by command, per hop", "commandstats calls / hop",
         "commandstats by command, per hop", "Broker commands / hop"],
        table,
    ))
    sec.text.append(
        f"For comparison, a canvas chain of 20 no-op tasks costs {canvas_cmds:.1f} Redis "
        f"commands per task on its broker and result backend together "
        f"({', '.join(f'{k} {v / (n * 20):.2f}' for k, v in cb.by_cmd.most_common(8))})."
    )
    workers.stop()
    store.close()
    main.close()
    pa.store.close()


# -- B5: I/O-bound builders on thread pools --------------------------------------------------------


def b5_io(cl: Cluster, quick: bool, sec: Section) -> None:
    procs = (1, 2) if quick else (1, 2, 4)
    conc = 16
    log(f"B5: I/O-bound builders (sleep {W.SLEEP_SECONDS * 1e3:.0f} ms), threads pool -c {conc},"
        f" {procs} worker processes")
    env = {"BENCH_ROLE": "polaris", "BENCH_BROKER_URL": cl.url(1), "BENCH_STORE_URL": cl.url(0)}
    for p in procs:
        c = conc * p
        ideal = c / W.SLEEP_SECONDS
        n_inst = (4 if quick else 8) * c  # 5 builders each: 20-40 pool-fulls of builders
        workers = Workers(f"io{p}", env, pool="threads", concurrency=conc, processes=p)
        cl.extra.append(workers)
        workers.start()
        try:
            workers.wait_ready(cl.pol.app)
            polaris_many(cl.pol, "sleep5", c)  # warm every thread
            polaris_many(cl.pol, "sleep5-noinline", c)
            for key, label in (("sleep5", "inline on"), ("sleep5-noinline", "inline off")):
                groups = [partial(cpu_seconds, list(workers.pids)),
                          partial(cpu_seconds, [cl.server.pid] if cl.server.pid else []),
                          own_cpu]
                c0 = [f() for f in groups]
                dt = polaris_many(cl.pol, key, n_inst)
                cw, cr, cp = (f() - x for f, x in zip(groups, c0, strict=True))
                got = n_inst * 5 / dt
                frac = got / ideal
                per = n_inst * 5
                sec.add(Row(
                    f"B5 {p} worker process(es) x threads -c {conc}, {label}",
                    f"{got:.0f} builders/s", f"ideal {ideal:.0f}/s", f"{frac:.0%}",
                    f">= {IO_TARGET:.0%}", frac >= IO_TARGET,
                    f"{n_inst} instances of a 5-builder chain (each builder sleeps "
                    f"{W.SLEEP_SECONDS * 1e3:.0f} ms), submit all then wait all, {dt:.2f} s; "
                    f"CPU per builder: workers {cw / per * 1e3:.2f} ms, redis "
                    f"{cr / per * 1e3:.2f} ms, producer {cp / per * 1e3:.2f} ms; "
                    f"{(cw + cr + cp) / dt:.2f} of 2 cores busy",
                ))
        finally:
            workers.stop()
        # The same shape on Celery canvas, same pool, for reference: chains of 5 sleeping tasks.
        cw = Workers(f"io-canvas{p}", {"BENCH_ROLE": "canvas", "BENCH_BROKER_URL": cl.url(2),
                                       "BENCH_BACKEND_URL": cl.url(3)},
                     pool="threads", concurrency=conc, processes=p)
        cl.extra.append(cw)
        cw.start()
        try:
            cw.wait_ready(cl.can)
            canvas_many(cl.can, conc * p, 5, "bench.sleep")
            dt = canvas_many(cl.can, n_inst, 5, "bench.sleep")
            got = n_inst * 5 / dt
            sec.add(Row(
                f"B5 ... canvas chains of 5 sleeping tasks, same {p} process(es) x threads -c "
                f"{conc}", f"{got:.0f} tasks/s", f"ideal {ideal:.0f}/s", f"{got / ideal:.0%}",
                "", None, f"{n_inst} chains, apply_async all then get all, {dt:.2f} s; the "
                "reference for what Celery itself reaches with this pool",
            ))
        finally:
            cw.stop()


# -- B6: the producer: submit_delta rate, and its cost against graph size ------------------


def b6_submit(cl: Cluster, quick: bool, big: BigGraphs, sec: Section) -> None:
    from celery import Celery

    total = len(big.big.builders)
    log(f"B6: submit_delta from one producer; 10- vs {total}-builder workflow (builders routed "
        "to a queue no worker reads)")
    app = Celery("bench-b6", broker=cl.url(6), set_as_current=False)
    app.conf.worker_hijack_root_logger = False
    store = pc.RedisStore(cl.url(4))
    reg = pc.Registry(store)
    reg.register("small", big.small)
    t0 = time.perf_counter()
    reg.register("big", big.big)
    t_reg = time.perf_counter() - t0
    reg.register("big-up", big.big_up)
    t0 = time.perf_counter()
    ex = pc.CeleryExecutor(app, reg, reconciler=False)
    t_ex = time.perf_counter() - t0
    deltas = {"small": big.small_delta, "big": big.big_delta, "big-up": big.big_up_delta}
    for key, d in deltas.items():
        for _ in range(50):
            ex.submit_delta(key, _uid(), d())
    batch = 100 if quick else 200
    rounds = 5 if quick else 11
    first = True
    for key, shape in (("big", "extra builders in a separate part of the graph"),
                       ("big-up", "one connected graph, extra builders upstream")):
        d = deltas[key]
        pr = paired(lambda i: ex.submit_delta("small", _uid(), big.small_delta()),
                    lambda i, k=key, d=d: ex.submit_delta(k, _uid(), d()), rounds, batch)
        ms, mb = median(pr.a), median(pr.b)
        if first:
            lo, hi = quartiles(pr.a)
            sec.add(Row(
                "B6 submit_delta calls/s, one producer (10-builder workflow)", f"{1 / ms:.0f} /s",
                "", "", "none given", None,
                f"{ms * 1e3:.2f} ms per call (IQR of batches {lo * 1e3:.2f}-{hi * 1e3:.2f}); "
                "each stores the delta, marks and sends 1 builder",
            ))
            first = False
        sec.add(Row(
            f"B6 coordinator time per delta: {total}- vs 10-builder workflow, {shape}",
            fmt_ms(mb), fmt_ms(ms), f"{pr.ratio:.2f}", "~1.0 (<= 1.2)", pr.ratio <= 1.2,
            f"{pr.describe()}; batches of {batch}",
        ))
    sec.text.append(f"Registering a {total}-builder workflow took {t_reg:.2f} s; "
                    f"CeleryExecutor() over three workflows (one Celery task per builder, "
                    f"{sum(len(g.specs) for g in map(reg.graph, reg.keys()))} in all) "
                    f"{t_ex:.2f} s.")
    # Where a submit's time goes (cProfile of 300 submits; deterministic, so only indicative).
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        ex.submit_delta("small", _uid(), big.small_delta())
    prof.disable()
    st = pstats.Stats(prof)
    stats: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    total_t = sum(v[3] for k, v in stats.items() if k[2] == "submit_delta")
    cum, own = [], []
    for (file, _line, func), (_cc, _nc, tt, ct, _callers) in stats.items():
        short = file.split("site-packages/")[-1].split(f"{ROOT}/")[-1]
        own.append((tt, f"{short}:{func}"))
        if short.startswith(("polaris_celery/", "kombu/", "celery/", "redis/")):
            cum.append((ct, f"{short}:{func}"))
    cum.sort(reverse=True)
    own.sort(reverse=True)
    sec.text.append(
        "Where submit_delta's time goes (cProfile of 300 calls; indicative). Cumulative: "
        + "; ".join(f"`{name}` {ct / total_t:.0%}" for ct, name in cum[2:12])
        + ". Self: " + "; ".join(f"`{name}` {tt / total_t:.0%}" for tt, name in own[:10]) + "."
    )
    # Leave nothing behind: B6's store db and the sink queue's messages.
    store.client.flushdb()
    redis.Redis.from_url(cl.url(6)).flushdb()
    store.close()


# -- B7: Redis memory per instance ----------------------------------------------------------------


def b7_memory(cl: Cluster, quick: bool, sec: Section) -> None:
    checkpoints = (200, 1000, 2000) if quick else (1000, 5000, 10000)
    completed_n = 200 if quick else 1000
    log(f"B7: Redis memory per paused cab-ride instance at {checkpoints}, and per completed one")
    r = redis.Redis.from_url(cl.url(0))
    ex = cl.pol.inline
    batch = 500

    def used() -> int:
        time.sleep(0.5)  # the last acks
        return int(r.info("memory")["used_memory"])

    def submit(make: Callable[[int], list[Any]], start: int, stop: int, tag: str) -> None:
        for b in range(start, stop, batch):
            hs = [ex.submit_delta("cab", f"{tag}-{i}", *make(i))
                  for i in range(b, min(b + batch, stop))]
            for h in hs:
                h.wait(120)

    base = used()
    points = [(0, base)]
    done = 0
    t0 = time.perf_counter()
    for cp in checkpoints:
        submit(W.cab_first_delta, done, cp, "mem-paused")
        done = cp
        points.append((cp, used()))
        log(f"  {cp} paused instances: used_memory +{(points[-1][1] - base) / 1e6:.1f} MB "
            f"({time.perf_counter() - t0:.0f} s)")
    segs = []
    for (n0, m0), (n1, m1) in itertools.pairwise(points):
        segs.append(((n0, n1), (m1 - m0) / (n1 - n0)))
    first = segs[0][1]
    flat = all(abs(s / first - 1) <= 0.15 for _, s in segs)
    sec.add(Row(
        "B7 Redis memory per paused instance (cab ride after its first delta)",
        f"{(points[-1][1] - base) / checkpoints[-1]:.0f} B", "", "", "none given", None,
        f"over {checkpoints[-1]} instances; one run settled, data RideRequested + CabbieMatched",
    ))
    sec.add(Row(
        "B7 ... stays flat as instances accumulate",
        " / ".join(f"{s:.0f}" for _, s in segs) + " B",
        " / ".join(f"{a}-{b}" for (a, b), _ in segs), "",
        "each segment within 15% of the first", flat,
        "bytes per instance over each interval of instance counts",
    ))
    m0 = used()
    submit(W.cab_whole_ride, 0, completed_n, "mem-done")
    m1 = used()
    sec.add(Row(
        "B7 Redis memory per completed instance (whole ride in one delta)",
        f"{(m1 - m0) / completed_n:.0f} B", "", "", "none given", None,
        f"over {completed_n} instances; 4 inputs + 5 produced data, one settled run",
    ))
    # Where the bytes are: MEMORY USAGE of each key of one paused and one completed instance.
    rows = []
    for label, iid in (("paused", "mem-paused-7"), ("completed", "mem-done-7")):
        k = cl.pol.store.keys("cab", iid)
        inc = (r.hget(k.state, "inc") or b"").decode()
        for kind in ("data", "state", "lease", "deltas", "log", "history", "run:1", "wake:1"):
            key = k.run(inc, 1) if kind == "run:1" else k.wake(inc, 1) if kind == "wake:1" \
                else getattr(k, kind)
            size = r.memory_usage(key, samples=0)
            if size:
                ttl = r.ttl(key)
                rows.append([label, f"`{key}`", r.type(key).decode(), size,
                             "none" if ttl < 0 else f"{ttl} s"])
    sec.text.append("Keys of one instance (`MEMORY USAGE`):")
    sec.text.append(md_table(["Instance", "Key", "Type", "Bytes", "TTL"], rows))
    r.close()
