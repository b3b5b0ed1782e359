"""Rank-correlation benchmark of zero-cost proxies against true accuracies (and against NASLib's values).

Extra scorers (e.g. ensembles of proxies) plug in with :func:`register_scorer`: each gets the per-proxy
values of the benchmarked cells and returns one score per cell, reported as an extra row.

Example:
    >>> @register_scorer("sum_of_ranks")  # doctest: +SKIP
    ... def sum_of_ranks(values):
    ...     return sum(scipy.stats.rankdata(v) for v in values.values())
"""

from __future__ import annotations

import csv
import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

import proxies as proxy_lib
from nas.evaluate import Evaluator
from nas.registry import Registry
from proxies.cache import ProxyCache
from search_spaces import SearchSpace

Scorer = Callable[[dict[str, np.ndarray]], np.ndarray]
scorers: Registry[Scorer] = Registry("benchmark scorer")

NASLIB_PROXIES = ("flops", "params", "snip", "jacov", "grad_norm", "plain", "epe_nas", "fisher", "grasp",
                  "l2_norm", "synflow")
"""Proxies whose values NASLib publishes for NAS-Bench-201 (same names here)."""

NB201_DATASETS: dict[str, dict[str, object]] = {
    "cifar10": {"num_classes": 10},
    "cifar100": {"num_classes": 100},
    "imagenet16_120": {"num_classes": 120, "input_shape": (3, 16, 16)},
}
"""NAS-Bench-201 space options per dataset column of the accuracy table."""


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    """Register ``fn(values: {proxy: array}) -> array`` as an extra benchmark row ``name``."""

    def wrap(fn: Scorer) -> Scorer:
        scorers.register(name, fn)
        return fn

    return wrap


@dataclass
class ProxyValues:
    """Proxy values of a list of architectures; NaN where a value was not computed, -inf where the engine
    computed none (NaN: a non-finite value, a degenerate network), so that such cells rank last."""

    archs: list[str]
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def to_csv(self, path: str | os.PathLike[str], extra: dict[str, Sequence[float]] | None = None) -> None:
        """Write ``arch,<proxy>...[,<extra>...]``, one row per architecture."""
        extra = extra or {}
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["arch", *self.values, *extra])
            for i, arch in enumerate(self.archs):
                writer.writerow([arch, *(repr(float(v[i])) for v in self.values.values()),
                                 *(repr(float(v[i])) for v in extra.values())])


@dataclass(frozen=True)
class Row:
    """One line of the benchmark table."""

    name: str
    n: int
    spearman: float
    kendall: float
    spearman_ci: tuple[float, float] = (math.nan, math.nan)


def sample_archs(space: SearchSpace, n: int, seed: int) -> list[str]:
    """``n`` distinct uniformly sampled architecture strings (all of them when n >= cardinality)."""
    rng = np.random.default_rng(seed)
    all_archs = getattr(space, "all_archs", None)
    if all_archs is not None:
        archs = all_archs()
        idx = rng.permutation(len(archs))[: min(n, len(archs))]
        return [space.to_string(archs[i]) for i in idx]
    out: dict[str, None] = {}
    for _ in range(100 * n):
        if len(out) >= n:
            break
        out.setdefault(space.to_string(space.sample(rng)), None)
    return list(out)


def compute_values(space: SearchSpace, archs: Sequence[str], names: Sequence[str], batch: proxy_lib.Batch,
                   seed: int, cache: ProxyCache | None, cached_only: bool = False,
                   progress: Callable[[int], None] | None = None) -> ProxyValues:
    """Proxy values of ``archs`` through an :class:`Evaluator` (with the cache); ``cached_only`` reads
    the cache and computes nothing."""
    table = ProxyValues(list(archs), {n: np.full(len(archs), np.nan) for n in names})
    evaluate = Evaluator(space, tuple(names), batch, seed=seed, cache=cache)
    for i, arch in enumerate(archs):
        if cached_only:
            scores = evaluate.cached_scores(arch, tuple(space.input_shape)) if cache is not None else {}
        else:
            scores = evaluate(arch).scores
        for name, value in scores.items():
            # the engine's NaN of a scored network ranks it last (as a search does), unlike "not computed"
            table.values[name][i] = -math.inf if math.isnan(value) else value
        if progress is not None:
            progress(i + 1)
    return table


def with_scorers(values: dict[str, np.ndarray], target: np.ndarray) -> dict[str, np.ndarray]:
    """``values`` plus one column per registered scorer (a scorer that takes ``target`` may fit on a few
    labels and leave NaN there)."""
    columns = dict(values)
    for name in scorers.list():
        fn = scorers.get(name)
        out = fn(values, target=target) if "target" in inspect.signature(fn).parameters else fn(values)
        columns[name] = np.asarray(out, dtype=float)
    return columns


def bootstrap_spearman(score: np.ndarray, target: np.ndarray, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Spearman's rho on ``resamples`` bootstrap resamples of the cells (rows of ``score``: one per scorer,
    all on the same resamples, so that differences between rows are paired)."""
    score = np.atleast_2d(np.asarray(score, dtype=float))
    idx = np.random.default_rng(seed).integers(0, score.shape[1], size=(resamples, score.shape[1]))
    t = stats.rankdata(np.asarray(target, dtype=float)[idx], axis=1)
    t -= t.mean(axis=1, keepdims=True)
    out = np.empty((score.shape[0], resamples))
    for i, row in enumerate(score):
        r = stats.rankdata(row[idx], axis=1)
        r -= r.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant resample has no correlation
            out[i] = (r * t).sum(1) / np.sqrt((r * r).sum(1) * (t * t).sum(1))
    return out


def spearman_gap(a: np.ndarray, b: np.ndarray, target: np.ndarray, resamples: int = 1000,
                 seed: int = 0) -> tuple[float, float, float, int]:
    """Spearman(a) - Spearman(b) on the cells where both are computed (-inf: ranked last), with its
    paired-bootstrap 95% interval: (difference, low, high, cells)."""
    ok = ~np.isnan(a) & ~np.isnan(b) & np.isfinite(target)
    if ok.sum() < 3:
        return math.nan, math.nan, math.nan, int(ok.sum())
    diff = stats.spearmanr(a[ok], target[ok]).statistic - stats.spearmanr(b[ok], target[ok]).statistic
    boot = bootstrap_spearman(np.stack([a[ok], b[ok]]), target[ok], resamples, seed)
    low, high = np.nanpercentile(boot[0] - boot[1], [2.5, 97.5])
    return float(diff), float(low), float(high), int(ok.sum())


def rank_rows(columns: dict[str, np.ndarray], target: np.ndarray, resamples: int = 0, seed: int = 0) -> list[Row]:
    """Spearman and Kendall tau of every column (proxies, and scorers via :func:`with_scorers`) against
    ``target``; with ``resamples`` > 0 also a bootstrap 95% interval of each Spearman."""
    rows = []
    for name, v in columns.items():
        ok = ~np.isnan(v) & np.isfinite(target)  # -inf (no value for a scored cell) ranks last
        if ok.sum() < 3:
            rows.append(Row(name, int(ok.sum()), math.nan, math.nan))
            continue
        rho = stats.spearmanr(v[ok], target[ok]).statistic
        tau = stats.kendalltau(v[ok], target[ok]).statistic
        ci = (math.nan, math.nan)
        if resamples:
            low, high = np.nanpercentile(bootstrap_spearman(v[ok], target[ok], resamples, seed)[0], [2.5, 97.5])
            ci = (float(low), float(high))
        rows.append(Row(name, int(ok.sum()), float(rho), float(tau), ci))
    return rows


def read_naslib(path: str | os.PathLike[str], dataset: str) -> dict[str, dict[str, float]]:
    """NASLib's per-cell values for ``dataset``: {arch: {column: value}} (``val_accuracy`` included)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"NASLib proxy table {path} not found (nb201_naslib_proxies.csv; --naslib)")
    out: dict[str, dict[str, float]] = {}
    with open(file, newline="") as f:
        reader = csv.DictReader(f)
        if not {"arch", "dataset"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: a NASLib table needs the columns 'arch' and 'dataset'; it has "
                             f"{reader.fieldnames}")
        for row in reader:
            if row["dataset"] == dataset:
                out[row["arch"]] = {k: float(v) for k, v in row.items() if k not in ("arch", "dataset")}
    if not out:
        raise ValueError(f"{path}: no rows for dataset {dataset!r}")
    return out


def naslib_agreement(ours: ProxyValues, naslib: dict[str, dict[str, float]]) -> dict[str, tuple[int, float, float]]:
    """Per shared proxy: (cells, Spearman(ours, NASLib), Spearman(NASLib, NASLib's val_accuracy))."""
    archs = [a for a in ours.archs if a in naslib]
    idx = [ours.archs.index(a) for a in archs]
    val = np.array([naslib[a]["val_accuracy"] for a in archs])
    out = {}
    for name, v in ours.values.items():
        if name not in NASLIB_PROXIES:
            continue
        mine = v[idx]
        theirs = np.array([naslib[a][name] for a in archs])
        ok = np.isfinite(mine) & np.isfinite(theirs)
        if ok.sum() < 3:
            continue
        out[name] = (int(ok.sum()), float(stats.spearmanr(mine[ok], theirs[ok]).statistic),
                     float(stats.spearmanr(theirs[ok], val[ok]).statistic))
    return out


register_scorer("ensemble")(proxy_lib.ensemble.benchmark_label_free)
register_scorer("ensemble_fit")(proxy_lib.ensemble.benchmark_few_label)
