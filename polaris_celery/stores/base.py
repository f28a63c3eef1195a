"""The store protocol the in-process executors need: a few primitives over bytes.

Stores deal in bytes only (serialization lives in `codec`), so the in-memory and Redis paths
behave the same. The distributed executor needs more than this (atomic commits, leases); those
primitives live on `RedisStore` alone, since only Redis can coordinate separate processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable


@runtime_checkable
class Store(Protocol):
    """Per-instance data, addressed by (workflow key, instance id)."""

    def write_data(self, workflow: str, instance_id: str, data: Mapping[str, bytes]) -> None:
        """Store these data (name -> encoded datum), replacing earlier values of the same names."""

    def read_data(self, workflow: str, instance_id: str, names: Iterable[str]) -> dict[str, bytes]:
        """The stored values among `names`; absent names are left out."""

    def data_names(self, workflow: str, instance_id: str) -> set[str]:
        """Names of every datum the instance holds."""

    def next_run(self, workflow: str, instance_id: str) -> int:
        """A new run number for the instance, unique and increasing."""
