"""Name → class registries for pluggable parts (mixture solvers, baselines), chosen from the config."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from operators.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes with a ``name`` and an ``Options`` pydantic model, registered by a decorator."""

    def __init__(self, kind: str, section: str = "mixture.options") -> None:
        self.kind = kind
        self.section = section  # config section holding each class's options by name
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        name = getattr(cls, "name")
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        if name not in self._classes:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {self.names()}")
        return self._classes[name]

    def options(self, name: str, data: dict[str, Any] | None, where: str) -> Any:
        """Validate ``data`` with the class's Options model; errors name ``where.<field>``."""
        cls = self.get(name)
        try:
            return cls.Options.model_validate(data or {})  # type: ignore[attr-defined]
        except ValidationError as exc:
            lines = [f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
            raise ConfigError("; ".join(lines)) from None

    def build(self, name: str, data: dict[str, Any] | None = None, where: str = "") -> T:
        return self.get(name)(self.options(name, data, where or name))  # type: ignore[call-arg]

    def configured(self, name: str, options: dict[str, dict[str, Any]], **override: Any) -> T:
        """Build ``name`` from its section of the config's options (``override`` wins), errors naming
        ``<section>.<name>.<field>``."""
        return self.build(name, {**(options.get(name) or {}), **override}, f"{self.section}.{name}")

