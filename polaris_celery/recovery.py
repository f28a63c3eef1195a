"""The reconciler pass: which instances to look at, in what order, and what to do when a look
cannot be made. The look itself is a transition (`transitions.look`) applied like any other.

Fairness, so that no set of instances can starve the rest:
- each pass starts at a random bucket of the sharded index, and in each bucket at a random
  place among the instances due, so workers reconciling at once take different work and N
  workers recover N times as many instances per interval as one;
- an instance whose workflow or version this process lacks is passed over without touching its
  place in the index: a worker that has it will look at it (a process never postpones work it
  cannot judge);
- an instance whose look raised is put back by `interval * 4`, so it cannot stay first in line.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from .errors import StoreUnavailable, UnknownWorkflow
from .registry import Registry
from .stores.redis import RedisStore

log = logging.getLogger("polaris_celery")

#: Looks at one instance (workflow, instance id, the index score read) under the fence, and
#: adds to the counts.
Look = Callable[[str, str, float, dict[str, int]], None]


def reconcile(look: Look, store: RedisStore, registry: Registry, now: float, limit: int,
              interval: float, rng: random.Random | None = None) -> dict[str, int]:
    """One pass over up to `limit` instances due by `now`. Safe anywhere, any number of times
    at once: every change a look makes is a fenced transition."""
    counts = {"instances": 0, "resent": 0, "lost": 0, "skipped": 0, "failed": 0}
    for member, seen in store.due(now, limit, rng or random.Random()):
        _one(look, store, registry, member, seen, now, interval, counts)
    return counts


def _one(look: Look, store: RedisStore, registry: Registry, member: str, seen: float,
         now: float, interval: float, counts: dict[str, int]) -> None:
    workflow, _, instance_id = member.partition("/")
    if workflow not in registry:
        counts["skipped"] += 1
        return
    try:
        look(workflow, instance_id, seen, counts)
    except UnknownWorkflow:
        counts["skipped"] += 1  # pinned to a version this process lacks
    except StoreUnavailable:
        raise
    except Exception:
        counts["failed"] += 1
        log.exception("polaris: reconciling %s failed; looking again in %ss", member,
                      interval * 4)
        store.postpone(member, seen, now + interval * 4)
