"""Validate JSON payloads against OpenAI's published OpenAPI component schemas.

The schemas are vendored, unmodified, in ``tests/data/openai_schemas/openai_components.json``
(see the README there for provenance). OpenAI's document is declared OpenAPI 3.1 but still
uses some OpenAPI 3.0 / OpenAPI-only keywords, which plain JSON Schema would silently ignore.
They are translated here, once, at load time:

* ``nullable: true`` -> ``null`` is also allowed. With a plain ``type`` the type is widened
  (and ``null`` is appended to any ``enum``, which would otherwise still reject it); with a
  ``$ref``, a composition or no ``type``, the schema is wrapped in
  ``anyOf: [<schema>, {type: null}]``. ``nullable: false`` is simply dropped.
* ``discriminator``, ``example``, ``xml``, ``externalDocs`` and ``x-*`` extension keys are
  dropped (they carry no validation semantics; the ``oneOf`` branches they annotate are
  already mutually exclusive by their ``type`` enums).
* OpenAPI 3.0 boolean ``exclusiveMinimum``/``exclusiveMaximum`` become the numeric form.
* Draft 2019-09's ``$recursiveAnchor: true`` is dropped and ``$recursiveRef: "#"`` becomes a
  ``$ref`` to the schema it appears in (``CompoundFilter`` nests itself that way).

Nothing else is changed: ``required`` lists are kept as published, no
``additionalProperties: false`` is added, and formats are not checked.

Usage::

    from tests.openai_schema import validate

    validate("CreateChatCompletionResponse", response.json())
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = ["schema_names", "source", "validate"]

DATA_FILE = Path(__file__).parent / "data" / "openai_schemas" / "openai_components.json"
_BASE_URI = "urn:openai-openapi:components"
_MAX_EXTRA_ERRORS = 5

# JSON Schema keywords whose value is a subschema / a map of them / a list of them.
# Everything else (enum, const, default, required, ...) is a literal and is left untouched,
# so e.g. a property *named* "nullable" or "x-foo" is never mistaken for a keyword.
_SUBSCHEMA = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "unevaluatedItems",
        "unevaluatedProperties",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
        "contentSchema",
    }
)
_SUBSCHEMA_MAP = frozenset(
    {"properties", "patternProperties", "dependentSchemas", "$defs", "definitions"}
)
_SUBSCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_DROPPED = frozenset({"nullable", "discriminator", "example", "xml", "externalDocs"})
# Annotations kept on the outside when a nullable schema gets wrapped in anyOf.
_ANNOTATIONS = ("title", "description", "default", "deprecated", "readOnly", "writeOnly")


class OpenAISchemaValidationError(jsonschema.ValidationError):
    """A ``jsonschema.ValidationError`` whose ``str()`` is just the readable summary.

    (The base class appends the whole failing subschema, descriptions included.)
    """

    def __str__(self) -> str:
        return self.message


def _convert(schema: Any, root: str = "") -> Any:
    """Return a JSON Schema 2020-12 equivalent of one OpenAPI schema object.

    ``root`` is the name of the component schema being converted.
    """
    if not isinstance(schema, dict):  # boolean schemas
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED or key.startswith("x-") or key == "$recursiveAnchor":
            continue
        if key == "$recursiveRef" and value == "#":
            out["$ref"] = f"#/components/schemas/{root}"
        elif key in _SUBSCHEMA_MAP:
            out[key] = {name: _convert(sub, root) for name, sub in value.items()}
        elif key in _SUBSCHEMA_LIST or (key == "items" and isinstance(value, list)):
            out[key] = [_convert(sub, root) for sub in value]
        elif key in _SUBSCHEMA:
            out[key] = _convert(value, root)
        else:
            out[key] = value
    for bound in ("Minimum", "Maximum"):
        flag = out.get(f"exclusive{bound}")
        if isinstance(flag, bool):
            del out[f"exclusive{bound}"]
            limit = bound.lower()
            if flag and limit in out:
                out[f"exclusive{bound}"] = out.pop(limit)
    if schema.get("nullable") is True:
        out = _allow_null(out)
    return out


def _allow_null(schema: dict[str, Any]) -> dict[str, Any]:
    kind: Any = schema.get("type")
    simple = isinstance(kind, (str, list)) and not any(
        key in schema for key in ("$ref", "allOf", "anyOf", "oneOf", "not", "const")
    )
    if simple:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        if "null" not in kinds:
            schema["type"] = [*kinds, "null"]
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    outer = {key: schema.pop(key) for key in _ANNOTATIONS if key in schema}
    outer["anyOf"] = [schema, {"type": "null"}]
    return outer


@functools.cache
def _load() -> dict[str, Any]:
    with DATA_FILE.open(encoding="utf-8") as f:
        document: dict[str, Any] = json.load(f)
    return document


def source() -> dict[str, Any]:
    """Provenance of the vendored schemas (repository, path, commit, date, ...)."""
    provenance: dict[str, Any] = _load()["source"]
    return provenance


def schema_names() -> list[str]:
    """Names of every vendored component schema."""
    return sorted(_load()["components"]["schemas"])


@functools.cache
def _registry() -> Registry[Any]:
    schemas = {name: _convert(s, name) for name, s in _load()["components"]["schemas"].items()}
    for name, schema in schemas.items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:  # pragma: no cover - only on a bad refresh
            raise jsonschema.SchemaError(f"converted schema {name!r} is invalid: {exc}") from exc
    document = {"components": {"schemas": schemas}}
    registry: Registry[Any] = Registry().with_resource(
        _BASE_URI, DRAFT202012.create_resource(document))
    return registry


@functools.cache
def _validator(schema_name: str) -> jsonschema.Draft202012Validator:
    if schema_name not in _load()["components"]["schemas"]:
        raise KeyError(
            f"no vendored OpenAI schema named {schema_name!r}; have {', '.join(schema_names())}"
        )
    return jsonschema.Draft202012Validator(
        {"$ref": f"{_BASE_URI}#/components/schemas/{schema_name}"},
        registry=_registry(),
    )


def _describe(error: jsonschema.ValidationError, indent: str = "") -> str:
    text = f"{indent}at {error.json_path}: {error.message}"
    if error.context:  # anyOf/oneOf: say why each alternative failed
        subs = sorted(error.context, key=lambda e: (str(e.relative_schema_path[0]), e.json_path))
        text += "".join(
            f"\n{indent}  - {error.validator} branch {e.relative_schema_path[0]} {_describe(e)}"
            for e in subs[:_MAX_EXTRA_ERRORS]
        )
    return text


def validate(schema_name: str, instance: object) -> None:
    """Raise ``jsonschema.ValidationError`` unless *instance* conforms to *schema_name*.

    *schema_name* is a key of ``components.schemas`` in OpenAI's spec, e.g.
    ``"CreateChatCompletionResponse"`` or ``"CreateChatCompletionStreamResponse"``.
    The error's message names the schema, the JSON path of the most relevant failure and
    up to a few further failures.
    """
    errors = list(_validator(schema_name).iter_errors(instance))
    if not errors:
        return
    best = best_match(errors)
    assert best is not None
    lines = [f"instance does not conform to OpenAI schema {schema_name}: {_describe(best)}"]
    top = best
    while top.parent is not None:  # best_match may have picked a nested anyOf/oneOf error
        top = top.parent
    others = [e for e in errors if e is not top]
    if others:
        lines.append(f"{len(others)} further error(s):")
        lines.extend(_describe(e, indent="  ") for e in others[:_MAX_EXTRA_ERRORS])
        if len(others) > _MAX_EXTRA_ERRORS:
            lines.append("  ...")
    raise OpenAISchemaValidationError(
        "\n".join(lines),
        validator=best.validator,
        path=best.absolute_path,
        cause=best.cause,
        context=best.context,
        validator_value=best.validator_value,
        instance=best.instance,
        schema=best.schema,
        schema_path=best.absolute_schema_path,
    )
