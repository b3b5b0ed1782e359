"""The ``ensemble_parzc`` stack and the bagged ``ensemble_fit``, on real (small) NAS-Bench-201 networks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

import search_spaces
from nas.proxy_benchmark import sample_archs
from predictors import base
from search_spaces.nb201 import EDGES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHEAP = ("flops", "params", "synflow")
SMALL = {"components": CHEAP, "bags": 2, "n_trials": 10, "parzc_members": 2, "parzc_epochs": 20,
         "reference_size": 8, "batch_size": 8}
"""Options that keep a fit of the stack to a second or two on tiny networks."""


@pytest.fixture(scope="module")
def cells():
    """A tiny NB201 space and 48 of its cells (the first 8 are the stack's reference sample)."""
    space = search_spaces.get("nb201", channels=4, cells_per_stage=1)
    return space, [space.from_string(a) for a in sample_archs(space, 48, 0)]


def _skip_label(space: search_spaces.SearchSpace, archs: list, params: np.ndarray) -> np.ndarray:
    """A label the proxies only half see: small is good, and a skip on the input-output edge is much better."""
    direct = [i for i, (to, frm) in enumerate(EDGES) if (frm, to) == (0, 3)][0]
    return -np.argsort(np.argsort(params)) / len(params) + np.array([a[direct] == "skip_connect" for a in archs])


def test_stack_round_trips_and_predicts_identically(cells, tmp_path) -> None:
    space, archs = cells
    params = base.proxy_values(space, archs, ("params",))[:, 0]
    pred = base.create("ensemble_parzc", seed=0, **SMALL).fit(space, archs[:16], -params[:16])
    mean, std = pred.predict_with_std(space, archs[16:])
    assert mean.shape == std.shape == (32,) and np.isfinite(mean).all() and (std >= 0).all()
    np.testing.assert_array_equal(pred.predict(space, archs[16:]), mean)
    again = base.load(base.save(pred, tmp_path / "stack"))
    assert again.kind == "ensemble_parzc"
    again_mean, again_std = again.predict_with_std(space, archs[16:])
    np.testing.assert_array_equal(again_mean, mean)
    np.testing.assert_array_equal(again_std, std)


def test_residual_learns_what_the_proxies_miss(cells) -> None:
    space, archs = cells
    params = base.proxy_values(space, archs, ("params",))[:, 0]
    y = _skip_label(space, archs, params)
    rho = {}
    for residual in (False, True):
        pred = base.create("ensemble_parzc", seed=0, residual=residual, **SMALL).fit(space, archs[:24], y[:24])
        rho[residual] = spearmanr(pred.predict(space, archs[24:]), y[24:]).statistic
    assert rho[True] > rho[False] + 0.05, rho


def test_bagged_ensemble_fit_averages_the_bags(cells, tmp_path) -> None:
    space, archs = cells
    params = base.proxy_values(space, archs, ("params",))[:, 0]
    pred = base.create("ensemble_fit", components=CHEAP, reference_size=8, n_trials=10, bags=3, seed=0)
    pred.fit(space, archs[:16], -params[:16])
    assert pred.bag_weights_.shape == (3, len(CHEAP))
    np.testing.assert_allclose(pred.weights_, pred.bag_weights_.mean(0))
    mean, std = pred.predict_with_std(space, archs[16:])
    assert (std >= 0).all() and std.any()
    again = base.load(base.save(pred, tmp_path / "bagged"))
    np.testing.assert_array_equal(again.predict_with_std(space, archs[16:])[1], std)
    with pytest.raises(ValueError, match="bags"):
        base.create("ensemble_fit", bags=0)


def test_stack_refuses_to_predict_unfitted_and_constant_labels(cells) -> None:
    space, archs = cells
    with pytest.raises(RuntimeError, match="fit"):
        base.create("ensemble_parzc", **SMALL).predict(space, archs[:2])
    with pytest.raises(ValueError, match="all accuracies are equal"):
        base.create("ensemble_parzc", **SMALL).fit(space, archs[:8], np.ones(8))
