"""Chaos mode: the faults a real deployment meets, struck on purpose in a test's own process.

Installed at the library's fault points (`polaris_celery.faults`), never by changing what the
coordinator decides:

- **duplicate**: a message is sent twice, as a broker redelivers it; the copy must find the
  attempt claimed or done and change nothing.
- **kill**: an attempt is abandoned after its builder ran and before its commit, as a worker
  killed at that moment would leave it (`AttemptKilled`); the coordinator's `lose` then runs it
  again under a new attempt number. The builder's side effects therefore happen twice: this
  is what shows whether they are idempotent.
- **lose_reply**: a commit applies in Redis, then the worker is told the connection dropped; it
  retries, and the commit's own mark answers "already done".

Each decision is a hash of the seed and the attempt (not a draw from a shared generator), so it
does not depend on which worker thread comes first, and one seed replays the same faults. An
attempt is killed, and a commit's reply lost, at most once per builder per run, so every run
still settles.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

from .. import faults
from ..errors import InvalidInput


class AttemptKilled(Exception):
    """Chaos gave up this attempt after its builder ran, before its commit."""

    def __init__(self, attempt: faults.Attempt) -> None:
        super().__init__(f"chaos: {attempt.builder} attempt {attempt.token} of "
                         f"{attempt.workflow}/{attempt.instance_id} run {attempt.run} killed "
                         "before its commit")
        self.attempt = attempt

    def __reduce__(self) -> tuple[type[AttemptKilled], tuple[faults.Attempt]]:
        # Celery pickles a task's exception to check it can travel; keep it whole.
        return AttemptKilled, (self.attempt,)


def _share(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidInput(f"chaos {name} must be a share between 0 and 1, got {value!r}")
    return float(value)


@dataclass
class Chaos(faults.Hooks):
    """Which faults to strike, and a record of those struck.

    duplicate, kill, lose_reply: the share (0 to 1) of messages sent twice, of attempts killed
    before their commit, of commit replies lost. seed: which ones.
    """

    seed: int = 0
    duplicate: float = 1.0
    kill: float = 0.5
    lose_reply: float = 0.5
    duplicated: list[str] = field(default_factory=list)
    killed: list[faults.Attempt] = field(default_factory=list)
    lost_replies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidInput(f"chaos seed must be an int, got {self.seed!r}")
        self.duplicate = _share("duplicate", self.duplicate)
        self.kill = _share("kill", self.kill)
        self.lose_reply = _share("lose_reply", self.lose_reply)
        self._lock = threading.Lock()
        self._struck: set[str] = set()

    def _strike(self, kind: str, key: str, share: float) -> bool:
        """True once per (kind, key), for about `share` of the keys, the same for one seed."""
        if share <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}/{kind}/{key}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= share:
            return False
        with self._lock:
            if f"{kind}/{key}" in self._struck:
                return False
            self._struck.add(f"{kind}/{key}")
            return True

    # -- the fault points ------------------------------------------------------------------

    def point(self, name: str, attempt: faults.Attempt) -> None:
        if name != "before_commit":
            return
        key = f"{attempt.workflow}/{attempt.instance_id}/{attempt.incarnation}/{attempt.run}/" \
              f"{attempt.builder}"
        if self._strike("kill", key, self.kill):
            with self._lock:
                self.killed.append(attempt)
            raise AttemptKilled(attempt)

    def reply_lost(self, name: str, key: str) -> bool:
        if not self._strike("reply", f"{name}/{key}", self.lose_reply):
            return False
        with self._lock:
            self.lost_replies.append(key)
        return True

    def copies(self, name: str, what: object) -> int:
        key = repr(what)
        if not self._strike("send", f"{name}/{key}", self.duplicate):
            return 1
        with self._lock:
            self.duplicated.append(key)
        return 2

    def summary(self) -> str:
        return (f"chaos seed {self.seed}: {len(self.duplicated)} messages sent twice, "
                f"{len(self.killed)} attempts killed before their commit, "
                f"{len(self.lost_replies)} commit replies lost")
