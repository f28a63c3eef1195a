"""An in-process store. It keeps data as JSON bytes, exactly as Redis does, so a builder that
mutates an object it was given cannot change what another builder sees, and the in-memory and
Redis paths agree on what survives serialization."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[tuple[str, str], dict[str, bytes]] = {}
        self._runs: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def write_data(self, workflow: str, instance_id: str, data: Mapping[str, bytes]) -> None:
        with self._lock:
            self._data.setdefault((workflow, instance_id), {}).update(data)

    def read_data(self, workflow: str, instance_id: str, names: Iterable[str]) -> dict[str, bytes]:
        with self._lock:
            held = self._data.get((workflow, instance_id), {})
            return {n: held[n] for n in names if n in held}

    def data_names(self, workflow: str, instance_id: str) -> set[str]:
        with self._lock:
            return set(self._data.get((workflow, instance_id), ()))

    def next_run(self, workflow: str, instance_id: str) -> int:
        with self._lock:
            n = self._runs.get((workflow, instance_id), 0) + 1
            self._runs[(workflow, instance_id)] = n
            return n

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._data)} instances)"
