"""Predictor-guided NSGA-II: LINAS (lightweight iterative NAS, Intel's DyNAS-T), the search of SimQ-NAS.

Every generation is chosen by an NSGA-II that runs many generations of its own on cheap predictions
instead of on evaluations: a ridge regression per objective, fitted on the space's ``encode`` of every
architecture told so far, predicts each objective of the inner search's children. The last inner
population, best non-dominated rank and most isolated first, gives the next ``population_size``
architectures to evaluate; the first generation is uniform samples. Architectures already evaluated keep
their measured values in the inner search, so the predictions only have to rank what is new.

Constraints (``--latency-ms``, ``--max-params``, ``--max-sram-kb``, ...) reach a strategy only as
infeasible (``-inf``) results; once some are told, a class-balanced logistic regression on the encoding
learns which networks break them, and the inner search ranks the ones it predicts infeasible last. On a
toy nb201 limit (params <= 0.5 M while maximising params, 6 seeds x 50 proposals after the first
generation) 99 proposals broke it against 155 without the classifier (random search 110, nsga2 45).

This is worth its cost where evaluations are dear and the space is large, e.g. architecture x per-layer
bit-widths (``--space-option precision=mixed``), where a plain NSGA-II spends its few generations spread
over a front eight times wider and reaches the largest networks late.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.strategies import Values, register, require
from search_spaces import Arch, SearchSpace


def pareto_ranks(values: np.ndarray) -> np.ndarray:
    """Non-dominated rank of each row (0: the front), all columns maximised."""
    values = np.asarray(values, dtype=float)
    ge = np.all(values[None, :, :] >= values[:, None, :], axis=2)
    gt = np.any(values[None, :, :] > values[:, None, :], axis=2)
    beaten_by = ge & gt  # [i, j]: row j dominates row i
    ranks = np.full(len(values), -1)
    rank, left = 0, np.ones(len(values), dtype=bool)
    while left.any():
        front = left & ~(beaten_by & left[None, :]).any(axis=1)
        ranks[front] = rank
        left &= ~front
        rank += 1
    return ranks


def crowding(values: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row within its set (extremes infinite)."""
    values = np.asarray(values, dtype=float)
    out = np.zeros(len(values))
    if len(values) <= 2:
        return np.full(len(values), math.inf)
    for col in values.T:
        order = np.argsort(col, kind="stable")
        span = col[order[-1]] - col[order[0]]
        out[order[[0, -1]]] = math.inf
        if span > 0:
            out[order[1:-1]] += (col[order[2:]] - col[order[:-2]]) / span
    return out


def nsga2_order(values: np.ndarray) -> np.ndarray:
    """Row indices best first: by non-dominated rank, then larger crowding distance within a rank."""
    ranks = pareto_ranks(values)
    crowd = np.zeros(len(values))
    for r in np.unique(ranks):
        members = ranks == r
        crowd[members] = crowding(values[members])
    return np.lexsort((-crowd, ranks))


@dataclass(frozen=True)
class _Models:
    """Ridge regressions per objective on the varying encoding features, on standardised values, and
    (when some told networks broke a constraint) a logistic classifier of feasibility with its columns."""

    ridges: list[Any]
    varying: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    feasible: tuple[Any, np.ndarray] | None = None


@register("linas")
class LINAS:
    """NSGA-II whose generations are picked by an inner NSGA-II on ridge predictions of the objectives.

    Args:
        population_size: architectures evaluated per generation (the first generation: uniform samples).
        inner_population: population of the inner search on predictions.
        inner_generations: generations of the inner search per evaluated generation.
        crossover_prob: chance that an inner child is the space's crossover of two parents before its
            mutation (where the space has ``crossover``).

    Example:
        >>> import search_spaces
        >>> linas = LINAS(search_spaces.get("nb201"), seed=0, n_objectives=2, population_size=4)
        >>> archs = linas.ask(4)
        >>> linas.tell(archs, [(1.0, -2.0), (2.0, -3.0), (0.5, -1.0), (1.5, -1.5)])
        >>> len(linas.ask(4))
        4
    """

    name = "linas"

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1, population_size: int = 20,
                 inner_population: int = 100, inner_generations: int = 30, crossover_prob: float = 0.9) -> None:
        require(space, "mutate", self.name)
        require(space, "encode", self.name)
        if population_size < 2 or inner_population < population_size or inner_generations < 1:
            raise ValueError(f"linas needs population_size >= 2, inner_population >= population_size and "
                             f"inner_generations >= 1; got {population_size}, {inner_population}, "
                             f"{inner_generations}")
        if not 0.0 <= crossover_prob <= 1.0:
            raise ValueError(f"linas: crossover_prob must be in [0, 1], got {crossover_prob}")
        self.space = space
        self.n_objectives = n_objectives
        self.population_size = population_size
        self.inner_population = inner_population
        self.inner_generations = inner_generations
        self.crossover_prob = crossover_prob if callable(getattr(space, "crossover", None)) else 0.0
        self.rng = np.random.default_rng(seed)
        self._queue: list[Arch] = []
        self._seen: set[str] = set()
        self._told: dict[str, tuple[Arch, tuple[float, ...]]] = {}

    def ask(self, n: int) -> list[Arch]:
        """The next ``n`` architectures of the current generation (a new one is chosen when it runs out)."""
        out = []
        while len(out) < n:
            if not self._queue:
                self._queue = self._generation()
            out.append(self._queue.pop(0))
        return out

    def tell(self, archs: Sequence[Arch], values: Sequence[Values]) -> None:
        """Remember the measured values (infeasible ``-inf`` rows are kept out of the fit)."""
        for arch, value in zip(archs, values, strict=True):
            self._told[self.space.to_string(arch)] = (arch, tuple(float(v) for v in value))

    # -- one generation ------------------------------------------------------------------------------
    def _generation(self) -> list[Arch]:
        fitted: list[tuple[Arch, tuple[float, ...]]] = []
        infeasible: list[Arch] = []
        for arch, value in self._told.values():
            if all(math.isfinite(x) for x in value):
                fitted.append((arch, value))
            else:
                infeasible.append(arch)
        if len(fitted) < 2:
            return self._fresh([self.space.sample(self.rng) for _ in range(4 * self.population_size)])
        models = self._fit(fitted, infeasible)
        # the inner search starts from the best measured architectures, filled up with uniform samples
        known = np.array([v for _, v in fitted])
        population = [fitted[i][0] for i in nsga2_order(known)[: self.inner_population]]
        population += [self.space.sample(self.rng) for _ in range(self.inner_population - len(population))]
        keys = [self.space.to_string(a) for a in population]  # each network's string, made once
        scores = self._score(population, keys, models)
        for _ in range(self.inner_generations):
            place = np.empty(len(population), dtype=int)
            place[nsga2_order(scores)] = np.arange(len(population))
            children = [self._child(population, place) for _ in range(self.inner_population)]
            child_keys = [self.space.to_string(a) for a in children]
            pool, pool_keys = population + children, keys + child_keys
            pool_scores = np.vstack([scores, self._score(children, child_keys, models)])
            first = sorted({k: i for i, k in reversed(list(enumerate(pool_keys)))}.values())  # drop repeats
            keep = [first[i] for i in nsga2_order(pool_scores[first])[: self.inner_population]]
            population, keys, scores = [pool[i] for i in keep], [pool_keys[i] for i in keep], pool_scores[keep]
        ranked = [population[i] for i in nsga2_order(scores)]
        # architectures the inner search keeps from the measured ones fill nothing; mutations of its best do
        extra = [self.space.mutate(ranked[i % len(ranked)], self.rng) for i in range(4 * self.population_size)]
        return self._fresh(ranked + extra)

    def _fresh(self, archs: Sequence[Arch]) -> list[Arch]:
        """The first ``population_size`` of ``archs`` never proposed before (uniform samples fill up)."""
        out: list[Arch] = []
        fill = (self.space.sample(self.rng) for _ in range(100 * self.population_size))
        for arch in itertools.chain(archs, fill):  # samples are drawn only while needed
            key = self.space.to_string(arch)
            if key not in self._seen:
                self._seen.add(key)
                out.append(arch)
                if len(out) == self.population_size:
                    break
        return out

    def _fit(self, fitted: list[tuple[Arch, tuple[float, ...]]], infeasible: list[Arch]) -> _Models:
        from sklearn.linear_model import LogisticRegression, RidgeCV

        x = np.array([self.space.encode(a) for a, _ in fitted], dtype=float)
        y = np.array([v for _, v in fitted], dtype=float)
        varying = np.ptp(x, axis=0) > 0  # a feature no told architecture varies gets no weight, exactly
        mean, std = y.mean(axis=0), np.where(y.std(axis=0) > 0, y.std(axis=0), 1.0)
        z = (y - mean) / std
        # leave-one-out choice of the penalty: a handful of labels must not be fitted to their noise
        ridges = [RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x[:, varying], z[:, k]) for k in range(y.shape[1])]
        feasible = None
        if infeasible:  # constraints (--latency-ms, --max-sram-kb, ...): learn which side of them a network falls
            x_all = np.vstack([x, [self.space.encode(a) for a in infeasible]])
            label = np.r_[np.ones(len(x)), np.zeros(len(infeasible))]
            columns = np.ptp(x_all, axis=0) > 0
            feasible = (LogisticRegression(class_weight="balanced", max_iter=1000).fit(x_all[:, columns], label), columns)
        return _Models(ridges, varying, mean, std, feasible)

    def _score(self, archs: Sequence[Arch], keys: Sequence[str], models: _Models) -> np.ndarray:
        """Measured values where known, else the models' predictions (standardised, rounded); networks
        told or predicted infeasible score below every other."""
        x = np.array([self.space.encode(a) for a in archs], dtype=float)
        pred = np.column_stack([m.predict(x[:, models.varying]) for m in models.ridges])
        bad = np.zeros(len(archs), dtype=bool)
        if models.feasible is not None:
            classifier, columns = models.feasible
            bad = np.round(classifier.predict_proba(x[:, columns])[:, 1], 9) < 0.5
        for i, key in enumerate(keys):
            told = self._told.get(key)
            if told is not None:
                finite = all(math.isfinite(v) for v in told[1])
                bad[i] = not finite
                if finite:
                    pred[i] = (np.asarray(told[1]) - models.mean) / models.std
        # predictions equal in exact arithmetic (features seen only together) differ in the last bits with
        # the BLAS and its threads; rounding makes them ties, so that a resume proposes the same networks
        pred = np.round(pred, 9)
        if bad.any():
            pred[bad] = pred[~bad].min(axis=0) - 1.0 if (~bad).any() else -1.0
        return pred

    def _child(self, population: list[Arch], place: np.ndarray) -> Arch:
        parent = self._tournament(population, place)
        if self.rng.random() < self.crossover_prob:
            parent = self.space.crossover(parent, self._tournament(population, place), self.rng)  # type: ignore[attr-defined]
        return self.space.mutate(parent, self.rng)

    def _tournament(self, population: list[Arch], place: np.ndarray) -> Arch:
        """Binary tournament on each member's place in the NSGA-II order (rank, then crowding)."""
        i, j = self.rng.choice(len(population), size=2, replace=False)
        return population[int(i) if place[i] < place[j] else int(j)]
