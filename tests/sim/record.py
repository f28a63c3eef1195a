"""What the harness did and what it was told: the other side of every check.

Only what a producer or an operator could know goes here (which submits were acknowledged and
with which run, which versions were retired, where a process died, which builders were told to
fail), plus what the checks accumulated from earlier reads of Redis (commits seen, incarnations
seen). What happened inside Redis is only ever read from Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

ABSENT = None


@dataclass(frozen=True)
class Ack:
    """A submit (or a restart keeping data) that returned: its run must settle."""

    instance: str
    inc: str
    run: int
    starts: frozenset[float]  # the times its delta may have been stored at
    delta_id: str | None


@dataclass
class Facts:
    """Everything known about one instance id."""

    #: Per kept input datum, the values it may hold now (JSON; ABSENT: no value). An
    #: acknowledged delta narrows it to its value; an unacknowledged one may or may not have
    #: applied, so it adds its value.
    inputs: dict[str, set[str | None]] = field(default_factory=dict)
    sent: dict[str, tuple[BaseModel, ...]] = field(default_factory=dict)  # delta id -> data
    payloads: dict[str, set[str]] = field(default_factory=dict)  # delta id -> every data sent
    submitted_at: dict[str, set[float]] = field(default_factory=dict)  # delta id -> times sent
    #: Delta ids acknowledged since the instance last lost its delta ids (a delete, a restart,
    #: an expiry), with the one data ever sent under them: a repeat with those data must
    #: return the same run; other data under the id must be refused.
    epoch: dict[str, tuple[Ack, str]] = field(default_factory=dict)
    tainted: bool = False  # a process died while acting on it
    told_to_fail: set[str] = field(default_factory=set)  # builders told to raise
    # Incarnations, as read from Redis.
    incs: set[str] = field(default_factory=set)
    present_inc: str | None = None  # None: the state key was absent at the last look
    next_max: dict[str, int] = field(default_factory=dict)  # inc -> highest `next` seen
    acked_max: dict[str, int] = field(default_factory=dict)  # inc -> highest fresh run acked
    #: (inc, run, builder) -> (log generation, entry id, attempt) of the commit seen for it.
    commits: dict[tuple[str, int, str], tuple[int, str, str]] = field(default_factory=dict)

    def stored(self, values: dict[str, str], *, sure: bool) -> None:
        """Inputs were written (sure) or may have been (not sure)."""
        for name, value in values.items():
            if sure:
                self.inputs[name] = {value}
            else:
                self.inputs.setdefault(name, {ABSENT}).add(value)

    def dropped(self, names: tuple[str, ...], *, sure: bool) -> None:
        """All data were removed (sure) or may have been."""
        for name in names:
            if sure:
                self.inputs[name] = {ABSENT}
            else:
                self.inputs.setdefault(name, {ABSENT}).add(ABSENT)

    def allowed(self, name: str) -> set[str | None]:
        return self.inputs.get(name, {ABSENT})


class Record:
    """The harness's record of one schedule."""

    def __init__(self, instances: list[str]) -> None:
        self.facts = {i: Facts() for i in instances}
        self.acks: dict[tuple[str, str, int], Ack] = {}
        self.retired: set[int] = set()  # versions some worker retired successfully

    def ack(self, ack: Ack) -> None:
        """Note an acknowledged run (a repeated delta id acknowledges its run again)."""
        k = (ack.instance, ack.inc, ack.run)
        known = self.acks.get(k)
        if known is not None:
            ack = Ack(ack.instance, ack.inc, ack.run, known.starts | ack.starts,
                      known.delta_id or ack.delta_id)
        self.acks[k] = ack
