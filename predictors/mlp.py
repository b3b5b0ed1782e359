"""A small multi-output MLP regressor: trained by scikit-learn, predicts with numpy (fast, no sklearn call)."""

from __future__ import annotations

import warnings

import numpy as np

from predictors.linear import _check_xy


class MLPRegressor:
    """ReLU network on standardised inputs, one output per target column, trained with Adam on MSE.

    Training is :class:`sklearn.neural_network.MLPRegressor` with its stopping rules switched off: a fixed
    number of epochs of minibatch Adam, as a fit inside a larger experiment must not stop at a different
    epoch when the data change slightly. Inputs are standardised here, not by sklearn, so that columns that
    are constant up to rounding stay harmless. Prediction is plain numpy, so a fitted model costs a few
    microseconds per row and is stored as arrays (:meth:`to_arrays` / :meth:`from_arrays`, e.g. in an NPZ
    file; nothing is pickled).

    Args:
        hidden: widths of the hidden layers.
        epochs: passes over the data (all of them run).
        lr: Adam learning rate.
        weight_decay: L2 penalty, relative to the mean squared error over all outputs (as Adam's weight
            decay in torch); converted to sklearn's ``alpha``, which scales with the batch and output count.
        batch_size: rows per step.
        seed: seed of the initial weights and the batch order; same seed, same model.

    Example:
        >>> X = np.linspace(0, 1, 64)[:, None]
        >>> m = MLPRegressor(hidden=(16,), epochs=200, seed=0).fit(X, np.c_[X ** 2, -X])
        >>> m.predict(X).shape
        (64, 2)
    """

    def __init__(self, hidden: tuple[int, ...] = (64, 64), epochs: int = 200, lr: float = 3e-3,
                 weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, X: np.ndarray, Y: np.ndarray) -> MLPRegressor:
        """Fit the network to targets ``Y`` (rows x outputs; a 1-D ``Y`` is one output)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor as SkMLP

        X, _ = _check_xy(X)
        Y = np.asarray(Y, dtype=float)
        Y = Y[:, None] if Y.ndim == 1 else Y
        if len(Y) != len(X) or not np.all(np.isfinite(Y)):
            raise ValueError(f"Y must be finite with {len(X)} rows, got shape {Y.shape}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        self.mean_ = X.mean(0)
        self.scale_ = X.std(0)
        # constant up to rounding: dividing by a std of 1e-17 would turn rounding noise into huge inputs
        self.scale_[self.scale_ <= 1e-9 * np.maximum(np.abs(self.mean_), 1e-12)] = 1.0
        batch = min(self.batch_size, len(X))
        # sklearn's loss is half the squared error summed over outputs, its penalty alpha/2 |W|^2 per batch
        # of rows: this alpha gives the same penalty-to-error ratio as weight_decay on the plain MSE
        alpha = self.weight_decay * batch * Y.shape[1] / 2.0
        net = SkMLP(hidden_layer_sizes=tuple(self.hidden), activation="relu", solver="adam",
                    alpha=alpha, batch_size=batch, learning_rate_init=self.lr, max_iter=self.epochs,
                    shuffle=True, random_state=self.seed, early_stopping=False, tol=0.0,
                    n_iter_no_change=self.epochs)  # never stop before max_iter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reaching max_iter is the plan, not a failure
            net.fit((X - self.mean_) / self.scale_, Y[:, 0] if Y.shape[1] == 1 else Y)
        self.layers_ = [(np.asarray(w, dtype=float), np.asarray(b, dtype=float))
                        for w, b in zip(net.coefs_, net.intercepts_, strict=True)]
        self.n_features_in_ = X.shape[1]
        return self

    def hidden_output(self, X: np.ndarray) -> np.ndarray:
        """Activations of the last hidden layer (the outputs are a linear map of them)."""
        h = (np.asarray(X, dtype=float) - self.mean_) / self.scale_
        for w, b in self.layers_[:-1]:
            h = np.maximum(h @ w + b, 0.0)
        return h

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted targets, rows x outputs."""
        X, _ = _check_xy(X)
        w, b = self.layers_[-1]
        return self.hidden_output(X) @ w + b

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted model as named float arrays."""
        out = {"mean": self.mean_, "scale": self.scale_}
        for i, (w, b) in enumerate(self.layers_):
            out[f"w{i}"], out[f"b{i}"] = w, b
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> MLPRegressor:
        """Inverse of :meth:`to_arrays`."""
        model = cls()
        model.mean_ = np.asarray(arrays["mean"], dtype=float)
        model.scale_ = np.asarray(arrays["scale"], dtype=float)
        n = sum(1 for k in arrays if k.startswith("w"))
        model.layers_ = [(np.asarray(arrays[f"w{i}"], dtype=float), np.asarray(arrays[f"b{i}"], dtype=float))
                         for i in range(n)]
        model.hidden = tuple(w.shape[1] for w, _ in model.layers_[:-1])
        model.n_features_in_ = len(model.mean_)
        return model
