"""The search loop: a thin driver over ask/tell that evaluates through an executor and persists results."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import hardware_models
import proxies as proxy_lib
import search_spaces
from nas import executors, strategies
from nas.evaluate import Evaluator
from nas.objectives import Constraints, Objective, parse_objectives
from nas.run import Candidate, RunStore

log = logging.getLogger(__name__)

MAX_STALE_ASKS = 200
"""Rounds of asks that bring no new architecture before the loop decides the space is exhausted."""


@dataclass
class SearchResult:
    """Everything a search produced: candidates in arrival order, objectives and constraints."""

    candidates: list[Candidate]
    objectives: list[Objective]
    constraints: Constraints = field(default_factory=Constraints)
    config: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    @classmethod
    def from_store(cls, store: RunStore) -> SearchResult:
        """Rebuild a result from a run directory's database."""
        config = store.get_meta("config", {})
        objectives = parse_objectives(config.get("objectives", ["synflow"]))
        constraints = Constraints(**config.get("constraints", {}))
        return cls(store.candidates(), objectives, constraints, config, store.dir)

    def feasible(self) -> list[Candidate]:
        """Candidates that evaluated fine and meet every constraint."""
        return [c for c in self.candidates if self.constraints.feasible(c)]

    def values(self, cand: Candidate) -> tuple[float, ...]:
        """Oriented objective values (higher is better) of ``cand``."""
        return tuple(o.oriented(cand) for o in self.objectives)

    @property
    def best(self) -> Candidate | None:
        """The feasible candidate best on the first objective (ties: later objectives, then arrival)."""
        feasible = self.feasible()
        if not feasible:
            return None
        return max(feasible, key=lambda c: (self.values(c), -c.index))

    @property
    def pareto(self) -> list[Candidate]:
        """Feasible candidates no other feasible candidate dominates, sorted by the first objective."""
        feasible = self.feasible()
        pts = np.array([self.values(c) for c in feasible], dtype=float).reshape(len(feasible), -1)
        front = [c for i, c in enumerate(feasible) if not _dominated(pts, i)]
        return sorted(front, key=lambda c: self.values(c), reverse=True)

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per candidate: arch, status, scores, metrics, feasibility."""
        rows = []
        for c in self.candidates:
            rows.append({"index": c.index, "arch": c.arch, "status": c.status, **c.scores, **c.metrics,
                         "feasible": self.constraints.feasible(c), "wall_s": c.wall_s})
        return rows

    def to_dataframe(self) -> Any:
        """The candidates as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.to_records())

    def summary(self) -> dict[str, Any]:
        """Best candidate and counts, as written to ``best.json``."""
        best = self.best
        return {
            "arch": best.arch if best else None,
            "scores": best.scores if best else {},
            "metrics": best.metrics if best else {},
            "objectives": [str(o) for o in self.objectives],
            "evaluated": len(self.candidates),
            "feasible": len(self.feasible()),
            "failed": sum(c.status != "ok" for c in self.candidates),
            "config": self.config,
        }

    def write_outputs(self, run_dir: str | os.PathLike[str]) -> None:
        """Write ``best.json`` and ``pareto.csv`` into ``run_dir``."""
        run_dir = Path(run_dir)
        (run_dir / "best.json").write_text(json.dumps(self.summary(), indent=2) + "\n")
        names = [o.name for o in self.objectives]
        with open(run_dir / "pareto.csv", "w") as f:
            f.write(",".join(["arch", *names]) + "\n")
            for c in self.pareto:
                vals = [_fmt(c.value(n) if n in c.scores or n in c.metrics or n == "latency" else math.nan)
                        for n in names]
                f.write(",".join([json.dumps(c.arch), *vals]) + "\n")


def _fmt(x: float) -> str:
    return repr(float(x))


def _dominated(pts: np.ndarray, i: int) -> bool:
    others = np.delete(pts, i, axis=0)
    if not len(others):
        return False
    return bool(np.any(np.all(others >= pts[i], axis=1) & np.any(others > pts[i], axis=1)))


def search(
    space: str | search_spaces.SearchSpace = "nb201",
    strategy: str = "random",
    objectives: str | Sequence[str] = ("synflow",),
    budget: int = 100,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    *,
    target: str | None = None,
    latency_ms: float | None = None,
    max_params: float | None = None,
    max_flops: float | None = None,
    proxies: Sequence[str] | None = None,
    batch_size: int = 64,
    data: str | None = None,
    executor: str = "serial",
    executor_options: dict[str, Any] | None = None,
    strategy_options: dict[str, Any] | None = None,
    space_options: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> SearchResult:
    """Search ``space`` with ``strategy`` for ``budget`` distinct candidates and return the result.

    Every candidate is written to ``out``'s database as it finishes. With ``resume=True`` an interrupted
    run continues to ``budget`` with its stored settings, evaluating nothing twice: the strategy is
    replayed from the stored results, which reproduces its state exactly.

    Example:
        >>> result = search("nb201", "random", ["params"], budget=3, seed=0, progress=False)
        >>> len(result.candidates)
        3
    """
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="nas-run-"))
    if resume and not (run_dir / "run.sqlite").exists():
        raise FileNotFoundError(f"--resume {run_dir}: not a run directory (no run.sqlite)")
    store = RunStore(run_dir)
    stored = store.get_meta("config")
    if stored is not None and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose "
                              "another --out")
    if stored is not None:
        config = {**stored, "budget": budget}
    else:
        if not isinstance(space, str):
            raise TypeError("pass the space by name (and space_options) so that the run can be resumed")
        objs = parse_objectives(objectives)
        config = {
            "space": space, "space_options": space_options or {}, "strategy": strategy,
            "strategy_options": strategy_options or {}, "objectives": [str(o) for o in objs],
            "budget": budget, "seed": seed, "target": target,
            "proxies": _proxy_names(objs, proxies), "batch_size": batch_size, "data": data,
            "constraints": {"latency_ms": latency_ms, "max_params": max_params, "max_flops": max_flops},
        }
    setup = _Setup.from_config(config)  # validates everything before the run is written
    store.set_meta("config", config)
    ex = executors.get(executor, **(executor_options or {}))
    try:
        return _run(setup, store, ex, progress)
    finally:
        ex.close()


@dataclass
class _Setup:
    """Live objects built from a run's JSON config."""

    config: dict[str, Any]
    space: search_spaces.SearchSpace
    objectives: list[Objective]
    constraints: Constraints
    evaluator: Evaluator

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _Setup:
        objs = parse_objectives(config["objectives"])
        space = search_spaces.get(config["space"], **config.get("space_options", {}))
        strategies.registry.get(config["strategy"])  # fail early on an unknown strategy
        target_name = config.get("target")
        if target_name is None and any(o.name in ("latency", "latency_ms") for o in objs):
            raise ValueError("a latency objective needs a target (--target); see `nas targets`")
        cons = Constraints(**config.get("constraints", {}))
        if cons.latency_ms is not None and target_name is None:
            raise ValueError("a latency limit (--latency-ms) needs a target (--target); see `nas targets`")
        for name in config["proxies"]:
            proxy_lib.get(name)
        target = hardware_models.get(target_name) if target_name else None
        batch = proxy_lib.load_batch(config.get("data"), config.get("batch_size", 64), config["seed"],
                                     tuple(space.input_shape))
        evaluator = Evaluator(space, tuple(config["proxies"]), batch, target, config["seed"])
        return cls(config, space, objs, cons, evaluator)


def _proxy_names(objs: Sequence[Objective], extra: Sequence[str] | None) -> list[str]:
    """Proxies to compute: every objective that is not a metric, plus the ones asked for."""
    names = [o.name for o in objs if o.name not in ("latency", "latency_ms")]
    names += [n for n in (extra or []) if n not in names]
    return names


def _run(setup: _Setup, store: RunStore, ex: executors.Executor, progress: bool) -> SearchResult:
    config = setup.config
    budget = int(config["budget"])
    strategy = strategies.get(config["strategy"], setup.space, seed=config["seed"],
                              n_objectives=len(setup.objectives), **config.get("strategy_options", {}))
    result = SearchResult(store.candidates(), setup.objectives, setup.constraints, config, store.dir)
    known: dict[str, Candidate] = {c.arch: c for c in result.candidates}
    replayed: set[str] = set()
    bar = _Progress(budget, len(known), enabled=progress)
    stale = 0
    try:
        while len(known) < budget or len(replayed) < len(known):
            n = min(ex.parallelism, max(1, budget - len(known))) if len(replayed) >= len(known) \
                else ex.parallelism
            archs = strategy.ask(n)
            strings = [setup.space.to_string(a) for a in archs]
            todo = list(dict.fromkeys(s for s in strings if s not in known))[: max(0, budget - len(known))]
            for cand in ex.map(setup.evaluator, todo):
                cand = store.add(cand)
                known[cand.arch] = cand
                result.candidates.append(cand)
                bar.update(result)
            told = [(a, s) for a, s in zip(archs, strings) if s in known]
            replayed.update(s for _, s in told)
            if told:
                strategy.tell([a for a, _ in told], [_oriented(result, known[s]) for _, s in told])
            stale = 0 if todo else stale + 1
            if stale >= MAX_STALE_ASKS:
                log.warning("no new architecture in %d rounds; stopping at %d of %d candidates",
                            stale, len(known), budget)
                break
    finally:
        bar.close()
        result.write_outputs(store.dir)
    return result


def _oriented(result: SearchResult, cand: Candidate) -> tuple[float, ...]:
    if not result.constraints.feasible(cand):
        return tuple(-math.inf for _ in result.objectives)
    return result.values(cand)


class _Progress:
    """A rich progress bar showing the best value so far; silent when disabled."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self._bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TextColumn("{task.fields[best]}"), transient=False)
        self._task = self._bar.add_task("search", total=total, completed=done, best="")
        self._bar.start()

    def update(self, result: SearchResult) -> None:
        if self._bar is None:
            return
        best = result.best
        text = ""
        if best is not None:
            o = result.objectives[0]
            text = f"best {o.name}={best.value(o.name):.4g}" if o.name in best.scores or \
                o.name in best.metrics else ""
        self._bar.update(self._task, completed=len(result.candidates), best=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
