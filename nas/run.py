"""Durable run storage: one SQLite database per run directory, written as each candidate finishes.

Besides the candidates, a run logs every ``ask`` and ``tell`` of its strategy as *events* in order, so
that a resumed run rebuilds the strategy by replaying them (see :mod:`nas.study`). A live run holds an
exclusive lock on ``run.lock`` in its directory: a second process cannot write into it at the same time.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nas.errors import RunInUse, RunStoreError

DB_NAME = "run.sqlite"
LOCK_NAME = "run.lock"

_T = TypeVar("_T")


def _readable(method: Callable[..., _T]) -> Callable[..., _T]:
    """Turn SQLite's errors on a damaged database into a :class:`RunStoreError` naming the file."""

    @functools.wraps(method)
    def wrapper(self: RunStore, *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as err:
            raise RunStoreError(f"{self.path}: cannot read the run database ({err}); the file is damaged "
                                "or not a zcnas run") from err

    return wrapper


@dataclass(frozen=True)
class Candidate:
    """One evaluated architecture with everything measured about it."""

    arch: str
    scores: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)  # latency_ms, params, flops, ...
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None
    wall_s: float = 0.0
    index: int = -1  # order of arrival in the run

    def value(self, name: str) -> float:
        """A score or metric by name (``latency`` is an alias of ``latency_ms``)."""
        if name in self.scores:
            return self.scores[name]
        key = "latency_ms" if name == "latency" else name
        if key in self.metrics:
            return self.metrics[key]
        raise KeyError(f"candidate has no value {name!r}; it has {sorted(self.scores) + sorted(self.metrics)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"arch": self.arch, "scores": self.scores, "metrics": self.metrics, "status": self.status,
                "error": self.error, "wall_s": self.wall_s, "index": self.index}


class RunStore:
    """A run directory's SQLite database. Every write commits at once, so a kill loses nothing.

    ``readonly=True`` opens an existing database without writing to it (``nas runs show``). A damaged
    file raises :class:`RunStoreError` naming it.
    """

    def __init__(self, run_dir: str | os.PathLike[str], readonly: bool = False) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / DB_NAME
        self.readonly = readonly
        self._lock_fd: int | None = None
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.dir} is not a run directory (no {DB_NAME})")
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
            self._check()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0)
        self._init_schema()

    @_readable
    def _check(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "candidates"} <= tables:
            raise sqlite3.DatabaseError(f"no run tables in it (found {sorted(tables) or 'none'})")

    @_readable
    def _init_schema(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS candidates (
                idx INTEGER PRIMARY KEY AUTOINCREMENT,
                arch TEXT NOT NULL UNIQUE,
                status TEXT NOT NULL,
                scores TEXT NOT NULL,
                metrics TEXT NOT NULL,
                error TEXT,
                wall_s REAL NOT NULL,
                created REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS asks (seq INTEGER PRIMARY KEY, archs TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL,
                                               archs TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS oracle (arch TEXT PRIMARY KEY, accuracy REAL NOT NULL,
                                               rank INTEGER NOT NULL);
            """
        )
        self._db.commit()
        self._check()

    def lock(self) -> None:
        """Take the run directory for this process; raise :class:`RunInUse` if a live process holds it."""
        if self._lock_fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no inter-process lock, as before
            return
        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunInUse(f"{self.dir} is in use by another live process (pid {holder}); wait for it to "
                           "finish or stop it, then --resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    # -- metadata ---------------------------------------------------------------------------------
    @_readable
    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key``."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @_readable
    def get_meta(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key`` or ``default``."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # -- candidates -------------------------------------------------------------------------------
    @_readable
    def add(self, cand: Candidate) -> Candidate:
        """Persist a finished candidate (ignored if its arch is already stored) and return it indexed."""
        with self._db:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO candidates (arch, status, scores, metrics, error, wall_s, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cand.arch, cand.status, json.dumps(cand.scores), json.dumps(cand.metrics), cand.error,
                 cand.wall_s, time.time()),
            )
        if cur.rowcount == 0:
            # The loop never evaluates a stored arch; counting lets tests and users verify that.
            self.set_meta("duplicate_evaluations", self.get_meta("duplicate_evaluations", 0) + 1)
            return self.get(cand.arch) or cand
        return Candidate(cand.arch, cand.scores, cand.metrics, cand.status, cand.error, cand.wall_s,
                         int(cur.lastrowid or -1))

    @_readable
    def get(self, arch: str) -> Candidate | None:
        """The stored candidate for ``arch``, if any."""
        row = self._db.execute(
            "SELECT idx, arch, status, scores, metrics, error, wall_s FROM candidates WHERE arch = ?", (arch,)
        ).fetchone()
        return _row_to_candidate(row) if row else None

    @_readable
    def candidates(self) -> list[Candidate]:
        """All stored candidates in arrival order."""
        return list(self)

    def __iter__(self) -> Iterator[Candidate]:
        rows = self._db.execute(
            "SELECT idx, arch, status, scores, metrics, error, wall_s FROM candidates ORDER BY idx"
        ).fetchall()
        return (_row_to_candidate(r) for r in rows)

    @_readable
    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0])

    # -- the strategy's proposals, replayed on resume ----------------------------------------------
    @_readable
    def log_ask(self, seq: int, archs: list[str]) -> None:
        """Record the arch strings the strategy proposed in its ``seq``-th ask, before any is evaluated."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO asks VALUES (?, ?)", (seq, json.dumps(archs)))

    def truncate_asks(self, seq: int) -> None:
        """Forget recorded asks from ``seq`` on (the strategy diverged from them on resume)."""
        with self._db:
            self._db.execute("DELETE FROM asks WHERE seq >= ?", (seq,))

    @_readable
    def asks(self) -> list[list[str]]:
        """Every recorded ask in order."""
        rows = self._db.execute("SELECT archs FROM asks ORDER BY seq").fetchall()
        return [json.loads(r[0]) for r in rows]

    # -- the strategy's asks and tells in order, replayed on resume ---------------------------------
    @_readable
    def log_event(self, kind: str, archs: list[str]) -> int:
        """Append an ``ask`` or ``tell`` of ``archs`` (arch strings) to the event log; returns its number."""
        with self._db:
            cur = self._db.execute("INSERT INTO events (kind, archs) VALUES (?, ?)", (kind, json.dumps(archs)))
        return int(cur.lastrowid or 0)

    @_readable
    def events(self) -> list[tuple[int, str, list[str]]]:
        """Every logged event as ``(seq, kind, arch strings)`` in order."""
        rows = self._db.execute("SELECT seq, kind, archs FROM events ORDER BY seq").fetchall()
        return [(int(q), str(k), json.loads(a)) for q, k, a in rows]

    def truncate_events(self, seq: int) -> None:
        """Forget logged events from ``seq`` on (the strategy diverged from them on resume)."""
        with self._db:
            self._db.execute("DELETE FROM events WHERE seq >= ?", (seq,))

    # -- oracle queries of the exploitation step ---------------------------------------------------
    @_readable
    def set_oracle(self, queried: dict[str, float]) -> None:
        """Replace the recorded oracle queries by ``queried`` (arch -> true accuracy, in query order)."""
        with self._db:
            self._db.execute("DELETE FROM oracle")
            self._db.executemany("INSERT INTO oracle VALUES (?, ?, ?)",
                                 [(a, float(v), i) for i, (a, v) in enumerate(queried.items())])

    @_readable
    def oracle(self) -> dict[str, float]:
        """Oracle accuracies queried so far, in query order."""
        rows = self._db.execute("SELECT arch, accuracy FROM oracle ORDER BY rank").fetchall()
        return {a: float(v) for a, v in rows}

    def close(self) -> None:
        """Close the database connection and release the run directory."""
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None


def _row_to_candidate(row: tuple[Any, ...]) -> Candidate:
    idx, arch, status, scores, metrics, error, wall_s = row
    return Candidate(arch, json.loads(scores), json.loads(metrics), status, error, wall_s, idx)


def load_run(run_dir: str | os.PathLike[str]) -> Any:
    """Open a finished or interrupted run directory as a ``SearchResult``."""
    from nas.result import SearchResult

    store = RunStore(run_dir, readonly=True)
    try:
        return SearchResult.from_store(store)
    finally:
        store.close()
