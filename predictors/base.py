"""Learned accuracy predictors of architectures: one protocol, a registry of kinds, files without pickle.

An accuracy predictor is fitted on a few ``(architecture, accuracy)`` labels of a space and predicts the
accuracy (or at least its ranking) of other architectures, of the same space or, for kinds that read a
space-independent representation such as the ONNX graph, of another space. A kind is a class registered
with :func:`register`; :func:`create` builds one from options, :func:`save` writes a fitted one to a
folder (``predictor.json``: kind, options and any JSON state; ``arrays.npz``: its numeric state) and
:func:`load` reads it back with ``allow_pickle=False``, so a predictor file from someone else can be
opened safely.

Example:
    >>> import search_spaces
    >>> space = search_spaces.get("nb201")
    >>> sorted(registry.list())  # doctest: +SKIP
    ['graph', 'parzc', ...]
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nas.registry import Registry
from search_spaces import Arch, SearchSpace

FORMAT_VERSION = 1
"""Version of the predictor folder layout; bumped when :func:`load` could misread older folders."""


class ArchPredictor(Protocol):
    """Predicts architectures' accuracy after :meth:`fit` on labelled ones (scikit-learn style)."""

    kind: str
    min_labels: int
    """The fewest labelled architectures :meth:`fit` accepts."""

    def fit(self, space: SearchSpace, archs: Sequence[Arch], accuracy: Sequence[float]) -> ArchPredictor:
        """Fit on labelled architectures of ``space``; returns self."""
        ...

    def predict(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        """Predicted accuracy of each architecture (higher is better), shape ``(len(archs),)``."""
        ...

    def predict_with_std(self, space: SearchSpace, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """Prediction and its uncertainty (standard deviation over an ensemble; zeros when it has none)."""
        ...

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-serialisable options and state, and named numeric arrays, that rebuild this predictor."""
        ...

    @classmethod
    def from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ArchPredictor:
        """The predictor that :meth:`state` described."""
        ...


registry: Registry[Callable[..., ArchPredictor]] = Registry("predictor kind")


def register(kind: str) -> Callable[[Callable[..., ArchPredictor]], Callable[..., ArchPredictor]]:
    """Class decorator registering a predictor kind."""
    return registry.decorator(kind)


def create(kind: str, **options: Any) -> ArchPredictor:
    """A new, unfitted predictor of ``kind``; an unknown kind or option raises ValueError naming the valid ones."""
    _load_kinds()
    registry.check_options(kind, options)
    return registry.get(kind)(**options)


def save(predictor: ArchPredictor, path: str | os.PathLike[str]) -> Path:
    """Write a fitted predictor to the folder ``path`` (created); returns the folder."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config, arrays = predictor.state()
    meta = {"format": FORMAT_VERSION, "kind": predictor.kind, "config": config}
    np.savez(folder / "arrays.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    (folder / "predictor.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def load(path: str | os.PathLike[str]) -> ArchPredictor:
    """Read a predictor folder written by :func:`save` (no pickle); errors say what is missing or wrong."""
    folder = Path(path)
    meta_path = folder / "predictor.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: not a predictor folder (no predictor.json); write one with "
                                "`nas predictor fit`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{folder}: predictor format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
    _load_kinds()
    factory = registry.get(meta["kind"])
    arrays_path = folder / "arrays.npz"
    arrays: dict[str, np.ndarray] = {}
    if arrays_path.is_file():
        with np.load(arrays_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    return factory.from_state(meta["config"], arrays)  # type: ignore[attr-defined]


def check_labels(kind: str, archs: Sequence[Arch], accuracy: Sequence[float], minimum: int = 2) -> np.ndarray:
    """``accuracy`` as a float array after checking it can be fitted: one finite value per architecture,
    at least ``minimum`` of them, not all equal; errors name the predictor ``kind``."""
    y = np.asarray(accuracy, dtype=np.float64)
    if y.ndim != 1 or len(y) != len(archs):
        raise ValueError(f"{kind}: got {len(archs)} architectures but accuracy of shape {y.shape}; pass one "
                         "accuracy per architecture")
    if len(y) < minimum or not np.all(np.isfinite(y)):
        raise ValueError(f"{kind}: needs at least {minimum} finite accuracies to rank, got {len(y)} "
                         f"({int(np.sum(~np.isfinite(y)))} not finite)")
    if np.ptp(y) == 0:
        raise ValueError(f"{kind}: all accuracies are equal; there is no ranking to learn")
    return y


def proxy_values(space: SearchSpace, archs: Sequence[Arch], names: Sequence[str], batch_size: int = 64,
                 seed: int = 0, cache: bool = True) -> np.ndarray:
    """Zero-cost proxy values, shape ``(len(archs), len(names))`` (NaN where a proxy failed).

    Computed like ``nas score`` on the shipped CIFAR-10 calibration batch, through the proxy cache, so a
    value that a search or ``nas benchmark proxies`` already computed costs nothing here.
    """
    import proxies as proxy_lib
    from nas.evaluate import Evaluator

    batch = proxy_lib.calibration_batch(batch_size, seed, tuple(space.input_shape))
    evaluate = Evaluator(space, tuple(names), batch, seed=seed, device="cpu",
                         cache=proxy_lib.ProxyCache() if cache else None)
    out = np.full((len(archs), len(names)), np.nan)
    for i, arch in enumerate(archs):
        scores = evaluate(space.to_string(arch)).scores
        out[i] = [scores.get(n, np.nan) for n in names]
    return out


def _load_kinds() -> None:
    """Import the modules that register kinds (kept lazy: they import torch models)."""
    for module in ("graph", "parzc", "arch2vec", "simple", "stacked"):
        try:
            __import__(f"predictors.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"predictors.{module}":
                raise
