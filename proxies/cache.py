"""On-disk cache of proxy values keyed by (space, arch, proxy@version, data, batch size, seed).

Only finite values are stored: a failure or a NaN is never served as a score on a later run.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ENV_VAR = "ZCNAS_CACHE_DIR"
DB_NAME = "proxies.sqlite"
LEGACY_FAILURE = -1e29
"""Stored values at or below this are the failure sentinel (-1e30) of older versions, never scores."""


def default_cache_dir() -> Path:
    """``$ZCNAS_CACHE_DIR`` if set, else ``~/.cache/zcnas``."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "zcnas")


def data_key(name: str, inputs: Any, targets: Any = None) -> str:
    """A short key naming a calibration batch by its name and a digest of its inputs and targets.

    The targets count because loss-based proxies (snip, grasp, fisher, ...) read them: the same images
    with other labels (CIFAR-100 fine vs coarse, a relabelled ``.npz``) must not share values.
    """
    digest = hashlib.sha1(inputs.detach().cpu().contiguous().numpy().tobytes())
    if targets is not None:
        digest.update(b"targets")
        digest.update(targets.detach().cpu().contiguous().numpy().tobytes())
    return f"{name}:{digest.hexdigest()[:16]}"


_PREPARED: set[Path] = set()
_PREPARE_LOCK = threading.Lock()


def _prepare(path: Path, attempts: int = 50) -> None:
    """Create the table and switch the file to WAL, once per process and file.

    Switching a fresh file to WAL while other connections open it can fail at once with "database is
    locked" (SQLite does not wait on that lock), so threads take turns here and processes retry.
    """
    with _PREPARE_LOCK:
        if path in _PREPARED and path.exists():  # a deleted file is prepared again
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            try:
                with contextlib.closing(sqlite3.connect(path, timeout=60.0)) as db:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS proxy_values (space TEXT NOT NULL, arch TEXT NOT NULL, "
                        "proxy TEXT NOT NULL, data TEXT NOT NULL, batch_size INTEGER NOT NULL, "
                        "seed INTEGER NOT NULL, value REAL NOT NULL, "
                        "PRIMARY KEY (space, arch, proxy, data, batch_size, seed))")
                    db.commit()
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or attempt == attempts - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        _PREPARED.add(path)


class ProxyCache:
    """A SQLite table of proxy values; safe to share between processes and threads (one connection per
    thread) and picklable (it reconnects).

    Example:
        >>> import tempfile
        >>> cache = ProxyCache(tempfile.mkdtemp())
        >>> key = dict(space="nb201", data="cifar10:abc", batch_size=64, seed=0)
        >>> cache.put(arch="a", values={"synflow@1": 1.5}, **key)
        >>> cache.get(arch="a", proxies=["synflow@1", "nwot@1"], **key)
        {'synflow@1': 1.5}
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(directory) if directory is not None else default_cache_dir()
        self.path = self.dir / DB_NAME
        self._local = threading.local()  # SQLite connections may not cross threads (nas sweep, notebooks)

    def __getstate__(self) -> dict[str, Any]:
        return {"dir": self.dir, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            _prepare(self.path)
            db = sqlite3.connect(self.path, timeout=60.0)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def get(self, space: str, arch: str, proxies: Iterable[str], data: str, batch_size: int,
            seed: int) -> dict[str, float]:
        """The cached values among ``proxies`` (missing ones, and old failure sentinels, are absent)."""
        names = list(proxies)
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        rows = self._conn().execute(
            f"SELECT proxy, value FROM proxy_values WHERE space=? AND arch=? AND data=? AND batch_size=? "
            f"AND seed=? AND proxy IN ({marks})", (space, arch, data, batch_size, seed, *names)).fetchall()
        # An older version stored failures as -1e30: treat them as missing so that they are recomputed.
        return {p: float(v) for p, v in rows if math.isfinite(v) and v > LEGACY_FAILURE}

    def put(self, space: str, arch: str, values: Mapping[str, float], data: str, batch_size: int,
            seed: int) -> None:
        """Store the finite ``values`` (proxy -> value), replacing older entries with the same key.

        A non-finite value (a failure, or an expected NaN) is skipped: it is recomputed next time.
        """
        rows = [(space, arch, p, data, batch_size, seed, float(v)) for p, v in values.items()
                if math.isfinite(float(v))]
        if not rows:
            return
        db = self._conn()
        with db:
            db.executemany("INSERT OR REPLACE INTO proxy_values VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM proxy_values").fetchone()[0])

    def close(self) -> None:
        """Close the connection (it reopens on next use)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def resolve_cache(cache: bool | str | os.PathLike[str] | ProxyCache | None) -> ProxyCache | None:
    """The cache a ``cache=`` argument names: True the default folder, a path that folder, False/None none."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return ProxyCache()
    if isinstance(cache, ProxyCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return ProxyCache(cache)
    raise TypeError(f"cache must be True, False, None, a folder or a ProxyCache, got {type(cache).__name__}")
