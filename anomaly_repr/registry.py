"""A name -> factory table with a decorator to fill it: used for sources, models and scorers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    def register(self, name: str) -> Callable[[T], T]:
        def add(factory: T) -> T:
            if name in self:
                raise ValueError(f"{name!r} is registered twice")
            self[name] = factory
            return factory

        return add
