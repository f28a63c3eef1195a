"""A producer process for the submit storm: `python -m tests.faults.producer PLAN_JSON`.

The plan names the store and broker, the instances, the delta ids to submit (each is sent as
`Ping(id=<delta id>)` under that id), how many id-less deltas to add per instance, a thread
count and a wall-clock start time, so that every producer process and thread fires at once.
Prints one JSON line: {"told": [[instance, delta id, run], ...], "free": [[instance, ping id,
run], ...]}.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from typing import Any

from . import app as fapp


def storm(ex: Any, plan: dict[str, Any], tag: str) -> dict[str, list[list[Any]]]:
    """Submit the plan from `plan["threads"]` threads of this process; returns what each was
    told."""
    told: list[list[Any]] = []
    free: list[list[Any]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def one(t: int) -> None:
        rng = random.Random(f"{tag}-{t}")
        jobs: list[tuple[str, str | None, str]] = [
            (inst, did, did) for inst in plan["instances"] for did in plan["ids"]]
        jobs += [(inst, None, f"free-{tag}-{t}-{k}") for inst in plan["instances"]
                 for k in range(plan["free"])]
        rng.shuffle(jobs)
        while time.time() < plan["start_at"]:
            time.sleep(0.001)
        try:
            for inst, did, ping in jobs:
                run = ex.submit_delta("storm", inst, fapp.Ping(id=ping), delta_id=did).run
                with lock:
                    (told if did is not None else free).append([inst, did or ping, run])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(t,)) for t in range(plan["threads"])]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return {"told": told, "free": free}


def main() -> None:
    plan = json.loads(sys.argv[1])
    ex = fapp.make_executor(plan["store"], plan["broker"], reconciler=False)
    print(json.dumps(storm(ex, plan, plan["tag"])))


if __name__ == "__main__":
    main()
