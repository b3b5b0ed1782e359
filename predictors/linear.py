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
    """Few-shot model of a new device: a non-negative mix of reference devices' linear models, plus a
    small non-negative correction on individual features.

    The mixing weights are the device's hardware embedding: from a handful of measurements they say which
    known devices (and in what proportion) the new one behaves like. The ridge-penalised correction lets a
    device that resembles no reference (an accelerator) price some node types differently. The result is
    itself a linear model over graph features, so it predicts for any architecture of any space.

    Args:
        reference_coef: (devices x features) costs of the reference devices' models.
        reference_intercept: (devices,) their intercepts.
        residual_alpha: ridge penalty of the per-feature correction (None: no correction).
        residual_mask: features that may receive a correction (default: all).
        relative: weigh each measurement by 1 / its latency (relative errors), so that the smallest
            networks, where rankings are decided by small differences, count as much as the largest.

    Example:
        >>> W = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> X = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
        >>> m = DeviceMixtureRegressor(W, np.zeros(2)).fit(X, X @ [2.0, 1.0])
        >>> m.weights_.round(3).tolist()
        [2.0, 1.0]
    """

    def __init__(self, reference_coef: np.ndarray, reference_intercept: np.ndarray,
                 residual_alpha: float | None = None, residual_mask: np.ndarray | None = None,
                 relative: bool = False) -> None:
        self.reference_coef = reference_coef
        self.reference_intercept = reference_intercept
        self.residual_alpha = residual_alpha
        self.residual_mask = residual_mask
        self.relative = relative

    def fit(self, X: np.ndarray, y: np.ndarray, offsets: np.ndarray | None = None) -> DeviceMixtureRegressor:
        """Fit the mixing weights (>= 0), the optional correction (>= 0) and a free intercept.

        ``offsets`` (samples x devices) are added to the references' linear predictions, e.g. their
        non-linear residuals on these samples; :meth:`predict` is the linear part only.
        """
        X, y = _check_xy(X, y)
        W = np.asarray(self.reference_coef, dtype=float)
        b = np.asarray(self.reference_intercept, dtype=float)
        if W.shape[1] != X.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features but the references have {W.shape[1]}")
        refs = X @ W.T + b
        if offsets is not None:
            offsets = np.asarray(offsets, dtype=float)
            if offsets.shape != refs.shape:
                raise ValueError(f"offsets must have shape {refs.shape} (samples x references), got {offsets.shape}")
            refs = refs + offsets
        unit = float(np.mean(np.abs(y))) or 1.0  # work in units of the mean latency: alpha is scale-free
        blocks = [refs / unit]
        mask = np.zeros(X.shape[1], dtype=bool)
        if self.residual_alpha is not None:
            mask = np.ones(X.shape[1], dtype=bool) if self.residual_mask is None else \
                np.asarray(self.residual_mask, dtype=bool)
            fscale = np.abs(X[:, mask]).max(axis=0)
            mask[np.flatnonzero(mask)[fscale == 0]] = False  # no information about absent node types
            fscale = np.abs(X[:, mask]).max(axis=0)
            blocks.append(X[:, mask] / fscale)
        k, m = W.shape[0], int(mask.sum())
        A = np.hstack([*blocks, np.ones((len(X), 1)), -np.ones((len(X), 1))])
        scale = np.abs(A).max(axis=0)
        scale[scale == 0] = 1.0
        rows = unit / np.maximum(np.abs(y), 1e-9) if self.relative else np.ones(len(y))
        As, target = A / scale * rows[:, None], y / unit * rows
        if m:
            penalty = np.zeros((m, A.shape[1]))
            penalty[np.arange(m), k + np.arange(m)] = np.sqrt(self.residual_alpha)
            As, target = np.vstack([As, penalty]), np.concatenate([target, np.zeros(m)])
        sol, _ = nnls(As, target, maxiter=50 * A.shape[1])
        sol = sol / scale
        self.weights_ = sol[:k]
        self.coef_ = self.weights_ @ W
        if m:
            self.coef_[mask] += sol[k:k + m] / fscale * unit
        self.intercept_ = float(self.weights_ @ b + (sol[-2] - sol[-1]) * unit)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted latencies."""
        X, _ = _check_xy(X)
        return X @ self.coef_ + self.intercept_
