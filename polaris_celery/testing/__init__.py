"""Testing workflows on real parts: private Redis servers, Celery workers, chaos.

- `plugin`: the pytest plugin (fixtures `polaris_redis`, `polaris_executor`, `polaris_flow`,
  marker `polaris_chaos`); pytest loads it through the `pytest11` entry point.
- `Flow`: one instance played through its deltas, with what ran and what it holds.
- `Chaos`: duplicate deliveries, attempts killed before their commit, lost commit replies.
- `RedisServer`, `RedisCluster`, `WorkerProcess`: the launchers of private `redis-server` and
  `celery worker` processes that `make demo`, the tests and the benchmarks share.

Nothing here imports pytest except `plugin`, so `make demo` uses the launchers without it.
"""

from .chaos import AttemptKilled, Chaos
from .cluster import RedisCluster
from .flow import Attempt, Flow
from .inprocess import InProcessWorker
from .servers import RedisServer, free_port
from .workers import WorkerProcess, celery_worker

__all__ = [
    # playing workflows in tests
    "Flow", "Attempt", "InProcessWorker",
    # chaos
    "Chaos", "AttemptKilled",
    # launchers
    "RedisServer", "RedisCluster", "WorkerProcess", "celery_worker", "free_port",
]
