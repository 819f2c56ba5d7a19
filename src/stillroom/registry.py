"""One small registration mechanism for stages and backends; the built-ins use it too.

Third-party packages add their own through the ``stillroom.plugins`` entry-point group: each entry
point names a module that is imported once, and whose import registers what it defines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from stillroom.errors import ConfigError

T = TypeVar("T")

_plugins_loaded = False


def load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for entry_point in entry_points(group="stillroom.plugins"):
        entry_point.load()


class Registry(Generic[T]):
    """Maps a name (the ``type:`` or ``kind:`` in a pipeline file) to a class."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}
        self.version = 0

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not item:
                raise ValueError(f"{self.what} {name!r} is already registered by {existing!r}")
            self._items[name] = item
            self.version += 1
            return item

        return decorator

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise ConfigError(f"unknown {self.what} {name!r}; known: {known}") from None

    def items(self) -> dict[str, T]:
        load_plugins()
        return dict(self._items)
