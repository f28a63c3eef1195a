"""What a builder sees while it runs: only the data it declared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel

from .builder import BuilderSpec, datum_name
from .errors import MissingData, UndeclaredData

M = TypeVar("M", bound=BaseModel)


class BuilderContext:
    """Read access to a builder's consumes, optionals and accesses for one attempt.

    `ctx.need(T)` (or `ctx[T]`) returns the value typed as `T`, for data the builder cannot do
    without: its consumes are always present when it runs, so no `assert x is not None` is
    needed. `ctx.get(T)` returns `T | None`, for optionals and accesses that may be absent;
    `T in ctx` asks without reading.
    """

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

    def need(self, tp: type[M]) -> M:
        """The instance's current value of `tp`; raises MissingData naming it when absent.

        Raised inside `process`, MissingData is that builder's failure (retried per its policy),
        with a message that says which datum was missing, instead of an AttributeError on None.
        """
        value = self.get(tp)
        if value is None:
            kind = ("an optional" if tp in self._spec.optionals
                    else "an access" if tp in self._spec.accesses else "a consume")
            raise MissingData(
                f"builder {self._spec.name} needs {datum_name(tp)} ({kind}), which instance "
                f"{self.workflow}/{self.instance_id} does not hold yet; use ctx.get("
                f"{datum_name(tp)}) to handle its absence"
            )
        return value

    def __getitem__(self, tp: type[M]) -> M:
        """`ctx[T]` is `ctx.need(T)`."""
        return self.need(tp)

    def __contains__(self, tp: object) -> bool:
        """`T in ctx`: whether a declared datum is present (undeclared ones raise)."""
        if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
            raise TypeError(f"`in ctx` takes a pydantic model class, got {tp!r}")
        return self.get(tp) is not None

    def __repr__(self) -> str:
        return (f"BuilderContext({self._spec.name}, {self.workflow}/{self.instance_id}, "
                f"run={self.run}, attempt={self.attempt})")
