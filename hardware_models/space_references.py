"""Same-space reference devices: what the package measured of a search space, as a predictor for any of its
architectures.

The cross-space node-cost models (:mod:`hardware_models.adapt`) price graph nodes, so they reach every
space, but where devices measured the very space a user adapts to, those measurements say more: a GPU at
batch 32 on OFA ranks OFA subnets much like another GPU at batch 32 does. Per space, one small multi-output
network maps graph features to the log latency of every device that measured the space (OFA: two GPUs at
batch 1/32/64; FBNet: 13 GPUs, server CPUs and phones; NAS-Bench-201: 27 devices). An adapted device is then
a combination of those outputs (:mod:`hardware_models.few_shot`), and a device class alone picks the
references of its class (zero-shot).

The networks ship in ``hardware_models/data/space_references.npz`` (plain arrays, no pickle), built by
``experiments/build_target_models.py``; a network applies only to the space settings it was trained on.

Example:
    >>> device_class("titan_xp_32"), device_class("samsung_s7"), device_class("raspi4")
    ('gpu_batch', 'mobile_cpu', 'mobile_cpu')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hardware_models.feature_cache import space_key
from hardware_models.residual import read_by_space, save_by_space, transform
from predictors.mlp import MLPRegressor

log = logging.getLogger(__name__)

SPACE_REFERENCES = Path(__file__).resolve().parent / "data" / "space_references.npz"

DEVICE_CLASSES = ("gpu_b1", "gpu_batch", "server_cpu", "mobile_cpu", "accelerator")
"""Classes a device can be declared as: a GPU at batch 1, a GPU at a larger batch, a server CPU, a phone or
board ARM CPU, an ASIC/FPGA accelerator."""

_SERVER = ("silver", "gold", "xeon", "epyc")
_MOBILE = ("samsung", "pixel", "essential", "raspi", "rpi", "phone")
_ACCEL = ("eyeriss", "fpga", "edgetpu", "npu")


def device_class(column: str) -> str:
    """The class of a device column of the public tables (``titanx_32`` -> ``gpu_batch``)."""
    name = column.lower()
    if name.startswith(_ACCEL):
        return "accelerator"
    if name.startswith(_SERVER):
        return "server_cpu"
    if name.startswith(_MOBILE):
        return "mobile_cpu"
    batch = name.rsplit("_", 1)[-1]
    return "gpu_b1" if not batch.isdigit() or int(batch) == 1 else "gpu_batch"


@dataclass
class SpaceReferences:
    """Log-latency network of one space: column ``j`` of :meth:`predict_log` is ``log(ms)`` on ``devices[j]``."""

    space: str  # space name
    key: str  # space_key of the settings it was trained on
    devices: list[str]
    mlp: MLPRegressor
    center: np.ndarray  # mean log ms per device, added back to the network's centred outputs

    @property
    def classes(self) -> list[str]:
        """Device class of each reference."""
        return [device_class(d) for d in self.devices]

    def predict_log(self, X: np.ndarray) -> np.ndarray:
        """``log(ms)`` of every reference device, rows x devices."""
        return self.mlp.predict(transform(X)) + self.center

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for the NPZ file, prefixed by the space name."""
        arrays = {"key": np.array(self.key), "devices": np.array(self.devices), "center": self.center,
                  **{k: v.astype(np.float32) for k, v in self.mlp.to_arrays().items()}}
        return {f"{self.space}/{k}": v for k, v in arrays.items()}


def fit_space_references(space: str, key: str, devices: Sequence[str], X: np.ndarray, latency: np.ndarray,
                         epochs: int = 200, seed: int = 0) -> SpaceReferences:
    """Train a space's reference network on graph features ``X`` and measured ``latency`` (rows x devices, ms)."""
    logs = np.log(np.maximum(np.asarray(latency, dtype=float), 1e-6))
    center = logs.mean(0)
    mlp = MLPRegressor(hidden=(64, 64), epochs=epochs, seed=seed).fit(transform(X), logs - center)
    return SpaceReferences(space, key, list(devices), mlp, center)


def save_space_references(path: str | os.PathLike[str], refs: Mapping[str, SpaceReferences]) -> None:
    """Write the reference networks of several spaces to one NPZ file (weights as float32: half the size)."""
    save_by_space(path, refs.values())


def load_space_references(path: str | os.PathLike[str]) -> dict[str, SpaceReferences]:
    """Reference networks of an NPZ file written by :func:`save_space_references` (empty if absent)."""
    groups = read_by_space(path)
    out = {}
    for space, arr in groups.items():
        mlp = MLPRegressor.from_arrays({k: v for k, v in arr.items() if k not in ("key", "devices", "center")})
        out[space] = SpaceReferences(space, str(arr["key"]), [str(d) for d in arr["devices"]], mlp,
                                     np.asarray(arr["center"], dtype=float))
    return out


@lru_cache(maxsize=1)
def shipped_space_references() -> dict[str, SpaceReferences]:
    """The shipped same-space reference networks, by space name."""
    return load_space_references(SPACE_REFERENCES)


def references_for(space: Any, refs: Mapping[str, SpaceReferences] | None = None) -> SpaceReferences | None:
    """The same-space references (the shipped ones by default) that apply to ``space`` as configured, or None."""
    ref = (shipped_space_references() if refs is None else refs).get(getattr(space, "name", ""))
    if ref is not None and ref.key != space_key(space):
        log.info("same-space references of %s were trained on other settings (%s, not %s): not used",
                 ref.space, ref.key, space_key(space))
        return None
    return ref


class SpaceModel:
    """A target's own model on the one space its measurements came from (its few-shot choice).

    ``spec`` is the JSON form stored in the target: ``{"space", "key", "kind", "intercept", ...}``, where kind
    ``mix`` is ``log ms = intercept + sum_d weights[d] * log ms_d`` over the space's reference devices and
    ``macs`` is ``ms = coef[0] * MACs + coef[1] * layers + intercept`` and ``choices`` is ``ms = intercept +
    coef @ option counts`` (:func:`hardware_models.few_shot.option_counts`), and ``average`` is the weighted
    mean in log space of ``parts`` (specs of those kinds with a ``weight``, or kind ``graph``: the target's
    cross-space model). Other spaces (or other settings of the same space) get None and fall back to the
    target's cross-space model.
    """

    def __init__(self, spec: Mapping[str, Any], refs: Mapping[str, SpaceReferences] | None = None) -> None:
        self.spec = dict(spec)
        self._refs = refs
        self._parts = [(float(p["weight"]), None if p["kind"] == "graph" else
                        SpaceModel({**p, "space": self.spec.get("space"), "key": self.spec.get("key")}, refs))
                       for p in self.spec.get("parts", [])]
        self._plan: Any = None  # the mix folded into one last layer, built on first use
        self._seen: tuple[Any, bool] | None = None  # (space, applies): space_key hashes, the search loop repeats

    def applies(self, space: Any) -> bool:
        """Whether ``space`` (as configured) is the space the target was measured on."""
        if self._seen is not None and self._seen[0] is space:
            return self._seen[1]
        ok = getattr(space, "name", "") == self.spec.get("space") and space_key(space) == self.spec.get("key")
        self._seen = (space, ok)
        return ok

    def _mix_plan(self, space: Any) -> Any:
        from hardware_models.few_shot import COUNT_COLUMNS

        if self._plan is None:
            weights = {d: float(w) for d, w in self.spec.get("weights", {}).items()}
            counts = np.array([weights.pop(c, 0.0) for c in COUNT_COLUMNS])
            bias = float(self.spec["intercept"])
            ref = references_for(space, self._refs) if weights else None
            if weights and (ref is None or not set(weights) <= set(ref.devices)):
                log.warning("target's %s references are not shipped here: cross-space model used", space.name)
                self._plan = False
            elif ref is None:
                self._plan = (None, None, bias, counts)
            else:
                w = np.array([weights.get(d, 0.0) for d in ref.devices])
                last_w, last_b = ref.mlp.layers_[-1]
                # fold the weights into the last layer: one forward pass however many references
                self._plan = (ref.mlp, last_w @ w, float(last_b @ w + ref.center @ w) + bias, counts)
        return self._plan

    def predict(self, space: Any, X: np.ndarray, archs: Sequence[Any] | None = None,
                cross_space: Callable[[], np.ndarray] | None = None) -> np.ndarray | None:
        """Latency (ms) of rows of ``space``'s features (of ``archs``, which ``choices`` reads), or None where
        this model does not apply; ``cross_space`` gives the target's own prediction for a ``graph`` part."""
        from hardware_models.few_shot import count_columns, macs_layers, option_counts

        if not self.applies(space):
            return None
        kind = self.spec.get("kind")
        if kind == "average":
            log_ms = np.zeros(len(X))
            for weight, part in self._parts:
                ms = cross_space() if part is None and cross_space is not None else (
                    None if part is None else part.predict(space, X, archs))
                if ms is None:
                    return None
                log_ms += weight * np.log(ms)
            return np.exp(log_ms)
        if kind == "choices":
            counts = None if archs is None else option_counts(space, archs)
            if counts is None:
                return None
            ms = counts @ np.asarray(self.spec["coef"], dtype=float) + float(self.spec["intercept"])
            return np.maximum(ms, 1e-3)
        if kind == "macs":
            ms = macs_layers(X) @ np.asarray(self.spec["coef"], dtype=float) + float(self.spec["intercept"])
            return np.maximum(ms, 1e-3)
        plan = self._mix_plan(space)
        if not plan:
            return None
        mlp, w, b, counts = plan
        log_ms = np.full(len(X), b) if mlp is None else mlp.hidden_output(transform(X)) @ w + b
        if counts.any():
            log_ms = log_ms + count_columns(X) @ counts
        return np.exp(log_ms)
