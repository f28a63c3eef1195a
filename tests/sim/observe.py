"""What Redis holds, read with plain redis-py from the documented key layout, never through the
library: the checker's only source of truth.

Layout (both shapes are accepted; `inc` is the incarnation, "" where the code has none):

    pc:{wf/id}:state            HASH  v, doc (JSON: next, runs, completed, version, status,
                                      deadline), inc; and per run in flight (when `runs` lists
                                      ids): r:N (its header), a:N:B (B's token while active)
    pc:{wf/id}:lease            HASH  run/builder -> token|state|deadline|tag
    pc:{wf/id}:data             HASH  datum -> JSON
    pc:{wf/id}:log              STREAM ev=builder entries: run, b, attempt, result, inc
    pc:{wf/id}:run:<inc>:<N>    HASH  datum -> JSON, _outcome   (before: run:<N>)
    pc:{wf/id}:wake:<inc>:<N>   LIST                            (before: wake:<N>)
    pc:index                    ZSET  wf/id -> when the reconciler should look
                                      (or sharded: pc:{index:<bucket>})
    pc:live:<wf>:<version>      SET   instances pinned to that version
                                      (or sharded: pc:{live:<wf>:<version>:<bucket>})
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import redis

PREFIX = "pc"
_LIVE = re.compile(rf"^{PREFIX}:(?:live:(.+):(\d+)|\{{live:(.+):(\d+):\d+\}})$")


def tag(workflow: str, instance: str) -> str:
    return f"{PREFIX}:{{{workflow}/{instance}}}"


def key(workflow: str, instance: str, kind: str) -> str:
    return f"{tag(workflow, instance)}:{kind}"


def run_key(workflow: str, instance: str, inc: str, run: int) -> str:
    return key(workflow, instance, f"run:{inc}:{run}" if inc else f"run:{run}")


def wake_key(workflow: str, instance: str, inc: str, run: int) -> str:
    return key(workflow, instance, f"wake:{inc}:{run}" if inc else f"wake:{run}")


def live_versions(live_keys: Mapping[str, Iterable[str]], workflow: str) -> dict[int, set[str]]:
    """Instances pinned to each version of `workflow`, from its version sets (either shape)."""
    pinned: dict[int, set[str]] = {}
    for k, members in live_keys.items():
        m = _LIVE.match(k)
        if m and workflow in (m.group(1), m.group(3)):
            pinned.setdefault(int(m.group(2) or m.group(4)), set()).update(members)
    return pinned


@dataclass(frozen=True)
class LogEntry:
    gen: int  # which life of the stream (it is re-created after a delete or an expiry)
    id: str
    fields: dict[str, str]


class LogTail:
    """Follows one instance's log stream across steps and notices when it was re-created
    (a new stream may reuse the ids of a deleted one)."""

    def __init__(self) -> None:
        self.gen = 0
        self.first = ""  # the first entry id seen ("" none): the stream's identity
        self.last = ""  # the last entry id seen

    def take(self, first: str, got: list[Any]) -> list[LogEntry]:
        """Entries read after `last` (or all of them, when `first` changed)."""
        if first != self.first:
            if self.first:
                self.gen += 1
            self.first, self.last = first, ""
        if got:
            self.last = got[-1][0]
        return [LogEntry(self.gen, entry_id, dict(fields)) for entry_id, fields in got]


@dataclass
class InstanceView:
    instance: str
    state: dict[str, str]  # empty: no state key
    leases: dict[str, str]
    data: dict[str, str]
    log: list[LogEntry]  # entries new since the last look
    keys: dict[str, int] = field(default_factory=dict)  # every key of it -> PTTL ms (-1: none)

    @property
    def exists(self) -> bool:
        return bool(self.state)

    @property
    def inc(self) -> str:
        return self.state.get("inc", "")

    @cached_property
    def doc(self) -> dict[str, Any]:
        raw = self.state.get("doc")
        return json.loads(raw) if raw else {}

    @cached_property
    def runs(self) -> list[dict[str, Any]]:
        """The runs in flight as {id, active: builder -> token}, from either layout: whole
        documents in the doc's `runs`, or run ids there with a header `r:N` and one field
        `a:N:builder` per active builder in the state hash."""
        out = []
        for run in self.doc.get("runs", []):
            if isinstance(run, dict):
                out.append(run)
                continue
            prefix = f"a:{run}:"
            active = {f[len(prefix):]: int(t) for f, t in self.state.items()
                      if f.startswith(prefix)}
            out.append({"id": int(run), "active": active,
                        "header": json.loads(self.state.get(f"r:{run}", "{}"))})
        return out


@dataclass
class View:
    now: float
    expiry: dict[str, tuple[int, int]]  # every key -> (PEXPIRETIME ms, PTTL ms)
    instances: dict[str, InstanceView]
    index: dict[str, float]  # wf/id -> when the reconciler looks at it
    live: dict[int, set[str]]  # version -> instance ids pinned to it


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


_SCRIPT = (Path(__file__).parent / "observe.lua").read_text()


def observe(r: redis.Redis, workflow: str, tails: Mapping[str, LogTail], now: float) -> View:
    """Everything the checks need, in one round trip (observe.lua)."""
    instances = sorted(tails)
    args = [PREFIX, workflow]
    for i in instances:
        args += [i, tails[i].first, tails[i].last]
    got = json.loads(r.register_script(_SCRIPT)(args=args))
    expiry = {k: (int(at), int(pttl)) for k, (at, pttl) in sorted(got["keys"].items())}
    views: dict[str, InstanceView] = {}
    for i in instances:
        g = got["instances"][i]
        prefix = tag(workflow, i) + ":"
        views[i] = InstanceView(
            i, dict(g["state"]), dict(g["lease"]), dict(g["data"]),
            tails[i].take(g["first"], list(g["log"])),
            {k: pttl for k, (_, pttl) in expiry.items() if k.startswith(prefix)},
        )
    index = {m: float(s) for m, s in got["index"].items()}
    return View(now, expiry, views, index, live_versions(got["live"], workflow))


_INDEX = """
local out = {}
for _, pattern in ipairs({ARGV[1] .. ':index', ARGV[1] .. ':{index:*}'}) do
  for _, k in ipairs(redis.call('KEYS', pattern)) do
    for _, v in ipairs(redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')) do out[#out + 1] = v end
  end
end
return out
"""


def read_index(r: redis.Redis) -> dict[str, float]:
    """The reconciler's index, in either shape: wf/id -> when it looks."""
    got: Any = r.register_script(_INDEX)(args=[PREFIX])
    return {str(got[i]): float(got[i + 1]) for i in range(0, len(got), 2)}


def outcomes(r: redis.Redis, keys: Iterable[tuple[str, str]]) -> dict[str, tuple[str | None, int]]:
    """For (run key, wake key) pairs: the run's `_outcome` (or None) and the wake list's length."""
    pairs = list(keys)
    pipe = r.pipeline(transaction=False)
    for run, wake in pairs:
        pipe.hget(run, "_outcome")
        pipe.llen(wake)
    replies = iter(pipe.execute())
    return {run: (next(replies), int(next(replies))) for run, _ in pairs}
