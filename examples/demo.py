"""`make demo`: the cab ride across real Celery worker processes.

Starts a private redis-server (unless POLARIS_REDIS_URL names one) and two `celery -A worker
worker` processes, then plays the ride as its producers would: the rider's request now, the
cabbie's arrival, the drop-off and the payment as later deltas. Between deltas the instance is
paused and costs nothing. It stops everything it started, by pid.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from polaris_celery.testing import RedisServer, celery_worker

console = Console(highlight=False)
REPO = Path(__file__).resolve().parent.parent
# `worker` reads its URLs from the environment when first imported, so it is imported in main()
# only after the environment names the private server; this file lives outside that package.
sys.path.insert(0, str(REPO))


def worker(name: str, env: dict[str, str]) -> Any:
    return celery_worker("worker", env, name=name, concurrency=1,
                         cwd=str(REPO))


def wait_for_workers(app: object, names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with console.status("starting two Celery worker processes ..."):
        while time.monotonic() < deadline:
            replies = app.control.ping(timeout=0.5)  # type: ignore[attr-defined]
            up = {n.split("@")[0] for r in replies for n in r}
            if set(names) <= up:
                return
    raise SystemExit(f"workers {names} did not come up within {timeout}s")


def main() -> None:
    with ExitStack() as stack:
        url = os.environ.get("POLARIS_REDIS_URL")
        if not url:
            server = stack.enter_context(RedisServer())
            url = server.url
            console.print(f"[dim]private redis-server pid {server.pid} on {url}[/]")
        broker = os.environ.get("POLARIS_BROKER_URL") or url.rsplit("/", 1)[0] + "/1"
        env = {"POLARIS_REDIS_URL": url, "POLARIS_BROKER_URL": broker}
        os.environ.update(env)
        import worker as app_module  # reads the environment set above
        from worker.cab_ride import (
            ArrivedAtDestination,
            CabbieArrived,
            CabbieMatched,
            FareComputed,
            PaymentMade,
            RideEnded,
            RideRequested,
        )

        procs = [stack.enter_context(worker(n, env)) for n in ("w1", "w2")]
        wait_for_workers(app_module.app, ["w1", "w2"])
        console.print(f"workers up: pids {', '.join(str(p.pid) for p in procs)}\n")
        ex = app_module.executor
        store = app_module.registry.store
        ride = f"ride-{uuid.uuid4().hex[:6]}"

        def play(title: str, *data: object) -> object:
            console.rule(f"[bold]{title}")
            t0 = time.perf_counter()
            handle = ex.submit_delta("cab-ride", ride, *data)  # type: ignore[arg-type]
            result = handle.wait(timeout=60)
            took = (time.perf_counter() - t0) * 1000
            k = store.keys("cab-ride", ride)
            for _, entry in store.log(k):
                e = {a.decode(): b.decode() for a, b in entry.items()}
                if e.get("ev") == "builder" and int(e["run"]) == handle.run:
                    console.print(f"  {e['b']:<16} on {e['by']:<26} "
                                  f"{float(e['secs']) * 1000:7.1f} ms  -> {e['result']}")
            state = "[green]completed[/]" if result.completed else f"[yellow]{result.status}[/]"
            console.print(f"  run {handle.run}: {state} in {took:.0f} ms, produced "
                          f"{', '.join(result.data) or 'nothing'}\n")
            return result

        console.print(f"instance [bold]{ride}[/] of workflow [bold]cab-ride[/]\n")
        r1 = play("rider requests a cab", RideRequested(user_id="u-1", source="Gare du Nord",
                                                        dest="Orly"))
        matched = r1.get(CabbieMatched)  # type: ignore[attr-defined]
        console.print("[dim]... the instance is paused in Redis; nothing runs until the "
                      "cabbie's app reports ...[/]\n")
        time.sleep(1)
        play("cabbie arrives at the pickup", CabbieArrived(cabbie_id=matched.cabbie_id))
        time.sleep(0.5)
        r3 = play("cabbie drops the rider at the destination",
                  ArrivedAtDestination(distance_km=17.5))
        fare = r3.get(FareComputed)  # type: ignore[attr-defined]
        time.sleep(0.5)
        r4 = play("payment gateway confirms the payment",
                  PaymentMade(user_id="u-1", amount=fare.amount))
        ended = r4.get(RideEnded)  # type: ignore[attr-defined]
        console.print(f"[bold green]ride complete[/]: {ended}\n")

        console.rule("[bold]20 rides at once, shared by both workers")
        t0 = time.perf_counter()
        handles = [ex.submit_delta("cab-ride", f"{ride}-{i}",
                                   RideRequested(user_id=f"u-{i}", source="A", dest="B"))
                   for i in range(20)]
        for h in handles:
            h.wait(timeout=60)
        took = time.perf_counter() - t0
        by_worker: dict[str, int] = {}
        for h in handles:
            for _, entry in store.log(store.keys("cab-ride", h.instance_id)):
                who = entry.get(b"by", b"?").decode()
                if entry.get(b"ev") == b"builder":
                    by_worker[who] = by_worker.get(who, 0) + 1
        table = Table("worker process", "builders run")
        for who, n in sorted(by_worker.items()):
            table.add_row(who, str(n))
        console.print(table)
        console.print(f"20 MatchCabbie runs (50 ms of simulated work each) in {took:.2f} s\n")
        console.print("[dim]stopping workers and the private redis-server ...[/]")


if __name__ == "__main__":
    main()
