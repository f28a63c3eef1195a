"""An output that cannot be committed is the failure of the builder that produced it.

Pydantic does not validate `model_construct` or attribute assignment, and `model_dump_json`
raises on bytes that are not UTF-8. Unchecked, such an output was committed and the downstream
builder took the blame (or it escaped the commit and the run failed later as "worker lost").
These tests pin the output check in `invoke.attempt`, the same check for deltas in `codec`, and
the instance id rules of `registry.check_instance_id`.
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import polaris_celery as pc
from polaris_celery import codec
from polaris_celery.invoke import Outcome, attempt
from polaris_celery.registry import check_instance_id

# -- data and builders ---------------------------------------------------------------------------


class Seed(BaseModel):
    v: int = 0


class Constructed(BaseModel):
    v: int = 0


class Mutated(BaseModel):
    v: int = 0


class Blob(BaseModel):
    b: bytes = b""


class Text(BaseModel):
    s: str = ""


class Done(BaseModel):
    v: int = 0


TRIES: list[str] = []  # builder names, one per attempt, for the retry test


class MakeConstructed(pc.Builder):
    consumes = [Seed]
    produces = Constructed
    max_retries = 1
    retry_backoff = 0.0

    def process(self, ctx: pc.BuilderContext) -> Constructed:
        TRIES.append("MakeConstructed")
        return Constructed.model_construct(v="not-an-int")


class MakeMutated(pc.Builder):
    consumes = [Seed]
    produces = Mutated

    def process(self, ctx: pc.BuilderContext) -> Mutated:
        out = Mutated(v=1)
        out.v = "not-an-int"  # type: ignore[assignment]  # no validate_assignment by default
        return out


class MakeBlob(pc.Builder):
    consumes = [Seed]
    produces = Blob

    def process(self, ctx: pc.BuilderContext) -> Blob:
        return Blob(b=b"\xff\xfe")  # valid bytes, but no JSON (UTF-8) encoding of them


class MakeText(pc.Builder):
    consumes = [Seed]
    produces = Text

    def process(self, ctx: pc.BuilderContext) -> Text:
        return Text(s="x" * 100)


class Consume(pc.Builder):
    consumes = [Constructed, Mutated, Blob, Text]
    produces = Done

    def process(self, ctx: pc.BuilderContext) -> Done:
        return Done(v=1)


class Outputs(pc.Workflow):
    builders = [MakeConstructed, MakeMutated, MakeBlob, MakeText, Consume]
    target = Done


class ConsumeConstructed(pc.Builder):
    consumes = [Constructed]
    produces = Done

    def process(self, ctx: pc.BuilderContext) -> Done:
        TRIES.append("ConsumeConstructed")
        return Done(v=1)


class Retried(pc.Workflow):
    builders = [MakeConstructed, ConsumeConstructed]
    target = Done


GRAPH = pc.compile_workflow("validation", Outputs)


def _attempt(builder: str, max_bytes: int = codec.DEFAULT_MAX_DATUM_BYTES) -> Outcome:
    return attempt(GRAPH.spec(builder), {"Seed": Seed(v=1)}, frozenset({"Seed"}),
                   workflow="validation", instance_id="i-1", run=1, attempt_no=1,
                   max_bytes=max_bytes)


def _assert_output_refused(out: Outcome, builder: str, produced: str, *words: str) -> None:
    assert out.error is not None, out
    assert out.error.builder == builder
    assert out.error.type == "InvalidOutput"
    assert builder in out.error.message and produced in out.error.message
    for w in words:
        assert w in out.error.message, out.error.message
    assert out.produced is None and out.raw is None


# -- builder outputs ----------------------------------------------------------------------------


def test_model_construct_output_with_invalid_values_is_a_builder_failure() -> None:
    out = _attempt("MakeConstructed")
    # pydantic's own message names the field and the problem
    _assert_output_refused(out, "MakeConstructed", "Constructed", "v", "valid integer")


def test_output_mutated_into_an_invalid_state_is_a_builder_failure() -> None:
    _assert_output_refused(_attempt("MakeMutated"), "MakeMutated", "Mutated", "valid integer")


def test_unencodable_output_is_a_builder_failure_not_an_escape() -> None:
    _assert_output_refused(_attempt("MakeBlob"), "MakeBlob", "Blob", "utf-8")


def test_oversize_output_is_a_builder_failure() -> None:
    _assert_output_refused(_attempt("MakeText", max_bytes=16), "MakeText", "Text",
                           "16-byte limit")


def test_valid_output_carries_its_encoded_bytes() -> None:
    out = _attempt("MakeText")
    assert out.error is None and out.produced == Text(s="x" * 100)
    assert out.raw == codec.encode(out.produced)
    assert Text.model_validate_json(out.raw) == out.produced


def test_invalid_output_spends_the_producers_retries_and_never_reaches_the_consumer() -> None:
    TRIES.clear()
    registry = pc.Registry(pc.MemoryStore())
    registry.register("retried", Retried)
    with pytest.raises(pc.BuilderFailed) as info:
        pc.Executor(registry).sequential("retried", "i-retries", Seed(v=1))
    assert info.value.builder == "MakeConstructed"
    assert info.value.error_type == "InvalidOutput"
    assert TRIES == ["MakeConstructed", "MakeConstructed"]  # max_retries = 1: two attempts
    assert info.value.result is not None and Constructed not in info.value.result
    assert registry.store.data_names("retried", "i-retries") == {"Seed"}  # nothing committed


# -- codec ----------------------------------------------------------------------------------------


def test_unencodable_datum_in_a_delta_is_invalid_input() -> None:
    with pytest.raises(pc.InvalidInput, match="Blob") as info:
        codec.encode_delta(GRAPH, [Seed(v=1), Blob(b=b"\xff")])
    assert "utf-8" in str(info.value)


def test_encode_raises_invalid_input_naming_the_datum() -> None:
    with pytest.raises(pc.InvalidInput, match="Blob"):
        codec.encode(Blob(b=b"\xff"))


def test_invalid_datum_in_a_delta_still_fails_validation() -> None:
    with pytest.raises(pc.InvalidInput, match="fails validation"):
        codec.encode_delta(GRAPH, [Constructed.model_construct(v="x")])


# -- instance ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [" ", "\t", "   ", "ride-1 ", " ride-1", "ride-1\t"])
def test_blank_or_padded_instance_ids_are_refused(bad: str) -> None:
    with pytest.raises(pc.InvalidInput) as info:
        check_instance_id(bad)
    assert repr(bad) in str(info.value)
    assert "whitespace" in str(info.value)


@pytest.mark.parametrize("good", ["ride 1", "ride-1", "a"])
def test_inner_spaces_are_fine(good: str) -> None:
    assert check_instance_id(good) == good
