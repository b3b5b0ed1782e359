"""Linear latency regressors with non-negative costs, in the scikit-learn style."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def _check_xy(X: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (samples x features), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")
    if y is None:
        return X, None
    y = np.asarray(y, dtype=float).ravel()
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} values")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinite values")
    return X, y


def solve_nnls(A: np.ndarray, b: np.ndarray, alpha: float = 0.0) -> np.ndarray:
    """Non-negative least squares on column-scaled ``A`` (better conditioned), optional ridge ``alpha``."""
    scale = np.abs(A).max(axis=0)
    scale[scale == 0] = 1.0
    As = A / scale
    if alpha > 0:
        As = np.vstack([As, np.sqrt(alpha) * np.eye(A.shape[1])])
        b = np.concatenate([b, np.zeros(A.shape[1])])
    coef, _ = nnls(As, b, maxiter=50 * A.shape[1])
    return coef / scale


class NNLSRegressor:
    """Least squares with non-negative coefficients and a free intercept: every node cost is >= 0.

    Args:
        relative: minimise relative rather than absolute errors (latencies span orders of magnitude).
        alpha: ridge penalty on the (column-scaled) coefficients.

    Example:
        >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> NNLSRegressor().fit(X, [2.0, 3.0, 5.0]).predict(X).round(3).tolist()
        [2.0, 3.0, 5.0]
    """

    def __init__(self, relative: bool = False, alpha: float = 0.0) -> None:
        self.relative = relative
        self.alpha = alpha

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> NNLSRegressor:
        """Fit the non-negative costs and the intercept."""
        X, y = _check_xy(X, y)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if self.relative:
            w = w / np.maximum(np.abs(y), 1e-9)
        A = np.c_[X, np.ones(len(X)), -np.ones(len(X))] * w[:, None]
        sol = solve_nnls(A, y * w, self.alpha)
        self.coef_ = sol[:-2]
        self.intercept_ = float(sol[-2] - sol[-1])
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted latencies."""
        X, _ = _check_xy(X)
        return X @ self.coef_ + self.intercept_


class DeviceMixtureRegressor:
    """Few-shot model of a new device: a non-negative mix of reference devices' linear models.

    The mixing weights are the device's hardware embedding: from a handful of measurements they say which
    known devices (and in what proportion) the new one behaves like. The result is itself a linear model
    over graph features, so it predicts for any architecture of any space.

    Args:
        reference_coef: (devices x features) costs of the reference devices' models.
        reference_intercept: (devices,) their intercepts.
        alpha: ridge penalty on the (column-scaled) mixing weights.

    Example:
        >>> W = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> X = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
        >>> m = DeviceMixtureRegressor(W, np.zeros(2)).fit(X, X @ [2.0, 1.0])
        >>> m.weights_.round(3).tolist()
        [2.0, 1.0]
    """

    def __init__(self, reference_coef: np.ndarray, reference_intercept: np.ndarray, alpha: float = 0.0) -> None:
        self.reference_coef = reference_coef
        self.reference_intercept = reference_intercept
        self.alpha = alpha

    def fit(self, X: np.ndarray, y: np.ndarray) -> DeviceMixtureRegressor:
        """Fit the mixing weights (>= 0) and a free intercept to the measured latencies."""
        X, y = _check_xy(X, y)
        W = np.asarray(self.reference_coef, dtype=float)
        b = np.asarray(self.reference_intercept, dtype=float)
        if W.shape[1] != X.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features but the references have {W.shape[1]}")
        basis = X @ W.T + b
        A = np.c_[basis, np.ones(len(X)), -np.ones(len(X))]
        sol = solve_nnls(A, y, self.alpha)
        self.weights_ = sol[:-2]
        self.coef_ = self.weights_ @ W
        self.intercept_ = float(self.weights_ @ b + sol[-2] - sol[-1])
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted latencies."""
        X, _ = _check_xy(X)
        return X @ self.coef_ + self.intercept_
