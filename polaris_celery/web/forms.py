"""The submit-a-delta form: fields generated from the workflow's own data models, and the
posted form turned back into validated models (or errors naming each field).

A model whose fields are all simple (text, numbers, booleans, choices, optionally None) gets
one input per field; any other model (nested models, lists, dicts) gets one JSON textarea, so
every workflow can be driven from the page. Validation is the model's own (pydantic), so the
page accepts exactly what `submit_delta` would; nothing is stored unless every datum sent
validates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ..graph import Graph

SIMPLE = {"string": "text", "integer": "integer", "number": "number", "boolean": "checkbox"}
JSON_FIELD = "__json__"


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # text, integer, number, checkbox, select
    required: bool
    default: str
    choices: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class ModelForm:
    datum: str
    fields: tuple[Field, ...] | None  # None: one JSON textarea for the whole model
    is_input: bool
    example: str = "{}"


@dataclass
class Submitted:
    """What a posted form held: models when valid, else errors by form field name."""

    models: list[BaseModel] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)  # echoed back into the form


def _simple(prop: Mapping[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """(kind, choices) for a property a single input can hold, else None."""
    if "anyOf" in prop:  # `X | None`
        kinds = [p for p in prop["anyOf"] if p.get("type") != "null"]
        return _simple(kinds[0]) if len(kinds) == 1 else None
    if "enum" in prop and all(isinstance(v, str | int | float) for v in prop["enum"]):
        return "select", tuple(str(v) for v in prop["enum"])
    kind = SIMPLE.get(str(prop.get("type")))
    return (kind, ()) if kind else None


def model_form(name: str, model: type[BaseModel], is_input: bool) -> ModelForm:
    schema = model.model_json_schema()
    props: Mapping[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    fields: list[Field] = []
    for fname, prop in props.items():
        got = _simple(prop)
        if got is None or "$ref" in prop:
            return ModelForm(name, None, is_input, _example(props, required))
        default = prop.get("default")
        fields.append(Field(fname, got[0], fname in required,
                            "" if default is None else str(default).lower()
                            if isinstance(default, bool) else str(default),
                            got[1], str(prop.get("description", ""))))
    return ModelForm(name, tuple(fields), is_input)


def _example(props: Mapping[str, Any], required: set[str]) -> str:
    return json.dumps({k: None for k in props if k in required} or {}, indent=1)


def forms_for(graph: Graph) -> list[ModelForm]:
    """Every datum a delta can bring, inputs (data no builder produces) first."""
    names = sorted(graph.types, key=lambda n: (n not in graph.inputs, n))
    return [model_form(n, graph.types[n], n in graph.inputs) for n in names
            if n not in graph.transients or n in graph.inputs]


def parse(graph: Graph, form: Mapping[str, str]) -> Submitted:
    """Build and validate the models of the data whose `include:NAME` box is ticked."""
    out = Submitted(values={k: v for k, v in form.items() if isinstance(v, str)})
    chosen = [n for n in graph.types if form.get(f"include:{n}")]
    if not chosen:
        out.errors["delta"] = "tick at least one datum to send (an empty delta runs nothing)"
        return out
    by_name = {f.datum: f for f in forms_for(graph)}
    for name in chosen:
        mf = by_name.get(name)
        if mf is None:
            out.errors["delta"] = f"{name} cannot be sent in a delta"
            continue
        raw = _raw(mf, form, out.errors)
        if raw is None:
            continue
        try:
            out.models.append(graph.types[name].model_validate(raw))
        except ValidationError as exc:
            for e in exc.errors():
                loc = ".".join(str(p) for p in e["loc"])
                key = f"{name}.{e['loc'][0]}" if mf.fields is not None and e["loc"] else (
                    f"{name}.{JSON_FIELD}")
                message = f"{name}.{loc}: {e['msg']}" if loc else f"{name}: {e['msg']}"
                out.errors[key] = (out.errors[key] + "; " + message) if key in out.errors \
                    else message
    if out.errors:
        out.models = []
    return out


def _raw(mf: ModelForm, form: Mapping[str, str], errors: dict[str, str]
         ) -> dict[str, Any] | None:
    if mf.fields is None:
        text = form.get(f"{mf.datum}.{JSON_FIELD}", "").strip() or "{}"
        try:
            obj = json.loads(text)
        except ValueError as exc:
            errors[f"{mf.datum}.{JSON_FIELD}"] = f"{mf.datum}: not valid JSON: {exc}"
            return None
        if not isinstance(obj, dict):
            errors[f"{mf.datum}.{JSON_FIELD}"] = f"{mf.datum}: expected a JSON object"
            return None
        return obj
    raw: dict[str, Any] = {}
    for f in mf.fields:
        value = form.get(f"{mf.datum}.{f.name}")
        if f.kind == "checkbox":
            raw[f.name] = bool(value)
        elif value is not None and value.strip() != "":
            raw[f.name] = value.strip() if f.kind != "text" else value
    return raw
