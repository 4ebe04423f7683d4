"""Name -> factory tables filled by plug-in modules: data sources, architectures, methods and scorers.

A table names the modules that fill it (its plug-ins) and imports them the first time it is read, as
package entry points are loaded. So a lower layer can look a name up (the config checks `dataset`, `arch`
and `method` here) without importing the layers that register the names, and every import still runs
downwards. Registering never loads; a plug-in module registers when it is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

from anomaly_repr.errors import unknown

T = TypeVar("T")


class Registry(MutableMapping[str, T], Generic[T]):
    def __init__(self, kind: str, plugins: tuple[str, ...], order: Callable[[str], Any] | None = None):
        self.kind, self.plugins, self._order = kind, plugins, order  # kind: the config field's name
        self._table: dict[str, T] = {}
        self._about: dict[str, dict[str, Any]] = {}
        self._loaded = False

    def register(self, name: str, **about: Any) -> Callable[[T], T]:
        """A decorator that adds a factory under `name`, with what the table's readers may ask of it."""
        def add(factory: T) -> T:
            if name in self._table:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._table[name] = factory
            self._about[name] = about
            return factory

        return add

    def about(self, name: str) -> dict[str, Any]:
        self._load()
        return self._about[name]

    def check(self, name: str) -> None:
        """A one-line error for a name that is not registered."""
        if name not in self:
            raise unknown(self.kind, name, sorted(self))

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a plug-in that reads the table while it registers sees it as it is
            try:
                for module in self.plugins:
                    importlib.import_module(module)
            except BaseException:
                self._loaded = False  # the next read tries again (and fails the same way), never half a table
                raise

    def __setitem__(self, name: str, factory: T) -> None:  # what tests put in for a while (monkeypatch)
        self._table[name] = factory
        self._about.setdefault(name, {})

    def __delitem__(self, name: str) -> None:
        del self._table[name]
        self._about.pop(name, None)

    def __getitem__(self, name: str) -> T:
        self._load()
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._table, key=self._order) if self._order else list(self._table))

    def __len__(self) -> int:
        self._load()
        return len(self._table)


# The config checks these three; each plug-in package registers its names when it is imported.
SOURCES: Registry[Any] = Registry("dataset", ("anomaly_repr.data.sources",))
MODELS: Registry[Any] = Registry("arch", ("anomaly_repr.models.backbones",))
METHODS: Registry[Any] = Registry("method", ("anomaly_repr.methods",))
