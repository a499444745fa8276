"""Typed frozen configs: unknown keys, wrong types and missing keys are all reported."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from n2i_stream import ConfigError
from n2i_stream.config import from_mapping, to_mapping


@dataclasses.dataclass(frozen=True)
class Inner:
    port: int
    host: str = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    rate: float = 1.0
    mode: Literal["block", "drop_oldest"] = "block"
    sizes: tuple[int, ...] = ()
    center: float | None = None
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(port=1))


def test_builds_nested_and_coerces_losslessly():
    cfg = from_mapping(Outer, {"name": "a", "rate": 2, "sizes": [1, 2], "inner": {"port": 5}})
    assert cfg == Outer(name="a", rate=2.0, sizes=(1, 2), inner=Inner(port=5))
    assert isinstance(cfg.rate, float)
    assert to_mapping(cfg)["sizes"] == [1, 2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "b"  # type: ignore[misc]


def test_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as info:
        from_mapping(
            Outer,
            {"rate": "fast", "mode": "sometimes", "colour": 1, "center": True},
            source="scan.toml",
        )
    msg = str(info.value)
    assert msg.startswith("scan.toml: invalid Outer")
    for part in ("'rate'", "'mode'", "unknown key 'colour'", "missing key 'name'", "'center'"):
        assert part in msg


def test_nested_errors_name_the_inner_key():
    with pytest.raises(ConfigError, match=r"'inner'.*unknown key 'prot'"):
        from_mapping(Outer, {"name": "x", "inner": {"prot": 3}})


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="an integer"):
        from_mapping(Inner, {"port": True})
