"""Typed, frozen configuration objects that reject unknown keys.

Every component takes one frozen dataclass. :func:`from_mapping` builds one from plain data
(JSON from the control socket, a TOML table, CLI options), checking keys and types and reporting
every problem at once.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["from_mapping", "to_mapping"]

T = TypeVar("T")


def _check_type(value: Any, annotation: Any) -> Any:
    """Return ``value`` coerced to ``annotation`` where lossless, else raise TypeError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _check_type(value, arg)
            except TypeError as exc:
                errors.append(str(exc))
        raise TypeError(" or ".join(errors))
    if origin is typing.Literal:
        if value in args:
            return value
        raise TypeError(f"one of {list(args)}, got {value!r}")
    if annotation is type(None):
        if value is None:
            return None
        raise TypeError(f"null, got {type(value).__name__}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0]) for v in value)
        if len(args) != len(value):
            raise TypeError(f"a list of {len(args)} items, got {len(value)}")
        return tuple(_check_type(v, a) for v, a in zip(value, args, strict=True))
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, Mapping):
            return from_mapping(annotation, value)
        raise TypeError(f"a table, got {type(value).__name__}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"a number, got {type(value).__name__} {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"an integer, got {type(value).__name__} {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"true or false, got {type(value).__name__} {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"a string, got {type(value).__name__} {value!r}")
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise TypeError(f"{getattr(annotation, '__name__', annotation)}, got {value!r}")


def from_mapping(cls: type[T], data: Mapping[str, Any], *, source: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.

    All problems are collected and raised together as one :class:`ConfigError`; ``source`` (a file
    name or "control message") is named in the message.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source or cls.__name__}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            problems.append(f"unknown key {key!r} (known: {', '.join(sorted(fields))})")
            continue
        try:
            kwargs[key] = _check_type(value, hints[key])
        except TypeError as exc:
            problems.append(f"{key!r}: expected {exc}")
        except ConfigError as exc:
            problems.append(f"{key!r}: {exc}")
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in data:
            problems.append(f"missing key {name!r}")
    prefix = f"{source}: " if source else ""
    if problems:
        raise ConfigError(f"{prefix}invalid {cls.__name__}: " + "; ".join(problems))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{prefix}invalid {cls.__name__}: {exc}") from exc


def to_mapping(config: Any) -> dict[str, Any]:
    """Plain-data view of a config dataclass (tuples become lists), e.g. for JSON or HDF5 attrs."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(config)
