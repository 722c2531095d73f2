"""Settings records: dicts in and out, type and key checks, deep updates, command-line assignments."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from genattn import settings


@dataclass(frozen=True)
class Inner:
    size: int = 3
    ratio: float = 0.5
    tags: tuple[str, ...] = ("a",)

    def __post_init__(self):
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    extra: Inner | None = None
    limit: int | None = None
    on: bool = False


def test_round_trip_with_nested_records_and_tuples():
    record = Outer(name="y", inner=Inner(4, 1.5, ("p", "q")), extra=Inner(), limit=7, on=True)
    data = settings.to_dict(record)
    assert data == {"name": "y", "inner": {"size": 4, "ratio": 1.5, "tags": ["p", "q"]},
                    "extra": {"size": 3, "ratio": 0.5, "tags": ["a"]}, "limit": 7, "on": True}
    assert settings.from_dict(Outer, data, "outer") == record


def test_update_changes_one_leaf_and_keeps_the_rest():
    record = Outer(inner=Inner(4, 1.5, ("p",)))
    changed = settings.update(record, {"inner": {"ratio": 2}}, "outer")
    assert changed.inner == Inner(4, 2.0, ("p",)) and isinstance(changed.inner.ratio, float)
    built = settings.update(record, {"extra": {"size": 9}}, "outer")  # a None record is built from its defaults
    assert built.extra == Inner(size=9)
    assert settings.update(built, {"extra": None}, "outer").extra is None
    assert settings.update(record, {"inner": Inner(1)}, "outer").inner == Inner(1)  # a record replaces


@pytest.mark.parametrize("changes, message", [
    ({"nme": "z"}, r"^outer: unknown key 'nme'; valid keys: name, inner, extra, limit, on$"),
    ({"inner": {"sise": 1}}, r"^outer\.inner: unknown key 'sise'; valid keys: size, ratio, tags$"),
    ({"inner": {"size": "3"}}, r"^outer\.inner\.size: expected an integer, got '3'$"),
    ({"inner": {"size": True}}, r"^outer\.inner\.size: expected an integer, got True$"),
    ({"inner": {"tags": [1]}}, r"^outer\.inner\.tags\[0\]: expected a string, got 1$"),
    ({"limit": 1.5}, r"^outer\.limit: expected an integer or null, got 1\.5$"),
    ({"on": 1}, r"^outer\.on: expected true or false, got 1$"),
    ({"inner": 3}, r"^outer\.inner: expected a mapping of Inner settings, got 3$"),
    ({"inner": {"size": -1}}, r"^outer\.inner: size must be >= 0, got -1$"),
])
def test_errors_name_the_path(changes, message):
    with pytest.raises(ValueError, match=message):
        settings.update(Outer(), changes, "outer")


def test_assignments_nest_and_parse_json():
    changes = settings.parse_assignments(["inner.size=4", "inner.tags=[\"b\"]", "name=plain text", "limit=null"])
    assert changes == {"inner": {"size": 4, "tags": ["b"]}, "name": "plain text", "limit": None}
    assert settings.update(Outer(), changes, "outer") == Outer(name="plain text", inner=Inner(4, 0.5, ("b",)))
    with pytest.raises(ValueError, match=r"--set 'inner': expected key=value"):
        settings.parse_assignments(["inner"])
    with pytest.raises(ValueError, match=r"--set 'inner..size=1': 'inner..size': empty key between dots"):
        settings.parse_assignments(["inner..size=1"])
    assert settings.merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}, "d": 4}) == {"a": {"b": 3, "c": 2}, "d": 4}
