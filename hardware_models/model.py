"""A target's latency model: non-negative costs per graph feature, stored as JSON, applied to any space,
plus, on spaces the reference devices measured, a residual network (:mod:`hardware_models.residual`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardware_models.feature_cache import FeatureCache, default_cache
from hardware_models.graph_features import FEATURE_NAMES, FEATURE_VERSION
from hardware_models.residual import ResidualHead
from hardware_models.space_references import SpaceModel

MIN_LATENCY_MS = 1e-3
"""Predictions are clipped here: a linear model may extrapolate below zero for tiny networks."""


@dataclass
class LatencyModel:
    """``latency_ms = features @ coef + intercept`` over :data:`FEATURE_NAMES`, plus ``residual``: weights
    over the residual networks' devices, used on spaces that have a network (empty: linear only)."""

    coef: np.ndarray
    intercept: float
    fitted: str = ""  # how it was fitted, for ``nas targets``
    weights: dict[str, float] = field(default_factory=dict)  # hardware embedding over reference devices
    residual: dict[str, float] = field(default_factory=dict)
    # the few-shot choice on the space the device was measured on (see SpaceModel); other spaces use the rest
    space_model: dict[str, Any] = field(default_factory=dict)

    def predict_features(self, X: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
        """Latencies (ms) of rows of graph features, plus their ``residual`` (ms) where a network gave one."""
        linear = np.asarray(X, dtype=float) @ self.coef + self.intercept
        return np.maximum(linear if residual is None else linear + residual, MIN_LATENCY_MS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; zero costs are left out to keep files small."""
        return {
            "feature_version": FEATURE_VERSION,
            "intercept": float(self.intercept),
            "coef": {n: float(f"{c:.6g}") for n, c in zip(FEATURE_NAMES, self.coef, strict=True) if c != 0},
            "fitted": self.fitted,
            "weights": {k: float(f"{v:.6g}") for k, v in self.weights.items() if v},
            **({"residual": {k: float(f"{v:.6g}") for k, v in self.residual.items() if v}} if self.residual else {}),
            **({"space_model": self.space_model} if self.space_model else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model") -> LatencyModel:
        """Inverse of :meth:`to_dict`; a model of another feature version raises naming the fix."""
        version = data.get("feature_version")
        if version != FEATURE_VERSION:
            raise ValueError(f"{source}: latency model of graph-feature version {version}, this zcnas uses "
                             f"{FEATURE_VERSION}; re-run `nas latency adapt` with its measurements")
        unknown = set(data.get("coef", {})) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"{source}: unknown features {sorted(unknown)}")
        index = {n: i for i, n in enumerate(FEATURE_NAMES)}
        coef = np.zeros(len(FEATURE_NAMES))
        for name, value in data.get("coef", {}).items():
            coef[index[name]] = float(value)
        return cls(coef, float(data.get("intercept", 0.0)), str(data.get("fitted", "")),
                   {k: float(v) for k, v in data.get("weights", {}).items()},
                   {k: float(v) for k, v in data.get("residual", {}).items()}, dict(data.get("space_model", {})))


class GraphTarget:
    """A device whose latency model reads each architecture's graph features.

    Example:
        >>> import hardware_models, search_spaces
        >>> space = search_spaces.get("nb201")
        >>> hardware_models.get("rpi4").predict(space, [space.sample(np.random.default_rng(0))]).shape
        (1,)
    """

    def __init__(self, name: str, description: str, model: LatencyModel,
                 cache: FeatureCache | None = None, source: str = "shipped") -> None:
        self.name = name
        self.description = description
        self.model = model
        self.source = source
        self._cache = cache
        self._head = ResidualHead(model.residual) if model.residual else None
        self._space_model = SpaceModel(model.space_model) if model.space_model else None
        self.adaptation: dict[str, Any] = {}  # how a user target was chosen (see hardware_models.adapt.adapt)

    @property
    def cache(self) -> FeatureCache:
        """The feature cache in use (the process-wide one unless given)."""
        return self._cache if self._cache is not None else default_cache()

    def predict(self, space: Any, archs: Sequence[Any]) -> np.ndarray:
        """Predicted latency (ms) of each architecture of ``space``."""
        X = self.cache.features(space, archs)

        def cross_space() -> np.ndarray:
            return self.model.predict_features(X, None if self._head is None else self._head.predict(space, X))

        if self._space_model is not None:
            own = self._space_model.predict(space, X, archs, cross_space)
            if own is not None:
                return own
        return cross_space()

    def __repr__(self) -> str:
        return f"GraphTarget({self.name!r}, {self.source})"


def config_dir() -> Path:
    """``$ZCNAS_CONFIG_DIR`` or ``~/.config/zcnas``: where user-adapted targets live (``targets/NAME.json``)."""
    root = os.environ.get("ZCNAS_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "zcnas")
    return Path(root)


def save_user_target(name: str, description: str, model: LatencyModel, extra: dict[str, Any] | None = None) -> Path:
    """Write a user target to ``config_dir()/targets/NAME.json`` and return the path."""
    path = config_dir() / "targets" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "description": description, **model.to_dict(), **(extra or {})}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_user_target(path: str | os.PathLike[str]) -> GraphTarget:
    """Read a target written by :func:`save_user_target`."""
    data = json.loads(Path(path).read_text())
    model = LatencyModel.from_dict(data, str(path))
    return GraphTarget(data.get("name", Path(path).stem), data.get("description", ""), model,
                       source=f"user ({path})")
