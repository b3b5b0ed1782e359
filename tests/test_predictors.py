"""Predictors follow scikit-learn: fit returns self, learned attributes end in ``_``, bad input is clear."""

from __future__ import annotations

import numpy as np
import pytest

from predictors import DeviceMixtureRegressor, NNLSRegressor


def test_nnls_recovers_non_negative_costs_and_intercept() -> None:
    rng = np.random.default_rng(0)
    X = rng.random((50, 4))
    y = X @ [1.0, 0.0, 2.5, 0.3] + 0.7
    reg = NNLSRegressor().fit(X, y)
    assert reg is not None and isinstance(reg, NNLSRegressor)
    np.testing.assert_allclose(reg.coef_, [1.0, 0.0, 2.5, 0.3], atol=1e-6)
    assert reg.intercept_ == pytest.approx(0.7, abs=1e-6)
    np.testing.assert_allclose(reg.predict(X), y, atol=1e-6)


def test_nnls_never_returns_negative_costs() -> None:
    rng = np.random.default_rng(1)
    X = rng.random((40, 3))
    reg = NNLSRegressor(relative=True).fit(X, 5.0 - 3.0 * X[:, 0] + X[:, 1])
    assert (reg.coef_ >= 0).all()


def test_fit_returns_self_and_init_only_stores_parameters() -> None:
    reg = NNLSRegressor(relative=True, alpha=0.1)
    assert vars(reg) == {"relative": True, "alpha": 0.1}
    assert reg.fit(np.eye(3), [1.0, 2.0, 3.0]) is reg
    assert {k for k in vars(reg) if k.endswith("_")} == {"coef_", "intercept_", "n_features_in_"}


@pytest.mark.parametrize("X, y, match", [
    (np.ones(3), [1.0, 2.0, 3.0], "2-D"),
    (np.ones((3, 2)), [1.0, 2.0], "3 rows but y has 2"),
    (np.array([[np.nan, 1.0]]), [1.0], "NaN"),
])
def test_bad_input_raises_clear_error(X: np.ndarray, y: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NNLSRegressor().fit(X, y)


def test_mixture_finds_the_device_a_new_one_behaves_like() -> None:
    rng = np.random.default_rng(2)
    W = rng.random((3, 5))
    X = rng.random((10, 5))
    y = 2.0 * (X @ W[1]) + 0.5
    m = DeviceMixtureRegressor(W, np.zeros(3)).fit(X, y)
    np.testing.assert_allclose(m.weights_, [0.0, 2.0, 0.0], atol=1e-6)
    assert m.intercept_ == pytest.approx(0.5, abs=1e-6)
    X_new = rng.random((20, 5))
    np.testing.assert_allclose(m.predict(X_new), 2.0 * (X_new @ W[1]) + 0.5, atol=1e-6)


def test_mixture_rejects_feature_mismatch() -> None:
    with pytest.raises(ValueError, match="features"):
        DeviceMixtureRegressor(np.ones((2, 3)), np.zeros(2)).fit(np.ones((4, 5)), np.ones(4))


def test_mixture_uses_offsets_and_relative_errors() -> None:
    rng = np.random.default_rng(3)
    W = rng.random((3, 5))
    X = rng.random((12, 5))
    offsets = rng.random((12, 3))
    y = 2.0 * (X @ W[2] + offsets[:, 2]) + 0.1
    for relative in (False, True):
        m = DeviceMixtureRegressor(W, np.zeros(3), relative=relative).fit(X, y, offsets)
        np.testing.assert_allclose(m.weights_, [0.0, 0.0, 2.0], atol=1e-6)
    with pytest.raises(ValueError, match="offsets must have shape"):
        DeviceMixtureRegressor(W, np.zeros(3)).fit(X, y, offsets[:, :2])


def test_mlp_fits_a_non_linear_function_reproducibly() -> None:
    from predictors.mlp import MLPRegressor

    rng = np.random.default_rng(4)
    X = rng.random((200, 3))
    Y = np.c_[X[:, 0] * X[:, 1], np.abs(X[:, 2] - 0.5)]
    a = MLPRegressor(hidden=(32, 32), epochs=150, seed=1).fit(X, Y)
    b = MLPRegressor(hidden=(32, 32), epochs=150, seed=1).fit(X, Y)
    np.testing.assert_allclose(a.predict(X), b.predict(X))
    assert np.mean((a.predict(X) - Y) ** 2) < 0.1 * np.var(Y, axis=0).sum()
    again = MLPRegressor.from_arrays(a.to_arrays())
    np.testing.assert_allclose(again.predict(X), a.predict(X))
    with pytest.raises(ValueError, match="Y must be finite"):
        MLPRegressor(epochs=1).fit(X, Y[:10])
