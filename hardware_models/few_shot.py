"""Few-shot adaptation to a new device: candidate models fitted to ~10 measurements, weighed by leave-one-out.

Ten measurements are too few to fit anything free, so every candidate is a strongly constrained use of what
the package already knows (rows are measured architectures; ``R`` holds the same-space reference devices'
predicted log latencies of them, see :mod:`hardware_models.space_references`):

* ``mix``: ``log ms = c + R @ w`` with ``w >= 0`` shrunk towards a prior ``w0`` (a Gaussian prior, so the
  fit is a ridge towards ``w0``). The prior is the device's hardware embedding: a softmax over how well each
  reference's ranking agrees with the measurements (HELP's idea of describing a device by its latencies on
  known networks, turned around), or, when the user names a device class, the references of that class.
  ``strength`` 0 is plain NNLS over the references, ``inf`` the prior alone.
* ``single``: the one reference whose predictions correlate best with the measurements, scaled.
* ``macs``: ``ms = a * MACs + b * layers + c`` (a, b >= 0), which knows no device at all.
* ``choices``: ``ms = c + sum_o a_o * n_o`` (a >= 0), where ``n_o`` counts the space's decisions that took
  option ``o`` (an NAS-Bench-201 cell: how many edges hold each op): a lookup table with one cost per op,
  shared by every position. It sees what graph features cannot, such as an accelerator that pays for a
  skip connection (an identity has no node in the graph). It needs the architectures, and only spaces whose
  decisions all act on the same shapes offer it: on FBNet and OFA, where a layer's cost depends on its
  stage, it ranked held-out devices at 0.29-0.35 and leave-one-out on 10 samples still picked it on 5 of
  190 draws (``experiments/latency_same_space.py``).
* ``blend``: the average of ``mix``, ``nnls`` and ``single`` in log space (itself a mix), the default.
* ``graph``: the cross-space non-negative mix of node-cost models (:func:`hardware_models.adapt.fit_mixture`).

:func:`choose` scores every candidate by the Spearman correlation of its leave-one-out predictions on the
measurements (each point predicted by the candidate refitted on the others, its embedding included) and
averages them in log space with softmax weights of those scores, the first (the blend, or the graph mix
where a residual network applies) given a lead of :data:`LOO_MARGIN`. Nothing else is looked at.

Example:
    >>> rng = np.random.default_rng(0)
    >>> R = rng.normal(size=(10, 3))
    >>> y = np.exp(0.5 + R[:, 1])
    >>> best, scores = choose([Blend([Mix(1.0), Mix(0.0), Single()]), Single()], np.zeros((10, 1)), R, y)
    >>> best.describe(), round(scores["blend"], 3), round(scores["single"], 3)
    ('blend 94%, single 6%', 1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import nnls
from scipy.stats import spearmanr

from hardware_models.graph_features import FEATURE_NAMES

_MACS = np.array([n.endswith("_mmacs") and not n.startswith("dead_") for n in FEATURE_NAMES])
_LAYERS = np.array([n.endswith("_count") and n.split("_")[0] in ("conv", "dwconv", "gemm") for n in FEATURE_NAMES])

SIMILARITY_SHARPNESS = 10.0
"""Softmax sharpness of the embedding prior over reference correlations: a reference 0.1 less correlated
with the measurements gets e^-1 of the weight. Fixed in advance, not tuned on any held-out device."""


def macs_layers(X: np.ndarray) -> np.ndarray:
    """``(MACs in millions, number of conv/linear layers)`` of rows of graph features."""
    X = np.asarray(X, dtype=float)
    return np.c_[X[:, _MACS].sum(1), X[:, _LAYERS].sum(1)]


COUNT_COLUMNS = ("MACs", "layers")
"""Two pseudo-references appended to the same-space ones: a device may rank like counting (a batch-1 GPU
waits on one kernel launch per layer; a large batch pays for MACs)."""


def count_columns(X: np.ndarray) -> np.ndarray:
    """Log MACs and log layer count of rows of graph features: the pseudo-references of :data:`COUNT_COLUMNS`."""
    return np.log(np.maximum(macs_layers(X), 1e-3))


def option_counts(space: Any, archs: Sequence[Any]) -> np.ndarray | None:
    """Per architecture, how many of ``space``'s decisions took each option (decisions with the same option
    list share columns); None unless the space declares ``same_shape_decisions`` (and has ``decisions`` and
    ``to_choices``): only there is one cost per option a model of latency."""
    if not (getattr(space, "same_shape_decisions", False) and hasattr(space, "decisions")
            and hasattr(space, "to_choices")):
        return None
    groups: dict[tuple[str, ...], int] = {}
    offsets = []
    for _, options in space.decisions():
        key = tuple(map(str, options))
        if key not in groups:
            groups[key] = sum(len(k) for k in groups)
        offsets.append(groups[key])
    out = np.zeros((len(archs), sum(len(k) for k in groups)))
    cols = np.array(offsets)
    for i, arch in enumerate(archs):
        np.add.at(out[i], cols + np.asarray(space.to_choices(arch)), 1.0)
    return out


def _pearson(z: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Correlation of ``z`` with each column of ``R`` (0 for a constant column)."""
    zc, Rc = z - z.mean(), R - R.mean(0)
    den = np.sqrt((zc ** 2).sum() * (Rc ** 2).sum(0))
    return np.divide(zc @ Rc, den, out=np.zeros(R.shape[1]), where=den > 0)


def embedding_prior(z: np.ndarray, R: np.ndarray, sharpness: float = SIMILARITY_SHARPNESS) -> np.ndarray:
    """Prior mixing weights (sum 1) from how well each reference's log latencies track ``z``."""
    s = _pearson(z, R)
    w = np.exp(sharpness * (s - s.max()))
    return w / w.sum()


def nonneg_linear(M: np.ndarray, y: np.ndarray, maxiter: int) -> tuple[np.ndarray, float]:
    """``y ~ M @ a + c`` with ``a >= 0`` and a free constant ``c`` (columns scaled to at most 1 for NNLS)."""
    M = np.asarray(M, dtype=float)
    scale = np.abs(M).max(0)
    scale[scale == 0] = 1.0
    A = np.c_[M / scale, np.ones(len(y)), -np.ones(len(y))]
    sol, _ = nnls(A, np.asarray(y, dtype=float), maxiter=maxiter)
    return sol[:-2] / scale, float(sol[-2] - sol[-1])


class Candidate:
    """A few-shot model: ``fit(X, R, y)`` on measured rows, then ``predict_log(X, R)`` on any rows."""

    name = "candidate"
    needs_references = False
    needs_choices = False
    """A candidate that needs choices is given :func:`option_counts` rows in place of graph features."""

    def fit(self, X: np.ndarray, R: np.ndarray | None, y: np.ndarray) -> Candidate:
        """Fit to features ``X``, reference log latencies ``R`` and measured ``y`` (ms) of the same rows."""
        raise NotImplementedError

    def predict_log(self, X: np.ndarray, R: np.ndarray | None) -> np.ndarray:
        """Predicted log(ms) of rows."""
        raise NotImplementedError


@dataclass
class Mix(Candidate):
    """``log ms = c + R @ w``, ``w >= 0``, ridge of relative ``strength`` towards the prior ``w0``.

    ``prior``: None for the embedding prior, else fixed weights per reference (e.g. a device class).
    """

    strength: float = 1.0
    prior: np.ndarray | None = None
    label: str = ""
    weights_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    intercept_: float = 0.0
    needs_references = True

    @property
    def name(self) -> str:  # type: ignore[override]
        """Candidate name shown to the user."""
        if self.label:
            return self.label
        return {0.0: "nnls", np.inf: "embedding"}.get(self.strength, "mix")

    def fit(self, X: np.ndarray, R: np.ndarray | None, y: np.ndarray) -> Mix:
        """Fit the weights and intercept in log space."""
        assert R is not None
        z = np.log(y)
        w0 = embedding_prior(z, R) if self.prior is None else np.asarray(self.prior, dtype=float)
        if np.isinf(self.strength):
            w = w0.copy()
        else:
            Rc, zc = R - R.mean(0), z - z.mean()
            scale = float(np.mean((Rc ** 2).sum(0))) or 1.0  # strength is relative to the data's own size
            pen = np.sqrt(self.strength * scale)
            A = np.vstack([Rc, pen * np.eye(R.shape[1])]) if pen > 0 else Rc
            b = np.concatenate([zc, pen * w0]) if pen > 0 else zc
            w, _ = nnls(A, b, maxiter=50 * R.shape[1])
        self.weights_ = w
        self.intercept_ = float(z.mean() - R.mean(0) @ w)
        return self

    def predict_log(self, X: np.ndarray, R: np.ndarray | None) -> np.ndarray:
        """``c + R @ w``."""
        assert R is not None
        return R @ self.weights_ + self.intercept_


@dataclass
class Single(Candidate):
    """The reference best correlated with the measurements (log space), with a fitted scale and offset."""

    index_: int = 0
    slope_: float = 1.0
    intercept_: float = 0.0
    name = "single"
    needs_references = True

    @property
    def weights_(self) -> np.ndarray:
        """The chosen reference's weight, as a mixing vector."""
        return np.eye(self._k)[self.index_] * self.slope_

    def fit(self, X: np.ndarray, R: np.ndarray | None, y: np.ndarray) -> Single:
        """Pick the reference and fit ``log ms = a + b * R_j`` (b >= 0)."""
        assert R is not None
        z = np.log(y)
        self._k = R.shape[1]
        self.index_ = int(np.argmax(_pearson(z, R)))
        r = R[:, self.index_]
        var = float(((r - r.mean()) ** 2).sum())
        self.slope_ = max(float((r - r.mean()) @ (z - z.mean())) / var, 0.0) if var > 0 else 0.0
        self.intercept_ = float(z.mean() - self.slope_ * r.mean())
        return self

    def predict_log(self, X: np.ndarray, R: np.ndarray | None) -> np.ndarray:
        """``a + b * R_j``."""
        assert R is not None
        return self.intercept_ + self.slope_ * R[:, self.index_]


class Blend(Candidate):
    """The average (in log space) of several reference mixes: with 10 samples, averaging the embedding mix,
    NNLS and the best single reference ranks better than any one of them and than picking one."""

    name = "blend"
    needs_references = True

    def __init__(self, parts: Sequence[Candidate]) -> None:
        self.parts = list(parts)
        self.weights_ = np.zeros(0)
        self.intercept_ = 0.0

    def fit(self, X: np.ndarray, R: np.ndarray | None, y: np.ndarray) -> Blend:
        """Fit every part; the blend's weights and intercept are their means (each part is linear in ``R``)."""
        for part in self.parts:
            part.fit(X, R, y)
        self.weights_ = np.mean([p.weights_ for p in self.parts], axis=0)  # type: ignore[attr-defined]
        self.intercept_ = float(np.mean([p.intercept_ for p in self.parts]))  # type: ignore[attr-defined]
        return self

    def predict_log(self, X: np.ndarray, R: np.ndarray | None) -> np.ndarray:
        """``c + R @ w`` with the averaged weights."""
        assert R is not None
        return R @ self.weights_ + self.intercept_


@dataclass
class Macs(Candidate):
    """``ms = a * MACs + b * layers + c`` with ``a, b >= 0``: counting, fitted on the measurements."""

    coef_: np.ndarray = field(default_factory=lambda: np.zeros(2))
    intercept_: float = 0.0
    name = "macs"

    def fit(self, X: np.ndarray, R: np.ndarray | None, y: np.ndarray) -> Macs:
        """Non-negative least squares on the two counts plus a free constant."""
        self.coef_, self.intercept_ = nonneg_linear(macs_layers(X), y, maxiter=200)
        return self

    def predict_log(self, X: np.ndarray, R: np.ndarray | None) -> np.ndarray:
        """log of the fitted count model (clipped at 1 microsecond)."""
        return np.log(np.maximum(macs_layers(X) @ self.coef_ + self.intercept_, 1e-3))


@dataclass
class Choices(Candidate):
    """``ms = c + counts @ a`` with ``a >= 0`` over :func:`option_counts` rows: one cost per option."""

    coef_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    intercept_: float = 0.0
    name = "choices"
    needs_choices = True

    def fit(self, X: np.ndarray, R: np.ndarray | None, y: np.ndarray) -> Choices:
        """Non-negative least squares on the option counts ``X`` plus a free constant."""
        self.coef_, self.intercept_ = nonneg_linear(X, y, maxiter=50 * (np.shape(X)[1] + 2))
        return self

    def predict_log(self, X: np.ndarray, R: np.ndarray | None) -> np.ndarray:
        """log of the fitted per-option costs (clipped at 1 microsecond)."""
        return np.log(np.maximum(np.asarray(X, dtype=float) @ self.coef_ + self.intercept_, 1e-3))


@dataclass
class Graph(Candidate):
    """The cross-space node-cost mix of :func:`hardware_models.adapt.fit_mixture` (works on every space).

    ``offsets(X)`` gives the references' residual-network outputs on rows (None: linear references).
    """

    names: Sequence[str] = ()
    W: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    b: np.ndarray = field(default_factory=lambda: np.zeros(0))
    offsets: Any = None
    model_: Any = None
    name = "graph"

    def _off(self, X: np.ndarray) -> np.ndarray | None:
        return None if self.offsets is None else self.offsets(X)

    def fit(self, X: np.ndarray, R: np.ndarray | None, y: np.ndarray) -> Graph:
        """Fit the non-negative mix of reference node-cost models."""
        from hardware_models.adapt import fit_mixture

        self.model_ = fit_mixture(X, y, list(self.names), self.W, self.b, "", offsets=self._off(X))
        return self

    def predict_log(self, X: np.ndarray, R: np.ndarray | None) -> np.ndarray:
        """log of the mix's prediction, its residual networks included."""
        off = self._off(X)
        res = None if off is None else off @ np.array([self.model_.weights.get(n, 0.0) for n in self.names])
        return np.log(self.model_.predict_features(X, res))


def rows_for(candidate: Candidate, X: np.ndarray, C: np.ndarray | None) -> np.ndarray:
    """The rows ``candidate`` reads: the option counts ``C`` if it needs choices, else the features ``X``."""
    if not candidate.needs_choices:
        return X
    if C is None:
        raise ValueError(f"candidate {candidate.name!r} needs the option counts of the rows")
    return C


def loo_spearman(candidate: Candidate, X: np.ndarray, R: np.ndarray | None, y: np.ndarray,
                 C: np.ndarray | None = None) -> float:
    """Spearman of the leave-one-out predictions: each row predicted by the candidate refitted on the rest
    (a candidate that needs choices reads the option counts ``C`` instead of ``X``)."""
    import copy

    X = rows_for(candidate, X, C)
    n = len(y)
    pred = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        c = copy.deepcopy(candidate).fit(X[keep], None if R is None else R[keep], y[keep])
        pred[i] = c.predict_log(X[i:i + 1], None if R is None else R[i:i + 1])[0]
    rho = spearmanr(pred, y)[0]
    return float(rho) if np.isfinite(rho) else -1.0


LOO_MARGIN = 0.1
"""The lead the first candidate (the same-space blend, or the graph mix on NAS-Bench-201) gets over the
others' leave-one-out Spearman before the weights are taken. On 10 samples one swapped pair moves Spearman by
0.012, and a plain argmax over the candidates lost 0.005-0.013 mean Spearman to the fixed blend on the OFA and
FBNet device columns (``experiments/latency_same_space.py``, seeds 0..9); the lead keeps an exit for a device
unlike every reference (an accelerator), where the graph or counting model can be far better."""

MIN_WEIGHT = 1e-3
"""Candidates below this weight are dropped from the average (and the rest renormalised)."""


def loo_sharpness(n: int) -> float:
    """Softmax sharpness over leave-one-out Spearman on ``n`` samples: a candidate whose leave-one-out
    ranking has three more neighbouring pairs swapped (each moves Spearman by 12 / (n (n^2 - 1))) gets e^-1
    of the weight. Fixed from that count, not tuned on any device."""
    return n * (n * n - 1) / 36.0


@dataclass
class Average:
    """What :func:`choose` returns: fitted candidates with weights that sum to 1; the prediction is the
    weighted mean of their log predictions (one part: that candidate alone)."""

    parts: list[tuple[float, Candidate]]

    @property
    def name(self) -> str:
        """The single candidate's name, or ``average``."""
        return self.parts[0][1].name if len(self.parts) == 1 else "average"

    def describe(self) -> str:
        """``choices 71%, graph 29%``: the parts and their weights."""
        return ", ".join(f"{c.name} {w:.0%}" for w, c in self.parts)

    def predict_log(self, X: np.ndarray, R: np.ndarray | None, C: np.ndarray | None = None) -> np.ndarray:
        """Weighted mean of the parts' log(ms) on rows with features ``X``, references ``R`` and option
        counts ``C`` (needed only by a part that reads choices)."""
        out = np.zeros(len(X))
        for w, part in self.parts:
            out += w * part.predict_log(rows_for(part, X, C), R)
        return out


def choose(candidates: Sequence[Candidate], X: np.ndarray, R: np.ndarray | None, y: np.ndarray,
           margin: float = LOO_MARGIN, C: np.ndarray | None = None) -> tuple[Average, dict[str, float]]:
    """Weigh the usable candidates by a softmax (:func:`loo_sharpness`) of their leave-one-out Spearman, the
    first given a lead of ``margin``; every kept candidate refitted on all rows, with every candidate's score.
    Candidates that need references are skipped when ``R`` is None, those that need choices when the option
    counts ``C`` are None.

    A soft choice rather than the argmax: on NAS-Bench-201 the per-option costs rank three of HELP's six test
    devices at 0.997-1.000 while their leave-one-out leads the graph mix by less than the margin, and the
    average keeps most of that gain where picking one would not (``experiments/latency_help_protocol.py``)."""
    usable = [c for c in candidates if (R is not None or not c.needs_references)
              and (C is not None or not c.needs_choices)]
    if not usable:
        raise ValueError("no usable candidate")
    scores = {c.name: loo_spearman(c, X, R, y, C) for c in usable}
    lead = np.array([scores[c.name] + (margin if i == 0 else 0.0) for i, c in enumerate(usable)])
    weights = np.exp(loo_sharpness(len(y)) * (lead - lead.max()))
    weights /= weights.sum()
    keep = [i for i in np.argsort(-weights, kind="stable") if weights[i] >= MIN_WEIGHT]
    total = float(weights[keep].sum())
    parts = [(float(weights[i]) / total, usable[i].fit(rows_for(usable[i], X, C), R, y)) for i in keep]
    return Average(parts), scores


def default_candidates(names: Sequence[str], W: np.ndarray, b: np.ndarray, offsets: Any = None,
                       class_prior: np.ndarray | None = None) -> list[Candidate]:
    """The shipped candidate list, the default first: the blend of the reference mixes, then the graph mix,
    MACs/layers and the per-option costs (used only where option counts are given). Where the references'
    residual network applies (``offsets`` given: NAS-Bench-201), the graph mix comes first: it was then
    trained on the space's own measurements too, and its per-feature correction fits a device unlike every
    reference (on HELP's protocol, development seeds 0..9: graph 0.954 mean, blend 0.936, leave-one-out pick
    between them 0.952). A named device class replaces the blend's embedding prior by the class's
    references."""
    prior = Mix(1.0) if class_prior is None else Mix(1.0, class_prior, label="class")
    blend, graph = Blend([prior, Mix(0.0), Single()]), Graph(names, W, b, offsets)
    return [graph, blend, Macs(), Choices()] if offsets is not None else [blend, graph, Macs(), Choices()]
