"""Proxy ensembles: a label-free rank aggregation (``ensemble``) and a few-label fitted one (``ensemble_fit``).

Design. Rank aggregation needs a population, but a proxy must be a stable scalar of one network. So each
component proxy is mapped through a fixed monotone transform, the empirical CDF of that component over a
*reference sample* of the same space (architectures drawn with the run's seed, never labelled), and the
ensemble is the non-linear rank aggregation of AZ-NAS against that sample:

    ensemble(net) = sum_k w_k * log F_k(value_k(net))

``F_k`` interpolates linearly between the reference's order statistics at plotting positions
``i / (N + 1)`` and has exponential tails beyond them, so it is continuous, strictly increasing and
in (0, 1): candidates beyond the reference keep distinct scores. A missing component (NaN: the engine's
value for a non-finite result or a degenerate network) gives ``log F = log 1e-12``, the floor that only a
value far below the whole reference also reaches: the network's ensemble is a finite number below every
network with its components near the reference, so it ranks last, and its other components still order
such networks among themselves. A
network with every weighted component NaN has no ensemble value at all: NaN (a benchmark passes -inf
for a scored cell without a value, which ranks last instead). A component that *raised* is a failure,
not a missing value: the ``ensemble`` proxy then raises too, naming it. The sum of log-CDFs is the log
of a product of "fraction of the space this net beats" factors, so one bad component weighs far more
than in a mean of ranks: a network must be good on every axis (the AZ-NAS argument).
When the reference is the evaluated population itself, this is exactly AZ-NAS's ``sum log(rank/N)``.

* Label-free ``ensemble``: equal weights over ``LABEL_FREE_COMPONENTS``. Nothing is fitted to
  accuracies. The aggregation is AZ-NAS's. The components were chosen by a rule written down before it
  was run (``experiments/ensemble_select.py``) on development cells only, none of them a cell the n=1000
  benchmark evaluates, rated against CIFAR-10, CIFAR-100 and ImageNet16-120 accuracy at once: among all
  subsets of 2-4 of 22 proxies (two aggregations each) that beat every single proxy's development
  Spearman by 0.01, the best final pick of random 100-cell subsets. Its second run, on 929 development
  cells (NASLib's reference cells and 500 fresh uniform ones), chose MeCo (feature-map eigenvalues),
  AZ-NAS trainability (gradient conditioning), SynFlow (data-free weight flow) and FLOPs (size):
  development Spearman 0.904 against the best single 0.877 (meco), mean of the three datasets. The first
  run, on 467 cells, had chosen meco + logsynflow + az_trainability, which did not keep its margin over
  meco on the evaluation cells. See ``experiments/ensemble_nb201.py`` for the held-out numbers.
* Few-label ``ensemble_fit`` (RoBoT-style): the weights ``w_k`` (in [0, 1]) over a pool of components are
  fitted with Optuna's seeded TPE sampler to maximise Spearman's rank correlation with at most ~50
  labelled accuracies, starting from the equal-weight trial; the rest are then scored with those weights.

The search loop and ``nas score`` go through ``nas.evaluate.Evaluator``, which draws the reference
(``REFERENCE_SIZE`` architectures) with the run's seed, ``prepare``s the models once, computes (and
caches) the components like any proxy and ``combine``s them, so a run's ensemble values never change.
``nas benchmark proxies`` adds both as rows computed from the benchmarked components
(``benchmark_label_free``: the population is the reference; ``benchmark_few_label``: fitted on
``FEW_LABELS`` oracle-labelled cells, scored on the others). Both names also work directly in
``proxies.score`` while a model is active (``with using(models): ...``).

Example:
    >>> import numpy as np
    >>> ref = Reference.from_values({"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 2.0]})
    >>> ens = EnsembleModel(("a", "b"), (1.0, 1.0), ref)
    >>> ens({"a": 3.0, "b": 2.0}) > ens({"a": 1.0, "b": 2.0})
    True
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from proxies.engine import Context, get, proxy, score

log = logging.getLogger(__name__)

LABEL_FREE_COMPONENTS = ("az_trainability", "flops", "meco", "synflow")
"""Components of the label-free ``ensemble``, all oriented so that higher is better."""

FIT_POOL = ("az_trainability", "logsynflow", "meco", "az_expressivity", "az_progressivity", "flops", "jacov",
            "nwot", "synflow")
"""Default pool the few-label fit weighs (fixed since its first benchmark): the label-free components, the
first label-free choice's logsynflow, and AZ-NAS's other terms, jacov and nwot."""

REFERENCE_SIZE = 64
"""Architectures in a search's reference sample (enough for a smooth CDF; one component pass each)."""

FEW_LABELS = 50
"""Labelled architectures the benchmark's few-label row fits on (RoBoT's budget)."""

ENSEMBLE_NAMES = ("ensemble", "ensemble_fit")
_FLOOR = 1e-12  # CDF given to a missing (NaN) component: far below any reference-derived value

_active: ContextVar[Mapping[str, EnsembleModel] | None] = ContextVar("zcnas_ensembles", default=None)


@dataclass(frozen=True)
class Reference:
    """Sorted finite values of each component over a label-free reference sample of one space."""

    values: Mapping[str, tuple[float, ...]]

    @classmethod
    def from_values(cls, table: Mapping[str, Sequence[float]]) -> Reference:
        """Build from raw component values; non-finite (missing) values are dropped."""
        out = {}
        for name, vals in table.items():
            arr = np.asarray(vals, dtype=float)
            arr = np.sort(arr[np.isfinite(arr)])
            if len(arr) < 2:
                raise ValueError(f"reference for component {name!r} has {len(arr)} usable values; need >= 2")
            out[name] = tuple(float(v) for v in arr)
        return cls(out)

    def cdf(self, name: str, x: float | np.ndarray) -> np.ndarray:
        """Continuous, strictly increasing CDF of component ``name`` at ``x``, in (0, 1); tiny at NaN/inf."""
        ref = np.asarray(self.values[name])
        n = len(ref)
        xs, first = np.unique(ref, return_index=True)
        counts = np.diff(np.append(first, n))
        pos = (first + (counts + 1) / 2.0) / (n + 1)  # tied reference values share their mean position
        x = np.asarray(x, dtype=float)
        spread = max(float(xs[-1] - xs[0]), 1e-12) / 4.0
        with np.errstate(over="ignore", invalid="ignore"):
            inside = np.interp(x, xs, pos) if len(xs) > 1 else np.full_like(x, pos[0])
            low = pos[0] * np.exp(np.clip((x - xs[0]) / spread, -700, 0))
            high = 1.0 - (1.0 - pos[-1]) * np.exp(-np.clip((x - xs[-1]) / spread, 0, 700))
        out = np.where(x < xs[0], low, np.where(x > xs[-1], high, inside))
        return np.where(np.isfinite(x), np.clip(out, _FLOOR, 1.0), _FLOOR)

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready form."""
        return {k: list(v) for k, v in self.values.items()}


@dataclass(frozen=True)
class EnsembleModel:
    """A weighted log-CDF aggregation of ``components`` against ``reference``."""

    components: tuple[str, ...]
    weights: tuple[float, ...]
    reference: Reference

    def __post_init__(self) -> None:
        if len(self.components) != len(self.weights):
            raise ValueError(f"{len(self.components)} components but {len(self.weights)} weights")
        missing = [c for c in self.components if c not in self.reference.values]
        if missing:
            raise ValueError(f"the reference has no values for components {missing}")

    def __call__(self, values: Mapping[str, float]) -> float:
        """The ensemble score of one network from its component values (NaN when all are missing)."""
        return float(self.score_table({k: [values.get(k, math.nan)] for k in self.components})[0])

    def score_table(self, table: Mapping[str, Sequence[float]]) -> np.ndarray:
        """Ensemble scores of many networks from columns of component values (e.g. a proxy cache).

        A NaN (missing) or -inf (ranked last) component gives its network a finite score that ranks it
        last (see the module docstring); NaN where every weighted component is NaN (nothing is known).
        """
        total = None
        present = None
        # Components the fit weighed 0 say nothing about a network; without any weight, all of them count.
        counted = {c for c, w in zip(self.components, self.weights, strict=True) if w} or set(self.components)
        for name, w in zip(self.components, self.weights, strict=True):
            col = np.asarray(table[name], dtype=float)
            term = w * np.log(self.reference.cdf(name, col))
            total = term if total is None else total + term
            if name in counted:
                here = ~np.isnan(col)
                present = here if present is None else present | here
        return np.where(present, np.asarray(total, dtype=float), np.nan)

    def to_dict(self) -> dict:
        """JSON-ready form (components, weights, reference values)."""
        return {"components": list(self.components), "weights": list(self.weights),
                "reference": self.reference.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping) -> EnsembleModel:
        """Inverse of ``to_dict``."""
        return cls(tuple(data["components"]), tuple(float(w) for w in data["weights"]),
                   Reference.from_values(data["reference"]))


def label_free(reference: Reference, components: Sequence[str] = LABEL_FREE_COMPONENTS) -> EnsembleModel:
    """The label-free ensemble: equal weights over ``components``."""
    return EnsembleModel(tuple(components), tuple(1.0 for _ in components), reference)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    from scipy.stats import spearmanr

    rho = spearmanr(a, b).statistic
    return float(rho) if np.isfinite(rho) else math.nan


def fit(table: Mapping[str, Sequence[float]], accuracy: Sequence[float], reference: Reference,
        components: Sequence[str] = FIT_POOL, n_trials: int = 150, seed: int = 0) -> EnsembleModel:
    """Few-label ensemble: weights fitted by seeded Optuna TPE to maximise Spearman on the labelled nets.

    ``table`` holds each component's values for the labelled networks, aligned with ``accuracy``.
    The first trial is the equal-weight (label-free) combination, so the fit never ranks the labels worse.
    """
    import optuna

    acc = np.asarray(accuracy, dtype=float)
    if len(acc) < 5:
        raise ValueError(f"fitting an ensemble needs at least 5 labelled architectures, got {len(acc)}")
    comps = [c for c in components if c in table and c in reference.values]
    if not comps:
        raise ValueError(f"none of the components {list(components)} has values in the table and reference")
    logcdf = {c: np.log(reference.cdf(c, np.asarray(table[c], dtype=float))) for c in comps}

    def objective(trial: optuna.Trial) -> float:
        w = [trial.suggest_float(c, 0.0, 1.0) for c in comps]
        s = sum(wi * logcdf[c] for wi, c in zip(w, comps, strict=True))
        rho = spearman(s, acc) if any(w) else math.nan
        return rho if math.isfinite(rho) else -1.0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({c: 1.0 for c in comps})
    study.optimize(objective, n_trials=n_trials)
    best = study.best_params
    return EnsembleModel(tuple(comps), tuple(best[c] for c in comps), reference)


def read_labels(path: str | os.PathLike[str], space: Any = None) -> list[tuple[str, float]]:
    """``(arch, accuracy)`` rows of an ``arch,accuracy`` CSV (header required, other columns ignored).

    A missing file, a missing header, an accuracy that is not a finite number or (with ``space``) an
    architecture the space cannot parse raises ``ValueError`` naming the file and line.
    """
    if not os.path.isfile(path):
        raise ValueError(f"labels file {path}: no such file")
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        fields = [h.strip() for h in header or []]
        if not {"arch", "accuracy"} <= set(fields):
            raise ValueError(f"{path}: the labels file needs a header 'arch,accuracy', got {header}")
        reader.fieldnames = fields
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            arch, text = (row.get("arch") or "").strip(), row.get("accuracy")
            if not arch and not (text or "").strip():
                continue  # a blank line
            try:
                value = float(text)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ValueError(f"{where}: accuracy {text!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{where}: accuracy {text!r} is not a finite number")
            if space is not None:
                try:
                    space.from_string(arch)
                except ValueError as err:  # ArchError: the space names the bad part
                    raise ValueError(f"{where}: {err}") from None
            rows.append((arch, value))
    if not rows:
        raise ValueError(f"{path}: no labelled architectures")
    return rows


ComponentValues = Callable[[Sequence[str], Sequence[str]], Mapping[str, Sequence[float]]]
"""``fn(arch_strings, components) -> {component: values}``: how a caller computes (and caches) components."""


def needs_ensemble(names: Sequence[str]) -> bool:
    """Whether any of ``names`` is an ensemble proxy (and so needs ``prepare``)."""
    return any(n in ENSEMBLE_NAMES for n in names)


def prepare(names: Sequence[str], reference_archs: Sequence[str], component_values: ComponentValues,
            labels: str | os.PathLike[str] | Sequence[tuple[str, float]] | None = None,
            seed: int = 0, components: Sequence[str] | None = None) -> dict[str, EnsembleModel]:
    """The ensemble models that ``names`` ask for.

    ``reference_archs`` is the label-free reference sample (the caller draws it from its space with the
    run's seed); ``component_values`` computes components for architecture strings, so a caller with a
    proxy cache computes each value once. ``labels`` (pairs or an ``arch,accuracy`` CSV) feed
    ``ensemble_fit``. ``components`` replaces ``LABEL_FREE_COMPONENTS`` (and the fit pool) for spaces whose
    networks the image-classifier components do not apply to (a space's ``ensemble_components``).
    """
    out: dict[str, EnsembleModel] = {}
    if not needs_ensemble(names):
        return out
    fitting = "ensemble_fit" in names
    if fitting and labels is None:
        raise ValueError("the proxy 'ensemble_fit' needs labelled architectures: pass --labels FILE "
                         "(a CSV with columns arch,accuracy; at most ~50 rows are needed)")
    rows = read_labels(labels) if isinstance(labels, (str, os.PathLike)) else list(labels or [])
    free = tuple(components) if components else LABEL_FREE_COMPONENTS
    fit_pool = free if components else FIT_POOL  # a space's own components are its whole fit pool
    pool = list(fit_pool if fitting else free)
    log.info("ensemble reference: %d architectures x %d proxies", len(reference_archs), len(pool))
    ref = Reference.from_values(component_values(list(reference_archs), pool))
    if "ensemble" in names:
        out["ensemble"] = label_free(ref, free)
    if fitting:
        table = component_values([a for a, _ in rows], pool)
        out["ensemble_fit"] = fit(table, [y for _, y in rows], ref, pool, seed=seed)
        log.info("fitted ensemble weights: %s", dict(zip(out["ensemble_fit"].components,
                                                        out["ensemble_fit"].weights, strict=True)))
    return out


def expand(names: Sequence[str], models: Mapping[str, EnsembleModel]) -> list[str]:
    """``names`` with every prepared ensemble replaced by its components (order kept, no duplicates)."""
    out: list[str] = []
    for name in names:
        out += list(models[name].components) if name in models else [name]
    return list(dict.fromkeys(out))


def combine(models: Mapping[str, EnsembleModel], values: Mapping[str, float]) -> dict[str, float]:
    """Each prepared ensemble's score from already computed component ``values``."""
    return {name: model(values) for name, model in models.items()}


def _computed(values: Mapping[str, np.ndarray], components: Sequence[str]) -> np.ndarray:
    """Cells where every component was computed (NaN marks a value the benchmark did not compute)."""
    return np.all([~np.isnan(np.asarray(values[c], dtype=float)) for c in components], axis=0)


def benchmark_label_free(values: Mapping[str, np.ndarray],
                         components: Sequence[str] = LABEL_FREE_COMPONENTS) -> np.ndarray:
    """Label-free ensemble of benchmarked cells against their own population (AZ-NAS's protocol);
    NaN where a component was not computed."""
    n = len(next(iter(values.values()), []))
    if any(c not in values for c in components):
        return np.full(n, np.nan)
    done = _computed(values, components)
    if done.sum() < 2:
        return np.full(n, np.nan)
    ref = Reference.from_values({c: np.asarray(values[c])[done] for c in components})
    return np.where(done, label_free(ref, components).score_table(values), np.nan)


def benchmark_few_label(values: Mapping[str, np.ndarray], target: np.ndarray | None = None,
                        n_labels: int = FEW_LABELS, seed: int = 0) -> np.ndarray:
    """Few-label ensemble fitted on ``n_labels`` random cells (oracle queries); NaN at those cells so
    that the benchmark scores only the others (and everywhere without a target or a component)."""
    n = len(next(iter(values.values()), []))
    if target is None or any(c not in values for c in FIT_POOL):
        return np.full(n, np.nan)
    target = np.asarray(target, dtype=float)
    done = _computed(values, FIT_POOL) & np.isfinite(target)
    if done.sum() <= n_labels:
        return np.full(n, np.nan)
    labelled = np.random.default_rng(seed).permutation(np.flatnonzero(done))[:n_labels]
    ref = Reference.from_values({c: np.asarray(values[c])[done] for c in FIT_POOL})
    model = fit({c: np.asarray(values[c])[labelled] for c in FIT_POOL}, target[labelled], ref, seed=seed)
    out = np.where(done, model.score_table(values), np.nan)
    out[labelled] = np.nan
    return out


@contextlib.contextmanager
def using(models: Mapping[str, EnsembleModel] | EnsembleModel | None) -> Iterator[None]:
    """Make ensemble models active for ``proxies.score`` inside the block (a bare model is ``ensemble``)."""
    if isinstance(models, EnsembleModel):
        models = {"ensemble": models}
    merged = {**(_active.get() or {}), **(models or {})}
    token = _active.set(merged)
    try:
        yield
    finally:
        _active.reset(token)


def _component_values(ctx: Context, components: Sequence[str]) -> dict[str, float]:
    """Components read from the caller's shared context where it holds their artefacts, else computed;
    NaN for a missing one. Raises ``RuntimeError`` naming the components that failed."""
    vals: dict[str, float] = {}
    errors: dict[str, str] = {}
    rest = []
    for name in components:
        spec = get(name)
        if spec.legacy or not spec.needs <= ctx.needs:
            rest.append(name)
            continue
        try:
            value = float(spec.fn(ctx))
        except Exception as err:  # noqa: BLE001 - re-raised below, naming the component
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        vals[name] = value if math.isfinite(value) else math.nan
    if rest:
        vals.update(score(ctx.model, ctx.batch, rest, seed=ctx.seed, device=ctx.device, errors=errors))
    if errors:  # a failed component is a failed network, never a low but finite ensemble score
        failed = "; ".join(f"{k} ({v})" for k, v in errors.items())
        raise RuntimeError(f"ensemble component(s) failed: {failed}")
    return vals


def _score_with(name: str, ctx: Context) -> float:
    active = _active.get() or {}
    if name not in active:
        raise ValueError(f"the proxy {name!r} needs a reference sample of its space: run it through "
                         "`nas score`/`nas search`, or in Python wrap proxies.score in "
                         "`with proxies.ensemble.using(proxies.ensemble.prepare(...))`")
    ens = active[name]
    return ens(_component_values(ctx, ens.components))


def _needs(components: Sequence[str]) -> frozenset[str]:
    """Artefacts of the registered ``components`` (so one engine call shares them with the ensemble)."""
    out: frozenset[str] = frozenset()
    for name in components:
        try:
            out |= get(name).needs
        except ValueError:  # not registered yet: it will be computed by a nested engine call
            pass
    return out


@proxy("ensemble", "label-free ensemble: AZ-NAS log-rank aggregation of meco, logsynflow and "
       "az_trainability against a reference sample of the space", needs=_needs(LABEL_FREE_COMPONENTS))
def ensemble(ctx: Context) -> float:
    """Label-free ensemble score (see the module docstring); needs an active reference."""
    return _score_with("ensemble", ctx)


@proxy("ensemble_fit", "few-label ensemble: proxy weights fitted by Optuna TPE to <= 50 labelled "
       "accuracies (--labels)", needs=_needs(FIT_POOL))
def ensemble_fit(ctx: Context) -> float:
    """Few-label ensemble score (see the module docstring); needs fitted weights."""
    return _score_with("ensemble_fit", ctx)
