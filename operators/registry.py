"""Name → item registries for pluggable operator parts (projections, manifest formats)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from operators.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Items keyed by ``key(item)``, kept in registration order; ``register`` works as a decorator."""

    def __init__(self, what: str, key: Callable[[T], str]) -> None:
        self.what = what
        self._key = key
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        name = self._key(item)
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._items[name] = item
        return item

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {self.names()}")
        return self._items[name]

    def __iter__(self) -> Iterator[T]:
        """Items in registration order."""
        return iter(list(self._items.values()))
