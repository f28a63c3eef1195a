"""A run's state as fields that may be read only in part. Pure: no I/O.

The distributed executor keeps each run's per-builder and per-datum fields in the instance's
state hash and reads only those a step needs (reads.py guesses them from the graph). `Fields`
answers from what was read and raises `NeedMore` for anything else; `Presence` does the same for
which of the instance's data exist. The caller reads what was asked for too and decides again.
A complete view (a new run, a whole read, the local executors) never raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set
from collections.abc import Set as AbstractSet


class NeedMore(Exception):
    """A decision needs state it was not given: these state-hash fields, the presence of these
    data, or every field (`whole`). The caller reads them and decides again from scratch."""

    def __init__(self, fields: Iterable[str] = (), data: Iterable[str] = (),
                 whole: bool = False) -> None:
        self.fields = frozenset(fields)
        self.data = frozenset(data)
        self.whole = whole
        super().__init__(f"need fields {sorted(self.fields)} data {sorted(self.data)}"
                         + (" and the whole state" if whole else ""))


def field_name(kind: str, run_id: int, name: str) -> str:
    """A run's field in the instance's state hash: `a:3:Builder`, `n:3:Datum`, ..."""
    return f"{kind}:{run_id}:{name}"


def header_name(run_id: int) -> str:
    return f"r:{run_id}"


class Fields:
    """One run's per-builder and per-datum fields, as far as they were read.

    `known` None: everything is known (a new run, a local executor, a whole read) and a field
    not in `values` is absent. Otherwise asking for a field outside `known` raises NeedMore.
    `values` holds what was read with this step's changes applied; the changes are also kept in
    `dirty` (None: delete) for the store to write, unless `track` is off (the local executors
    keep a run in memory only: for them a field is one dict operation). With `track`, `read`
    records each stored value a decision looked at ('' absent), and `read_all` whether it looked
    at every field: what a commit must find unchanged to apply without the version fence
    (machine.Machine.seal_quiet).
    """

    __slots__ = ("dirty", "known", "read", "read_all", "run_id", "track", "values")

    def __init__(self, run_id: int, values: dict[str, str] | None = None,
                 known: Set[str] | None = None, *, track: bool = True) -> None:
        self.run_id = run_id
        self.values: dict[str, str] = values or {}
        self.known = known
        self.dirty: dict[str, str | None] = {}
        self.track = track
        self.read: dict[str, str] = {}
        self.read_all = False

    @property
    def complete(self) -> bool:
        return self.known is None

    def need(self, names: Iterable[str]) -> None:
        """Raise NeedMore for every one of `names` (local, `a:B`) not read yet, at once."""
        if self.known is None:
            return
        missing = [self.full(n) for n in names if n not in self.known and n not in self.dirty]
        if missing:
            raise NeedMore(fields=missing)

    def full(self, local: str) -> str:
        """`a:B` -> `a:<run>:B`, its name in the state hash."""
        kind, _, name = local.partition(":")
        return field_name(kind, self.run_id, name)

    def need_whole(self) -> None:
        if self.known is not None:
            raise NeedMore(whole=True)

    def get(self, name: str) -> str | None:
        known = self.known
        if known is not None and name not in known and name not in self.dirty:
            raise NeedMore(fields=(self.full(name),))
        got = self.values.get(name)
        if self.track and name not in self.dirty:
            self.read[name] = got or ""
        return got

    def put(self, name: str, value: str | None) -> None:
        if value is None:
            self.values.pop(name, None)
        else:
            self.values[name] = value
        if self.track:
            self.dirty[name] = value

    def names(self) -> set[str]:
        """Every field read or written (what settling the run deletes)."""
        return {*self.values, *self.dirty}

    def kind(self, kind: str) -> dict[str, str]:
        """Every field of one kind (`a`, `x`, ...), by name; needs them all."""
        self.need_whole()
        self.read_all = True
        prefix = kind + ":"
        return {k[len(prefix):]: v for k, v in self.values.items() if k.startswith(prefix)}


class Presence(AbstractSet[str]):
    """Which of the instance's (lasting) data exist, as far as they were read: raises
    NeedMore for a name it was not told about. Local executors pass a plain set instead."""

    def __init__(self, known: dict[str, bool], complete: bool = False) -> None:
        self.known = known
        self.complete = complete  # every name is in `known`: any other is absent
        self.asked = False  # a decision looked at which data exist

    def missing(self, names: Iterable[str]) -> list[str]:
        return [] if self.complete else [n for n in names if n not in self.known]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if self.missing((name,)):
            raise NeedMore(data=(name,))
        self.asked = True
        return self.known.get(name, False)

    def __iter__(self) -> Iterator[str]:
        self.asked = True
        return (n for n, there in self.known.items() if there)

    def __len__(self) -> int:
        self.asked = True
        return sum(1 for there in self.known.values() if there)

    def add(self, name: str) -> None:
        self.known[name] = True
