"""The predictor registry and folder format, with the ``ensemble_fit`` kind on real NB201 networks."""

from __future__ import annotations

import json

import numpy as np
import pytest

import search_spaces
from predictors import base

CHEAP = ("flops", "params", "synflow")


@pytest.fixture(scope="module")
def nb201_cells():
    """Twelve uniformly drawn NB201 cells."""
    space = search_spaces.get("nb201")
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(12)]
    return space, archs


def test_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="ensemble_fit"):
        base.create("no_such_kind")


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ValueError, match="reference_size"):
        base.create("ensemble_fit", reference_sise=4)


def test_load_refuses_a_folder_that_is_not_a_predictor(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nas predictor fit"):
        base.load(tmp_path)
    (tmp_path / "predictor.json").write_text(json.dumps({"format": 99, "kind": "ensemble_fit", "config": {}}))
    with pytest.raises(ValueError, match="format 99"):
        base.load(tmp_path)


def test_ensemble_fit_round_trips_through_a_folder(nb201_cells, tmp_path, one_torch_thread) -> None:
    space, archs = nb201_cells
    # labels: the negated parameter count, so the fit has a signal it can find in its components
    params = base.proxy_values(space, archs, ("params",), cache=False)[:, 0]
    pred = base.create("ensemble_fit", components=CHEAP, reference_size=8, n_trials=10, seed=0)
    pred.fit(space, archs[:8], -params[:8])
    before = pred.predict(space, archs[8:])
    again = base.load(base.save(pred, tmp_path / "p"))
    assert again.kind == "ensemble_fit"
    np.testing.assert_array_equal(again.predict(space, archs[8:]), before)
    mean, std = again.predict_with_std(space, archs[8:])
    np.testing.assert_array_equal(mean, before)
    assert not std.any()


def test_predict_before_fit_says_so(nb201_cells) -> None:
    space, archs = nb201_cells
    with pytest.raises(RuntimeError, match="fit"):
        base.create("ensemble_fit", components=CHEAP).predict(space, archs[:1])
