"""A stacked few-label predictor: the proxy ensemble and ParZC on the same labels, plus a residual on the encoding.

Kind ``ensemble_parzc``. Two predictors that see different things are fitted on the same labels:

* ``ensemble_fit`` (:mod:`predictors.simple`): a weighted log-CDF aggregation of whole-network zero-cost
  proxies, bagged over bootstrap resamples of the labels;
* ``parzc`` (:mod:`predictors.parzc`): a mixer ensemble over per-layer statistics, given the same proxies'
  whole-network values as extra inputs.

Their errors are only moderately correlated (Spearman of the two rank errors about 0.55 on NAS-Bench-201),
so averaging helps. They score on unrelated scales, so each score is first mapped to its quantile among
the scores of a label-free reference sample of the space (the same cells ``ensemble_fit`` takes its
CDFs from); the stack is the mean of the two quantiles. A cell's quantile depends on that cell alone, so
:meth:`predict` is pure.

Proxies cannot see some effects of the cell's wiring at all (on NB201, a skip on the input-output edge
helps training more than any proxy says), so a Gaussian process on ``(stack, space.encode(arch))`` models
the residual between the labels' rank quantiles and the stack; its kernel's scale, length scale and noise
are fitted by the marginal likelihood of the labels alone. With few labels its posterior mean stays near
zero and the stack alone ranks.

Measured (``experiments/predictor_labels_nb201.py --kinds ensemble_parzc,ensemble_fit``, NB201 CIFAR-10,
Spearman on 1,000 held-out cells, mean over 10 draws, 20 / 50 / 100 / 200 labels). Every setting was
chosen on draws 100-109, where the same computation from cached member outputs gave 0.932 / 0.948 /
0.959 / 0.967 against ``ensemble_fit``'s 0.922 / 0.934 / 0.942 / 0.946. On the reported draws 0-9:
0.930 / 0.953 / 0.959 / 0.966 against 0.920 / 0.941 / 0.944 / 0.946 (sd 0.005 at 50 labels, where 7 of
the 10 draws reach 0.95). A fit takes 12-22 s on one CPU thread (ParZC's ten mixers and eight TPE fits),
against 3-4 s for ``ensemble_fit``.

Example:
    >>> from predictors import base
    >>> p = base.create("ensemble_parzc", seed=0)  # doctest: +SKIP
    >>> mean, std = p.fit(space, archs, accuracies).predict_with_std(space, others)  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from predictors.base import ArchPredictor, check_labels, register
from predictors.parzc import ParZCPredictor
from predictors.simple import EnsembleFitPredictor
from proxies import ensemble as ens
from search_spaces import Arch, SearchSpace

RANK_SCALE = 3.0
"""Factor on the stacked quantile (in [0, 1]) in the residual GP's input, beside one-hot encodings whose
distance is about 1.4 per changed decision: a quantile gap of 0.5 then weighs about one changed edge."""

MEMBERS = ("ensemble", "parzc")


@register("ensemble_parzc")
class StackedPredictor:
    """``ensemble_fit`` and ``parzc`` fitted on the same labels, quantile-averaged, plus a GP residual.

    Args:
        components: proxies of the ensemble, also given to ParZC as whole-network inputs.
        bags: bootstrap fits averaged in the ensemble member (1: a single fit).
        n_trials: TPE trials of each ensemble fit.
        parzc_members: mixers in the ParZC deep ensemble.
        parzc_epochs: training epochs of each mixer.
        residual: model the labels' residual on the architecture encoding with a GP (needs ``space.encode``).
        reference_size: architectures in the label-free reference sample of each space.
        batch_size: calibration batch size of the proxies and statistics.
        proxy_seed: seed of the reference sample, the calibration batch and the networks' initialisation.
        seed: seed of the ensemble's bootstrap and TPE, and of the mixers.

    Example:
        >>> p = StackedPredictor(bags=2, parzc_members=2, parzc_epochs=50)  # doctest: +SKIP
        >>> p.fit(space, archs, acc).predict(space, others)  # doctest: +SKIP
    """

    kind = "ensemble_parzc"
    min_labels = 5  # the ensemble's bootstrap needs a few distinct accuracies per resample

    def __init__(self, components: tuple[str, ...] = ens.FIT_POOL, bags: int = 8, n_trials: int = 150,
                 parzc_members: int = 10, parzc_epochs: int = 200, residual: bool = True,
                 reference_size: int = ens.REFERENCE_SIZE, batch_size: int = 64, proxy_seed: int = 0,
                 seed: int = 0) -> None:
        self.components = tuple(components)
        self.bags = int(bags)
        self.n_trials = int(n_trials)
        self.parzc_members = int(parzc_members)
        self.parzc_epochs = int(parzc_epochs)
        self.residual = bool(residual)
        self.reference_size = int(reference_size)
        self.batch_size = int(batch_size)
        self.proxy_seed = int(proxy_seed)
        self.seed = int(seed)
        self.ensemble_: EnsembleFitPredictor | None = None
        self.parzc_: ParZCPredictor | None = None
        self.gp_theta_: np.ndarray | None = None  # log kernel hyperparameters of the residual GP
        self.gp_x_: np.ndarray | None = None
        self.gp_y_: np.ndarray | None = None
        self._references: dict[str, np.ndarray] = {}  # per space key: (members, reference_size) sorted scores

    def _members(self) -> tuple[EnsembleFitPredictor, ParZCPredictor]:
        return (EnsembleFitPredictor(components=self.components, reference_size=self.reference_size,
                                     n_trials=self.n_trials, batch_size=self.batch_size, proxy_seed=self.proxy_seed,
                                     seed=self.seed, bags=self.bags),
                ParZCPredictor(members=self.parzc_members, epochs=self.parzc_epochs, proxies=self.components,
                               batch_size=self.batch_size, proxy_seed=self.proxy_seed, seed=self.seed))

    def _reference_scores(self, space: SearchSpace) -> np.ndarray:
        """Sorted scores of each member on the label-free reference sample of ``space``."""
        from nas.evaluate import space_key

        key = space_key(space)
        if key not in self._references:
            from nas.proxy_benchmark import sample_archs

            archs = [space.from_string(a) for a in sample_archs(space, self.reference_size, self.proxy_seed)]
            self._references[key] = np.sort(self._raw(space, archs), axis=1)
        return self._references[key]

    def _raw(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        """``(members, len(archs))`` raw scores of the fitted members."""
        if self.ensemble_ is None or self.parzc_ is None:
            raise RuntimeError("ensemble_parzc predictor: call fit() (or load a fitted one) before predict()")
        return np.stack([self.ensemble_.predict(space, archs), self.parzc_.predict(space, archs)])

    def _quantiles(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        """``(members, len(archs))``: each member's score as a quantile among its reference scores."""
        ref = self._reference_scores(space)
        raw = self._raw(space, archs)
        out = np.empty_like(raw)
        for m in range(len(MEMBERS)):
            # the ensemble's CDF construction: continuous, strictly increasing, tails beyond the sample
            cdf = ens.Reference.from_values({"s": ref[m]})
            out[m] = cdf.cdf("s", np.where(np.isnan(raw[m]), -np.inf, raw[m]))
        return out

    def _gp_inputs(self, space: SearchSpace, archs: Sequence[Arch], stack: np.ndarray) -> np.ndarray:
        enc = np.array([np.asarray(space.encode(a), dtype=float).ravel() for a in archs]).reshape(len(archs), -1)
        return np.column_stack([RANK_SCALE * stack, enc])

    def fit(self, space: SearchSpace, archs: Sequence[Arch], accuracy: Sequence[float]) -> StackedPredictor:
        """Fit both members on the labels, then the residual GP on their stacked quantiles."""
        y = check_labels(self.kind, archs, accuracy, minimum=self.min_labels)
        self.ensemble_, self.parzc_ = self._members()
        self.ensemble_.fit(space, archs, y)
        self.parzc_.fit(space, archs, y)
        self._references = {}
        self.gp_theta_ = self.gp_x_ = self.gp_y_ = None
        if self.residual:
            stack = self._quantiles(space, archs).mean(0)
            # the labels' rank quantiles, on the scale of the stack (Spearman only sees ranks)
            target = (np.argsort(np.argsort(y, kind="stable"), kind="stable") + 0.5) / len(y)
            x = self._gp_inputs(space, archs, stack)
            with warnings.catch_warnings():
                # a hyperparameter at its bound (e.g. no noise left to explain) is still a valid fit
                warnings.simplefilter("ignore", ConvergenceWarning)
                gp = _gp(None, self.seed).fit(x, target - stack)
            self.gp_theta_, self.gp_x_, self.gp_y_ = gp.kernel_.theta.copy(), x, target - stack
        return self

    def predict_with_std(self, space: SearchSpace, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """Stacked quantile (plus the residual) and an uncertainty: the members' disagreement and the GP's
        posterior standard deviation, added in quadrature (a ranking score in about [0, 1], not a %)."""
        q = self._quantiles(space, archs)
        mean, std = q.mean(0), np.abs(q[0] - q[1]) / 2.0
        if self.gp_theta_ is not None and len(archs):
            gp = _gp(self.gp_theta_, self.seed).fit(self.gp_x_, self.gp_y_)
            res, res_std = gp.predict(self._gp_inputs(space, archs, mean), return_std=True)
            mean, std = mean + res, np.sqrt(std**2 + res_std**2)
        return mean, std

    def predict(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        """Ranking score of each architecture (higher is better; about [0, 1], not an accuracy in %)."""
        return self.predict_with_std(space, archs)[0]

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Options, the members' own states, the reference scores and the GP's data, JSON and arrays."""
        config: dict[str, Any] = {
            "options": {"components": list(self.components), "bags": self.bags, "n_trials": self.n_trials,
                        "parzc_members": self.parzc_members, "parzc_epochs": self.parzc_epochs,
                        "residual": self.residual, "reference_size": self.reference_size,
                        "batch_size": self.batch_size, "proxy_seed": self.proxy_seed, "seed": self.seed},
            "fitted": self.ensemble_ is not None, "references": list(self._references)}
        arrays: dict[str, np.ndarray] = {}
        if self.ensemble_ is not None and self.parzc_ is not None:
            for name, member in zip(MEMBERS, (self.ensemble_, self.parzc_), strict=True):
                member_config, member_arrays = member.state()
                config[name] = member_config
                arrays.update({f"{name}/{k}": v for k, v in member_arrays.items()})
            arrays.update({f"reference/{i}": v for i, v in enumerate(self._references.values())})
            if self.gp_theta_ is not None:
                arrays.update(gp_theta=self.gp_theta_, gp_x=self.gp_x_, gp_y=self.gp_y_)
        return config, arrays

    @classmethod
    def from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ArchPredictor:
        """Rebuild from :meth:`state` (the same predictions, bit for bit)."""
        options = dict(config["options"])
        options["components"] = tuple(options["components"])
        out = cls(**options)
        if config["fitted"]:
            def part(name: str) -> dict[str, np.ndarray]:
                return {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{name}/")}

            ensemble = EnsembleFitPredictor.from_state(config["ensemble"], part("ensemble"))
            out.ensemble_ = ensemble  # type: ignore[assignment]
            out.parzc_ = ParZCPredictor.from_state(config["parzc"], part("parzc"))
            out._references = {k: arrays[f"reference/{i}"] for i, k in enumerate(config["references"])}
            if "gp_theta" in arrays:
                out.gp_theta_, out.gp_x_, out.gp_y_ = arrays["gp_theta"], arrays["gp_x"], arrays["gp_y"]
        return out


def _gp(theta: np.ndarray | None, seed: int) -> Any:
    """The residual GP: scale * RBF + white noise; hyperparameters fitted when ``theta`` is None, else fixed."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    kernel = ConstantKernel(0.05) * RBF(2.0) + WhiteKernel(0.01)
    if theta is not None:
        return GaussianProcessRegressor(kernel.clone_with_theta(theta), optimizer=None)
    return GaussianProcessRegressor(kernel, n_restarts_optimizer=1, random_state=seed)
