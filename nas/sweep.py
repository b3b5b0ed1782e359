"""Sweeps: a grid of searches (space x target x strategy x seed x budget) run concurrently on Ray.

Each search of the grid is a cell with its own run directory under one sweep directory. The searches
run in driver threads that share one Ray session: their candidate evaluations are Ray tasks spread over
the whole cluster, while every result is persisted on the driver as it arrives, so a multi-node sweep
needs no shared file system. Running the same sweep again resumes unfinished cells and skips done ones.

Example:
    >>> spec = SweepSpec.from_dict({"grid": {"seed": [0, 1], "budget": [4, 8]},
    ...                             "options": {"objectives": ["nwot"]}})
    >>> [c.name for c in spec.cells()]
    ['nb201-s0-b4', 'nb201-s0-b8', 'nb201-s1-b4', 'nb201-s1-b8']
    >>> result = run_sweep(spec, "sweeps/demo")   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import inspect
import itertools
import json
import logging
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nas.executors import init_ray

log = logging.getLogger(__name__)

GRID_KEYS = ("space", "target", "strategy", "seed", "budget")
"""Axes of a sweep grid, in the order they name a cell."""
SWEEP_KEYS = ("out", "concurrent", "workers_per_search", "max_retries", "threads_per_worker", "gpus_per_worker")
"""Settings of the sweep itself (the ``[sweep]`` table)."""
_RESERVED = {"out", "resume", "progress", "executor", "executor_options", "evaluate", *GRID_KEYS}


@dataclass(frozen=True)
class Cell:
    """One search of the grid; ``None`` leaves a setting to the space's defaults."""

    space: str = "nb201"
    target: str | None = None
    strategy: str | None = None
    seed: int = 0
    budget: int | None = None

    @property
    def name(self) -> str:
        """Run directory name, e.g. ``nb201-rpi4-evolution-s0-b50`` (unset parts left out)."""
        parts = [self.space, self.target, self.strategy, f"s{self.seed}",
                 f"b{self.budget}" if self.budget is not None else None]
        return "-".join(p for p in parts if p is not None)


@dataclass
class SweepSpec:
    """A parsed sweep file: grid axes, options shared by every search, and sweep settings."""

    grid: dict[str, list[Any]]
    options: dict[str, Any] = field(default_factory=dict)
    out: str | None = None
    concurrent: int | None = None
    workers_per_search: int | None = None
    max_retries: int = 3
    threads_per_worker: int = 1
    gpus_per_worker: float = 0.0

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SweepSpec:
        """Read a TOML sweep file (``[sweep]``, ``[grid]`` and ``[options]`` tables)."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"sweep file {path}: no such file")
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"sweep file {path}: not valid TOML: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        """Validate a sweep given as nested dicts; a scalar grid value is a one-value axis."""
        unknown = set(data) - {"sweep", "grid", "options"}
        if unknown:
            raise ValueError(f"sweep file: unknown table(s) {sorted(unknown)}; valid: sweep, grid, options")
        settings = dict(data.get("sweep", {}))
        bad = set(settings) - set(SWEEP_KEYS)
        if bad:
            raise ValueError(f"[sweep]: unknown key(s) {sorted(bad)}; valid: {', '.join(SWEEP_KEYS)}")
        axes = dict(data.get("grid", {}))
        options = dict(data.get("options", {}))
        for key in set(options) & set(GRID_KEYS):  # a fixed space/strategy/... is a one-value axis
            if key in axes:
                raise ValueError(f"{key!r} is both a [grid] axis and an [options] value; keep one")
            axes[key] = options.pop(key)
        grid = {}
        for key, values in axes.items():
            if key not in GRID_KEYS:
                raise ValueError(f"[grid]: unknown axis {key!r}; valid: {', '.join(GRID_KEYS)} (fixed "
                                 "settings go in [options])")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ValueError(f"[grid]: axis {key!r} has no values")
            lowest = 1 if key == "budget" else 0
            if key in ("seed", "budget") and not all(isinstance(v, int) and v >= lowest for v in values):
                raise ValueError(f"[grid]: {key} must be integers >= {lowest}, got {values}")
            if key in ("space", "target", "strategy") and not all(isinstance(v, str) for v in values):
                raise ValueError(f"[grid]: {key} must be names (strings), got {values}")
            grid[key] = [None if key == "target" and v == "none" else v for v in values]
        _check_options(options)
        for key in ("concurrent", "workers_per_search", "threads_per_worker"):
            if settings.get(key) is not None and (not isinstance(settings[key], int) or settings[key] < 1):
                raise ValueError(f"[sweep]: {key} must be a positive integer, got {settings[key]!r}")
        gpus = settings.get("gpus_per_worker", 0.0)
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0:
            raise ValueError(f"[sweep]: gpus_per_worker must be a number >= 0, got {gpus!r}")
        return cls(grid, options, **settings)

    def cells(self) -> list[Cell]:
        """Every combination of the grid axes, in a stable order."""
        axes = [(k, self.grid[k]) for k in GRID_KEYS if k in self.grid]
        combos = itertools.product(*(values for _, values in axes))
        return [Cell(**dict(zip([k for k, _ in axes], combo, strict=True))) for combo in combos]

    def validate_names(self) -> None:
        """Raise at once, before anything runs, on a space, strategy or target name that does not exist."""
        import hardware_models
        import search_spaces
        from nas import strategies

        registries = {"space": search_spaces.registry, "strategy": strategies.registry,
                      "target": hardware_models.registry}
        for key, registry in registries.items():
            for name in self.grid.get(key, []):
                if name is not None:
                    registry.get(name)


def _check_options(options: dict[str, Any]) -> None:
    """Fixed options must be keyword arguments of ``nas.search`` that a grid or the sweep does not set."""
    from nas.loop import search

    valid = sorted(set(inspect.signature(search).parameters) - _RESERVED)
    for key in options:
        if key in _RESERVED:
            raise ValueError(f"[options]: {key!r} is set by the sweep itself, not per option")
        if key not in valid:
            raise ValueError(f"[options]: unknown option {key!r}; valid: {', '.join(valid)}")


@dataclass
class CellResult:
    """What one search of the sweep produced (or why it failed)."""

    cell: Cell
    run_dir: str
    status: str = "ok"  # "ok" or "failed"
    evaluated: int = 0
    failed: int = 0
    feasible: int = 0
    best_arch: str | None = None
    best: dict[str, float] = field(default_factory=dict)  # objective name -> value of the best candidate
    oracle_accuracy: float | None = None
    wall_s: float = 0.0
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """A flat row for the summary table."""
        row = {**asdict(self.cell), "run_dir": self.run_dir, "status": self.status,
               "evaluated": self.evaluated, "failed": self.failed, "feasible": self.feasible}
        row.update({f"best_{k}": v for k, v in self.best.items()})
        if self.oracle_accuracy is not None:
            row["oracle_accuracy"] = self.oracle_accuracy
        row.update({"best_arch": self.best_arch, "wall_s": round(self.wall_s, 3), "error": self.error})
        return row


@dataclass
class SweepResult:
    """All cells of a finished sweep, with its directory and total wall time."""

    out: Path
    cells: list[CellResult]
    wall_s: float

    def records(self) -> list[dict[str, Any]]:
        """One row per cell, in grid order."""
        return [c.record() for c in self.cells]

    def groups(self) -> list[dict[str, Any]]:
        """Cells that differ only by seed, pooled: mean and spread of the best first objective, wall time."""
        pooled: dict[tuple[Any, ...], list[CellResult]] = {}
        for c in self.cells:
            pooled.setdefault((c.cell.space, c.cell.target, c.cell.strategy, c.cell.budget), []).append(c)
        rows = []
        for (space, target, strategy, budget), members in pooled.items():
            ok = [m for m in members if m.status == "ok" and m.best]
            first = [next(iter(m.best.values())) for m in ok]
            rows.append({"space": space, "target": target, "strategy": strategy, "budget": budget,
                         "seeds": len(members), "ok": len(ok),
                         "objective": next(iter(ok[0].best)) if ok else None,
                         "best_mean": statistics.fmean(first) if first else math.nan,
                         "best_std": statistics.stdev(first) if len(first) > 1 else 0.0,
                         "wall_s_mean": statistics.fmean(m.wall_s for m in members)})
        return rows

    def write(self) -> tuple[Path, Path]:
        """Write ``summary.csv`` (one row per cell) and ``summary.json`` (cells, seed groups, wall time)."""
        rows = self.records()
        columns = list(dict.fromkeys(k for r in rows for k in r))
        csv_path, json_path = self.out / "summary.csv", self.out / "summary.json"
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        json_path.write_text(json.dumps({"wall_s": round(self.wall_s, 3), "cells": rows,
                                         "groups": self.groups()}, indent=2, default=_json_default) + "\n")
        return csv_path, json_path


def _json_default(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else str(x)


def run_sweep(spec: SweepSpec, out: str | os.PathLike[str] | None = None, *, address: str | None = None,
              cpus: int | None = None, concurrent: int | None = None, workers_per_search: int | None = None,
              threads_per_worker: int | None = None, gpus_per_worker: float | None = None,
              on_cell: Callable[[CellResult], None] | None = None) -> SweepResult:
    """Run every cell of ``spec`` on Ray (joining ``address`` or starting a local instance with ``cpus``).

    ``concurrent`` searches run at once (default: as many as the cluster has CPUs, at most the number of
    cells), each with ``workers_per_search`` evaluations in flight (default: the CPUs shared out among
    them); each evaluation takes ``threads_per_worker`` CPUs and ``gpus_per_worker`` GPUs (default: the
    ``[sweep]`` table's, else 1 and 0). ``on_cell`` is called from the driver as each search ends. Writes
    the summary and returns it.
    """
    import ray

    out_dir = Path(out or spec.out or "sweeps/sweep")
    cells = spec.cells()
    spec.validate_names()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(
        {"grid": spec.grid, "options": spec.options, "cells": [c.name for c in cells]}, indent=2) + "\n")
    owns_ray = not ray.is_initialized()
    if owns_ray:
        init_ray(address, cpus)
    try:
        cluster_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        at_once = min(len(cells), concurrent or spec.concurrent or cluster_cpus)
        threads = int(threads_per_worker or spec.threads_per_worker)
        gpus = float(spec.gpus_per_worker if gpus_per_worker is None else gpus_per_worker)
        # an evaluation holds `threads` CPUs, so more in flight than the CPUs allow would only queue in Ray
        per_search = workers_per_search or spec.workers_per_search or max(1, cluster_cpus // (at_once * threads))
        log.info("sweep of %d searches, %d at a time, %d evaluations in flight each, on %d CPUs",
                 len(cells), at_once, per_search, cluster_cpus)
        stop = threading.Event()
        options = {"workers": per_search, "max_retries": spec.max_retries, "threads_per_worker": threads,
                   "gpus_per_worker": gpus, "start": False, "stop": stop}
        started = time.perf_counter()
        results: dict[Cell, CellResult] = {}
        pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="sweep")
        try:
            futures = [pool.submit(_run_cell, cell, out_dir, spec.options, options) for cell in cells]
            for future in as_completed(futures):
                res = results[future.result().cell] = future.result()
                if on_cell is not None:
                    on_cell(res)
        except BaseException:  # Ctrl-C: start no new cell, stop the running ones, then shut Ray down
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        result = SweepResult(out_dir, [results[c] for c in cells], time.perf_counter() - started)
        result.write()
        return result
    finally:
        if owns_ray:
            ray.shutdown()


def _run_cell(cell: Cell, out_dir: Path, options: dict[str, Any], executor_options: dict[str, Any]) -> CellResult:
    """Run (or resume) one search; any error is recorded on the cell, never raised."""
    from nas.loop import search

    run_dir = out_dir / cell.name
    res = CellResult(cell, cell.name)
    start = time.perf_counter()
    try:
        result = search(space=cell.space, strategy=cell.strategy, budget=cell.budget, seed=cell.seed,
                        target=cell.target, out=run_dir, resume=(run_dir / "run.sqlite").exists(),
                        executor="ray", executor_options=executor_options, progress=False, **options)
        summary = result.summary()
        res.evaluated, res.failed, res.feasible = summary["evaluated"], summary["failed"], summary["feasible"]
        best = result.best
        if best is not None:
            res.best_arch = best.arch
            res.best = {o.name: _value(best, o.name) for o in result.objectives}
        res.oracle_accuracy = (summary.get("oracle") or {}).get("accuracy")
    except Exception as err:  # noqa: BLE001 - one bad cell must not stop the sweep
        log.warning("sweep cell %s failed: %s", cell.name, err)
        res.status, res.error = "failed", f"{type(err).__name__}: {err}"
    res.wall_s = time.perf_counter() - start
    return res


def _value(cand: Any, name: str) -> float:
    try:
        return float(cand.value(name))
    except KeyError:
        return math.nan
