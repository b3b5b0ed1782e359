"""Predictor kinds built from what zcnas already has: the few-label proxy ensemble as a predictor.

Kind ``ensemble_fit`` is the ``ensemble_fit`` proxy (:mod:`proxies.ensemble`): the weights of a log-CDF
aggregation of zero-cost proxies, fitted by TPE to maximise Spearman on the labels. The CDFs are taken
against a label-free reference sample of the space being predicted, drawn with the predictor's seed, so
the fitted weights carry over to another space (its own reference is drawn there). With ``bags=B`` the
weights are fitted on ``B`` bootstrap resamples of the labels and averaged: the score is linear in the
weights, so this is the mean of the ``B`` bagged scores, and their spread is :meth:`predict_with_std`.

Example:
    >>> import search_spaces
    >>> from predictors import base
    >>> p = base.create("ensemble_fit", seed=0)  # doctest: +SKIP
    >>> p.fit(space, archs, accuracies).predict(space, others)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from predictors.base import ArchPredictor, check_labels, proxy_values, register
from proxies import ensemble as ens
from search_spaces import Arch, SearchSpace


def _space_key(space: SearchSpace) -> str:
    from nas.evaluate import space_key

    return space_key(space)


@register("ensemble_fit")
class EnsembleFitPredictor:
    """Few-label proxy ensemble (RoBoT-style weights over zero-cost proxies) behind the predictor protocol.

    Args:
        components: proxies the fit weighs (default: the ``ensemble_fit`` proxy's pool).
        reference_size: architectures in the label-free reference sample of each space.
        n_trials: TPE trials of the weight fit.
        bags: 1 fits the weights once on all labels; ``B > 1`` averages fits on ``B`` bootstrap resamples
            (a Spearman-maximising fit on a few labels is noisy, and bagging smooths it).
        batch_size: calibration batch size of the proxies.
        proxy_seed: seed of the reference sample, the calibration batch and the networks' initialisation
            (kept apart from ``seed`` so that refits with other seeds reuse cached proxy values).
        seed: seed of the weight fit.
    """

    kind = "ensemble_fit"
    min_labels = 5  # the weight fit's own minimum (proxies.ensemble.fit)

    def __init__(self, components: tuple[str, ...] = ens.FIT_POOL, reference_size: int = ens.REFERENCE_SIZE,
                 n_trials: int = 150, batch_size: int = 64, proxy_seed: int = 0, seed: int = 0,
                 bags: int = 1) -> None:
        if bags < 1:
            raise ValueError(f"ensemble_fit: bags must be >= 1, got {bags}")
        self.components = tuple(components)
        self.reference_size = int(reference_size)
        self.n_trials = int(n_trials)
        self.bags = int(bags)
        self.batch_size = int(batch_size)
        self.proxy_seed = int(proxy_seed)
        self.seed = int(seed)
        self.weights_: tuple[float, ...] | None = None
        self.bag_weights_: np.ndarray | None = None  # (bags, components) when bags > 1
        self._references: dict[str, ens.Reference] = {}

    def _values(self, space: SearchSpace, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
        table = proxy_values(space, archs, self.components, self.batch_size, self.proxy_seed)
        # NaN (a proxy undefined on a degenerate network) ranks last, as -inf does in the ensemble; a
        # network with every component NaN then gets the lowest score instead of NaN
        table = np.where(np.isnan(table), -np.inf, table)
        return {c: table[:, i] for i, c in enumerate(self.components)}

    def reference(self, space: SearchSpace) -> ens.Reference:
        """The label-free reference of ``space`` (drawn and scored once per space key)."""
        key = _space_key(space)
        if key not in self._references:
            from nas.proxy_benchmark import sample_archs

            # sample_archs draws what `nas benchmark proxies --seed S` scores first, so cached values serve
            archs = [space.from_string(a) for a in sample_archs(space, self.reference_size, self.proxy_seed)]
            self._references[key] = ens.Reference.from_values(self._values(space, archs))
        return self._references[key]

    def fit(self, space: SearchSpace, archs: Sequence[Arch], accuracy: Sequence[float]) -> EnsembleFitPredictor:
        """Fit the component weights on labelled architectures of ``space``."""
        values, acc, ref = self._values(space, archs), np.asarray(accuracy, dtype=float), self.reference(space)
        if self.bags == 1:
            self.weights_ = self._fit_weights(values, acc, ref, self.seed)
            self.bag_weights_ = None
            return self
        check_labels(self.kind, archs, acc, minimum=self.min_labels)
        rng = np.random.default_rng(self.seed)
        bags = []
        for b in range(self.bags):
            idx = rng.integers(len(acc), size=len(acc))
            while np.ptp(acc[idx]) == 0:  # a resample of one accuracy has no ranking to fit
                idx = rng.integers(len(acc), size=len(acc))
            bags.append(self._fit_weights({c: v[idx] for c, v in values.items()}, acc[idx], ref,
                                          self.seed * 1000 + b))
        self.bag_weights_ = np.array(bags)
        self.weights_ = tuple(float(w) for w in self.bag_weights_.mean(0))
        return self

    def _fit_weights(self, values: dict[str, np.ndarray], acc: np.ndarray, ref: ens.Reference,
                     seed: int) -> tuple[float, ...]:
        model = ens.fit(values, acc, ref, self.components, n_trials=self.n_trials, seed=seed)
        weights = dict(zip(model.components, model.weights, strict=True))
        return tuple(weights.get(c, 0.0) for c in self.components)

    def predict(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        """Ensemble score of each architecture (a ranking score, not an accuracy in %)."""
        weights = self._weights()
        return self._score(space, self._values(space, archs), weights)

    def predict_with_std(self, space: SearchSpace, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """Prediction and the standard deviation of the bags' scores (zero with one fit)."""
        weights = self._weights()
        values = self._values(space, archs)  # read once for the mean and every bag
        mean = self._score(space, values, weights)
        if self.bag_weights_ is None:
            return mean, np.zeros_like(mean)
        scores = [self._score(space, values, tuple(w)) for w in self.bag_weights_]
        return mean, np.std(scores, axis=0)

    def _weights(self) -> tuple[float, ...]:
        """The fitted weights (checked before any proxy value is read)."""
        if self.weights_ is None:
            raise RuntimeError("ensemble_fit predictor: call fit() before predict()")
        return self.weights_

    def _score(self, space: SearchSpace, values: dict[str, np.ndarray], weights: tuple[float, ...]) -> np.ndarray:
        return ens.EnsembleModel(self.components, weights, self.reference(space)).score_table(values)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Options, fitted weights and the reference samples, as JSON."""
        config = {"components": list(self.components), "reference_size": self.reference_size,
                  "n_trials": self.n_trials, "batch_size": self.batch_size, "proxy_seed": self.proxy_seed, "seed": self.seed,
                  "bags": self.bags, "weights": None if self.weights_ is None else list(self.weights_),
                  "references": {k: r.to_dict() for k, r in self._references.items()}}
        return config, {} if self.bag_weights_ is None else {"bag_weights": self.bag_weights_}

    @classmethod
    def from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ArchPredictor:
        """Rebuild from :meth:`state`."""
        out = cls(tuple(config["components"]), config["reference_size"], config["n_trials"],
                  config["batch_size"], config["proxy_seed"], config["seed"], config.get("bags", 1))
        if config["weights"] is not None:
            out.weights_ = tuple(float(w) for w in config["weights"])
        if "bag_weights" in arrays:
            out.bag_weights_ = np.asarray(arrays["bag_weights"], dtype=float)
        out._references = {k: ens.Reference.from_values(v) for k, v in config["references"].items()}
        return out
