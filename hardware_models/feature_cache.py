"""Graph features cached per architecture: in memory, and on disk in one append-only file per space.

Example:
    >>> import search_spaces
    >>> cache = FeatureCache(directory=None)  # memory only
    >>> space = search_spaces.get("nb201")
    >>> cache.features(space, [space.sample(np.random.default_rng(0))]).shape[0]
    1
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hardware_models.graph_features import FEATURE_NAMES, FEATURE_VERSION, torch_features

log = logging.getLogger(__name__)


CACHE_REVISION = 2
"""Bumped when cached vectors of the same feature version were computed wrongly, so that they are dropped
(2: before it, a vector could depend on which architectures the process had recorded before)."""


def default_cache_dir() -> Path:
    """``$ZCNAS_CACHE_DIR`` or ``~/.cache/zcnas``, plus ``graph_features/v<version>-r<revision>``."""
    root = os.environ.get("ZCNAS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "zcnas")
    return Path(root) / "graph_features" / f"v{FEATURE_VERSION}-r{CACHE_REVISION}"


def space_key(space: Any) -> str:
    """Name of ``space`` plus a digest of its public scalar settings (width, classes, resolution...); a
    mixed-precision wrapper adds its base's settings (the wrapper holds the base, not its values)."""
    settings = sorted((k, repr(v)) for k, v in vars(space).items()
                      if not k.startswith("_") and isinstance(v, (int, float, str, tuple, bool)))
    base = getattr(space, "base", None)
    if base is not None and getattr(space, "precision", None) not in (None, "fp32"):
        settings.append(("base", space_key(base)))
    digest = hashlib.sha1(repr(settings).encode()).hexdigest()[:10]
    return f"{getattr(space, 'name', type(space).__name__)}-{digest}"


class FeatureCache:
    """Feature vectors keyed by (space, architecture string).

    Args:
        directory: folder of the on-disk cache; None keeps features in memory only.
        extractor: ``(space, arch) -> vector``; the torch path by default (same nodes as ONNX, faster).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = "default",
                 extractor: Callable[[Any, Any], np.ndarray] = torch_features) -> None:
        self.directory = default_cache_dir() if directory == "default" else (
            Path(directory) if directory is not None else None)
        self.extractor = extractor
        self._tables: dict[str, dict[str, np.ndarray]] = {}
        self._keys: dict[int, tuple[Any, str]] = {}  # id(space) -> (space, key): the key costs a hash
        self._by_arch: dict[tuple[str, Any], np.ndarray] = {}  # skips to_string on repeated calls

    def _table(self, key: str) -> dict[str, np.ndarray]:
        if key not in self._tables:
            table: dict[str, np.ndarray] = {}
            path = self._path(key)
            if path is not None and path.is_file():
                width = len(FEATURE_NAMES)
                for line in path.read_text().splitlines():
                    arch, _, values = line.rpartition("\t")
                    vec = np.array(values.split(","), dtype=float) if values else np.zeros(0)
                    if arch and vec.shape == (width,):
                        table[arch] = vec
            self._tables[key] = table
        return self._tables[key]

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.tsv"

    def _key(self, space: Any) -> str:
        held = self._keys.get(id(space))
        if held is None or held[0] is not space:
            held = self._keys[id(space)] = (space, space_key(space))
        return held[1]

    def features(self, space: Any, archs: Sequence[Any]) -> np.ndarray:
        """Matrix of feature vectors (one row per architecture), extracting and storing the missing ones."""
        key = self._key(space)
        table = self._table(key)
        if len(archs) == 1:  # the search loop's call: skip the list machinery
            try:
                vec = self._by_arch.get((key, archs[0]))
            except TypeError:  # an unhashable architecture value
                vec = None
            if vec is not None:
                return vec[None, :]
        names = [space.to_string(a) for a in archs]
        missing = [(n, a) for n, a in zip(names, archs, strict=True) if n not in table]
        if missing:
            new = {}
            for n, a in missing:
                if n not in new:
                    new[n] = np.asarray(self.extractor(space, a), dtype=float)
            table.update(new)
            self._store(key, new)
        if not names:
            return np.zeros((0, len(FEATURE_NAMES)))
        rows = [table[n] for n in names]
        if len(self._by_arch) < 1_000_000:
            try:
                self._by_arch.update(((key, a), r) for a, r in zip(archs, rows, strict=True))
            except TypeError:
                pass
        return np.stack(rows)

    def _store(self, key: str, new: dict[str, np.ndarray]) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:  # one line per arch: appends from concurrent workers stay whole
                for n, vec in new.items():
                    f.write(n + "\t" + ",".join(f"{v:.9g}" for v in vec) + "\n")
        except OSError as err:  # a read-only home must not stop predictions
            log.warning("could not write the graph-feature cache %s: %s", path, err)

    def put(self, space: Any, archs: Sequence[Any], X: np.ndarray, persist: bool = False) -> None:
        """Insert precomputed feature rows (e.g. from an exact decomposition) for ``archs``."""
        key = space_key(space)
        new = {space.to_string(a): np.asarray(x, dtype=float) for a, x in zip(archs, X, strict=True)}
        self._table(key).update(new)
        if persist:
            self._store(key, new)

    def load_table(self, space: Any, path: str | os.PathLike[str]) -> int:
        """Merge a TSV written by this class (e.g. precomputed) into the memory table; returns rows read."""
        table = self._table(space_key(space))
        before = len(table)
        for line in Path(path).read_text().splitlines():
            arch, _, values = line.rpartition("\t")
            vec = np.array(values.split(","), dtype=float)
            if arch and vec.shape == (len(FEATURE_NAMES),):
                table[arch] = vec
        return len(table) - before


_DEFAULT: FeatureCache | None = None


def default_cache() -> FeatureCache:
    """The process-wide cache (memory + ``default_cache_dir()``)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = FeatureCache()
    return _DEFAULT
