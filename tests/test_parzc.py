"""ParZC (predictors.parzc): per-layer statistics, DiffKendall, the mixer ensemble, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau, spearmanr

import search_spaces
from nas.proxy_benchmark import sample_archs
from predictors import base
from predictors.parzc import (
    STATS,
    ParZCPredictor,
    architecture_statistics,
    diff_kendall,
    encode,
    layer_statistics,
)
from proxies import calibration_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"members": 2, "epochs": 30, "dim": 8, "bins": 6, "batch_size": 16}
"""Predictor options that keep a fit well under a second."""


def _nb201(**options: object) -> search_spaces.SearchSpace:
    return search_spaces.get("nb201", channels=4, cells_per_stage=1, **options)


def _archs(space: search_spaces.SearchSpace, n: int, seed: int = 0) -> list:
    return [space.from_string(a) for a in sample_archs(space, n, seed)]


@pytest.mark.parametrize("name, options", [("nb201", {"channels": 4, "cells_per_stage": 1}),
                                           ("darts", {"channels": 4, "layers": 2})])
def test_layer_statistics_give_fixed_size_inputs(tmp_path, name, options):
    space = search_spaces.get(name, **options)
    archs = _archs(space, 3)
    stats = architecture_statistics(space, archs, batch_size=8, cache=str(tmp_path))
    assert all(s.ndim == 2 and s.shape[1] == len(STATS) and np.isfinite(s).all() for s in stats)
    assert all(s.shape[0] >= 2 for s in stats)  # a stem and a classifier at least
    # cached: the second call reads the same bits from parzc.sqlite
    again = architecture_statistics(space, archs, batch_size=8, cache=str(tmp_path))
    assert all(np.array_equal(a, b) for a, b in zip(stats, again, strict=True))
    assert (tmp_path / "parzc.sqlite").is_file()
    # the model's BatchNorm statistics and mode come back as they were (as proxies.score leaves them)
    model = search_spaces.build_seeded(space, archs[0], 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_statistics(model, calibration_batch(8, 0, space.input_shape))
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    floors = np.ones(len(STATS))
    per_bin, totals = encode(stats, 5, floors)
    assert per_bin.shape == (3, 5, len(STATS) + 1) and totals.shape == (3, len(STATS) + 1)
    assert np.isfinite(per_bin).all() and np.isfinite(totals).all()


def test_diff_kendall_tends_to_kendall_tau():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=25), rng.normal(size=25)
    tau = kendalltau(x, y)[0]
    # tanh(alpha * gap / 2) with alpha * smallest gap / 2 >= 40 is +-1 to within 1e-34: every pair counts
    # as its sign, so only float rounding (1e-15) separates the two, far below the tolerance.
    gap = min(np.min(np.abs(np.subtract.outer(v, v)[np.triu_indices(25, 1)])) for v in (x, y))
    sharp = diff_kendall(torch.tensor(x), torch.tensor(y), alpha=80.0 / gap)
    assert abs(float(sharp) - tau) < 1e-9
    soft = diff_kendall(torch.tensor(x, requires_grad=True), torch.tensor(y), alpha=1.0)
    assert abs(soft.item()) < abs(tau)  # softer pairs count less
    soft.backward()  # differentiable
    with pytest.raises(ValueError, match="same length"):
        diff_kendall(torch.zeros(3), torch.zeros(4))


def test_save_load_round_trip_predicts_identically(tmp_path):
    space = _nb201()
    archs = _archs(space, 12)
    labels = [float(s[:, 0].sum()) for s in architecture_statistics(space, archs, 16)]  # params: any ranking
    p = base.create("parzc", **SMALL).fit(space, archs[:8], labels[:8])
    mean, std = p.predict_with_std(space, archs[8:])
    assert mean.shape == std.shape == (4,) and (std > 0).all()  # two members disagree somewhat
    again = base.load(base.save(p, tmp_path / "p"))
    assert isinstance(again, ParZCPredictor)
    mean2, std2 = again.predict_with_std(space, archs[8:])
    assert np.array_equal(mean, mean2) and np.array_equal(std, std2)
    # same seed, same fit; another seed, another ensemble
    same = base.create("parzc", **SMALL).fit(space, archs[:8], labels[:8])
    assert np.array_equal(same.predict(space, archs[8:]), mean)
    other = base.create("parzc", seed=1, **SMALL).fit(space, archs[:8], labels[:8])
    assert not np.array_equal(other.predict(space, archs[8:]), mean)


def test_fit_on_real_nb201_labels_ranks_held_out_cells(shared_data):
    space = _nb201(accuracy_table=str(shared_data / "nb201_accuracy.csv"))
    archs = _archs(space, 40, seed=3)
    acc = np.array([space.accuracy(a) for a in archs])
    p = base.create("parzc", **{**SMALL, "epochs": 100}).fit(space, archs[:20], acc[:20])
    rho = spearmanr(p.predict(space, archs[20:]), acc[20:])[0]
    assert rho > 0.5  # chance is 0 (sd 0.23 on 20 cells); measured 0.88


def test_clear_errors():
    space = _nb201()
    archs = _archs(space, 4)
    with pytest.raises(ValueError, match="no option 'width'"):
        base.create("parzc", width=3)
    with pytest.raises(ValueError, match="bins must be >= 1"):
        ParZCPredictor(bins=0)
    with pytest.raises(ValueError, match="unknown|not registered|valid"):
        ParZCPredictor(proxies=("synflw",))
    p = ParZCPredictor(**SMALL)
    with pytest.raises(RuntimeError, match="call fit"):
        p.predict(space, archs)
    with pytest.raises(ValueError, match="one accuracy per architecture"):
        p.fit(space, archs, [1.0, 2.0])
    with pytest.raises(ValueError, match="all accuracies are equal"):
        p.fit(space, archs, [1.0] * 4)
    with pytest.raises(ValueError, match="at least 3"):
        p.fit(space, archs[:2], [1.0, 2.0])
    bert = search_spaces.get("bert")
    with pytest.raises(ValueError, match="image classifiers"):
        architecture_statistics(bert, [bert.sample(np.random.default_rng(0))], cache=False)
