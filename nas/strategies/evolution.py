"""Regularized (aging) evolution (Real et al. 2019): tournament selection, mutation, oldest dies."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from nas.strategies import Values, register, require
from search_spaces import Arch, SearchSpace


@register("evolution")
class RegularizedEvolution:
    """Aging evolution over the space's ``mutate``.

    The first ``population_size`` asks are uniform samples; afterwards each child mutates the winner of a
    tournament of ``sample_size`` members drawn from the population, and the oldest member dies when the
    child is told. With several objectives the winner is a random non-dominated member of the tournament.
    Aging evolution is asynchronous by design (Real et al. ran it on hundreds of independent workers):
    each finished child joins the population on its own and the next child comes from the current one.

    Example:
        >>> import search_spaces
        >>> evo = RegularizedEvolution(search_spaces.get("nb201"), seed=0, population_size=4)
        >>> archs = evo.ask(2)
        >>> evo.tell(archs, [(1.0,), (2.0,)])
    """

    name = "evolution"
    asynchronous = True

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1, population_size: int = 20,
                 sample_size: int = 5) -> None:
        require(space, "mutate", self.name)
        if population_size < 2 or not 1 <= sample_size <= population_size:
            raise ValueError(f"evolution needs population_size >= 2 and 1 <= sample_size <= population_size; "
                             f"got {population_size} and {sample_size}")
        self.space = space
        self.population_size = population_size
        self.sample_size = sample_size
        self.rng = np.random.default_rng(seed)
        self.population: deque[tuple[Arch, Values]] = deque()
        self._asked = 0

    def ask(self, n: int) -> list[Arch]:
        """Random samples until the first population is proposed, then mutated tournament winners."""
        out = []
        for _ in range(n):
            if self._asked < self.population_size or not self.population:
                out.append(self.space.sample(self.rng))
            else:
                out.append(self.space.mutate(self._tournament(), self.rng))
            self._asked += 1
        return out

    def tell(self, archs: Sequence[Arch], values: Sequence[Values]) -> None:
        """Add the children to the population, removing the oldest members beyond its size."""
        for arch, value in zip(archs, values, strict=True):
            self.population.append((arch, tuple(value)))
            if len(self.population) > self.population_size:
                self.population.popleft()

    def _tournament(self) -> Arch:
        k = min(self.sample_size, len(self.population))
        picks = [self.population[int(i)] for i in self.rng.choice(len(self.population), size=k, replace=False)]
        vals = np.array([_finite(v) for _, v in picks], dtype=float)
        if vals.shape[1] == 1:
            return picks[int(np.argmax(vals[:, 0]))][0]  # first maximum: ties go to the earlier draw
        winners = [i for i in range(k)
                   if not np.any(np.all(vals >= vals[i], axis=1) & np.any(vals > vals[i], axis=1))]
        return picks[winners[int(self.rng.integers(len(winners)))]][0]


def _finite(values: Values) -> tuple[float, ...]:
    """Infeasible ``-inf`` as the lowest finite float, so that comparisons stay well defined."""
    return tuple(v if math.isfinite(v) else -np.finfo(float).max for v in values)
