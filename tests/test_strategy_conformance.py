"""Every registered strategy, driven by plain ask/tell on a NAS-Bench-201 lookup table, searches.

The objective is a fixed synthetic table over all 15,625 cells (per-edge op scores plus pairwise
interactions between edges, drawn once from a seeded generator), so the tests run without any data
file; the same checks on the true CIFAR-10 accuracies run when ``../shared/data`` is present. A
strategy must beat random search (median over seeds of the best value found within a budget of
distinct evaluations), honour the direction (maximising and minimising the same table end at opposite
ends), and NSGA-II must find a better two-objective front than random search.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import search_spaces
from nas import strategies
from search_spaces.nb201 import OPS, load_accuracy_table

SPACE = search_spaces.get("nb201")
STRATEGIES = [n for n in strategies.registry.list()  # one-shot methods train on data, not tables
              if not getattr(strategies.registry.get(n), "one_shot", False)]
LEARNERS = [s for s in STRATEGIES if s != "random"]
BUDGET = 60  # distinct evaluations
SEEDS = range(9)
ASK_LIMIT = 20  # asks per distinct evaluation before a run is declared stuck


def _index(arch: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(OPS.index(op) for op in arch)


def synthetic_table(seed: int = 2024) -> np.ndarray:
    """A (5,)*6 array of objective values: per-edge op scores plus pairwise edge interactions."""
    rng = np.random.default_rng(seed)
    unary = rng.normal(size=(6, 5))
    pair = rng.normal(scale=0.5, size=(6, 5, 6, 5))
    idx = np.indices((5,) * 6).reshape(6, -1)  # column j: the op indices of cell j
    values = unary[np.arange(6)[:, None], idx].sum(0)
    for a in range(6):
        for b in range(a + 1, 6):
            values += pair[a, idx[a], b, idx[b]]
    return values.reshape((5,) * 6)


TABLE = synthetic_table()


def percentile(table: np.ndarray, value: float) -> float:
    """Fraction of the space strictly below ``value``."""
    return float((table < value).mean())


def run(name: str, seed: int, objective: Callable[[tuple[str, ...]], tuple[float, ...]],
        n_objectives: int = 1, budget: int = BUDGET, **options) -> dict[tuple[str, ...], tuple[float, ...]]:
    """Ask/tell one at a time until ``budget`` distinct architectures were evaluated; a repeat proposal
    is told its known values again without costing an evaluation (as a cache would). Returns arch ->
    oriented values."""
    strategy = strategies.get(name, SPACE, seed=seed, n_objectives=n_objectives, **options)
    seen: dict[tuple[str, ...], tuple[float, ...]] = {}
    for _ in range(ASK_LIMIT * budget):
        if len(seen) >= budget:
            break
        (arch,) = strategy.ask(1)
        if arch not in seen:
            seen[arch] = objective(arch)
        strategy.tell([arch], [seen[arch]])
    assert len(seen) == budget, f"{name}: only {len(seen)} distinct cells in {ASK_LIMIT * budget} asks"
    return seen


def best_values(name: str, table: np.ndarray, sign: float = 1.0, budget: int = BUDGET) -> list[float]:
    """Per seed, the table value (not oriented) of the best cell found when maximising ``sign * table``."""
    out = []
    for seed in SEEDS:
        found = run(name, seed, lambda a: (sign * float(table[_index(a)]),), budget=budget)
        out.append(sign * max(v[0] for v in found.values()))
    return out


@pytest.fixture(scope="module")
def random_best() -> list[float]:
    return best_values("random", TABLE)


def test_random_search_finds_the_top_few_percent(random_best):
    # 60 uniform draws: the best sits at the 1 - 1/61 ~ 98.4th percentile on average.
    assert percentile(TABLE, float(np.median(random_best))) > 0.95


@pytest.mark.parametrize("name", LEARNERS)
def test_strategy_beats_random_search(name, random_best):
    ours = best_values(name, TABLE)
    assert np.median(ours) > np.median(random_best), (
        f"{name}: median best {np.median(ours):.3f} (percentile {percentile(TABLE, np.median(ours)):.4f}) vs "
        f"random {np.median(random_best):.3f} (percentile {percentile(TABLE, np.median(random_best)):.4f})")


@pytest.mark.parametrize("name", STRATEGIES)
def test_maximise_and_minimise_end_at_opposite_ends(name):
    high = best_values(name, TABLE, sign=1.0)
    low = best_values(name, TABLE, sign=-1.0)
    assert percentile(TABLE, float(np.median(high))) > 0.95
    assert percentile(TABLE, float(np.median(low))) < 0.05
    assert min(high) > max(low)


def pareto_front(points: np.ndarray) -> np.ndarray:
    """The non-dominated rows of ``points`` (maximisation)."""
    keep = [i for i, p in enumerate(points)
            if not np.any(np.all(points >= p, axis=1) & np.any(points > p, axis=1))]
    return points[keep]


def hypervolume_2d(points: np.ndarray, ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (maximisation) above the reference point ``ref``."""
    front = pareto_front(points)
    front = front[np.all(front > ref, axis=1)]
    front = front[np.argsort(-front[:, 0])]
    area, top = 0.0, ref[1]
    for x, y in front:
        if y > top:
            area += (x - ref[0]) * (y - top)
            top = y
    return area


@pytest.mark.parametrize("name", ["nsga2", "linas"])
def test_multi_objective_front_beats_random_search(name):
    """Two conflicting objectives: the table, and minus a cost (convolutions weighted by kernel area).

    200 distinct evaluations: NSGA-II's default generations of 20 need a few rounds (at 60 it ties with
    random search); measured medians of the hypervolume: nsga2 997, linas 1037, random 932 (nsga2's worst
    seed 926, linas' 966)."""
    cost = {"none": 0.0, "skip_connect": 0.0, "avg_pool_3x3": 0.5, "nor_conv_1x1": 1.0, "nor_conv_3x3": 9.0}

    def objective(arch: tuple[str, ...]) -> tuple[float, float]:
        return float(TABLE[_index(arch)]), -sum(cost[op] for op in arch)

    ref = (float(TABLE.min()), -6 * 9.0)
    volumes = {}
    for strategy in ("random", name):
        fronts = [np.array(list(run(strategy, seed, objective, n_objectives=2, budget=200).values()))
                  for seed in SEEDS]
        volumes[strategy] = [hypervolume_2d(points, ref) for points in fronts]
    assert np.median(volumes[name]) > np.median(volumes["random"]), volumes


def test_table_covers_the_space_without_ties():
    assert TABLE.shape == (len(OPS),) * 6 and TABLE.size == SPACE.cardinality
    assert np.isfinite(TABLE).all() and len(np.unique(TABLE)) == TABLE.size  # "the best" is one cell


@pytest.fixture(scope="module")
def accuracy_table(shared_data) -> np.ndarray:
    table = load_accuracy_table(shared_data / "nb201_accuracy.csv")
    out = np.full((5,) * 6, np.nan)
    for arch, acc in table.items():
        out[_index(arch)] = acc
    assert not np.isnan(out).any()
    return out


@pytest.fixture(scope="module")
def random_best_accuracy(accuracy_table) -> list[float]:
    return best_values("random", accuracy_table, budget=ACCURACY_BUDGET)


ACCURACY_BUDGET = 100
"""The true accuracies are flat near the top: at 60 evaluations nsga2's median best (93.84) ties with
random search's (93.83); at 100: bayesian 94.37, evolution 94.25, nsga2 94.25, reinforce 94.05, random
93.83 (test accuracy %, CIFAR-10, 9 seeds)."""


@pytest.mark.parametrize("name", LEARNERS)
def test_strategy_beats_random_search_on_true_accuracies(name, accuracy_table, random_best_accuracy):
    ours = best_values(name, accuracy_table, budget=ACCURACY_BUDGET)
    assert np.median(ours) > np.median(random_best_accuracy), (ours, random_best_accuracy)
