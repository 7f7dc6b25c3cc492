"""One small generic registry: named, frozen entries; unknown names raise :class:`UnknownName`.

Each concept (criteria, objectives, search-space shapes, samplers) keeps one instance.
``UnknownName`` is a ``KeyError``: callers map it to the error of their own context (a
:class:`~autoprune.errors.SpecError` naming the spec field, an input error naming a flag).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

__all__ = ["Named", "Registry", "UnknownName"]


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class UnknownName(KeyError):
    """An unknown registry name; ``str()`` is a one-line message listing the choices."""

    def __init__(self, kind: str, name: object, choices: list[str]):
        super().__init__(name)
        self.kind, self.name, self.choices = kind, name, choices

    def __str__(self) -> str:
        return f"unknown {self.kind} {self.name!r} (choose from {', '.join(self.choices)})"


class Registry(Generic[T]):
    """Entries by name, in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        if item.name in self._items:
            raise ValueError(f"{self.kind} {item.name!r} is registered already")
        self._items[item.name] = item
        return item

    @contextmanager
    def temporarily(self, item: T) -> Iterator[T]:
        """``item`` registered inside the ``with`` block only (tests that add a toy entry)."""
        self.register(item)
        try:
            yield item
        finally:
            del self._items[item.name]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownName(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items.values())
