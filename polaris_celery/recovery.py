"""The reconciler pass: which instances to look at, in what order, and what to do when a look
cannot be made. The look itself is a transition (`transitions.look`) applied like any other.

Fairness, so that no set of instances can starve the rest:
- each pass starts at a random place among the instances due, so workers reconciling at once
  spread over the backlog instead of all taking the same oldest `limit`;
- an instance whose workflow or version this process lacks is passed over without touching its
  place in the index: a worker that has it will look at it (a process never postpones work it
  cannot judge), and the pass pages on past it;
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

#: How many index entries one pass may read, as a multiple of its `limit`.
PAGES = 5

#: Looks at one instance (workflow, instance id) under the fence and adds to the counts.
Look = Callable[[str, str, dict[str, int]], None]


def reconcile(look: Look, store: RedisStore, registry: Registry, now: float, limit: int,
              interval: float, rng: random.Random | None = None) -> dict[str, int]:
    """One pass over up to `limit` instances due by `now`. Safe anywhere, any number of times
    at once: every change a look makes is a fenced transition."""
    counts = {"instances": 0, "resent": 0, "lost": 0, "skipped": 0, "failed": 0}
    due = store.due_count(now)
    start = (rng or random).randrange(due) if due > limit else 0
    read = 0
    # From `start` to the end of what is due, then from the beginning up to `start`.
    for lo, hi in ((start, due), (0, start)):
        pos = lo
        while pos < hi and counts["instances"] < limit and read < limit * PAGES:
            page = store.due(now, pos, min(limit, hi - pos))
            if not page:
                break
            pos += len(page)
            read += len(page)
            for member in page:
                if counts["instances"] >= limit:
                    break
                _one(look, store, registry, member, now, interval, counts)
    return counts


def _one(look: Look, store: RedisStore, registry: Registry, member: str, now: float,
         interval: float, counts: dict[str, int]) -> None:
    workflow, _, instance_id = member.partition("/")
    if workflow not in registry:
        counts["skipped"] += 1
        return
    try:
        look(workflow, instance_id, counts)
    except UnknownWorkflow:
        counts["skipped"] += 1  # pinned to a version this process lacks
    except StoreUnavailable:
        raise
    except Exception:
        counts["failed"] += 1
        log.exception("polaris: reconciling %s failed; looking again in %ss", member,
                      interval * 4)
        store.postpone(member, now + interval * 4)
