"""The keys every instance shares, sharded so that they work on Redis Cluster: the reconciler's
index and the sets of instances pinned to each workflow version.

Each lives in BUCKETS buckets, one cluster slot each (`pc:{index:7}`), picked from a hash of the
instance's name. An instance's own script touches only its own slot, so these keys are written
beside it, never in it; these rules make that safe without any cross-slot atomicity:

The index (when the reconciler must look at an instance):
- a writer, after reading the state and before its script, *touches* the entry: the score
  strictly decreases, to at most the time the step needs (an entry is added if absent);
- only the reconciler moves an entry later or removes it, and only if the score is still the
  one it read before its look (`settle`). Any step made meanwhile touched the entry, so the
  reconciler's stale "later" loses, and the worst a race costs is an early look.

The version sets (what a retirement must wait for):
- a submit pinning an instance adds it to the set, then checks that the version is neither
  retired nor being retired, then applies its script;
- a retirement marks the version pending first, then reads the sets and, through the
  instance's own fenced script, checks each member and bumps its version (so a submit that
  read the state before fails its script and goes round again, meeting the mark); only when no
  member is pinned is the version marked retired.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections.abc import Callable
from typing import Any

from redis.cluster import RedisCluster

from ..layout import Effects, Ops

#: Buckets of each shared key: enough to spread over a cluster's primaries and keep each small.
BUCKETS = 16

#: How long a retirement in progress holds back submits pinning its version, at the most.
PENDING_MS = 10_000

_TOUCH = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[2])
local t = tonumber(ARGV[1])
if s and tonumber(s) <= t then t = tonumber(s) - 0.001 end
redis.call('ZADD', KEYS[1], t, ARGV[2])
"""

_END_RETIRING = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then redis.call('SADD', KEYS[2], ARGV[2]) end
redis.call('DEL', KEYS[1])
return 1
"""

_SETTLE = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not s or tonumber(s) ~= tonumber(ARGV[1]) then return 0 end
if ARGV[3] == 'inf' then redis.call('ZREM', KEYS[1], ARGV[2])
else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2]) end
return 1
"""


class RetiringError(ConnectionError):
    """A retirement of the version asked for is still pending (the store wraps it)."""


def bucket(member: str) -> int:
    return zlib.crc32(member.encode()) % BUCKETS


class Shared:
    """Names, reads and writes of the shared keys (`client` is a Redis or a RedisCluster)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.one_node = not isinstance(client, RedisCluster)
        self._touch = client.register_script(_TOUCH)
        self._settle = client.register_script(_SETTLE)
        self._end = client.register_script(_END_RETIRING)

    # -- names ------------------------------------------------------------------------------

    def index(self, b: int) -> str:
        return f"{self.prefix}:{{index:{b}}}"

    def index_of(self, member: str) -> str:
        return self.index(bucket(member))

    def live(self, workflow: str, version: int, b: int) -> str:
        return f"{self.prefix}:{{live:{workflow}:{version}:{b}}}"

    def retired_key(self, workflow: str) -> str:
        return f"{self.prefix}:{{retired:{workflow}}}"

    def pending_key(self, workflow: str, version: int) -> str:
        return f"{self.retired_key(workflow)}:pending:{version}"

    # -- around a step ------------------------------------------------------------------------

    def pin(self, fx: Effects, member: str, instance_id: str,
            sleep: Callable[[float], None] = time.sleep) -> int | None:
        """Before the step's script: add the instance to the sets of the versions it pins, then
        make sure none is retired or being retired (returns one that is)."""
        for workflow, version in fx.pins:
            key = self.live(workflow, version, bucket(member))
            if self.one_node:
                # One round trip (MULTI/EXEC): the instance is in the set before the checks
                # read (a cluster spreads these keys over nodes: there they go apart).
                pipe = self.client.pipeline(transaction=True)
                pipe.sadd(key, instance_id)
                pipe.sismember(self.retired_key(workflow), version)
                pipe.exists(self.pending_key(workflow, version))
                _, gone, pending = pipe.execute()
                if not gone and not pending:
                    continue
            else:
                self.client.sadd(key, instance_id)
            try:
                retired = self._retired(workflow, version, sleep)
            except BaseException:
                self.client.srem(key, instance_id)
                raise
            if retired:
                self.client.srem(key, instance_id)
                return version
        return None

    def in_script(self, ops: Ops, fx: Effects, member: str, instance_id: str) -> None:
        """On a single node the rest goes into the step's own script (atomic with it, and no
        round trip more): versions given up, and the index entry, exactly or touched."""
        for workflow, version in fx.unpins:
            ops.add("SREM", self.live(workflow, version, bucket(member)), instance_id)
        key = self.index_of(member)
        if fx.watch == math.inf:
            ops.add("ZREM", key, member)
        elif fx.watch is not None:
            ops.add("ZADD", key, f"{min(fx.watch, fx.touch):.3f}", member)
        elif fx.touch < math.inf:
            ops.add("ZADD", key, "LT", f"{fx.touch:.3f}", member)

    def before(self, fx: Effects, member: str) -> None:
        """On a cluster, before the step's script: touch the index entry."""
        if fx.touch < math.inf:
            self.touch(member, fx.touch)

    def after(self, fx: Effects, member: str, instance_id: str, seen: float | None) -> None:
        """On a cluster, after an applied step: versions given up, and the reconciler's
        settling of the entry it looked at (a lost one is put right by a later look)."""
        for workflow, version in fx.unpins:
            self.client.srem(self.live(workflow, version, bucket(member)), instance_id)
        if fx.watch is not None and seen is not None:
            self.settle(member, seen, fx.watch)

    def _retired(self, workflow: str, version: int, sleep: Callable[[float], None]) -> bool:
        """Retired, or (waiting while a retirement is pending) about to be. A retirement still
        pending after PENDING_MS is refused as unavailable: try again (nothing was stored)."""
        waited = 0.0
        while True:
            if self.client.sismember(self.retired_key(workflow), version):
                return True
            if not self.client.exists(self.pending_key(workflow, version)):
                return False
            if waited * 1000 > PENDING_MS:
                raise RetiringError(f"{workflow} v{version} is being retired; try again")
            sleep(0.05)
            waited += 0.05

    # -- the index ------------------------------------------------------------------------------

    def touch(self, member: str, when: float) -> None:
        self._touch(keys=[self.index_of(member)], args=[f"{when:.3f}", member])

    def settle(self, member: str, seen: float, when: float) -> bool:
        """Move the entry to `when` (inf: remove it) if its score is still `seen`."""
        to = "inf" if when == math.inf else f"{when:.3f}"
        return bool(self._settle(keys=[self.index_of(member)], args=[repr(seen), member, to]))

    def due(self, now: float, limit: int, rng: random.Random) -> list[tuple[str, float]]:
        """Up to `limit` entries due by `now`: from a random bucket on, each from a random
        offset, so reconcilers running at once spread over the work instead of all taking the
        same oldest entries."""
        first = rng.randrange(BUCKETS)
        out: list[tuple[str, float]] = []
        for i in range(BUCKETS):
            key = self.index((first + i) % BUCKETS)
            count = int(self.client.zcount(key, "-inf", now))
            if not count:
                continue
            start = rng.randrange(count)
            for lo, hi in ((start, count), (0, start)):
                if lo < hi and len(out) < limit:
                    got = self.client.zrangebyscore(key, "-inf", now, start=lo,
                                                    num=min(hi - lo, limit - len(out)),
                                                    withscores=True)
                    out += [(m.decode(), float(s)) for m, s in got]
            if len(out) >= limit:
                break
        return out

    def score(self, member: str) -> float | None:
        got = self.client.zscore(self.index_of(member), member)
        return None if got is None else float(got)

    # -- versions -----------------------------------------------------------------------------

    def live_instances(self, workflow: str, version: int) -> list[str]:
        members: set[bytes] = set()
        for b in range(BUCKETS):
            members |= self.client.smembers(self.live(workflow, version, b))
        return sorted(m.decode() for m in members)

    def drop_live(self, workflow: str, version: int, instance_id: str, member: str) -> None:
        self.client.srem(self.live(workflow, version, bucket(member)), instance_id)

    def begin_retiring(self, workflow: str, version: int, token: str) -> None:
        self.client.set(self.pending_key(workflow, version), token, px=PENDING_MS)

    def end_retiring(self, workflow: str, version: int, token: str, retired: bool) -> bool:
        """End this retirement (`token`): mark the version retired if asked, in one step with
        checking that the pending mark is still this one. False if it ran out (then submits
        may have pinned instances meanwhile, so nothing is marked)."""
        return bool(self._end(keys=[self.pending_key(workflow, version),
                                    self.retired_key(workflow)],
                              args=[token, version, 1 if retired else 0]))

    def retired(self, workflow: str) -> set[int]:
        return {int(m) for m in self.client.smembers(self.retired_key(workflow))}
