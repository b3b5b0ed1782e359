"""Durable run storage: one SQLite database per run directory, written as each candidate finishes."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DB_NAME = "run.sqlite"


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
    """A run directory's SQLite database. Every write commits at once, so a kill loses nothing."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / DB_NAME
        self._db = sqlite3.connect(self.path, timeout=30.0)
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
            CREATE TABLE IF NOT EXISTS oracle (arch TEXT PRIMARY KEY, accuracy REAL NOT NULL,
                                               rank INTEGER NOT NULL);
            """
        )
        self._db.commit()

    # -- metadata ---------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key``."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key`` or ``default``."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # -- candidates -------------------------------------------------------------------------------
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

    def get(self, arch: str) -> Candidate | None:
        """The stored candidate for ``arch``, if any."""
        row = self._db.execute(
            "SELECT idx, arch, status, scores, metrics, error, wall_s FROM candidates WHERE arch = ?", (arch,)
        ).fetchone()
        return _row_to_candidate(row) if row else None

    def candidates(self) -> list[Candidate]:
        """All stored candidates in arrival order."""
        return list(self)

    def __iter__(self) -> Iterator[Candidate]:
        rows = self._db.execute(
            "SELECT idx, arch, status, scores, metrics, error, wall_s FROM candidates ORDER BY idx"
        ).fetchall()
        return (_row_to_candidate(r) for r in rows)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0])

    # -- the strategy's proposals, replayed on resume ----------------------------------------------
    def log_ask(self, seq: int, archs: list[str]) -> None:
        """Record the arch strings the strategy proposed in its ``seq``-th ask, before any is evaluated."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO asks VALUES (?, ?)", (seq, json.dumps(archs)))

    def truncate_asks(self, seq: int) -> None:
        """Forget recorded asks from ``seq`` on (the strategy diverged from them on resume)."""
        with self._db:
            self._db.execute("DELETE FROM asks WHERE seq >= ?", (seq,))

    def asks(self) -> list[list[str]]:
        """Every recorded ask in order."""
        rows = self._db.execute("SELECT archs FROM asks ORDER BY seq").fetchall()
        return [json.loads(r[0]) for r in rows]

    # -- oracle queries of the exploitation step ---------------------------------------------------
    def set_oracle(self, queried: dict[str, float]) -> None:
        """Replace the recorded oracle queries by ``queried`` (arch -> true accuracy, in query order)."""
        with self._db:
            self._db.execute("DELETE FROM oracle")
            self._db.executemany("INSERT INTO oracle VALUES (?, ?, ?)",
                                 [(a, float(v), i) for i, (a, v) in enumerate(queried.items())])

    def oracle(self) -> dict[str, float]:
        """Oracle accuracies queried so far, in query order."""
        rows = self._db.execute("SELECT arch, accuracy FROM oracle ORDER BY rank").fetchall()
        return {a: float(v) for a, v in rows}

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()


def _row_to_candidate(row: tuple[Any, ...]) -> Candidate:
    idx, arch, status, scores, metrics, error, wall_s = row
    return Candidate(arch, json.loads(scores), json.loads(metrics), status, error, wall_s, idx)


def load_run(run_dir: str | os.PathLike[str]) -> Any:
    """Open a finished or interrupted run directory as a ``SearchResult``."""
    from nas.result import SearchResult

    if not (Path(run_dir) / DB_NAME).exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {DB_NAME})")
    return SearchResult.from_store(RunStore(run_dir))
