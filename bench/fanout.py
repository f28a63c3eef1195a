"""Part D: fan-outs that stay linear (issue 12, item 4).

A W-wide fan-out + join (bench/workflows.py `fan`: one delta, W builders each producing their
own datum, a join consuming all W) on real `celery worker` processes (prefork -c 2, as in part
B), against a Celery chord of W no-op tasks on the same kind of worker, side by side.

- Cost per builder, W = 10, 100, 200, 1,000: the bytes the store's Redis received and sent
  (INFO stats: total_net_input_bytes / total_net_output_bytes) and the commands it ran (INFO
  commandstats, the commands Lua scripts run included; EVALSHA alone is the round trips), per
  builder (W + 1 of them), over instances run one after another. The store has a redis-server
  of its own, so neither broker carries into it.
- Time: the 200-wide fan-out + join against a chord of 200, interleaved round by round; and a
  1,000-wide fan-out, which must complete, against a chord of 1,000.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import redis

from polaris_celery.testing import RedisServer

from .apps import PolarisApp, canvas_app, polaris_app
from .distributed import canvas_chord, interleave, polaris_once
from .util import Row, Section, Workers, fmt_ms, log, md_table, median, spread_ms

WIDTHS = (10, 100, 200, 1000)
#: The measurement's own commands.
OWN = {"info"}
TIME_TARGET = 0.6  # a 200-wide fan-out + join in at most this share of a chord of 200's time
FLAT_TARGET = 1.25  # bytes and commands per builder at W=1,000 over W=10, at most


def _stats(client: redis.Redis) -> tuple[int, int, Counter[str]]:
    s = client.info("stats")
    calls = Counter[str]()
    for k, v in client.info("commandstats").items():
        name = k.removeprefix("cmdstat_")
        if name not in OWN:
            calls[name] += int(v["calls"])
    return int(s["total_net_input_bytes"]), int(s["total_net_output_bytes"]), calls


def run(quick: bool, sec: Section) -> None:
    store = RedisServer().start()
    broker = RedisServer().start()
    b = f"redis://127.0.0.1:{broker.port}"
    s = f"redis://127.0.0.1:{store.port}/0"
    log(f"D: store redis-server pid {store.pid}, brokers on pid {broker.pid}")
    pol = polaris_app(f"{b}/1", s)
    can = canvas_app(f"{b}/2", f"{b}/3")
    pw = Workers("fan-polaris", {"BENCH_ROLE": "polaris", "BENCH_BROKER_URL": f"{b}/1",
                                 "BENCH_STORE_URL": s})
    cw = Workers("fan-canvas", {"BENCH_ROLE": "canvas", "BENCH_BROKER_URL": f"{b}/2",
                                "BENCH_BACKEND_URL": f"{b}/3"})
    try:
        pw.start()
        cw.start()
        pw.wait_ready(pol.app)
        cw.wait_ready(can)
        for w in WIDTHS[:3]:
            polaris_once(pol, f"fan{w}")
            canvas_chord(can, w)
        _cost(pol, store, quick, sec)
        _time(pol, can, quick, sec)
    finally:
        for workers in (pw, cw):
            with contextlib.suppress(Exception):
                workers.stop()
        store.cleanup()
        broker.cleanup()


def _cost(pol: PolarisApp, store: RedisServer, quick: bool, sec: Section) -> None:
    client = redis.Redis(port=store.port)
    rows = []
    per: dict[int, tuple[float, float, float, float]] = {}
    for w in WIDTHS:
        n = max(1, (200 if quick else 600) // w)
        in0, out0, c0 = _stats(client)
        for _ in range(n):
            polaris_once(pol, f"fan{w}")
        in1, out1, c1 = _stats(client)
        builders = n * (w + 1)
        calls = c1 - c0
        per[w] = ((in1 - in0) / builders, (out1 - out0) / builders,
                  sum(calls.values()) / builders, calls["evalsha"] / builders)
        rows.append((w, n, f"{per[w][0]:.0f}", f"{per[w][1]:.0f}", f"{per[w][2]:.1f}",
                     f"{per[w][3]:.2f}"))
        log(f"  fan{w}: {n} instances; per builder in {per[w][0]:.0f} B, out {per[w][1]:.0f} B,"
            f" commands {per[w][2]:.1f}, scripts {per[w][3]:.2f}")
    sec.text.append("Cost per builder in the store's Redis, by fan-out width (instances run one "
                    "after another; W + 1 builders each):\n\n" + md_table(
                        ("width W", "instances", "bytes in / builder", "bytes out / builder",
                         "commands / builder", "EVALSHA / builder"), rows))
    lo, hi = per[WIDTHS[0]], per[WIDTHS[-1]]
    for i, what in ((0, "bytes into Redis"), (1, "bytes out of Redis"), (2, "Redis commands")):
        ratio = hi[i] / lo[i]
        sec.add(Row(f"D1 {what} per builder, W={WIDTHS[-1]} vs W={WIDTHS[0]}",
                    f"{hi[i]:.1f}", f"{lo[i]:.1f}", f"{ratio:.2f}", f"<= {FLAT_TARGET}",
                    ratio <= FLAT_TARGET, "flat: the same cost per builder at any width"))


def _time(pol: PolarisApp, can: Any, quick: bool, sec: Section) -> None:
    rounds = 5 if quick else 15
    ts, _ = interleave({"fan": lambda: polaris_once(pol, "fan200"),
                        "chord": lambda: canvas_chord(can, 200)}, rounds, "D2 fan200 vs chord")
    m, c = median(ts["fan"]), median(ts["chord"])
    sec.add(Row("D2 200-wide fan-out + join vs chord of 200", fmt_ms(m), fmt_ms(c),
                f"{m / c:.2f}", f"<= {TIME_TARGET}", m / c <= TIME_TARGET,
                f"{rounds} interleaved rounds; polaris {spread_ms(ts['fan'])}; canvas "
                f"{spread_ms(ts['chord'])}"))
    wide = [polaris_once(pol, "fan1000") for _ in range(1 if quick else 3)]
    chords = [canvas_chord(can, 1000) for _ in range(1 if quick else 3)]
    m, c = median(wide), median(chords)
    sec.add(Row("D3 1,000-wide fan-out + join completes (vs chord of 1,000)", fmt_ms(m),
                fmt_ms(c), f"{m / c:.2f}", "completes", True,
                f"{len(wide)} runs each, one after another"))
