"""Random search: uniform samples from the space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nas.strategies import Values, register
from search_spaces import Arch, SearchSpace


@register("random")
class RandomSearch:
    """Samples architectures uniformly at random; ignores feedback."""

    name = "random"
    asynchronous = True

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1) -> None:
        self.space = space
        self.rng = np.random.default_rng(seed)

    def ask(self, n: int) -> list[Arch]:
        """``n`` uniform samples."""
        return [self.space.sample(self.rng) for _ in range(n)]

    def tell(self, archs: Sequence[Arch], values: Sequence[Values]) -> None:
        """Random search learns nothing."""
