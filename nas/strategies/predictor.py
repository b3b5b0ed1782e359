"""Predictor-guided search (BANANAS, White et al. 2021) on top of free zero-cost proxy values.

The loop evaluates every proposal with the run's objectives (zero-cost proxies: cheap, never oracle
queries) and tells them back. Oracle labels are the scarce resource: this strategy spends at most
``queries`` of them, a few per round, on the candidates an acquisition function over an ensemble of
accuracy predictors ranks first, and proposes the next round from mutations of the best labelled ones.

A round: propose ``pool`` unseen one-edit mutations of the ``parents`` best labelled architectures (the
first round: ``init`` uniform samples instead); once the loop has told all of them, fit the ensemble on
the labelled candidates, score the told but unlabelled mutations of the parents (``local``; else every
told candidate), and label the ``per_round`` best by the acquisition. The first ``init_queries`` labels,
and any before ``min_labels`` exist, go to the best candidates by the told objectives (z-scored sum). When the queries are spent ``ask`` raises :class:`~nas.strategies.Exhausted`, so the
search ends there and the run's pick is the best labelled architecture (``SearchResult.oracle``, the rule
that ``--oracle-queries`` uses).

Labels come from ``oracle`` (default: the space's ``accuracy``, which only a space with an attached oracle
has, e.g. nb201 with ``--accuracy-table``; with ``train`` each label is the validation accuracy of the
architecture trained by ``nas train``, see :class:`TrainingLabeller`); inside a study the oracle is wrapped
so that every answer is stored in the run as it comes and read back on ``--resume``, so the replay asks
nothing again. ``labels`` (``--labels FILE`` or ``--label-queries N``) are known accuracies that join the
fit without costing queries; without an oracle they are the only labels and the answer (``final``) is the
told candidate with the best predicted accuracy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.strategies import Exhausted, Values, register, require
from search_spaces import Arch, SearchSpace

log = logging.getLogger(__name__)

BOOTSTRAP_STREAM = 0xB007
"""Mixed into the seed of the ensemble's bootstrap draws (apart from the proposals' and ITS' draws)."""

ACQUISITIONS = ("ucb", "its")
"""``ucb``: mean + ``kappa`` x std; ``its``: independent Thompson sampling (a draw from each candidate's
predictive normal, BANANAS' choice)."""


@register("predictor")
class PredictorSearch:
    """BANANAS-style search: predictor ensemble, acquisition over mutations of the best, few oracle labels.

    The default predictor is a bootstrap ensemble of ``members`` Bayesian ridge regressions on the space's
    ``encode(arch)`` (when it has one) plus the candidate's told objective values: with at most a few
    dozen labels a linear model is what the data supports (BANANAS' MLPs were fitted on 100+), and the
    told proxy values make it a correction of the proxy's ranking rather than a model from scratch. Its
    spread mixes the members' disagreement with each member's posterior variance, so that a change no
    label has covered yet (an op on an edge never labelled) is uncertain and worth a query.
    ``kind=K`` fits a registered :mod:`predictors.base` kind instead (on the architectures alone) and uses
    its ``predict_with_std``.

    Defaults (UCB with ``kappa=1``, one parent, one label per round) were chosen on NAS-Bench-201 with
    tuning seeds only (``experiments/predictor_search_nb201.py``); ``init=64`` is what that experiment uses
    (the default 32 keeps a small budget from being all warm-up).

    Example:
        >>> import search_spaces
        >>> space = search_spaces.get("nb201")
        >>> known = [(space.to_string(space.sample(np.random.default_rng(i))), 90.0 + i) for i in range(3)]
        >>> s = PredictorSearch(space, seed=0, labels=known, init=4, pool=4)
        >>> archs = s.ask(4)
        >>> s.tell(archs, [(float(i),) for i in range(4)])
    """

    name = "predictor"
    asynchronous = False  # a round is labelled once all of its proposals are told
    queries_oracle = True  # a study wraps ``oracle`` so that its answers are stored in the run
    uses_labels = True  # the run's --labels / --label-queries are passed as ``labels``

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1, queries: int | None = None,
                 init: int = 32, init_queries: int = 2, per_round: int = 1, pool: int = 24, parents: int = 1,
                 acquisition: str = "ucb", kappa: float = 1.0, members: int = 8, alpha: float = 1.0,
                 min_labels: int = 3, local: bool = True, kind: str | None = None, kind_options: dict[str, Any] | None = None,
                 labels: Sequence[Sequence[Any]] | None = None, train: dict[str, Any] | None = None) -> None:
        from nas.exploit import check_oracle

        require(space, "mutate", self.name)
        if acquisition not in ACQUISITIONS:
            raise ValueError(f"predictor: acquisition {acquisition!r}; choose one of {', '.join(ACQUISITIONS)}")
        labeller = TrainingLabeller(space, train, seed) if train is not None else None
        has_oracle = labeller is not None or (callable(getattr(space, "accuracy", None))
                                              and bool(getattr(space, "has_oracle", False)))
        self.queries = int(queries if queries is not None else (20 if has_oracle else 0))
        if labeller is None:
            check_oracle(space, self.queries, "strategy predictor: --option queries")
        elif self.queries < 1:
            raise ValueError(f"predictor: --option train labels by training; queries must be >= 1, got {self.queries}")
        for key, value, low in (("init", init, 1), ("init_queries", init_queries, 0), ("per_round", per_round, 1),
                                ("pool", pool, 1), ("parents", parents, 1), ("members", members, 1),
                                ("min_labels", min_labels, 1)):
            if int(value) < low:
                raise ValueError(f"predictor: {key} must be >= {low}, got {value}")
        if not self.queries and not labels:
            log.warning("strategy predictor without labels (no oracle, no --labels): the predictor is the told "
                        "objectives themselves, and the search a local search around their best candidates")
        if kind is not None:
            from predictors.base import create

            probe = create(kind, **dict(kind_options or {}))  # an unknown kind or option fails now, naming the valid ones
            # before the kind's own minimum the told objectives choose, as before min_labels
            min_labels = max(int(min_labels), int(getattr(probe, "min_labels", 2)))
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.init, self.init_queries, self.per_round = int(init), int(init_queries), int(per_round)
        self.pool, self.parents, self.members = int(pool), int(parents), int(members)
        self.acquisition, self.kappa, self.alpha, self.min_labels = acquisition, float(kappa), float(alpha), int(min_labels)
        self.kind, self.kind_options = kind, dict(kind_options or {})
        self.oracle: Callable[[Arch], float] | None = None
        if labeller is not None:
            self.oracle = labeller
        elif self.queries:
            self.oracle = lambda a: float(space.accuracy(a))  # type: ignore[attr-defined]
        self.known: dict[str, float] = {}  # label of each labelled architecture string (given or queried)
        self.queried_: dict[str, float] = {}  # the oracle's answers, in query order
        self.told: dict[str, tuple[Arch, Values]] = {}
        self._seen: set[str] = set()
        self._queue: list[Arch] = []
        self._waiting: set[str] = set()  # proposals of the current round not yet told
        self._round = 0
        self._seed = int(seed)
        self.local = bool(local)
        self._family: dict[str, set[str]] = {}  # mutation -> the parents it was drawn from
        self._round_parents: set[str] = set()
        self._given: list[Arch] = []  # evaluated in the first round, so that their told values are known
        for text, acc in labels or []:
            arch = space.from_string(str(text))
            if space.to_string(arch) not in self.known:
                self._given.append(arch)
            self.known[space.to_string(arch)] = float(acc)

    @property
    def queries_left(self) -> int:
        """Oracle queries this strategy may still make."""
        return self.queries - len(self.queried_)

    @property
    def final(self) -> Arch | None:
        """Without an oracle: the told candidate with the best predicted accuracy (the run's pick)."""
        if self.queries or not self.told:
            return None
        archs, mean, _ = self._predict(list(self.told))
        return archs[int(np.argmax(mean))] if archs else None

    # -- ask / tell ---------------------------------------------------------------------------------
    def ask(self, n: int) -> list[Arch]:
        """The current round's proposals; a new round once the last one was told and labelled."""
        out: list[Arch] = []
        while len(out) < n:
            if not self._queue:
                if self._waiting and out:
                    break  # the round is not labelled yet: its remaining proposals wait for the loop's tell
                self._next_round()
            out.append(self._queue.pop(0))
            self._waiting.add(self.space.to_string(out[-1]))
        return out

    def tell(self, archs: Sequence[Arch], values: Sequence[Values]) -> None:
        """Record told objective values; when the round's last proposal arrives, spend its oracle labels."""
        for arch, value in zip(archs, values, strict=True):
            text = self.space.to_string(arch)
            self.told[text] = (arch, tuple(float(v) for v in value))
            self._waiting.discard(text)
        if not self._waiting and not self._queue:
            self._label_round()

    # -- rounds -------------------------------------------------------------------------------------
    def _next_round(self) -> None:
        """Fill the queue: uniform samples first, then unseen mutations of the best labelled candidates."""
        if self.queries and self.queries_left <= 0:
            raise Exhausted(f"predictor: all {self.queries} oracle queries spent")
        self._round += 1
        want = self.init if self._round == 1 else self.pool
        if self._round == 1:
            self._queue = list(self._given)
            self._seen.update(self.space.to_string(a) for a in self._given)
            want += len(self._given)
        parents = self._parents() if self._round > 1 else []
        self._round_parents = {self.space.to_string(p) for p in parents}
        for _ in range(50 * want):  # a small or exhausted neighbourhood ends the round instead of looping
            if len(self._queue) >= want:
                break
            if self._round == 1 or not parents:
                arch = self.space.sample(self.rng)
            else:
                parent = parents[int(self.rng.integers(len(parents)))]
                arch = self.space.mutate(parent, self.rng)
                self._family.setdefault(self.space.to_string(arch), set()).add(self.space.to_string(parent))
            text = self.space.to_string(arch)
            if text not in self._seen:
                self._seen.add(text)
                self._queue.append(arch)
        if not self._queue:  # every neighbour seen: widen the search with a uniform sample
            arch = self.space.sample(self.rng)
            self._seen.add(self.space.to_string(arch))
            self._queue.append(arch)

    def _parents(self) -> list[Arch]:
        """The best labelled told candidates; without an oracle, the best predicted ones."""
        if self.queries:
            ranked = sorted((t for t in self.known if t in self.told), key=self.known.__getitem__, reverse=True)
            return [self.told[t][0] for t in ranked[: self.parents]]
        archs, mean, _ = self._predict(list(self.told))
        return [archs[i] for i in np.argsort(-mean, kind="stable")[: self.parents]]

    def _label_round(self) -> None:
        """Query the oracle for the told, unlabelled candidates the acquisition ranks first."""
        if not self.queries or self.queries_left <= 0 or self.oracle is None:
            return
        want = min(self.init_queries if self._round == 1 and self.init_queries else self.per_round,
                   self.queries_left)
        pool = [t for t, (_, v) in self.told.items() if t not in self.known and all(map(math.isfinite, v))]
        if self.local and self._round > 1:  # BANANAS: the acquisition ranks mutations of the parents only
            near = [t for t in pool if self._family.get(t, set()) & self._round_parents]
            pool = near or pool
        if not pool:
            return
        archs, mean, std = self._predict(pool)
        if self.acquisition == "ucb":
            score = mean + self.kappa * std
        else:
            score = mean + std * self.rng.standard_normal(len(mean))
        for i in np.argsort(-score, kind="stable")[:want]:
            text = self.space.to_string(archs[i])
            acc = float(self.oracle(archs[i]))
            self.known[text] = acc
            self.queried_[text] = acc
        log.info("predictor: round %d, %d of %d queries spent, best %.2f", self._round, len(self.queried_),
                 self.queries, max(self.queried_.values()))

    # -- the predictor ------------------------------------------------------------------------------
    def _predict(self, texts: list[str]) -> tuple[list[Arch], np.ndarray, np.ndarray]:
        """Predicted accuracy (mean, std) of told candidates; the objectives' sum before ``min_labels``."""
        archs = [self.told[t][0] for t in texts]
        if not texts:
            return archs, np.zeros(0), np.zeros(0)
        labelled = [t for t in self.known if t in self.told]
        if len(labelled) < self.min_labels:  # too few labels to fit: the proxies' own ranking is the prior
            z = self._features(texts, encode=False).sum(axis=1)
            prior = np.where([all(map(math.isfinite, self.told[t][1])) for t in texts], z, -np.inf)
            return archs, prior, np.zeros(len(texts))
        if self.kind is not None:
            from predictors.base import create

            model = create(self.kind, **self.kind_options)
            model.fit(self.space, [self.told[t][0] for t in labelled], [self.known[t] for t in labelled])
            mean, std = model.predict_with_std(self.space, archs)
            return archs, np.asarray(mean, float), np.asarray(std, float)
        x_all = self._features(list(self.told))
        index = {t: i for i, t in enumerate(self.told)}
        x_lab = x_all[[index[t] for t in labelled]]
        y = np.array([self.known[t] for t in labelled])
        x = x_all[[index[t] for t in texts]]
        fits = [_ridge(x_lab[b], y[b], x, self.alpha) for b in self._bootstraps(len(y))]
        means = np.stack([m for m, _ in fits])
        second = np.stack([v + m**2 for m, v in fits]).mean(axis=0)  # the members as an equal mixture
        mean = means.mean(axis=0)
        return archs, mean, np.sqrt(np.maximum(second - mean**2, 0.0))

    def _bootstraps(self, n: int) -> list[np.ndarray]:
        """Row indices of each member: the first sees every label, the others resample them (the ensemble).

        Drawn from a generator of (seed, labels) alone, so that a prediction consumes nothing of the search's
        own draws: reading ``final`` or refitting on resume cannot change what is proposed next.
        """
        rng = np.random.default_rng([self._seed, n, BOOTSTRAP_STREAM])
        return [np.arange(n)] + [rng.integers(n, size=n) for _ in range(self.members - 1)]

    def _features(self, texts: list[str], encode: bool = True) -> np.ndarray:
        """Told objective values standardised over every told candidate, then the space's encoding."""
        told = np.array([[v if math.isfinite(v) else np.nan for v in value] for _, value in self.told.values()])
        mu, sd = np.nanmean(told, axis=0), np.nanstd(told, axis=0)
        vals = np.array([[v if math.isfinite(v) else np.nan for v in self.told[t][1]] for t in texts], float)
        vals = np.nan_to_num((vals - mu) / np.where(sd > 0, sd, 1.0), nan=-3.0)  # a missing value ranks low
        if not encode or not callable(getattr(self.space, "encode", None)):
            return vals
        codes = [np.asarray(self.space.encode(self.told[t][0]), float).ravel() for t in texts]  # type: ignore[attr-defined]
        return np.hstack([vals, np.stack(codes)])


def _ridge(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Bayesian ridge regression on centred data (intercept unpenalised): predictive mean and variance at ``x_new``.

    The noise scale is the labels' own variance, so a candidate whose features no label has varied (an op on
    an edge never labelled) gets about one label spread of uncertainty: the bootstrap alone gives such a
    feature zero weight in every member, and zero spread, so the acquisition would never try it.
    """
    mx, my = x.mean(axis=0), y.mean()
    xc, xn = x - mx, x_new - mx
    cov = np.linalg.inv(xc.T @ xc + alpha * np.eye(x.shape[1]))
    w = cov @ xc.T @ (y - my)
    noise = float(np.var(y)) or 1.0
    return xn @ w + my, noise * np.einsum("ij,jk,ik->i", xn, cov, xn)


TRAIN_KEYS = ("data", "epochs", "batch_size", "lr", "train_size", "val_size", "space_options", "device", "out")
"""What ``--option train={...}`` may hold: :func:`nas.train`'s settings (``data`` required) and ``out``."""


class TrainingLabeller:
    """Labels an architecture with its validation accuracy after ``nas train`` (never its test accuracy).

    Each architecture trains in its own folder under ``out`` (default ``runs/predictor-labels``), named by
    the architecture, the settings and the seed; :func:`nas.training.finished_metrics` reads a finished
    folder, resumes a started one and trains a new one, so a killed search loses at most the epoch in
    progress.

    Example (a CPU-sized label: nb201 at 8 channels, one cell per stage, 2 epochs on 2,000 images)::

        nas search --space nb201 --strategy predictor --objectives synflow,zen,nwot \
          --option 'train={"data": "../shared/data/cifar10_jpeg", "epochs": 2, "train_size": 2000,
                   "space_options": {"channels": 8, "cells_per_stage": 1}}' --option queries=10
    """

    def __init__(self, space: SearchSpace, settings: dict[str, Any], seed: int) -> None:
        if not isinstance(settings, dict):
            raise ValueError("predictor: --option train takes a JSON object, e.g. "
                             "train='{\"data\": \"DIR\", \"epochs\": 2}'")
        unknown = sorted(set(settings) - set(TRAIN_KEYS))
        if unknown:
            raise ValueError(f"predictor: --option train: unknown key(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(TRAIN_KEYS)}")
        if not settings.get("data"):
            raise ValueError("predictor: --option train needs \"data\": a folder with train/ and test/ class "
                             "folders, or an .npz")
        from nas.training import data_path

        try:
            data_path(settings["data"])  # before the first label, not after the proxies' round
        except ValueError as err:
            raise ValueError(f"predictor: --option train: {err}") from None
        if settings.get("val_size") == 0:
            raise ValueError("predictor: --option train labels with validation accuracy; val_size must be > 0")
        self.space, self.seed = space, int(seed)
        self.settings = {k: v for k, v in settings.items() if k != "out"}
        self.out = Path(str(settings.get("out", "runs/predictor-labels")))

    def __call__(self, arch: Arch) -> float:
        """The validation accuracy (%) of ``arch`` trained with the settings (read back when already trained)."""
        from nas.training import finished_metrics

        text = self.space.to_string(arch)
        # the settings are part of the name: a folder trained with other epochs or data is never read back
        key = json.dumps([text, self.settings, self.seed], sort_keys=True)
        folder = self.out / f"{hashlib.sha1(key.encode()).hexdigest()[:12]}-s{self.seed}"
        metrics = finished_metrics(folder, space=self.space.name, arch=text, seed=self.seed, **self.settings)
        return float(metrics["val_accuracy"])
