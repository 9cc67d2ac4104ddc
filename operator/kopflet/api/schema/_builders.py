"""Small constructors of structural OpenAPI v3 schemas, so the CRDs read like the API.

Every list and string that a CEL rule touches carries a bound (``maxItems``,
``maxLength``, ``maxProperties``): the API server estimates the worst-case cost of
each rule from those bounds and refuses a CRD whose rules could run unbounded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Schema = dict[str, Any]

#: A DNS-1123 label (container, port-less names): what the core API calls a name.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A DNS-1123 subdomain (object names, node names).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def rule(
    expression: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> Schema:
    out: Schema = {"rule": expression, "message": message}
    if field_path is not None:
        out["fieldPath"] = field_path
    if reason is not None:
        out["reason"] = reason
    return out


def _finish(schema: Schema, rules: Sequence[Schema], default: Any) -> Schema:
    if default is not None:
        schema["default"] = default
        if isinstance(default, str | int) and "description" in schema:
            # kubectl explain shows descriptions only, so say the default there too.
            if isinstance(default, bool):
                shown = str(default).lower()
            else:
                shown = '""' if default == "" else str(default)
            schema["description"] += f" Defaults to {shown}."
    if rules:
        schema["x-kubernetes-validations"] = list(rules)
    return schema


def string(
    description: str,
    *,
    max_length: int = 253,
    min_length: int | None = None,
    pattern: str | None = None,
    enum: Sequence[str] | None = None,
    fmt: str | None = None,
    default: str | None = None,
    rules: Sequence[Schema] = (),
) -> Schema:
    schema: Schema = {"type": "string", "description": description}
    if enum is not None:
        schema["enum"] = list(enum)
    else:
        schema["maxLength"] = max_length
    if min_length is not None:
        schema["minLength"] = min_length
    if pattern is not None:
        schema["pattern"] = pattern
    if fmt is not None:
        schema["format"] = fmt
    return _finish(schema, rules, default)


def integer(
    description: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    default: int | None = None,
    int64: bool = False,
    rules: Sequence[Schema] = (),
) -> Schema:
    schema: Schema = {
        "type": "integer",
        "format": "int64" if int64 else "int32",
        "description": description,
    }
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return _finish(schema, rules, default)


def boolean(description: str, *, default: bool | None = None) -> Schema:
    return _finish({"type": "boolean", "description": description}, (), default)


def int_or_string(
    description: str, *, default: int | str | None = None, rules: Sequence[Schema] = ()
) -> Schema:
    schema: Schema = {
        "description": description,
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "maxLength": 64,
    }
    return _finish(schema, rules, default)


def obj(
    description: str,
    properties: Mapping[str, Schema],
    *,
    required: Sequence[str] = (),
    rules: Sequence[Schema] = (),
    default: Any = None,
    max_properties: int | None = None,
) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if max_properties is not None:
        schema["maxProperties"] = max_properties
    return _finish(schema, rules, default)


def array(
    description: str,
    items: Schema,
    *,
    max_items: int,
    min_items: int | None = None,
    map_keys: Sequence[str] | None = None,
    list_type: str | None = None,
    rules: Sequence[Schema] = (),
) -> Schema:
    schema: Schema = {
        "type": "array",
        "description": description,
        "items": items,
        "maxItems": max_items,
    }
    if min_items is not None:
        schema["minItems"] = min_items
    if map_keys is not None:
        schema["x-kubernetes-list-type"] = "map"
        schema["x-kubernetes-list-map-keys"] = list(map_keys)
    elif list_type is not None:
        schema["x-kubernetes-list-type"] = list_type
    return _finish(schema, rules, None)


def string_list(description: str, *, max_items: int = 64, max_length: int = 4096) -> Schema:
    return array(description, {"type": "string", "maxLength": max_length}, max_items=max_items)


def string_map(description: str, *, max_properties: int = 64, max_length: int = 4096) -> Schema:
    return {
        "type": "object",
        "description": description,
        "maxProperties": max_properties,
        "additionalProperties": {"type": "string", "maxLength": max_length},
    }


def quantity(description: str) -> Schema:
    """A resource quantity, ``1`` or ``"500m"`` or ``"64Mi"``, never negative."""
    return int_or_string(
        description,
        rules=[
            rule(
                "type(self) == int ? self >= 0"
                " : isQuantity(self) && quantity(self).compareTo(quantity('0')) >= 0",
                "must be a non-negative quantity such as 500m, 1.5, 64Mi or 1G",
            )
        ],
    )


def quantity_map(description: str, *, keys: Sequence[str], max_properties: int) -> Schema:
    names = ", ".join(keys)
    return {
        "type": "object",
        "description": description,
        "maxProperties": max_properties,
        "additionalProperties": quantity(f"A quantity of {names}."),
        "x-kubernetes-validations": [
            rule(
                f"self.all(k, k in {list(keys)!r})",
                f"only these resources are supported: {names}",
            )
        ],
    }


def one_of(fields: Sequence[str], message: str) -> Schema:
    """Exactly one of the optional ``fields`` is set."""
    present = ", ".join(f"has(self.{f})" for f in fields)
    return rule(f"[{present}].filter(x, x).size() == 1", message)
