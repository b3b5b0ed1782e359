"""Meta-learned few-shot adaptation: a new device from ~10 measured architectures.

Meta-training (``experiments/build_target_models.py``) fits one non-negative cost model per reference device
on every space measured on it, plus, per space the references measured, a residual network
(:mod:`hardware_models.residual`). A new device is then a non-negative mix of those models plus an offset and
a small non-negative per-feature correction, fitted to its measurements
(:class:`predictors.DeviceMixtureRegressor`); the mixing weights are its hardware embedding and also mix the
references' residual networks. Because each reference model prices graph nodes, the adapted model prices any
architecture of any space.

Example:
    >>> import hardware_models.adapt as adapt
    >>> adapt.MIN_MEASUREMENTS
    10
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardware_models.feature_cache import FeatureCache, default_cache, space_key
from hardware_models.graph_features import FEATURE_NAMES
from hardware_models.model import GraphTarget, LatencyModel, save_user_target
from hardware_models.residual import SpaceResidual, network_for, reference_offsets
from predictors import DeviceMixtureRegressor

MIN_MEASUREMENTS = 10
"""Fewer measurements than this are refused: the mix has a dozen weights to fit."""


def references() -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(names, coef matrix, intercepts)`` of the shipped reference devices."""
    import hardware_models

    refs = hardware_models.shipped()["references"]
    names = list(refs["names"])
    if not names:
        raise RuntimeError("no shipped reference models; build them with "
                           "`python experiments/build_target_models.py`")
    models = [LatencyModel.from_dict(refs["models"][n], f"reference {n}") for n in names]
    return names, np.stack([m.coef for m in models]), np.array([m.intercept for m in models])


RESIDUAL_ALPHA: float | None = 1.0
"""Ridge penalty of the per-feature correction on top of the mix."""
RELATIVE = False
"""Fit the mix to relative (True) or absolute errors of the measurements."""
# Both chosen by leave-one-device-out over HELP's 13 meta-train + meta-validation devices (never the
# meta-test ones), see ``experiments/latency_help_protocol.py``.


def fit_mixture(X: np.ndarray, y: np.ndarray, names: Sequence[str], W: np.ndarray, b: np.ndarray,
                fitted: str, residual_alpha: float | None = RESIDUAL_ALPHA, offsets: np.ndarray | None = None,
                relative: bool = RELATIVE) -> LatencyModel:
    """The adapted model of a device from its measured features ``X`` and latencies ``y``.

    ``offsets`` are the references' residual-network predictions on ``X`` (None: linear references); the
    adapted model carries the same mixing weights for the residuals, on every space that has a network.
    """
    live = np.array([not n.startswith("dead_") for n in FEATURE_NAMES])
    reg = DeviceMixtureRegressor(W, b, residual_alpha, live, relative).fit(X, y, offsets)
    weights = {n: float(w) for n, w in zip(names, reg.weights_, strict=True) if w > 0}
    return LatencyModel(reg.coef_, reg.intercept_, fitted, weights, residual=dict(weights))


def fit_spaces(blocks: Sequence[tuple[Any, np.ndarray, np.ndarray]], names: Sequence[str], W: np.ndarray,
               b: np.ndarray, fitted: str, relative: bool = True,
               residuals: Mapping[str, SpaceResidual] | None = None) -> LatencyModel:
    """A device from measurements in several spaces: ``blocks`` of ``(space, features, latencies)``; the
    references' residual networks are used where a space has one. Relative errors by default, so that a
    space of fast networks weighs as much as one of slow networks. ``residuals``: the shipped ones by
    default."""
    offsets = []
    for space, X, _ in blocks:
        off = reference_offsets(space, X, list(names), residuals)
        offsets.append(np.zeros((len(X), len(names))) if off is None else off)
    return fit_mixture(np.vstack([X for _, X, _ in blocks]), np.concatenate([y for _, _, y in blocks]), names,
                       W, b, fitted, offsets=np.vstack(offsets), relative=relative)


def read_measurements(path: str | os.PathLike[str]) -> list[tuple[str, float]]:
    """Rows ``(arch, latency_ms)`` of a measurements CSV (extra columns such as ``threads`` are ignored)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"measurements file {path} does not exist")
    with open(file, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "arch" not in cols or "latency_ms" not in cols:
            raise ValueError(f"{path}: needs columns 'arch' and 'latency_ms', found {cols}")
        rows = []
        for lineno, row in enumerate(reader, 2):
            try:
                rows.append((row["arch"], float(row["latency_ms"])))
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {lineno}: latency_ms {row.get('latency_ms')!r} is not a "
                                 "number") from None
    return rows


def validate(space: Any, rows: Sequence[tuple[str, float]], source: str = "measurements") -> tuple[list, np.ndarray]:
    """Parsed architectures and latencies; every problem found is reported at once, naming the rows."""
    from search_spaces import ArchError

    problems, archs = [], []
    if len(rows) < MIN_MEASUREMENTS:
        problems.append(f"{len(rows)} measurement(s); at least {MIN_MEASUREMENTS} are needed to adapt "
                        f"(measure more with `nas latency measure` or the kit)")
    for i, (text, ms) in enumerate(rows, 1):
        try:
            archs.append(space.from_string(text))
        except ArchError as err:
            problems.append(f"row {i}: arch {text[:60]!r} is not a {space.name} architecture: {err}")
        if not math.isfinite(ms) or ms <= 0:
            problems.append(f"row {i}: latency_ms must be a positive number of milliseconds, got {ms}")
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ValueError(f"{source}: cannot adapt, nothing registered:\n  " + "\n  ".join(shown))
    return archs, np.array([ms for _, ms in rows], dtype=float)


def adapt(space: Any, rows: Sequence[tuple[str, float]], name: str, *, save: bool = True,
          cache: FeatureCache | None = None, source: str = "measurements",
          device_class: str | None = None) -> GraphTarget:
    """Adapt a new target ``name`` from measured ``(arch string, ms)`` rows of ``space``; saved for reuse.

    On the measured space the target averages the candidates of :mod:`hardware_models.few_shot` with weights
    from their leave-one-out Spearman on the measurements (same-space reference devices first where the
    package has them); every other space uses the cross-space node-cost mix. ``device_class`` (one of
    :data:`~hardware_models.space_references.DEVICE_CLASSES`) adds the references of that class as a prior.
    The weights, the leave-one-out scores and the references it leans on are in ``target.adaptation``.
    """
    from hardware_models.few_shot import (
        COUNT_COLUMNS,
        Graph,
        choose,
        count_columns,
        default_candidates,
        option_counts,
    )
    from hardware_models.space_references import DEVICE_CLASSES, references_for

    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"target name {name!r} must be letters, digits, '-' or '_'")
    if device_class is not None and device_class not in DEVICE_CLASSES:
        raise ValueError(f"device class {device_class!r} is not one of {', '.join(DEVICE_CLASSES)}")
    import hardware_models

    if name in hardware_models.shipped()["targets"] and name != "local":
        raise ValueError(f"target {name!r} is a shipped device; choose another --name")
    archs, y = validate(space, rows, source)
    names, W, b = references()
    X = (cache or default_cache()).features(space, archs)
    same = references_for(space)
    # MACs and layer count are two more references, so a space nobody measured still gets a log-space mix
    columns = [*([] if same is None else same.devices), *COUNT_COLUMNS]
    R = count_columns(X) if same is None else np.c_[same.predict_log(X), count_columns(X)]
    prior = None
    if same is not None and device_class is not None and device_class in same.classes:
        members = np.array([c == device_class for c in same.classes] + [False] * len(COUNT_COLUMNS), dtype=float)
        prior = members / members.sum()
    offsets = None if network_for(space) is None else (lambda rows: reference_offsets(space, rows, names))
    candidates = default_candidates(names, W, b, offsets, prior)
    best, scores = choose(candidates, X, R, y, C=option_counts(space, archs))
    graph = next(c for c in candidates if isinstance(c, Graph))
    if not any(part is graph for _, part in best.parts):
        graph.fit(X, R, y)  # every other space uses it
    model = graph.model_
    model.fitted = (f"adapted from {len(y)} {space.name} measurements ({source}): on {space.name} "
                    f"{best.describe()} (leave-one-out Spearman "
                    + ", ".join(f"{c.name} {scores[c.name]:.3f}" for _, c in best.parts)
                    + f" on the measurements), elsewhere a mix of {len(names)} reference devices' node-cost models")
    parts, leans = [], {}
    for weight, part in best.parts:
        spec, part_leans = _space_part(part, columns)
        parts.append({"weight": float(f"{weight:.6g}"), **spec})
        total = sum(part_leans.values()) or 1.0
        for d, w in part_leans.items():
            leans[d] = leans.get(d, 0.0) + weight * w / total
    if parts != [{"weight": 1.0, "kind": "graph"}]:  # the graph mix alone is the cross-space model itself
        spec = parts[0] if len(parts) == 1 else {"kind": "average", "method": "average", "parts": parts}
        spec.pop("weight", None)
        model.space_model = {"space": space.name, "key": space_key(space), **spec}
    top = sorted(leans.items(), key=lambda kv: -kv[1])[:3]
    counted = "a cost per option" if best.name == "choices" else "MACs + layers"
    description = f"user device, behaves like {', '.join(n for n, _ in top) or counted}"
    target = GraphTarget(name, description, model, cache, source="user")
    total = sum(leans.values()) or 1.0
    target.adaptation = {"chosen": best.name, "weights": {c.name: w for w, c in best.parts},
                         "loo_spearman": scores,
                         "leans_on": {d: w / total for d, w in sorted(leans.items(), key=lambda kv: -kv[1])},
                         "same_space_references": [] if same is None else list(same.devices)}
    if save:
        path = save_user_target(name, description, model, {"space": space.name, "n_measurements": len(y),
                                                            "device_class": device_class,
                                                            "adaptation": target.adaptation})
        target.source = f"user ({path})"
        hardware_models.refresh_user_targets()
    return target


def _space_part(part: Any, columns: Sequence[str]) -> tuple[dict[str, Any], dict[str, float]]:
    """A fitted few-shot candidate as a stored :class:`SpaceModel` spec, and the references it leans on."""
    from hardware_models.few_shot import Choices, Graph, Macs

    if isinstance(part, Graph):
        return {"kind": "graph"}, dict(part.model_.weights)
    if isinstance(part, (Macs, Choices)):
        kind = "choices" if isinstance(part, Choices) else "macs"
        return {"kind": kind, "method": kind, "coef": [float(c) for c in part.coef_],
                "intercept": float(part.intercept_)}, {}
    leans = {d: float(w) for d, w in zip(columns, part.weights_, strict=True) if w > 1e-9}
    return {"kind": "mix", "method": part.name, "weights": {d: float(f"{w:.6g}") for d, w in leans.items()},
            "intercept": float(part.intercept_)}, leans


def fit_reference(blocks: Sequence[tuple[np.ndarray, np.ndarray]], fitted: str, alpha: float = 0.0,
                  relative: bool = False) -> LatencyModel:
    """Meta-training step: one device's non-negative cost model from its measurements in several spaces.

    ``blocks`` holds one ``(features, latencies)`` pair per space; every space weighs the same in total,
    so a space with 15,625 rows does not drown one with 500. Absolute errors (the default) gave better
    references than relative ones on HELP's protocol. A feature that is constant inside every space (the
    fixed classifier of NAS-Bench-201, FBNet and OFA) gets no cost: its cost cannot be told apart from
    the intercept, and a guessed one would be extrapolated to other spaces' bigger classifiers.
    """
    from predictors import NNLSRegressor

    X = np.vstack([bx for bx, _ in blocks])
    y = np.concatenate([by for _, by in blocks])
    w = np.concatenate([np.full(len(by), 1.0 / np.sqrt(len(by))) for _, by in blocks])
    varies = np.zeros(X.shape[1], dtype=bool)
    for bx, _ in blocks:
        varies |= np.ptp(bx, axis=0) > 1e-9 * np.maximum(np.abs(bx).max(axis=0), 1e-12)
    reg = NNLSRegressor(relative=relative, alpha=alpha).fit(X[:, varies], y, sample_weight=w)
    coef = np.zeros(X.shape[1])
    coef[varies] = reg.coef_
    return LatencyModel(coef, reg.intercept_, fitted)
