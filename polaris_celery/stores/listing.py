"""The instance listing: every instance of a workflow by status and time, sharded for Redis
Cluster like the other shared keys (stores/shared.py).

Per workflow, BUCKETS buckets (B from the same hash of `wf/id`), each one cluster slot:

    pc:{inst:wf:B}:all        ZSET  id -> when    every instance, by its last listed change
    pc:{inst:wf:B}:s:STATUS   ZSET  id -> when    those of one status
    pc:{inst:wf:B}:id         HASH  id -> inc|v|status   its entry, so a move knows its old set

`when` is the time of the instance's last status change or of a run opening or settling (a
builder's plain commit does not move it: writing the listing then would cost every commit).

How an entry is kept right:
- On one node, the step's own script writes it (`in_script`): exact, atomic with the step, and
  no round trip more. The status before the step is the fenced snapshot's, so the move is exact.
- On a cluster the entry lives in another slot, so it is written just after the step applied
  (`after`), by a script that refuses to go back: an entry is replaced only by one of a later
  incarnation (incarnation ids sort by age), or of the same one at a later state version.
- Readers confirm each entry from the instance's state as they build a page and put a wrong one
  right under the same rule (`repair`), so a write lost with its process (a cluster client that
  died between the step and its entry) heals when it is next read. An instance whose entry was
  never written (created before the listing existed, or lost so) is not listed until its next
  status change or run, or until `polaris reindex WF` (`reindex`) writes every entry again.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..instance import STATUSES
from ..layout import Listing, Ops
from .shared import BUCKETS, bucket

_MOVE = """
-- KEYS[1] = the id hash, KEYS[2] = the all-set, KEYS[3..] = the status sets (STATUSES order)
-- ARGV = id, inc, v, status ('' removes the entry), score, status index (1-based, or 0)
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local v = tonumber(ARGV[3])
if cur then
  local inc, ver, st = string.match(cur, '^([^|]*)|([^|]*)|(.*)$')
  if inc and (inc > ARGV[2] or (inc == ARGV[2] and tonumber(ver) >= v)) then return 0 end
  if st and st ~= ARGV[4] then
    for i = 3, #KEYS do
      if KEYS[i]:sub(-#st - 3) == ':s:' .. st then redis.call('ZREM', KEYS[i], ARGV[1]) end
    end
  end
end
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[2 + tonumber(ARGV[6])], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
return 1
"""


@dataclass(frozen=True)
class Entry:
    """A listed instance as a page reads it, before its state confirms it."""

    instance_id: str
    score: float


def encode_cursor(score: float, instance_id: str) -> str:
    raw = f"{score!r}|{instance_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (score, id) a cursor names; ValueError naming it if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, sep, instance_id = raw.partition("|")
        if not sep or not instance_id:
            raise ValueError(raw)
        return float(score), instance_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"cursor {cursor!r} is not one a page of instances returned") from exc


def now_inc() -> str:
    """An incarnation-like id of this moment: every incarnation created from now on sorts after
    it, so a reader that found an instance gone removes its entry only if no newer life has
    listed it meanwhile (coordinator.new_id makes incarnations time-ordered)."""
    return f"{int(time.time() * 1000):x}"


class Listings:
    """Names, reads and writes of the listing (`client`: a Redis or a RedisCluster)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._move = client.register_script(_MOVE)

    # -- names ------------------------------------------------------------------------------

    def tag(self, workflow: str, b: int) -> str:
        return f"{self.prefix}:{{inst:{workflow}:{b}}}"

    def all_key(self, workflow: str, b: int) -> str:
        return f"{self.tag(workflow, b)}:all"

    def status_key(self, workflow: str, b: int, status: str) -> str:
        return f"{self.tag(workflow, b)}:s:{status}"

    def ids_key(self, workflow: str, b: int) -> str:
        return f"{self.tag(workflow, b)}:id"

    # -- writes -------------------------------------------------------------------------------

    def in_script(self, ops: Ops, fx: Listing | None, workflow: str, instance_id: str,
                  version: int) -> None:
        """On one node: the entry's move, as writes of the step's own script (`version`: the
        state version the step writes)."""
        if fx is None:
            return
        b = bucket(f"{workflow}/{instance_id}")
        if fx.was and fx.was != fx.status:
            ops.add("ZREM", self.status_key(workflow, b, fx.was), instance_id)
        elif not fx.was and fx.status:
            # Created from nothing: an earlier life that expired (`retention`) may have left
            # its entry in any set. Once per life, so every set is cleared blind.
            for status in STATUSES:
                if status != fx.status:
                    ops.add("ZREM", self.status_key(workflow, b, status), instance_id)
        if not fx.status:
            ops.add("ZREM", self.all_key(workflow, b), instance_id)
            ops.add("HDEL", self.ids_key(workflow, b), instance_id)
            return
        when = f"{fx.when:.3f}"
        ops.add("ZADD", self.all_key(workflow, b), when, instance_id)
        ops.add("ZADD", self.status_key(workflow, b, fx.status), when, instance_id)
        ops.hset(self.ids_key(workflow, b), {instance_id: f"{fx.inc}|{version}|{fx.status}"})

    def move(self, workflow: str, instance_id: str, inc: str, version: int, status: str,
             when: float) -> bool:
        """Write the entry unless it already holds a later one (see the module's rules);
        `status` empty removes it."""
        b = bucket(f"{workflow}/{instance_id}")
        keys = [self.ids_key(workflow, b), self.all_key(workflow, b),
                *(self.status_key(workflow, b, s) for s in STATUSES)]
        index = STATUSES.index(status) + 1 if status else 0
        return bool(self._move(keys=keys, args=[instance_id, inc, version, status,
                                                f"{when:.3f}", index]))

    def after(self, fx: Listing | None, workflow: str, instance_id: str, version: int) -> None:
        """On a cluster, just after the step applied."""
        if fx is not None:
            self.move(workflow, instance_id, fx.inc, version, fx.status, fx.when)

    # -- reads --------------------------------------------------------------------------------

    def keys_of(self, workflow: str, statuses: Sequence[str]) -> list[str]:
        """Every set a listing of `statuses` (none: all) reads, over every bucket."""
        if not statuses:
            return [self.all_key(workflow, b) for b in range(BUCKETS)]
        return [self.status_key(workflow, b, s) for s in statuses for b in range(BUCKETS)]

    def candidates(self, keys: Iterable[str], n: int, after: tuple[float, str] | None,
                   newest_first: bool) -> tuple[list[Entry], bool]:
        """The next `n` entries over `keys` merged in order (score, then id; both descending
        when `newest_first`), strictly past `after`; and whether any may follow them.

        Each set gives at most `n` entries past the cursor's score, plus those tied with the
        cursor's score (ties are rare: scores are milliseconds), so a page reads
        O(sets x n) entries however many instances there are."""
        keys = list(keys)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            if after is None:
                if newest_first:
                    pipe.zrevrangebyscore(key, "+inf", "-inf", start=0, num=n, withscores=True)
                else:
                    pipe.zrangebyscore(key, "-inf", "+inf", start=0, num=n, withscores=True)
            else:
                score = repr(after[0])
                if newest_first:
                    pipe.zrevrangebyscore(key, f"({score}", "-inf", start=0, num=n,
                                          withscores=True)
                else:
                    pipe.zrangebyscore(key, f"({score}", "+inf", start=0, num=n,
                                       withscores=True)
                pipe.zrangebyscore(key, score, score, withscores=True)
        got = pipe.execute()
        seen: dict[str, Entry] = {}
        full = False
        step = 1 if after is None else 2
        for i in range(0, len(got), step):
            strict = got[i]
            full = full or len(strict) >= n
            found = list(strict)
            if after is not None:
                for m, s in got[i + 1]:
                    name = m.decode()
                    if (name < after[1]) if newest_first else (name > after[1]):
                        found.append((m, s))
            for m, s in found:
                name = m.decode()
                seen[name] = Entry(name, float(s))
        ordered = sorted(seen.values(), key=lambda e: (e.score, e.instance_id),
                         reverse=newest_first)
        return ordered[:n], full or len(ordered) > n

    def entries(self, workflow: str, instance_ids: Sequence[str]) -> list[str | None]:
        """Each instance's entry (`inc|v|status`), None where it has none."""
        pipe = self.client.pipeline(transaction=False)
        for instance_id in instance_ids:
            pipe.hget(self.ids_key(workflow, bucket(f"{workflow}/{instance_id}")), instance_id)
        return [None if x is None else x.decode() for x in pipe.execute()]
