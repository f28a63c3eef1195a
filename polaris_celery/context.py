"""What a builder sees while it runs: only the data it declared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel

from .builder import BuilderSpec, datum_name
from .errors import UndeclaredData

M = TypeVar("M", bound=BaseModel)


class BuilderContext:
    """Read access to a builder's consumes, optionals and accesses for one attempt."""

    __slots__ = ("_data", "_spec", "attempt", "instance_id", "run", "workflow")

    def __init__(
        self,
        spec: BuilderSpec,
        data: Mapping[str, BaseModel],
        *,
        workflow: str,
        instance_id: str,
        run: int,
        attempt: int,
    ) -> None:
        self._spec = spec
        self._data = data
        self.workflow = workflow
        self.instance_id = instance_id
        self.run = run
        self.attempt = attempt

    def get(self, tp: type[M]) -> M | None:
        """The instance's current value of `tp`, or None when it has none yet."""
        name = datum_name(tp)
        if name not in self._spec.readable_names:
            raise UndeclaredData(
                f"builder {self._spec.name} reads {name}, which it declares in neither "
                "consumes, optionals nor accesses"
            )
        value = self._data.get(name)
        return value  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"BuilderContext({self._spec.name}, {self.workflow}/{self.instance_id}, "
                f"run={self.run}, attempt={self.attempt})")
