"""Per-space residual networks: what the linear node-cost model misses on a space the references measured.

A device's linear model prices graph nodes and so predicts for any space, but node costs interact (a
runtime fuses, caches or schedules differently as a cell's wiring changes), and on NAS-Bench-201 that
limits the linear fit to a Spearman of about 0.95 on phone CPUs. Where reference devices measured a space,
a small multi-output MLP on the same graph features learns each device's residual (in units of that device's
mean latency). A target's residual is a weighted sum of those outputs: ``{device: 1}`` for a measured
device, its mixing weights for an adapted one. Spaces without a residual network keep the linear model.

The networks ship in ``hardware_models/data/residuals.npz`` (plain arrays, no pickle), built by
``experiments/build_target_models.py``. A network applies only to the space settings it was trained on
(``space_key``): a NAS-Bench-201 of other width gets the linear model alone.

Example:
    >>> from hardware_models.residual import shipped_residuals
    >>> sorted(shipped_residuals())[:1]
    ['nb201']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hardware_models.feature_cache import space_key
from predictors.mlp import MLPRegressor

log = logging.getLogger(__name__)

RESIDUALS = Path(__file__).resolve().parent / "data" / "residuals.npz"


def transform(X: np.ndarray) -> np.ndarray:
    """Network input: ``log1p`` of the graph features (sizes span orders of magnitude)."""
    return np.log1p(np.maximum(X, 0.0))


@dataclass
class SpaceResidual:
    """Residual network of one space: outputs (ms / ``unit``) for each of ``devices``."""

    space: str  # space name
    key: str  # space_key of the settings it was trained on
    devices: list[str]
    unit: np.ndarray  # ms per output unit, per device
    mlp: MLPRegressor

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Residual (ms) of every device, rows x devices."""
        return self.mlp.predict(transform(X)) * self.unit

    def combine(self, weights: Mapping[str, float]) -> tuple[np.ndarray, float] | None:
        """Last-layer weights of ``sum_d weights[d] * residual_d`` (one output), or None if none apply."""
        index = {d: i for i, d in enumerate(self.devices)}
        mix = np.zeros(len(self.devices))
        for dev, w in weights.items():
            if dev in index:
                mix[index[dev]] = w
        if not mix.any():
            return None
        w, b = self.mlp.layers_[-1]
        scaled = mix * self.unit
        return w @ scaled, float(b @ scaled)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for the NPZ file, prefixed by the space name."""
        arrays = {"key": np.array(self.key), "devices": np.array(self.devices), "unit": self.unit,
                  **self.mlp.to_arrays()}
        return {f"{self.space}/{k}": v for k, v in arrays.items()}


def fit_residual(space: str, key: str, devices: list[str], X: np.ndarray, latency: np.ndarray,
                 linear: np.ndarray, epochs: int, seed: int = 0) -> SpaceResidual:
    """Train a space's residual network: ``latency`` minus the devices' ``linear`` predictions (both rows x
    devices, ms) from the graph features ``X``, in units of each device's mean latency."""
    unit = latency.mean(0)
    mlp = MLPRegressor(epochs=epochs, seed=seed).fit(transform(X), (latency - linear) / unit)
    return SpaceResidual(space, key, list(devices), unit, mlp)


def save_by_space(path: str | os.PathLike[str], items: Iterable[Any]) -> None:
    """Write objects with ``to_arrays()`` (arrays named ``space/field``) to one NPZ file."""
    arrays: dict[str, np.ndarray] = {}
    for item in items:
        arrays.update(item.to_arrays())
    np.savez_compressed(path, **arrays)


def read_by_space(path: str | os.PathLike[str]) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of an NPZ file written by :func:`save_by_space`, grouped by space (empty if absent)."""
    if not Path(path).is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        groups: dict[str, dict[str, np.ndarray]] = {}
        for name in data.files:
            space, _, field = name.partition("/")
            groups.setdefault(space, {})[field] = data[name]
    return groups


def save_residuals(path: str | os.PathLike[str], residuals: Mapping[str, SpaceResidual]) -> None:
    """Write residual networks to one NPZ file."""
    save_by_space(path, residuals.values())


def load_residuals(path: str | os.PathLike[str]) -> dict[str, SpaceResidual]:
    """Residual networks of an NPZ file written by :func:`save_residuals` (empty if absent)."""
    groups = read_by_space(path)
    out = {}
    for space, arr in groups.items():
        mlp = MLPRegressor.from_arrays({k: v for k, v in arr.items() if k not in ("key", "devices", "unit")})
        out[space] = SpaceResidual(space, str(arr["key"]), [str(d) for d in arr["devices"]],
                                   np.asarray(arr["unit"], dtype=float), mlp)
    return out


@lru_cache(maxsize=1)
def shipped_residuals() -> dict[str, SpaceResidual]:
    """The shipped residual networks, by space name."""
    return load_residuals(RESIDUALS)


def network_for(space: Any, residuals: Mapping[str, SpaceResidual] | None = None) -> SpaceResidual | None:
    """The residual network (the shipped ones by default) that applies to ``space`` as configured, or None."""
    net = (shipped_residuals() if residuals is None else residuals).get(getattr(space, "name", ""))
    if net is not None and net.key != space_key(space):
        log.info("residual network of %s was trained on other settings (%s, not %s): linear model only",
                 net.space, net.key, space_key(space))
        return None
    return net


class ResidualHead:
    """A target's residual on every space that has a network: ``weights`` over the networks' devices.

    Per space the combined last layer is computed once, so a prediction costs one small forward pass.
    """

    def __init__(self, weights: Mapping[str, float], residuals: Mapping[str, SpaceResidual] | None = None) -> None:
        self.weights = dict(weights)
        self._residuals = residuals
        self._by_space: dict[int, tuple[Any, Any]] = {}  # id(space) -> (space, (net, w, b) or None)

    def _for(self, space: Any) -> Any:
        held = self._by_space.get(id(space))
        if held is not None and held[0] is space:
            return held[1]
        net = network_for(space, self._residuals) if self.weights else None
        plan = None
        if net is not None:
            combined = net.combine(self.weights)
            if combined is not None:  # fold the input standardisation into the first layer: fewer ops
                layers = [(w.copy(), b.copy()) for w, b in net.mlp.layers_[:-1]]
                w0, b0 = layers[0]
                layers[0] = (w0 / net.mlp.scale_[:, None], b0 - (net.mlp.mean_ / net.mlp.scale_) @ w0)
                plan = (layers, *combined)
        self._by_space[id(space)] = (space, plan)
        return plan

    def predict(self, space: Any, X: np.ndarray) -> np.ndarray | None:
        """Residual (ms) of each row of ``space``'s features, or None where no network applies."""
        plan = self._for(space)
        if plan is None:
            return None
        layers, w, b = plan
        h = transform(X)
        for lw, lb in layers:
            h = h @ lw
            h += lb
            np.maximum(h, 0.0, out=h)
        return h @ w + b


def reference_offsets(space: Any, X: np.ndarray, devices: list[str],
                      residuals: Mapping[str, SpaceResidual] | None = None) -> np.ndarray | None:
    """Residuals (ms) of ``devices`` on rows of ``space``'s features (0 for devices without one), or None
    when ``space`` has no applicable network."""
    net = network_for(space, residuals)
    if net is None:
        return None
    res = net.predict(X)
    index = {d: i for i, d in enumerate(net.devices)}
    out = np.zeros((len(X), len(devices)))
    for j, dev in enumerate(devices):
        if dev in index:
            out[:, j] = res[:, index[dev]]
    return out
