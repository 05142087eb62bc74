"""Name → class registries for pluggable parts (mixture solvers, baselines), chosen from the config."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from operators.errors import ConfigError
from operators.registry import Registry as NameRegistry

T = TypeVar("T")


class Registry(NameRegistry[type[T]], Generic[T]):
    """Classes with a ``name`` and an ``Options`` pydantic model, registered by a decorator."""

    def __init__(self, kind: str, section: str = "mixture.options") -> None:
        super().__init__(kind, key=lambda cls: getattr(cls, "name"))
        self.kind = kind
        self.section = section  # config section holding each class's options by name

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

