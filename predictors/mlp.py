"""A small multi-output MLP regressor: fitted with torch on CPU, predicts with numpy (fast, no torch call)."""

from __future__ import annotations

import numpy as np

from predictors.linear import _check_xy


class MLPRegressor:
    """ReLU network on standardised inputs, one output per target column, trained with Adam on MSE.

    Prediction is plain numpy, so a fitted model costs a few microseconds per row and is stored as arrays
    (:meth:`to_arrays` / :meth:`from_arrays`, e.g. in an NPZ file; nothing is pickled).

    Args:
        hidden: widths of the hidden layers.
        epochs: passes over the data.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2).
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
        import torch

        X, _ = _check_xy(X)
        Y = np.asarray(Y, dtype=float)
        Y = Y[:, None] if Y.ndim == 1 else Y
        if len(Y) != len(X) or not np.all(np.isfinite(Y)):
            raise ValueError(f"Y must be finite with {len(X)} rows, got shape {Y.shape}")
        self.mean_ = X.mean(0)
        self.scale_ = X.std(0)
        # constant up to rounding: dividing by a std of 1e-17 would turn rounding noise into huge inputs
        self.scale_[self.scale_ <= 1e-9 * np.maximum(np.abs(self.mean_), 1e-12)] = 1.0
        gen = torch.Generator().manual_seed(self.seed)
        widths = [X.shape[1], *self.hidden, Y.shape[1]]
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            lin = torch.nn.Linear(a, b)
            with torch.no_grad():  # explicit seeded init: independent of torch's global RNG
                bound = 1.0 / np.sqrt(a)
                lin.weight.uniform_(-bound, bound, generator=gen)
                lin.bias.uniform_(-bound, bound, generator=gen)
            layers += [lin] + ([torch.nn.ReLU()] if i < len(widths) - 2 else [])
        net = torch.nn.Sequential(*layers)
        xt = torch.tensor((X - self.mean_) / self.scale_, dtype=torch.float32)
        yt = torch.tensor(Y, dtype=torch.float32)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), self.batch_size):
                batch = order[start:start + self.batch_size]
                opt.zero_grad()
                loss = ((net(xt[batch]) - yt[batch]) ** 2).mean()
                loss.backward()
                opt.step()
        self.layers_ = [(m.weight.detach().numpy().T.astype(float), m.bias.detach().numpy().astype(float))
                        for m in net if isinstance(m, torch.nn.Linear)]
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
