"""Search strategies behind one ask/tell interface, and their registry.

A strategy is created as ``get(name, space, seed=..., n_objectives=..., **options)``; ``ask(n)`` returns
architectures to evaluate and ``tell(archs, values)`` gives back, per arch, a tuple of objective values
oriented so that higher is better (infeasible or failed candidates get ``-inf``).

A strategy whose class sets ``asynchronous = True`` accepts ``tell`` for any subset of its open
proposals in any order, and ``ask`` while others are still being evaluated; with a parallel executor the
loop then tells each result as it arrives and asks for one more. Otherwise (the default) the loop asks
a batch, evaluates all of it and tells it in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from nas.registry import Registry
from search_spaces import Arch, SearchSpace

Values = tuple[float, ...]


class Strategy(Protocol):
    """Ask/tell search strategy."""

    name: str

    def ask(self, n: int) -> list[Arch]:
        """Propose ``n`` architectures."""
        ...

    def tell(self, archs: Sequence[Arch], values: Sequence[Values]) -> None:
        """Report the oriented objective values of architectures proposed by ``ask``."""
        ...


registry: Registry[Callable[..., Strategy]] = Registry("strategy")


def register(name: str) -> Callable[[Callable[..., Strategy]], Callable[..., Strategy]]:
    """Class decorator registering a strategy under ``name``."""
    return registry.decorator(name)


def get(name: str, space: SearchSpace, seed: int = 0, n_objectives: int = 1, **options: Any) -> Strategy:
    """Create the strategy ``name`` for ``space``."""
    return registry.get(name)(space, seed=seed, n_objectives=n_objectives, **options)


def require(space: SearchSpace, method: str, strategy: str) -> None:
    """Raise a clear error when ``space`` lacks an optional capability a strategy needs."""
    if not callable(getattr(space, method, None)):
        raise TypeError(f"strategy {strategy!r} needs the search space {space.name!r} to provide "
                        f"{method}(); it does not")


from nas.strategies import random_search  # noqa: E402,F401

for _optional in ("evolution", "bayesian", "reinforce"):
    try:
        __import__(f"nas.strategies.{_optional}")
    except ModuleNotFoundError as _err:
        if _err.name != f"nas.strategies.{_optional}":
            raise
