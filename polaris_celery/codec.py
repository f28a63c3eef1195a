"""The only place that turns data into bytes and back.

Types are only ever constructed from the workflow's own compiled registry of data types, never
from a name found in a message or in the store, so stored bytes cannot instantiate arbitrary
classes. JSON only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ValidationError

from .builder import datum_name
from .errors import InvalidInput, UnknownData
from .graph import Graph

#: Upper bound on one encoded datum; larger deltas are rejected before anything is stored.
DEFAULT_MAX_DATUM_BYTES = 1 << 20


def encode(datum: BaseModel) -> bytes:
    return datum.model_dump_json().encode()


def decode(graph: Graph, name: str, raw: bytes | str) -> BaseModel:
    tp = graph.types.get(name)
    if tp is None:
        raise UnknownData(graph.key, [name])
    try:
        return tp.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidInput(
            f"stored {name} of workflow {graph.key!r} does not validate: {exc}"
        ) from exc


def decode_many(graph: Graph, raw: Mapping[str, bytes | str]) -> dict[str, BaseModel]:
    return {name: decode(graph, name, value) for name, value in raw.items()}


def encode_delta(
    graph: Graph, data: Iterable[object], max_bytes: int = DEFAULT_MAX_DATUM_BYTES
) -> dict[str, bytes]:
    """Validate a whole delta and encode it, or raise naming what is wrong; stores nothing.

    A datum is re-validated through its model (pydantic does not validate on attribute
    assignment by default), so a model mutated into an invalid state is refused here.
    """
    out: dict[str, bytes] = {}
    unknown: list[str] = []
    for item in data:
        if not isinstance(item, BaseModel):
            raise InvalidInput(
                f"a delta holds {type(item).__name__!s} {item!r:.80}, which is not a pydantic model"
            )
        name = datum_name(type(item))
        if graph.types.get(name) is not type(item):
            unknown.append(name if name not in graph.types else f"{type(item).__qualname__} "
                           f"(another class than the workflow's {name})")
            continue
        raw = encode(item)
        try:
            type(item).model_validate_json(raw)
        except ValidationError as exc:
            raise InvalidInput(f"{name} in the delta fails validation: {exc}") from None
        if len(raw) > max_bytes:
            raise InvalidInput(
                f"{name} in the delta is {len(raw)} bytes encoded, over the {max_bytes}-byte limit"
            )
        out[name] = raw
    if unknown:
        raise UnknownData(graph.key, unknown)
    return out
