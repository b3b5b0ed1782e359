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
from dataclasses import dataclass, field
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


class Exhausted(Exception):  # noqa: N818 - a signal, like StopIteration
    """Raised by ``ask`` of a strategy with nothing more to propose (e.g. a one-shot method after its
    last epoch); the study then ends the search before its budget."""


registry: Registry[Callable[..., Strategy]] = Registry("strategy")


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy with its options, bound to a space and seed when a study starts.

    Example:
        >>> from nas import strategies
        >>> strategies.Evolution(population_size=50)
        StrategySpec(name='evolution', options={'population_size': 50})
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1) -> Strategy:
        """The strategy for ``space``."""
        return get(self.name, space, seed=seed, n_objectives=n_objectives, **self.options)


def Random() -> StrategySpec:  # noqa: N802 - reads like the class it stands for
    """Uniform random search."""
    return StrategySpec("random")


def Evolution(**options: Any) -> StrategySpec:  # noqa: N802
    """Regularized (aging) evolution; options: ``population_size``, ``sample_size``."""
    return StrategySpec("evolution", options)


def Bayesian(**options: Any) -> StrategySpec:  # noqa: N802
    """Optuna's TPE sampler; options go to ``optuna.samplers.TPESampler``."""
    return StrategySpec("bayesian", options)


def NSGA2(**options: Any) -> StrategySpec:  # noqa: N802
    """Optuna's NSGA-II (multi-objective); options: ``population_size`` and the sampler's."""
    return StrategySpec("nsga2", options)


def LINAS(**options: Any) -> StrategySpec:  # noqa: N802
    """NSGA-II guided by ridge predictions of the objectives (DyNAS-T's LINAS); options: ``population_size``, ..."""
    return StrategySpec("linas", options)


def Reinforce(**options: Any) -> StrategySpec:  # noqa: N802
    """REINFORCE over a factorised categorical policy; options: ``lr``, ``baseline_decay``, ..."""
    return StrategySpec("reinforce", options)


def register(name: str) -> Callable[[Callable[..., Strategy]], Callable[..., Strategy]]:
    """Class decorator registering a strategy under ``name``."""
    return registry.decorator(name)


def get(name: str, space: SearchSpace, seed: int = 0, n_objectives: int = 1, **options: Any) -> Strategy:
    """Create the strategy ``name`` for ``space``; an unknown option raises ValueError naming the valid ones."""
    registry.check_options(name, options, fixed=("space", "seed", "n_objectives"))
    return registry.get(name)(space, seed=seed, n_objectives=n_objectives, **options)


def require(space: SearchSpace, method: str, strategy: str) -> None:
    """Raise a clear error when ``space`` lacks an optional capability a strategy needs."""
    if not callable(getattr(space, method, None)):
        raise ValueError(f"strategy {strategy!r} needs the search space {space.name!r} to provide "
                        f"{method}(); it does not")


from nas.strategies import random_search  # noqa: E402,F401

for _optional in ("evolution", "bayesian", "reinforce", "oneshot", "weight_sharing", "proxyless",
                  "predictor", "linas"):
    try:
        __import__(f"nas.strategies.{_optional}")
    except ModuleNotFoundError as _err:
        if _err.name != f"nas.strategies.{_optional}":
            raise
