"""Dict <-> frozen dataclass conversion shared by every API model.

One rule everywhere: a field that is ``None`` was absent and is rendered absent, so a
model parsed from a manifest renders back the same manifest (``from_dict(d).to_dict()
== d`` for every field the model knows). Lists are tuples; maps are plain dicts typed
``Mapping`` (read-only to mypy, yet deep-copyable and picklable); timestamps stay
RFC 3339 strings. Nothing here fills in defaults: the API server has already applied
the schema defaults to every object it hands out.

Wire names are the camelCase of the Python names; the few core spellings that don't
follow the rule (``imageID``, ``clusterIP``...) are declared with :func:`wire` metadata.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self, Union


class ModelError(ValueError):
    """A dict does not have the shape of the model it is parsed into."""


def wire(name: str) -> Mapping[str, str]:
    """Field metadata for a wire name that is not the camelCase of the Python name:
    ``image_id: str | None = field(default=None, metadata=wire("imageID"))``."""
    return {"wire": name}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclasses.dataclass(frozen=True)
class _Field:
    attr: str
    key: str
    hint: Any


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields_of(cls: type) -> tuple[_Field, ...]:
    fields = _FIELDS.get(cls)
    if fields is None:  # resolved once per class: get_type_hints is slow
        hints = typing.get_type_hints(cls)
        fields = tuple(
            _Field(attr=f.name, key=f.metadata.get("wire", _camel(f.name)), hint=hints[f.name])
            for f in dataclasses.fields(cls)
        )
        _FIELDS[cls] = fields
    return fields


class Model:
    """Base of every API model: ``from_dict`` / ``to_dict`` driven by the type hints."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return typing.cast(Self, _parse(cls, data, path=cls.__name__))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in _fields_of(type(self)):
            value = getattr(self, f.attr)
            if value is not None:
                out[f.key] = _render(value)
        return out


def _render(value: Any) -> Any:
    if isinstance(value, Model):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_render(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _render(v) for k, v in value.items()}
    return value


def _parse(hint: Any, value: Any, *, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return _parse_union(typing.get_args(hint), value, path=path)
    if origin is Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(repr(a) for a in typing.get_args(hint))
            raise ModelError(f"{path}: {value!r} is not one of {allowed}")
        return value
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise ModelError(f"{path}: expected a list, got {type(value).__name__}")
        return tuple(_parse(item_hint, v, path=f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict):
        _, value_hint = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise ModelError(f"{path}: expected a map, got {type(value).__name__}")
        return {str(k): _parse(value_hint, v, path=f"{path}.{k}") for k, v in value.items()}
    supertype = getattr(hint, "__supertype__", None)
    if supertype is not None:  # a NewType: checked as what it wraps
        return _parse(supertype, value, path=path)
    if isinstance(hint, type) and issubclass(hint, Model):
        if not isinstance(value, Mapping):
            raise ModelError(f"{path}: expected an object, got {type(value).__name__}")
        kwargs = {}
        for f in _fields_of(hint):
            if f.key in value and value[f.key] is not None:
                kwargs[f.attr] = _parse(f.hint, value[f.key], path=f"{path}.{f.key}")
        try:
            return hint(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise ModelError(f"{path}: {exc}") from exc
    return _parse_scalar(hint, value, path=path)


def _parse_union(args: tuple[Any, ...], value: Any, *, path: str) -> Any:
    candidates = [a for a in args if a is not type(None)]
    if len(candidates) == 1:
        return _parse(candidates[0], value, path=path)
    # int | str (int-or-string) and the like: the first scalar type that fits wins.
    for candidate in candidates:
        try:
            return _parse(candidate, value, path=path)
        except ModelError:
            continue
    names = " or ".join(getattr(c, "__name__", str(c)) for c in candidates)
    raise ModelError(f"{path}: expected {names}, got {type(value).__name__}")


def _parse_scalar(hint: Any, value: Any, *, path: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{path}: unsupported field type {hint!r}")
    if not ok:
        raise ModelError(f"{path}: expected {hint.__name__}, got {type(value).__name__}")
    return value
