"""Typed, range-checked settings: the one validator behind every configuration (compression,
each compression method's options, L-GreCo's planner, CO2).

A configuration is a frozen dataclass deriving :class:`Knobs`. Each field's annotation is its
type (``int``, ``float``, ``bool``, ``str``, a ``Literal`` of the allowed values, ``X | None``,
or ``tuple[X, ...]``) and :func:`knob` adds its range, so every field is checked at
construction, before any collective, by the same code and with messages that name the field::

    @dataclass(frozen=True)
    class Options(Knobs):
        rank: int = knob(8, low=1)
        norm: Literal["max", "l2"] = "max"

Cross-field rules go in :meth:`Knobs.check`.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

_NO_LIMIT = None


def knob(default: Any, *, low: float | None = _NO_LIMIT, high: float | None = _NO_LIMIT,
         low_open: bool = False, high_open: bool = False, strict: bool = False) -> Any:
    """A dataclass field with its allowed range: ``low``/``high`` bounds (``*_open``: the bound
    itself is excluded). ``strict`` (compression methods' options only): a user who passes this
    knob with a method that does not have it gets an error instead of a logged warning, for
    knobs that would silently change what another method means (top-k's ``momentum``)."""
    meta = {"low": low, "high": high, "low_open": low_open, "high_open": high_open,
            "strict": strict}
    return field(default=default, metadata=meta)


def check_value(name: str, value: Any, kind: Any, meta: typing.Mapping | None = None) -> Any:
    """``value`` checked against the type ``kind`` and the range in ``meta`` (see :func:`knob`);
    returns it normalised (a list for a tuple field becomes a tuple, 4.0 for a ``Literal[4]``
    becomes 4). ValueError naming ``name`` otherwise."""
    meta = meta or {}
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (kind,) = [k for k in options if k is not type(None)]
        return check_value(name, value, kind, meta)
    if origin is Literal:
        allowed = typing.get_args(kind)
        if isinstance(value, bool) or value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        return allowed[allowed.index(value)]
    if origin is tuple:
        (item, _) = typing.get_args(kind)
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            raise ValueError(f"{name} must be a tuple, got {value!r}")
        return tuple(check_value(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not _in_range(value, meta):
            raise ValueError(f"{name} must be an integer{_range_text(meta)}, got {value!r}")
        return value
    if kind is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and _in_range(value, meta)):
            raise ValueError(f"{name} must be a finite number{_range_text(meta)}, got {value!r}")
        return value
    raise TypeError(f"{name}: no check for fields of type {kind!r}")


def _in_range(value: float, meta: typing.Mapping) -> bool:
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        return False
    return not (high is not None and (value >= high if meta.get("high_open") else value > high))


def _range_text(meta: typing.Mapping) -> str:
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if meta.get('low_open') else '>='} {low}"
    if low is None:
        return f" {'<' if meta.get('high_open') else '<='} {high}"
    return (f" in {'(' if meta.get('low_open') else '['}{low}, "
            f"{high}{')' if meta.get('high_open') else ']'}")


@dataclass(frozen=True)
class Knobs:
    """Base of every configuration dataclass: fields checked at construction (their types
    from the annotations, ranges from :func:`knob`), :meth:`from_dict` and :meth:`to_dict`."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            if f.metadata.get("nested"):  # a Knobs of its own, checked when it was built
                continue
            value = check_value(f.name, getattr(self, f.name), hints[f.name], f.metadata)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Rules between fields; raise ``ValueError`` naming them (nothing by default)."""

    @classmethod
    def from_dict(cls, d: typing.Mapping, what: str | None = None):
        """Build from a mapping of field names; an unknown name is a ValueError listing it
        (``what`` names the configuration in the message)."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {what or cls.__name__} options {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def scalar(kind: Any) -> tuple[type | None, tuple | None]:
    """(int, float, str or bool, the allowed values of a ``Literal`` or None) of a field type,
    ``X | None`` read as X; (None, None) for a tuple field."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
    if typing.get_origin(kind) is Literal:
        allowed = typing.get_args(kind)
        return type(allowed[0]), allowed
    return (kind, None) if kind in (int, float, str, bool) else (None, None)


def field_types(cls: type) -> dict[str, Any]:
    """Name -> annotation of a dataclass's fields (resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}
