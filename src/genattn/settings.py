"""Settings records: frozen dataclasses built from plain dicts, turned back into them, and changed deeply.

``AttentionConfig``, ``ModelConfig`` and ``Recipe`` are frozen dataclasses whose fields are numbers, strings,
booleans, tuples, or further such dataclasses (possibly ``None``). This module is the one place that

* builds them from JSON-like dicts (:func:`from_dict`), checking every key and every value's type, so that an
  unknown key or a wrong type is a one-line error naming the key's full path and, for keys, the valid ones;
* turns them back into JSON-ready dicts (:func:`to_dict`; tuples become lists);
* merges changes into them key by key (:func:`update`): a nested mapping updates the nested record instead of
  replacing it, so ``{'backbone': {'attention_cfg': {'impl': 'chunked'}}}`` changes one leaf and keeps the rest;
* reads command-line assignments ``a.b.c=value`` into such nested changes (:func:`parse_assignments`).

Validation of values beyond their type stays with each record (its ``__post_init__``); errors raised there are
prefixed with the record's path here, so a message always says which setting is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar

__all__ = ["from_dict", "to_dict", "update", "parse_assignments", "merge", "nest"]

T = TypeVar("T")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _options(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (``X | None``), or the type itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _record_type(tp: Any) -> type | None:
    for option in _options(tp):
        if isinstance(option, type) and dataclasses.is_dataclass(option):
            return option
    return None


def _describe(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", tuple: "a list",
             type(None): "null"}
    parts = []
    for option in _options(tp):
        base = typing.get_origin(option) or option
        parts.append(names.get(base, f"a mapping of {getattr(base, '__name__', str(base))} settings"))
    return " or ".join(parts)


def _matches(option: Any, value: Any) -> bool:
    base = typing.get_origin(option) or option
    if base is Any:
        return True
    if base is type(None):
        return value is None
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is tuple:
        return isinstance(value, tuple)
    if isinstance(base, type):
        return isinstance(value, base)
    return True


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` as a field of type ``tp``: mappings become records, lists tuples; the type is checked."""
    record = _record_type(tp)
    if record is not None and isinstance(value, Mapping):
        return from_dict(record, value, where)
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple):
        args = [a for o in _options(tp) if typing.get_origin(o) is tuple for a in typing.get_args(o)]
        item = args[0] if args and (len(args) == 1 or args[-1] is Ellipsis) else Any
        value = tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    for option in _options(tp):
        if _matches(option, value):
            if (typing.get_origin(option) or option) is float and isinstance(value, int):
                return float(value)
            return value
    raise ValueError(f"{where}: expected {_describe(tp)}, got {value!r}")


def _construct(cls: type[T], values: Mapping[str, Any], where: str, base: T | None = None) -> T:
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except ValueError as err:
        message = str(err)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None


def _unknown(cls: type, key: Any, where: str) -> ValueError:
    return ValueError(f"{where}: unknown key {key!r}; valid keys: {', '.join(_names(cls))}")


def from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build record ``cls`` from a mapping of its fields (nested mappings build nested records).

    Args:
        cls: the frozen dataclass.
        data: field values; missing fields keep their defaults.
        where: the record's path for error messages (e.g. ``'recipe'``, ``'backbone.attention_cfg'``).

    Raises:
        ValueError: an unknown key (the valid ones listed), a value of the wrong type, or a value the record
            refuses; the message starts with the offending path.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = _hints(cls)
    names = _names(cls)
    for key in data:
        if key not in names:
            raise _unknown(cls, key, where)
    return _construct(cls, {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}, where)


def to_dict(record: Any) -> Any:
    """A JSON-ready copy of a record: nested records become dicts, tuples lists."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_dict(getattr(record, f.name)) for f in dataclasses.fields(record) if f.init}
    if isinstance(record, (tuple, list)):
        return [to_dict(v) for v in record]
    if isinstance(record, Mapping):
        return {k: to_dict(v) for k, v in record.items()}
    return record


def update(record: T, changes: Mapping[str, Any], where: str) -> T:
    """A copy of ``record`` with ``changes`` merged in key by key.

    A mapping given for a record-typed field updates that record (or builds it from its defaults when it is
    None); any other value replaces the field. ``None`` clears an optional record.

    Raises:
        ValueError: as :func:`from_dict`.
    """
    if not isinstance(changes, Mapping):
        raise ValueError(f"{where}: expected a mapping of changes, got {changes!r}")
    cls = type(record)
    hints = _hints(cls)
    names = _names(cls)
    values: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in names:
            raise _unknown(cls, key, where)
        path = f"{where}.{key}"
        current = getattr(record, key)
        if isinstance(value, Mapping) and _record_type(hints[key]) is not None and current is not None:
            values[key] = update(current, value, path)
        else:
            values[key] = _coerce(hints[key], value, path)
    return _construct(cls, values, where, base=record)


def nest(key: str, value: Any) -> dict[str, Any]:
    """``'a.b.c', v`` -> ``{'a': {'b': {'c': v}}}``."""
    parts = key.split(".")
    if not all(parts):
        raise ValueError(f"{key!r}: empty key between dots")
    out: Any = value
    for part in reversed(parts):
        out = {part: out}
    return out


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two change mappings; ``extra`` wins on leaves."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_assignments(items: Sequence[str], where: str = "--set") -> dict[str, Any]:
    """Command-line assignments ``key.sub=value`` -> one nested change mapping.

    Values are read as JSON where they parse (``2``, ``[1,2]``, ``true``, ``null``, ``{"a": 1}``) and kept as
    strings otherwise (``amp=bf16``).

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{where} {item!r}: expected key=value")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        try:
            changes = merge(changes, nest(key, value))
        except ValueError as err:
            raise ValueError(f"{where} {item!r}: {err}") from None
    return changes
