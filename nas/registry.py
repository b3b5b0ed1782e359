"""A small name -> object registry shared by spaces, proxies, strategies and targets."""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import numbers
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Generic, TypeVar

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
        """Register ``obj`` under ``name``; the same object again is a no-op, another one raises.

        "The same" includes a function defined again with the same code (a notebook cell run twice).
        """
        if name in self._items:
            if same_definition(self._items[name], obj):
                return self._items[name]
            raise ValueError(f"{self.kind} {name!r} is already registered with another definition; "
                             "choose another name")
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

    def check_options(self, name: str, options: Mapping[str, Any], fixed: Collection[str] = ()) -> None:
        """Raise ``ValueError`` naming the accepted options when ``name``'s factory cannot take ``options``."""
        check_options(f"{self.kind} {name!r}", self.get(name), options, fixed)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a glob ``pattern``."""
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._items)


def same_definition(a: object, b: object) -> bool:
    """Whether two registered objects define the same thing: equal, or functions with the same code.

    Dataclass records (a proxy's spec) compare field by field with the same rule for their functions.
    """
    if a is b:
        return True
    if inspect.isfunction(a) and inspect.isfunction(b):
        ca, cb = a.__code__, b.__code__
        return (a.__module__, a.__qualname__, ca.co_code, ca.co_consts, ca.co_names) == \
            (b.__module__, b.__qualname__, cb.co_code, cb.co_consts, cb.co_names)
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        return all(same_definition(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects whose == raises are simply not the same
        return False


def check_options(what: str, factory: Callable[..., Any], options: Mapping[str, Any],
                  fixed: Collection[str] = ()) -> None:
    """Raise ``ValueError`` when ``factory`` (described as ``what``) cannot take the keyword ``options``.

    ``fixed`` are parameters the caller passes itself (a strategy's space and seed), not options. A
    keyword the factory lacks, or a value of another kind than a scalar default (``channels="8x"``),
    would otherwise surface as a ``TypeError`` from deep inside the factory.
    """
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C-implemented factory: nothing to inspect
        return
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = {n: p for n, p in params.items() if p.kind in kinds and n not in fixed}
    unknown = sorted(set(options) - set(accepted) - set(fixed))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        valid = ", ".join(f"{n}={p.default!r}" if p.default is not p.empty else n
                          for n, p in accepted.items()) or "(none)"
        raise ValueError(f"{what} has no option {', '.join(map(repr, unknown))}; valid: {valid}")
    for key, value in options.items():
        default = accepted[key].default if key in accepted else None
        if not _same_kind(value, default):
            raise ValueError(f"{what}: option {key} expects {type(default).__name__} (default {default!r}), "
                             f"got {value!r}")


def _same_kind(value: object, default: object) -> bool:
    """Whether ``value`` fits a parameter whose default is ``default`` (only scalar defaults are checked)."""
    is_bool = isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b"
    if isinstance(default, bool):
        return is_bool
    if isinstance(default, int):  # numbers.Integral admits numpy integers (a sweep grid's values)
        return isinstance(value, numbers.Integral) and not is_bool
    if isinstance(default, float):
        return isinstance(value, numbers.Real) and not is_bool
    if isinstance(default, str):
        return isinstance(value, str)
    return True  # None, tuples, objects: the factory checks what it needs
