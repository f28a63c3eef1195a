"""Where an instance lives in Redis, and the list of writes that change it. Pure: no I/O.

Key layout (every key of one instance shares the hash tag `{workflow/instance}`):

    pc:{wf/id}:state          HASH  v, inc, doc               version, incarnation, the document
                                    r:N                     header of run N, while in flight
                                                            (JSON; a quiet commit moves its
                                                            counters in cas.lua: QUIET)
                                    a:N:B x:N:B f:N:B l:N:B builder B in run N: token while
                                                            active, done, failed / lost attempts
                                    n:N:D p:N:D             datum D new in run N; its order
    pc:{wf/id}:data           HASH  datum name -> JSON        the instance's data
    pc:{wf/id}:lease          HASH  run/builder -> lease      see instance.py
    pc:{wf/id}:deltas         HASH  delta id -> run|digest    producers' idempotency keys
    pc:{wf/id}:seq            STRING                          run counter of in-process runs
    pc:{wf/id}:log            STREAM                          one entry per builder attempt
    pc:{wf/id}:history        LIST                            summaries of settled runs
    pc:{wf/id}:late           HASH  datum -> JSON             produced after the instance closed
    pc:{wf/id}:run:INC:N      HASH  datum -> JSON, _outcome, _op:B:T   run N of incarnation INC
    pc:{wf/id}:wake:INC:N     LIST                            pushed once when that run settles
    pc:{index:B}              ZSET  wf/id -> when to look     instances the reconciler watches
    pc:{live:wf:V:B}          SET   instance ids              instances pinned to version V
    pc:{retired:wf}           SET   versions                  versions retired for good
    pc:{retired:wf}:pending:V STRING                          a retirement of V in progress
    pc:{inst:wf:B}:all        ZSET  id -> when                the workflow's instances (listing)
    pc:{inst:wf:B}:s:STATUS   ZSET  id -> when                ... of each status
    pc:{inst:wf:B}:id         HASH  id -> inc|v|status        ... each one's entry, for moves

The shared keys are sharded in BUCKETS buckets (B, from a hash of `wf/id`), each its own cluster
slot: no script crosses slots, and no single key is hot. See stores/shared.py.

The incarnation (`inc`) is a fresh id each time an instance is created from nothing: after a
delete, or after its keys expired under `retention`. Every message, claim, commit and run key
carries it, so nothing of an earlier life (an attempt still running, a waiter, a run hash that
outlived its instance) can ever be mistaken for the new one, although its run numbers start
again at 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LASTING = ("data", "state", "lease", "deltas", "seq", "log", "history", "late")


@dataclass(frozen=True)
class Keys:
    """Every Redis key of one instance, from one template."""

    prefix: str
    workflow: str
    instance_id: str

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{{self.workflow}/{self.instance_id}}}"

    @property
    def member(self) -> str:
        """The instance's name in the reconciler's index."""
        return f"{self.workflow}/{self.instance_id}"

    def __getattr__(self, kind: str) -> str:
        if kind in LASTING:
            return f"{self.tag}:{kind}"
        raise AttributeError(kind)

    @property
    def lasting(self) -> tuple[str, ...]:
        """The keys that live as long as the instance (run results expire on their own)."""
        return tuple(f"{self.tag}:{kind}" for kind in LASTING)

    def run(self, inc: str, run: int) -> str:
        return f"{self.tag}:run:{inc}:{run}"

    def wake(self, inc: str, run: int) -> str:
        return f"{self.tag}:wake:{inc}:{run}"


@dataclass(frozen=True)
class Listing:
    """The instance's entry in its workflow's listing, as a step leaves it (stores/listing.py):
    its status (`status` empty: the instance is gone), when that was, the status the entry had
    before the step (`was`, empty: none) and the incarnation it is written for."""

    status: str
    when: float
    was: str
    inc: str


@dataclass
class Effects:
    """What a step does to the keys every instance shares (the reconciler's index, the sets of
    instances pinned to each version). Those live in other cluster slots than the instance's
    own keys, so the store applies them beside the step's script, not in it (stores/shared.py
    says in what order, and why that is safe)."""

    touch: float = math.inf  # the reconciler must look at the instance no later than this
    watch: float | None = None  # the next look, exactly (math.inf: nothing left to watch)
    pins: list[tuple[str, int]] = field(default_factory=list)  # (workflow, version) taken
    unpins: list[tuple[str, int]] = field(default_factory=list)  # ... and given up
    # The listing entry, written only when the status changes or a run opens or settles (so
    # never on a builder's plain commit).
    listing: Listing | None = None


@dataclass(frozen=True)
class Want:
    """What a decision reads of an instance besides its version, incarnation and document:
    some fields of its state hash (runs' headers and per-builder fields), or all of them
    (`whole`), and whether some of its data exist, or every data name (`names`)."""

    fields: frozenset[str] = frozenset()
    data: frozenset[str] = frozenset()
    whole: bool = False
    names: bool = False

    def more(self, fields: frozenset[str], data: frozenset[str], whole: bool) -> Want:
        """This, and what a decision asked for besides (it raised NeedMore)."""
        grown = Want(self.fields | fields, self.data | data, self.whole or whole, self.names)
        if grown == self:
            raise AssertionError(f"a decision asked again for what it was given: {self}")
        return grown


WHOLE = Want(whole=True, names=True)


@dataclass(frozen=True)
class Snapshot:
    """The instance as one version of its state saw it (`inc` empty: it does not exist).

    `fields` holds what was read of the state hash beyond v, inc and doc; `known` the names
    asked for (present or not; None: all of them). `data` tells which of the data asked for
    exist."""

    version: int
    doc: str
    inc: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
    known: frozenset[str] | None = None
    data: Mapping[str, bool] = field(default_factory=dict)
    names: frozenset[str] | None = None  # every data name (None: not read)

    @property
    def exists(self) -> bool:
        return bool(self.doc)


class Ops:
    """A list of operations for cas.lua, with their keys numbered as the script expects.

    Besides plain writes the script knows these guards: EXPECT (abort unless a hash field holds
    a value), ONCE (a mark naming this very write: if it is already there the write was
    applied before, and the caller is told so instead of a conflict) and QUIET (a run's header
    counters changed by deltas, see machine.Machine.seal_quiet). See cas.lua. `fenced` False:
    the ops are not checked against the version they were decided from (their guards check
    all they depend on instead).
    """

    def __init__(self, state_key: str, data_key: str) -> None:
        self.keys: list[str] = [state_key, data_key]
        self.args: list[Any] = []
        self.reads = 0
        self.fenced = True

    def copy(self) -> Ops:
        other = Ops.__new__(Ops)
        other.keys, other.args, other.reads = list(self.keys), list(self.args), self.reads
        other.fenced = self.fenced
        return other

    def _key(self, key: str) -> int:
        try:
            return self.keys.index(key) + 1
        except ValueError:
            self.keys.append(key)
            return len(self.keys)

    def add(self, op: str, key: str, *args: Any) -> Ops:
        self.args.extend((op, self._key(key), len(args), *args))
        if op in ("HMGET", "HKEYS", "HGETALL", "HEXISTSM"):
            self.reads += 1
        return self

    def hset(self, key: str, mapping: Mapping[str, Any]) -> Ops:
        if mapping:
            flat: list[Any] = []
            for k, v in mapping.items():
                flat.extend((k, v))
            self.add("HSET", key, *flat)
        return self

    def log(self, k: Keys, length: int, **fields: Any) -> Ops:
        """Append one entry to the instance's log (capped near `length` entries)."""
        flat: list[Any] = []
        for name, value in fields.items():
            flat.extend((name, value))
        return self.add("XADD", k.log, "MAXLEN", "~", length, "*", *flat)
