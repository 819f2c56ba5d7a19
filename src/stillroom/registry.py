"""One small registration mechanism for stages and backends; the built-ins use it too.

Third-party packages add their own through the ``stillroom.plugins`` entry-point group: each entry
point names a module that is imported once, and whose import registers what it defines.
"""

from __future__ import annotations

import importlib
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
        # Declared names whose module is not imported yet (see `declare`).
        self._declared: dict[str, str] = {}
        self.version = 0

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not item:
                raise ValueError(f"{self.what} {name!r} is already registered by {existing!r}")
            declared = self._declared.get(name)
            if declared is not None and getattr(item, "__module__", None) != declared:
                # A declared built-in not imported yet: a plugin taking its name would shadow it
                # now and make its own module fail to import later.
                raise ValueError(f"{self.what} {name!r} is already registered by {declared}")
            self._items[name] = item
            self._declared.pop(name, None)
            self.version += 1
            return item

        return decorator

    def declare(self, name: str, module: str) -> None:
        """Make ``name`` known before its module is imported: the module (whose import registers
        the name) is imported the first time the name is looked up. The built-in stages are
        declared this way so that a verb pays only for the stages it uses: importing all of them
        (numpy, pydantic models of every stage) was most of the command line's start-up."""
        if name not in self._items:
            self._declared[name] = module

    def _import_declared(self, name: str) -> None:
        module = self._declared.get(name)
        if module is None:
            return
        try:
            importlib.import_module(module)
        except ImportError as error:
            # A broken dependency of one module (a missing shared library, an uninstalled extra)
            # is named with the stage that needs it, not as a bare ImportError of the command.
            raise ConfigError(
                f"{self.what} {name!r} cannot be used: importing its module {module} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        if name not in self._items:
            raise ValueError(f"importing {module} did not register {self.what} {name!r}")

    def get(self, name: str) -> T:
        load_plugins()
        self._import_declared(name)
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise ConfigError(f"unknown {self.what} {name!r}; known: {known}") from None

    def names(self) -> set[str]:
        """Every name known, declared ones included, without importing any declared module."""
        load_plugins()
        return set(self._items) | set(self._declared)

    def items(self) -> dict[str, T]:
        load_plugins()
        for name in list(self._declared):
            self._import_declared(name)
        # By name: the order must not depend on which modules happened to be imported first.
        return dict(sorted(self._items.items()))
