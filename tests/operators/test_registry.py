"""Tests for operators.registry: registration order, lookup errors, duplicates."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from operators.errors import ConfigError
from operators.registry import Registry


@dataclass(frozen=True)
class _Part:
    name: str


def test_register_get_and_order() -> None:
    reg: Registry[_Part] = Registry("widget", key=lambda p: p.name)
    b, a = _Part("b"), _Part("a")
    assert reg.register(b) is b and reg.register(a) is a
    assert reg.register(a) is a  # registering the same item again is harmless
    assert reg.get("a") is a and reg.names() == ["a", "b"]
    assert list(reg) == [b, a]  # iteration keeps registration order


def test_unknown_and_duplicate_names() -> None:
    reg: Registry[_Part] = Registry("widget", key=lambda p: p.name)
    reg.register(_Part("a"))
    with pytest.raises(ConfigError, match=r"unknown widget 'z'; known: \['a'\]"):
        reg.get("z")
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        reg.register(_Part("a"))  # equal but not the same item
