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
    """JSON bytes of `datum`, or InvalidInput naming it when pydantic cannot serialize it.

    Pydantic raises a bare ValueError (PydanticSerializationError) for values JSON cannot hold,
    e.g. `bytes` that are not UTF-8; callers catch PolarisErrors, so it is turned into one here.
    """
    try:
        return datum.model_dump_json(warnings=False).encode()
    except ValueError as exc:
        raise InvalidInput(
            f"{datum_name(type(datum))} cannot be encoded as JSON: {exc}"
        ) from None


def encode_valid(datum: BaseModel, max_bytes: int = DEFAULT_MAX_DATUM_BYTES) -> bytes:
    """Encode `datum` and prove the bytes read back through its own model, within `max_bytes`.

    Pydantic validates neither `model_construct` nor attribute assignment (by default), so a
    model can hold values its own type refuses; only bytes that validate may be stored, or the
    failure surfaces later, in whoever reads them. Raises InvalidInput naming the datum.
    """
    raw = encode(datum)
    if len(raw) > max_bytes:  # checked first: it is cheap, and it spares parsing a huge datum
        raise InvalidInput(
            f"{datum_name(type(datum))} is {len(raw)} bytes encoded, over the "
            f"{max_bytes}-byte limit"
        )
    try:
        type(datum).model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidInput(f"{datum_name(type(datum))} fails validation: {exc}") from None
    return raw


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

    Each datum goes through `encode_valid`, so a model built or mutated into an invalid state,
    or one that cannot be encoded at all, is refused here with an InvalidInput naming it.
    """
    out: dict[str, bytes] = {}
    unknown: list[str] = []
    for item in data:
        if isinstance(item, type) and issubclass(item, BaseModel):
            raise InvalidInput(
                f"a delta holds the class {item.__name__} itself, not a datum: pass an "
                f"instance: {item.__name__}(...)"
            )
        if not isinstance(item, BaseModel):
            raise InvalidInput(
                f"a delta holds {type(item).__name__!s} {item!r:.80}, which is not a pydantic model"
            )
        name = datum_name(type(item))
        if graph.types.get(name) is not type(item):
            unknown.append(name if name not in graph.types else f"{type(item).__qualname__} "
                           f"(another class than the workflow's {name})")
            continue
        try:
            out[name] = encode_valid(item, max_bytes)
        except InvalidInput as exc:
            raise InvalidInput(f"in the delta: {exc}") from None
    if unknown:
        raise UnknownData(graph.key, unknown)
    return out
