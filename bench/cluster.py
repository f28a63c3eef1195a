"""Part C: the store on a 3-primary Redis Cluster against the store on one node (issue 12, item 5).

The same workload on both sides, alternated round by round: 1,000 cab rides (worker/cab_ride.py,
its simulated service calls set to zero), each brought whole in one delta and run to completion
by real `celery worker` processes, submitted all and then waited for all, as B3 does.

- one node: the store on a private redis-server of its own;
- cluster: the store on a private `RedisCluster` (3 primaries, 1 replica each, `redis+cluster://`).

Each side has its own worker process (`celery -A bench.app worker --pool prefork -c 2`, the
settings of the other parts); both brokers are dbs of one more private redis-server, so the
store servers carry the store alone. Redis CPU is `INFO cpu` (used_cpu_sys + used_cpu_user) of
each server, read before and after each run; the key spread is DBSIZE of each primary and the
primary serving each of the 16 index buckets `pc:{index:B}`.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import redis
from pydantic import BaseModel

from polaris_celery.stores.shared import BUCKETS
from polaris_celery.testing import RedisCluster, RedisServer

from . import workflows as W
from .apps import PolarisApp, polaris_app
from .distributed import interleave
from .util import Row, Section, Workers, cpu_seconds, log, md_table, median, own_cpu

WORKFLOW = "cab"
IDLE_SECONDS = 3.0
#: The measurement's own commands (it reads INFO of every server around each run).
OWN_COMMANDS = {"info"}


def _redis_cpu(client: redis.Redis) -> float:
    """CPU seconds the server has used so far (INFO cpu: system + user, all its threads)."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _calls(clients: list[redis.Redis]) -> Counter[str]:
    """Commands each server has run so far, by name, summed over `clients` (INFO commandstats:
    the commands Lua scripts run count too)."""
    out = Counter[str]()
    for c in clients:
        for k, v in c.info("commandstats").items():
            name = k.removeprefix("cmdstat_")
            if name not in OWN_COMMANDS:
                out[name] += int(v["calls"])
    return out


def rides(pa: PolarisApp, deltas: list[list[BaseModel]]) -> float:
    """Submit one whole cab ride per delta, then wait for all; seconds from first submit to
    last completion."""
    ex = pa.inline
    tag = uuid.uuid4().hex[:12]
    t0 = time.perf_counter()
    handles = [ex.submit_delta(WORKFLOW, f"{tag}-{i}", *d) for i, d in enumerate(deltas)]
    missed = sum(not h.wait(180).completed for h in handles)
    dt = time.perf_counter() - t0
    if missed:
        raise RuntimeError(f"{missed} of {len(deltas)} cab rides did not complete")
    return dt


def _instances_on(client: redis.Redis, prefix: str) -> int:
    """Instances whose keys live on this node: their state hashes, by SCAN."""
    return sum(1 for _ in client.scan_iter(match=f"{prefix}:{{{WORKFLOW}/*}}:state", count=1000))


def run(quick: bool, sec: Section) -> None:
    n = 200 if quick else 1000
    rounds = 1 if quick else 3
    log(f"C: {n} cab rides on one node vs a 3-primary cluster (+3 replicas), {rounds} "
        "interleaved round(s)")
    servers: list[Any] = []  # cleaned up at the end, whatever happens
    workers: list[Workers] = []
    clients: list[redis.Redis] = []
    apps: list[PolarisApp] = []
    try:
        broker = RedisServer().start()
        servers.append(broker)
        single = RedisServer().start()
        servers.append(single)
        rc = RedisCluster(primaries=3, replicas=1)
        servers.append(rc)
        rc.start()
        primaries, replicas = rc.primaries(), rc.replicas()
        log(f"  one node: port {single.port}; cluster formed in {rc.formed_in:.1f} s: primaries "
            f"{[p.port for p in primaries]}, replicas {[r.port for r in replicas]}; broker "
            f"port {broker.port}")
        brokers = {"one": f"redis://127.0.0.1:{broker.port}/0",
                   "cluster": f"redis://127.0.0.1:{broker.port}/1"}
        stores = {"one": single.url, "cluster": rc.url}
        pas: dict[str, PolarisApp] = {}
        for side in ("one", "cluster"):
            pas[side] = polaris_app(brokers[side], stores[side], name=f"bench-c-{side}")
            apps.append(pas[side])
            w = Workers(f"c-{side}", {"BENCH_ROLE": "polaris", "BENCH_BROKER_URL": brokers[side],
                                      "BENCH_STORE_URL": stores[side]})
            workers.append(w)
            w.start()
        if not pas["cluster"].store.cluster or pas["one"].store.cluster:
            raise RuntimeError("the stores are not on a cluster and on one node as meant")
        for w, side in zip(workers, ("one", "cluster"), strict=True):
            w.wait_ready(pas[side].app)
        log(f"  workers up: one node pid {workers[0].pids}, cluster pid {workers[1].pids}")

        warm = [W.cab_whole_ride(i) for i in range(20)]
        for side in ("one", "cluster"):  # connections open, scripts loaded, pool children warm
            rides(pas[side], warm)
            rides(pas[side], warm)

        def client(s: RedisServer) -> redis.Redis:
            c = redis.Redis(host="127.0.0.1", port=s.port, socket_timeout=10)
            clients.append(c)
            return c

        c_single, c_broker = client(single), client(broker)
        c_prim = [client(p) for p in primaries]
        c_repl = [client(r) for r in replicas]
        groups: dict[str, Callable[[], float]] = {
            "one node": lambda: _redis_cpu(c_single),
            **{f"primary {i + 1}": partial(_redis_cpu, c) for i, c in enumerate(c_prim)},
            "replicas": lambda: sum(_redis_cpu(c) for c in c_repl),
            "broker": lambda: _redis_cpu(c_broker),
            "workers one": lambda: cpu_seconds(workers[0].pids),
            "workers cluster": lambda: cpu_seconds(workers[1].pids),
            "producer": own_cpu,
        }
        # What the store servers burn with nothing to do (cron, the cluster bus, the workers'
        # reconciler passes), to tell it from the work of the instances.
        idle0 = {k: f() for k, f in groups.items()}
        t_idle = time.perf_counter()
        time.sleep(IDLE_SECONDS)
        t_idle = time.perf_counter() - t_idle
        idle = {k: (f() - idle0[k]) / t_idle for k, f in groups.items()}
        calls0 = {"one": _calls([c_single]), "cluster": _calls(c_prim)}
        deltas = [W.cab_whole_ride(i) for i in range(n)]
        ts, used = interleave({side: partial(rides, pas[side], deltas)
                               for side in ("one", "cluster")}, rounds, "C", groups)
        for side in ("one", "cluster"):
            log(f"  {side}: " + ", ".join(f"{t:.2f} s" for t in ts[side]) + f" for {n} rides")
        calls = {"one": _calls([c_single]) - calls0["one"],
                 "cluster": _calls(c_prim) - calls0["cluster"]}
        total = rounds * n
        spread = _spread(rc, primaries, c_prim, c_single, pas["cluster"])
        _report(sec, n, rounds, total, ts, used, idle, calls, primaries, spread)
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                w.stop()
        for pa in apps:
            with contextlib.suppress(Exception):
                pa.store.close()
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()
        for s in servers:
            with contextlib.suppress(Exception):
                s.cleanup()
        log("C: private servers, cluster and workers stopped")


def _spread(rc: RedisCluster, primaries: list[RedisServer], c_prim: list[redis.Redis],
            c_single: redis.Redis, pa: PolarisApp) -> dict[str, Any]:
    """Where the keys are, after the runs: per primary and on the single node."""
    shared = pa.store.shared
    owner = {b: rc.node_for_key(shared.index(b)).port for b in range(BUCKETS)}
    ports = [p.port for p in primaries]
    buckets = Counter(owner.values())
    entries = Counter[int]()
    for b, port in owner.items():
        entries[port] += int(c_prim[ports.index(port)].zcard(shared.index(b)))
    slots = {v.port: sum(hi - lo + 1 for lo, hi in v.slots) for v in rc.view() if v.is_primary}
    return {
        "ports": ports,
        "slots": [slots.get(p, 0) for p in ports],
        "keys": [int(c.dbsize()) for c in c_prim],
        "instances": [_instances_on(c, pa.store.prefix) for c in c_prim],
        "buckets": [buckets.get(p, 0) for p in ports],
        "entries": [entries.get(p, 0) for p in ports],
        "single_keys": int(c_single.dbsize()),
        "single_instances": _instances_on(c_single, pa.store.prefix),
        "single_entries": sum(int(c_single.zcard(shared.index(b))) for b in range(BUCKETS)),
    }


def _ratio(xs: list[int]) -> str:
    return f"{max(xs) / min(xs):.2f}" if min(xs) > 0 else "inf"


def _report(sec: Section, n: int, rounds: int, total: int, ts: dict[str, list[float]],
            used: dict[str, dict[str, float]], idle: dict[str, float],
            calls: dict[str, Counter[str]], primaries: list[RedisServer],
            sp: dict[str, Any]) -> None:
    one_rate, cl_rate = n / median(ts["one"]), n / median(ts["cluster"])
    times = "; ".join(f"{side} " + ", ".join(f"{t:.2f}" for t in ts[side]) + " s"
                      for side in ("one", "cluster"))
    sec.add(Row(
        f"C {n:,} cab rides: instances/s, 3-primary cluster vs one node",
        f"{cl_rate:.0f} inst/s", f"{one_rate:.0f} inst/s", f"{cl_rate / one_rate:.2f}x",
        "none given", None,
        f"median of {rounds} round(s), each: submit {n:,} whole rides (5 builders each), then "
        f"wait for all; {times}; one prefork -c 2 worker per side",
    ))
    prim = [f"primary {i + 1}" for i in range(len(primaries))]
    ms = {k: used["cluster"][k] / total * 1e3 for k in (*prim, "replicas", "broker")}
    one_ms = used["one"]["one node"] / total * 1e3
    cl_sum = sum(ms[p] for p in prim)
    sec.add(Row(
        "C Redis CPU per instance: cluster primaries (sum) vs one node",
        f"{cl_sum:.2f} ms", f"{one_ms:.2f} ms", f"{cl_sum / one_ms:.2f}",
        "none given", None,
        "per primary " + " / ".join(f"{ms[p]:.2f}" for p in prim)
        + f" ms; replicas (sum of 3) {ms['replicas']:.2f} ms more; INFO cpu sys+user",
    ))
    busiest = max(ms[p] for p in prim)
    sec.add(Row(
        "C ... the busiest primary vs one node",
        f"{busiest:.2f} ms", f"{one_ms:.2f} ms", f"{busiest / one_ms:.2f}", "none given", None,
        "the per-node load that caps a node; 0.33 would be a perfect split of one node's work",
    ))
    per_call = {side: sum(calls[side].values()) / total for side in ("one", "cluster")}
    sec.add(Row(
        "C Redis commands per instance: cluster primaries (sum) vs one node",
        f"{per_call['cluster']:.1f}", f"{per_call['one']:.1f}",
        f"{per_call['cluster'] / per_call['one']:.2f}", "none given", None,
        "INFO commandstats, commands run inside Lua scripts included",
    ))
    sec.add(Row(
        "C keys per primary (DBSIZE), max/min", " / ".join(f"{k:,}" for k in sp["keys"]),
        f"one node {sp['single_keys']:,}", _ratio(sp["keys"]), "none given", None,
        "instances per primary " + " / ".join(f"{k:,}" for k in sp["instances"])
        + f" (of {sum(sp['instances']):,}, warm-up included), max/min "
        + _ratio(sp["instances"]),
    ))
    sec.add(Row(
        f"C index buckets `pc:{{index:B}}` per primary (of {BUCKETS}), max/min",
        " / ".join(str(b) for b in sp["buckets"]), "", _ratio(sp["buckets"]), "none given",
        None, f"{BUCKETS} over 3 primaries splits at best 6/5/5 (1.20); "
        "index entries per primary " + " / ".join(f"{e:,}" for e in sp["entries"])
        + f", max/min {_ratio(sp['entries'])}; slots per primary "
        + " / ".join(f"{s:,}" for s in sp["slots"]),
    ))

    def idle_ms(key: str) -> float:
        """Idle CPU over a run of median length, per instance (ms)."""
        return idle[key] * median(ts["one" if key == "one node" else "cluster"]) / n * 1e3

    rows = [["one node", "16,384", f"{one_ms:.2f}", "100%", f"{idle_ms('one node'):.2f}",
             f"{sp['single_keys']:,}", f"{sp['single_instances']:,}", str(BUCKETS),
             f"{sp['single_entries']:,}"]]
    for i, p in enumerate(prim):
        rows.append([
            f"{p} (port {sp['ports'][i]})", f"{sp['slots'][i]:,}", f"{ms[p]:.2f}",
            f"{ms[p] / cl_sum:.0%}", f"{idle_ms(p):.2f}", f"{sp['keys'][i]:,}",
            f"{sp['instances'][i]:,}", str(sp["buckets"][i]), f"{sp['entries'][i]:,}",
        ])
    rows.append(["cluster primaries, sum", "16,384", f"{cl_sum:.2f}", "100%",
                 f"{sum(idle_ms(p) for p in prim):.2f}", f"{sum(sp['keys']):,}",
                 f"{sum(sp['instances']):,}", str(BUCKETS), f"{sum(sp['entries']):,}"])
    rows.append(["cluster replicas, sum of 3", "", f"{ms['replicas']:.2f}", "",
                 f"{idle_ms('replicas'):.2f}", "", "", "", ""])
    sec.text.append(
        f"Setup: one private redis-server as the store of the one-node side, a private "
        f"`RedisCluster` (3 primaries, 1 replica each, `redis+cluster://`) as the store of the "
        f"other; each side has its own `celery -A bench.app worker --pool prefork -c 2` "
        f"process, and both brokers are dbs of a third private redis-server, so the store "
        f"servers carry the store alone. Each of {rounds} round(s) runs {n:,} cab rides "
        f"(worker/cab_ride.py, simulated service calls at zero; all four inputs in one delta, "
        f"5 builders) on each side, the order alternating. Redis CPU is `INFO cpu` "
        f"(used_cpu_sys + used_cpu_user) of each server before and after each run, divided by "
        f"the {total:,} instances of that side. \"Idle\" is what the server used in "
        f"{IDLE_SECONDS:.0f} s with nothing submitted (cron, the cluster bus, reconciler passes), "
        f"scaled to a run of median length and divided by its {n:,} instances: the part of the "
        f"per-instance figure that is not the instances' work. Keys are counted after all runs "
        f"(completed instances keep their keys). Index entries: on one node a completed "
        f"instance's script takes it out of the index; on a cluster the index is written beside "
        f"the script, and the entry stays until the reconciler's next look settles it.")
    sec.text.append(md_table(
        ["Store server", "Slots", "Redis CPU per instance (ms)", "Share", "of which idle (ms)",
         "Keys (DBSIZE)", "Instances", "Index buckets", "Index entries"], rows))

    cmd_rows = []
    names = sorted(set(calls["one"]) | set(calls["cluster"]),
                   key=lambda k: -(calls["one"][k] + calls["cluster"][k]))
    for name in names:
        a, b = calls["one"][name] / total, calls["cluster"][name] / total
        if max(a, b) >= 0.05:
            cmd_rows.append([f"`{name}`", f"{a:.2f}", f"{b:.2f}"])
    cmd_rows.append(["all", f"{per_call['one']:.2f}", f"{per_call['cluster']:.2f}"])
    sec.text.append("Store commands per instance by command (INFO commandstats of the store "
                    "servers, primaries summed; Lua-internal commands included; 0.05 and up):")
    sec.text.append(md_table(["Command", "one node", "cluster"], cmd_rows))

    cpu_rows = []
    for side, store_ms, label in (("one", one_ms, "one node"),
                                  ("cluster", cl_sum + ms["replicas"], "cluster (3+3 servers)")):
        u = used[side]
        wk = u[f"workers {side}"] / total * 1e3
        br = u["broker"] / total * 1e3
        pr = u["producer"] / total * 1e3
        cpu_rows.append([label, f"{wk:.2f}", f"{store_ms:.2f}", f"{br:.2f}", f"{pr:.2f}",
                         f"{wk + store_ms + br + pr:.2f}"])
    sec.text.append("CPU per instance by process group (ms; this machine has 2 cores, so total "
                    "CPU per instance bounds throughput):")
    sec.text.append(md_table(["Store", "workers", "store servers (cluster: with replicas)",
                              "broker", "producer (submit + wait)", "total"], cpu_rows))
