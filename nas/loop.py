"""The search loop: a thin driver over ask/tell that evaluates through an executor and persists results.

Resuming replays the strategy: every ask is logged (before its candidates are evaluated), and on resume
the strategy is asked again with the same sizes and told the stored values, which rebuilds its state
exactly without evaluating anything twice. A strategy whose proposals differ from the log on replay is
detected; the run then goes on live from that point (still evaluating nothing twice).

Asks and tells come in batches of the executor's ``parallelism``, except for a strategy that declares
``asynchronous = True`` on an executor with several slots: such a run (fixed when it starts) keeps every
slot busy, telling each result alone as it arrives and asking one more (:mod:`nas.async_loop`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hardware_models
import proxies as proxy_lib
import search_spaces
from nas import executors, strategies
from nas.async_loop import AsyncDriver
from nas.evaluate import Evaluator
from nas.exploit import check_oracle, greedy_queries, resolve_labels
from nas.objectives import Constraints, Objective, parse_objectives
from nas.result import SearchResult
from nas.run import Candidate, RunStore

__all__ = ["DEFAULTS", "SearchResult", "search"]

log = logging.getLogger(__name__)

MAX_STALE_ASKS = 200
"""Asks in a row that propose nothing new before the loop decides the strategy has exhausted the space."""

DEFAULTS: dict[str, Any] = {
    "strategy": "evolution", "budget": 100, "objectives": ["synflow"], "proxies": [], "batch_size": 64,
    "data": None, "strategy_options": {},
}
"""Settings used when neither the caller nor the space's ``search_defaults`` give them."""

METRIC_OBJECTIVES = frozenset({"latency", "latency_ms"})
"""Objectives measured by the target's latency model rather than computed as proxies."""


def search(
    space: str | search_spaces.SearchSpace = "nb201",
    strategy: str | None = None,
    objectives: str | Sequence[str] | None = None,
    budget: int | None = None,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    *,
    target: str | None = None,
    latency_ms: float | None = None,
    max_params: float | None = None,
    max_flops: float | None = None,
    proxies: Sequence[str] | None = None,
    batch_size: int | None = None,
    data: str | None = None,
    oracle_queries: int | None = None,
    labels: str | os.PathLike[str] | Sequence[tuple[str, float]] | None = None,
    label_queries: int | None = None,
    executor: str = "serial",
    executor_options: dict[str, Any] | None = None,
    strategy_options: dict[str, Any] | None = None,
    space_options: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    plot: bool = True,
    evaluate: Callable[[str], Candidate] | None = None,
) -> SearchResult:
    """Search ``space`` with ``strategy`` for ``budget`` distinct candidates and return the result.

    Settings left ``None`` come from the space's ``search_defaults`` and then :data:`DEFAULTS`. Every
    candidate is written to ``out``'s database as it finishes. With ``resume=True`` the run in ``out``
    continues to ``budget`` (default: its stored budget) with its stored settings, evaluating nothing
    twice. ``oracle_queries=K`` (a space with true accuracies only) ends with RoBoT's greedy step: the top
    K candidates are queried and the best queried one is the pick. ``labels`` (an ``arch,accuracy`` CSV or
    pairs, stored in the run) feed the few-label ``ensemble_fit`` proxy; ``label_queries=N`` (an oracle
    only) makes them instead from the true accuracies of N architectures drawn with ``seed``.
    ``evaluate`` replaces the built evaluator (a lookup table in benchmarks); such a run can only be
    resumed with the same ``evaluate``.
    The run directory gets ``best.json``, ``pareto.csv`` and (with ``plot``) ``pareto.png``.

    Example:
        >>> result = search("nb201", "random", ["params"], budget=3, seed=0, progress=False)
        >>> len(result.candidates)
        3
    """
    run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="nas-run-"))
    if resume and not (run_dir / "run.sqlite").exists():
        raise FileNotFoundError(f"--resume {run_dir}: not a run directory (no run.sqlite)")
    if not resume and (run_dir / "run.sqlite").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose "
                              "another --out")
    if resume:
        store = RunStore(run_dir)
        config = dict(store.get_meta("config") or {})
        if not config:
            raise FileNotFoundError(f"--resume {run_dir}: the run has no stored settings")
        if budget is not None:
            config["budget"] = budget
        if oracle_queries is not None:
            config["oracle_queries"] = oracle_queries
        if config.get("evaluator") == "custom" and evaluate is None:
            raise ValueError(f"{run_dir} was searched with a custom evaluate function; resume it from Python "
                             "with the same evaluate=")
        space_obj = search_spaces.get(config["space"], **config.get("space_options", {}))
    else:
        if not isinstance(space, str):
            raise TypeError("pass the space by name (and space_options) so that the run can be resumed")
        space_obj = search_spaces.get(space, **(space_options or {}))
        defaults = dict(getattr(space_obj, "search_defaults", None) or {})
        if defaults.get("space_options"):  # e.g. OFA scores proxies at half resolution unless told otherwise
            space_options = {**defaults["space_options"], **(space_options or {})}
            space_obj = search_spaces.get(space, **space_options)
        given = {"strategy": strategy, "budget": budget, "objectives": objectives, "proxies": proxies,
                 "batch_size": batch_size, "data": data, "strategy_options": strategy_options}
        settings = resolve_settings(space_obj, given, target)
        objs = parse_objectives(settings["objectives"])
        config = {
            "space": space, "space_options": space_options or {}, "strategy": settings["strategy"],
            "strategy_options": settings["strategy_options"], "objectives": [str(o) for o in objs],
            "budget": int(settings["budget"]), "seed": int(seed), "target": target,
            "proxies": _proxy_names(objs, settings["proxies"], max_flops),
            "batch_size": int(settings["batch_size"]), "data": settings["data"],
            "constraints": {"latency_ms": latency_ms, "max_params": max_params, "max_flops": max_flops},
            "oracle_queries": int(oracle_queries or 0),
            "labels": resolve_labels(space_obj, labels, label_queries, seed),
            "label_queries": int(label_queries or 0),
            "evaluator": "custom" if evaluate is not None else "proxies",
        }
    if int(config["budget"]) < 1:
        raise ValueError(f"budget must be at least 1, got {config['budget']}")
    setup = _Setup.build(config, space_obj, evaluate)  # validates everything before the run is written
    store = RunStore(run_dir) if not resume else store
    store.set_meta("config", config)
    ex = executors.get(executor, **(executor_options or {}))
    try:
        return _run(setup, store, ex, progress, plot)
    finally:
        ex.close()
        store.close()


def resolve_settings(space: Any, given: dict[str, Any], target: str | None = None) -> dict[str, Any]:
    """Fill settings the caller left ``None`` from ``space.search_defaults``, then :data:`DEFAULTS`.

    A latency objective among the space's defaults is dropped when no target is given, so that a space
    may default to ``objectives=["zen", "latency"]`` and still search without ``--target``.
    """
    space_defaults = dict(getattr(space, "search_defaults", None) or {})
    out: dict[str, Any] = {}
    for key, value in given.items():
        if value is not None:
            out[key] = value
        elif key in space_defaults:
            out[key] = space_defaults[key]
            if key == "objectives" and target is None:
                names = [n for n in parse_objectives(value_list(out[key]))
                         if n.name not in METRIC_OBJECTIVES]
                out[key] = [str(o) for o in names] or DEFAULTS["objectives"]
        else:
            out[key] = DEFAULTS[key]
    out["objectives"] = value_list(out["objectives"])
    out["proxies"] = value_list(out["proxies"])
    out["strategy_options"] = dict(out["strategy_options"] or {})
    return out


def value_list(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


@dataclass
class _Setup:
    """Live objects built from a run's JSON config."""

    config: dict[str, Any]
    space: search_spaces.SearchSpace
    objectives: list[Objective]
    constraints: Constraints
    evaluate: Callable[[str], Candidate]

    @classmethod
    def build(cls, config: dict[str, Any], space: search_spaces.SearchSpace,
              evaluate: Callable[[str], Candidate] | None) -> _Setup:
        objs = parse_objectives(config["objectives"])
        strategies.registry.get(config["strategy"])  # fail early on an unknown strategy
        target_name = config.get("target")
        if target_name is None and any(o.name in METRIC_OBJECTIVES for o in objs):
            raise ValueError("a latency objective needs a target (--target); see `nas targets`")
        cons = Constraints(**config.get("constraints", {}))
        if cons.latency_ms is not None and target_name is None:
            raise ValueError("a latency limit (--latency-ms) needs a target (--target); see `nas targets`")
        check_oracle(space, int(config.get("oracle_queries", 0)))
        if config.get("labels") and "ensemble_fit" not in config["proxies"]:
            raise ValueError("labels (--labels or --label-queries) only fit the few-label ensemble: add "
                             "ensemble_fit to --objectives or --proxies")
        for name in config["proxies"] if evaluate is None else ():
            try:
                proxy_lib.get(name)
            except search_spaces.UnknownNameError:
                valid = ", ".join([*proxy_lib.list(), "latency"])
                raise ValueError(f"unknown objective or proxy {name!r}; valid: {valid}") from None
        target = hardware_models.get(target_name) if target_name else None
        if evaluate is None:
            batch = proxy_lib.load_batch(config.get("data"), config.get("batch_size", 64), config["seed"],
                                         tuple(space.input_shape))
            evaluate = Evaluator(space, tuple(config["proxies"]), batch, target, config["seed"],
                                 labels=config.get("labels"))
        return cls(config, space, objs, cons, evaluate)


def _proxy_names(objs: Sequence[Objective], extra: Sequence[str], max_flops: float | None) -> list[str]:
    """Proxies to compute: every objective that is not a latency, the extra ones, flops for a flops limit."""
    names = [o.name for o in objs if o.name not in METRIC_OBJECTIVES]
    if max_flops is not None:
        if "flops" not in proxy_lib.registry:
            raise ValueError("--max-flops needs the 'flops' proxy, which is not available; valid proxies: "
                             + ", ".join(proxy_lib.list()))
        names.append("flops")
    names += list(extra)
    return list(dict.fromkeys(names))


def _make_strategy(setup: _Setup, run_dir: Path) -> strategies.Strategy:
    """The configured strategy; one that keeps its own study gets a database inside the run directory."""
    config = setup.config
    options = dict(config.get("strategy_options", {}))
    factory = strategies.registry.get(config["strategy"])
    if getattr(factory, "uses_storage", False) and "storage" not in options:
        options["storage"] = str(run_dir / "optuna.journal")
    return factory(setup.space, seed=config["seed"], n_objectives=len(setup.objectives), **options)


def _run(setup: _Setup, store: RunStore, ex: executors.Executor, progress: bool, plot: bool) -> SearchResult:
    config = setup.config
    budget = int(config["budget"])
    space = setup.space
    result = SearchResult(store.candidates(), setup.objectives, setup.constraints, config, store.dir,
                          store.oracle())
    known: dict[str, Candidate] = {c.arch: c for c in result.candidates}
    started = time.perf_counter()
    if len(known) < budget:
        strategy = _make_strategy(setup, store.dir)
        bar = _Progress(budget, len(known), enabled=progress)
        finished = False
        try:
            if _ask_mode(store, strategy, ex, bool(known)) == "async":
                driver = AsyncDriver(strategy, space, store, result, budget, MAX_STALE_ASKS,
                                     on_result=lambda _: bar.update(result))
                driver.run(ex, setup.evaluate)
            else:
                _run_batched(setup, store, ex, strategy, result, known, bar)
            finished = True
        finally:
            bar.close()
            store.set_meta("elapsed_s", store.get_meta("elapsed_s", 0.0) + time.perf_counter() - started)
            if not finished:  # interrupted: leave outputs that match what the database holds
                result.write_outputs(store.dir, plot)
    queries = int(config.get("oracle_queries", 0))
    if queries:
        # A resumed run re-ranks its larger pool; earlier answers are reused, not asked again.
        result.oracle = greedy_queries(result, space, queries, store.oracle())
        store.set_oracle(result.oracle)
    result.write_outputs(store.dir, plot)
    return result


def _ask_mode(store: RunStore, strategy: strategies.Strategy, ex: executors.Executor, started: bool) -> str:
    """``async`` or ``batch``, fixed when a run starts; runs from before the asynchronous driver are batched."""
    mode = store.get_meta("ask_mode")
    if mode is None:
        fresh = not started and not store.asks()
        mode = "async" if fresh and getattr(strategy, "asynchronous", False) and ex.parallelism > 1 else "batch"
        store.set_meta("ask_mode", mode)
    return str(mode)


def _run_batched(setup: _Setup, store: RunStore, ex: executors.Executor, strategy: strategies.Strategy,
                 result: SearchResult, known: dict[str, Candidate], bar: _Progress) -> None:
    """Ask ``parallelism`` architectures, evaluate them all, tell them together; replay the log first."""
    config, space, budget = setup.config, setup.space, int(setup.config["budget"])
    logged = store.asks()
    seen: set[str] = set()
    seq = stale = 0
    while seq < len(logged) or len(known) < budget:
        replaying = seq < len(logged)
        n = len(logged[seq]) if replaying else min(ex.parallelism, budget - len(known))
        archs = strategy.ask(n)
        strings = [space.to_string(a) for a in archs]
        if replaying and strings != logged[seq]:
            log.warning("strategy %r proposed other architectures on resume than it did before (ask "
                        "%d); continuing live from here, nothing is evaluated twice", config["strategy"], seq)
            logged = logged[:seq]
            store.truncate_asks(seq)
            replaying = False
        if not replaying:
            store.log_ask(seq, strings)
        todo = list(dict.fromkeys(s for s in strings if s not in known))[: max(0, budget - len(known))]
        for cand in ex.map(setup.evaluate, todo):
            cand = store.add(cand)
            known[cand.arch] = cand
            result.candidates.append(cand)
            bar.update(result)
        told = [(a, s) for a, s in zip(archs, strings, strict=True) if s in known]
        if told:
            strategy.tell([a for a, _ in told], [result.oriented(known[s]) for _, s in told])
        stale = 0 if any(s not in seen for s in strings) else stale + 1
        seen.update(strings)
        seq += 1
        if stale >= MAX_STALE_ASKS:
            log.warning("no new architecture in %d asks; stopping at %d of %d candidates",
                        stale, len(known), budget)
            break


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
        self._best: Candidate | None = None

    def update(self, result: SearchResult) -> None:
        """Advance to the result's candidate count and show the best first-objective value so far."""
        if self._bar is None:
            return
        cand = result.candidates[-1]
        if result.constraints.feasible(cand) and (
                self._best is None or result.values(cand) > result.values(self._best)):
            self._best = cand
        text = ""
        if self._best is not None:
            o = result.objectives[0]
            value = self._best.scores.get(o.name, self._best.metrics.get(
                "latency_ms" if o.name == "latency" else o.name))
            text = f"best {o.name} = {value:.4g}" if value is not None else ""
        self._bar.update(self._task, completed=len(result.candidates), best=text)

    def close(self) -> None:
        """Stop drawing."""
        if self._bar is not None:
            self._bar.stop()
