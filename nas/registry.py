"""A small name -> object registry shared by spaces, proxies, strategies and targets."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """Raised when a registry is asked for a name it does not hold; the message lists the valid names."""


class Registry(Generic[T]):
    """Maps plain names to registered objects.

    Example:
        >>> spaces = Registry("search space")
        >>> spaces.register("toy", object())  # doctest: +ELLIPSIS
        <object ...>
        >>> spaces.list("t*")
        ['toy']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; a duplicate name raises."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers the decorated object under ``name``."""
        return lambda obj: self.register(name, obj)

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise listing the valid names."""
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a glob ``pattern``."""
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._items)
