"""The study: ask/tell over a durable run, the one core that every search goes through.

A :class:`Study` joins a search space, objectives, constraints, a strategy and a run directory.
``ask()`` returns a :class:`Trial` (an architecture to evaluate), ``tell(trial, values)`` records its
result and gives it to the strategy, and ``optimize(evaluate, budget, executor=...)`` is a thin loop over
the two that keeps an executor busy. Every ask and tell is logged as an event, in order, before the
strategy moves on, so reopening a run (:func:`load_study`) replays the events and rebuilds the strategy
exactly, evaluating nothing twice; a strategy that proposes something else than the log (its code
changed) keeps the log up to there and goes on live.

Example:
    >>> import nas, tempfile
    >>> study = nas.create_study("nb201", ["params"], strategy="random", storage=tempfile.mkdtemp())
    >>> trial = study.ask()
    >>> cand = study.tell(trial, {"params": 0.5})
    >>> study.best.arch == trial.string
    True
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import hardware_models
import proxies as proxy_lib
import search_spaces
from nas import executors, strategies
from nas.errors import ResumeConflict, SearchFailed
from nas.exploit import check_oracle, resolve_labels
from nas.objectives import Constraints, Objective, parse_objectives
from nas.optuna_mirror import OptunaMirror
from nas.optuna_mirror import attach as attach_mirror
from nas.result import SearchResult
from nas.run import Candidate, RunStore
from search_spaces import Arch, SearchSpace

__all__ = ["Study", "Trial", "create_study", "load_study"]

log = logging.getLogger(__name__)

MAX_STALE_ASKS = 200
"""Asks in a row that propose nothing new before a study decides its strategy has exhausted the space."""

FAIL_FAST = 5
"""A run whose first this many evaluations (or whole budget, if smaller) all failed stops: nothing works."""

METRIC_OBJECTIVES = frozenset({"latency", "latency_ms"})
"""Objectives measured by the target's latency model rather than computed as proxies."""

DEFAULTS: dict[str, Any] = {
    "strategy": "evolution", "budget": 100, "objectives": ["synflow"], "proxies": [], "batch_size": 64,
    "data": None, "strategy_options": {},
}
"""Settings used when neither the caller nor the space's ``search_defaults`` give them."""

Evaluate = Callable[[str], Any]
"""An evaluation: arch string -> a :class:`Candidate`, a ``{name: value}`` mapping, or the objective values."""


@dataclass(frozen=True)
class Trial:
    """One proposal of the strategy: its number in the run, the architecture and its canonical string."""

    number: int
    arch: Arch
    string: str


class Study:
    """Ask/tell over one run directory; see the module docstring. Create with :func:`create_study`."""

    mirror: OptunaMirror | None = None  # the run's Optuna copy (nas.optuna_mirror), set by create/load_study

    def __init__(self, space: SearchSpace, objectives: list[Objective], strategy: strategies.Strategy,
                 store: RunStore, constraints: Constraints, config: dict[str, Any]) -> None:
        self.space, self.objectives, self.strategy = space, objectives, strategy
        self.store, self.constraints, self.config = store, constraints, config
        self.result = SearchResult(store.candidates(), objectives, constraints, config, store.dir, store.oracle())
        self._known: dict[str, Candidate] = {c.arch: c for c in self.result.candidates}
        self._open: list[Trial] = []  # asked, not yet told
        self._number = 0
        self._stale = 0
        self._seen: set[str] = set()
        self._evaluator: Evaluate | None = None
        self._batch: proxy_lib.Batch | None = None  # the calibration batch, once loaded
        self._replay()

    # -- what the run holds --------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        """The run directory."""
        return self.store.dir

    @property
    def candidates(self) -> list[Candidate]:
        """Every recorded candidate in arrival order."""
        return self.result.candidates

    @property
    def best(self) -> Candidate | None:
        """The best feasible candidate so far (see :attr:`SearchResult.best`)."""
        return self.result.best

    @property
    def pareto(self) -> list[Candidate]:
        """The feasible candidates no other feasible candidate dominates."""
        return self.result.pareto

    def to_dataframe(self) -> Any:
        """The candidates as a ``pandas.DataFrame``, one row per candidate."""
        return self.result.to_dataframe()

    # -- ask / tell ----------------------------------------------------------------------------------
    def ask(self) -> Trial:
        """One new proposal of the strategy (logged before it is returned); a strategy with nothing more
        to propose raises :class:`nas.strategies.Exhausted`."""
        return self.ask_batch(1)[0]

    def ask_batch(self, n: int) -> list[Trial]:
        """``n`` proposals from one ``ask`` of the strategy (a batch for a generational strategy)."""
        archs = self.strategy.ask(n)
        trials = [Trial(self._number + i, a, self.space.to_string(a)) for i, a in enumerate(archs)]
        self._number += len(trials)
        self.store.log_event("ask", [t.string for t in trials])
        self._open.extend(trials)
        new = [t.string for t in trials if t.string not in self._seen]
        # a one-shot method may derive the same cell for many epochs; it ends by raising Exhausted
        one_shot = getattr(self.strategy, "one_shot", False)
        self._stale = 0 if new or one_shot else self._stale + 1
        self._seen.update(t.string for t in trials)
        return trials

    def tell(self, trial: Trial, values: Mapping[str, float] | Sequence[float] | float | Candidate | None = None,
             *, state: str = "complete", error: str | None = None) -> Candidate:
        """Record ``trial``'s result and give it to the strategy; returns the stored candidate.

        ``values`` maps objective (or any score) names to numbers, or lists the objectives' values in
        order. ``state="failed"`` (with ``error``) records a failure: it is never a score, ranks after
        every real value and never becomes the best. An architecture already recorded keeps its first
        result (it is never evaluated twice).
        """
        if state not in ("complete", "failed"):
            raise ValueError(f"state must be 'complete' or 'failed', got {state!r}")
        if trial not in self._open:
            raise ValueError(f"trial {trial.number} ({trial.string}) is not open: it was told already or "
                             "was not asked by this study")
        if trial.string not in self._known:
            if state == "failed":
                cand = Candidate(trial.string, {}, {}, status="failed", error=error or "failed")
            elif values is None:
                raise ValueError("tell(trial, values): give the values, or state='failed' with an error")
            else:
                cand = as_candidate(trial.string, values, self.objectives)
            self.record(cand)
        self._tell_group([trial])
        return self._known[trial.string]

    def record(self, cand: Candidate) -> Candidate:
        """Persist a result (at once, so a crash loses nothing) without telling the strategy."""
        if cand.arch in self._known:
            return self._known[cand.arch]
        cand = self.store.add(cand)
        if self.mirror is not None:
            self.mirror.add(cand)
        self._known[cand.arch] = cand
        self.result.candidates.append(cand)
        return cand

    def _tell_group(self, trials: list[Trial]) -> None:
        """Tell the strategy these recorded trials in one call (logged first)."""
        self.store.log_event("tell", [t.string for t in trials])
        for t in trials:
            self._open.remove(t)
        self.strategy.tell([t.arch for t in trials], [self.result.oriented(self._known[t.string]) for t in trials])

    # -- the loop ------------------------------------------------------------------------------------
    def evaluator(self) -> Evaluate:
        """The evaluator this study's settings describe (built once): the proxies', or the strategy's own
        for a strategy that scores its proposals itself (a one-shot method's inherited-weight accuracy)."""
        if self._evaluator is None:
            if self.config.get("evaluator") == "strategy":
                self._evaluator = self.strategy.evaluate  # type: ignore[attr-defined]
            else:
                self._evaluator = build_evaluator(self.config, self.space, self._batch)
        return self._evaluator

    def optimize(self, evaluate: Evaluate | None = None, budget: int | None = None,
                 executor: str | executors.Executor = "serial", *, progress: bool = False,
                 executor_options: dict[str, Any] | None = None) -> SearchResult:
        """Ask, evaluate and tell until ``budget`` distinct candidates are recorded; returns the result.

        ``evaluate`` (default: :meth:`evaluator`) maps an arch string to a :class:`Candidate`, a
        ``{name: value}`` mapping or the objective values; an exception is recorded as a failed
        candidate. A strategy that declares ``asynchronous = True`` on an executor with several slots
        is told each result as it arrives; others are told a batch of ``parallelism`` at once. If the
        first evaluations all fail, :class:`SearchFailed` names the first error.
        """
        budget = int(budget if budget is not None else self.config.get("budget", DEFAULTS["budget"]))
        if budget < 1:
            raise ValueError(f"budget must be at least 1, got {budget}")
        guarded = _Guarded(evaluate if evaluate is not None else self.evaluator(), tuple(self.objectives))
        ex = executors.get(executor, **(executor_options or {})) if isinstance(executor, str) else executor
        started = time.perf_counter()
        bar = _Progress(budget, len(self._known), enabled=progress)
        try:
            if len(self._known) < budget:
                if self._mode(ex) == "async":
                    self._optimize_async(ex, guarded, budget, bar)
                else:
                    self._optimize_batched(ex, guarded, budget, bar)
            self._check_failures(budget, final=True)
            final = getattr(self.strategy, "final", None)
            if final is not None:  # a one-shot method's answer is its last derived cell, not the best epoch
                self.result.pick = self.space.to_string(final)
                self.store.set_meta("pick", self.result.pick)
        finally:
            bar.close()
            self.store.set_meta("elapsed_s", self.store.get_meta("elapsed_s", 0.0) + time.perf_counter() - started)
            if isinstance(executor, str):
                ex.close()
        return self.result

    def _mode(self, ex: executors.Executor) -> str:
        """``async`` or ``batch``, fixed when a run first optimizes."""
        mode = self.store.get_meta("ask_mode")
        if mode is None:
            fresh = not self._known and self._number == 0
            asynchronous = getattr(self.strategy, "asynchronous", False) and ex.parallelism > 1
            mode = "async" if fresh and asynchronous else "batch"
            self.store.set_meta("ask_mode", mode)
        return str(mode)

    def _arrived(self, cand: Candidate, budget: int, bar: _Progress) -> Candidate:
        cand = self.record(cand)
        bar.update(self.result)
        self._check_failures(budget)
        return cand

    def _optimize_batched(self, ex: executors.Executor, evaluate: Evaluate, budget: int, bar: _Progress) -> None:
        """Ask ``parallelism`` architectures, evaluate them all, tell them together."""
        while len(self._known) < budget and self._stale < MAX_STALE_ASKS:
            try:
                trials = list(self._open) or self.ask_batch(min(ex.parallelism, budget - len(self._known)))
            except strategies.Exhausted:
                break
            todo = list(dict.fromkeys(t.string for t in trials if t.string not in self._known))
            for cand in ex.map(evaluate, todo[: budget - len(self._known)]):
                self._arrived(cand, budget, bar)
            told = [t for t in trials if t.string in self._known]
            if told:
                self._tell_group(told)
            if len(told) < len(trials):  # the budget cut the batch: its other trials stay open
                break
        self._warn_stale(budget)

    def _optimize_async(self, ex: executors.Executor, evaluate: Evaluate, budget: int, bar: _Progress) -> None:
        """Keep every slot busy; tell each result alone as it arrives and ask one more."""
        # Results stored before a stop but not yet told go first, in the order they arrived.
        for t in sorted((t for t in self._open if t.string in self._known),
                        key=lambda t: self._known[t.string].index):
            self._tell_group([t])
        in_flight: dict[str, list[Trial]] = {}
        for t in self._open:
            in_flight.setdefault(t.string, []).append(t)
        leftovers = list(in_flight)[: max(0, budget - len(self._known))]

        def feed() -> Iterator[str]:
            yield from leftovers
            while len(self._known) + len(in_flight) < budget and self._stale < MAX_STALE_ASKS:
                try:
                    trial = self.ask_batch(1)[0]
                except strategies.Exhausted:
                    return
                if trial.string in self._known:
                    self._tell_group([trial])
                elif trial.string in in_flight:
                    in_flight[trial.string].append(trial)
                else:
                    in_flight[trial.string] = [trial]
                    yield trial.string

        for cand in ex.map(evaluate, feed()):
            cand = self._arrived(cand, budget, bar)
            for trial in in_flight.pop(cand.arch, []):
                self._tell_group([trial])
        self._warn_stale(budget)

    def _warn_stale(self, budget: int) -> None:
        if self._stale >= MAX_STALE_ASKS:
            log.warning("no new architecture in %d asks; stopping at %d of %d candidates", self._stale,
                        len(self._known), budget)

    def _check_failures(self, budget: int, final: bool = False) -> None:
        """Stop a run in which nothing could be evaluated, naming the first error."""
        cands = self.result.candidates
        if any(c.status == "ok" for c in cands) or not cands:
            return
        if final or len(cands) >= min(FAIL_FAST, budget):
            first = cands[0]
            raise SearchFailed(f"all {len(cands)} candidates evaluated so far failed, so nothing can be scored; "
                               f"the first error ({first.arch}): {first.error}")

    # -- resume --------------------------------------------------------------------------------------
    def _replay(self) -> None:
        """Rebuild the strategy from the logged events and the stored results, evaluating nothing."""
        events = self.store.events()
        if not events and self.store.asks():
            log.warning("%s was written by an older version without an event log: its strategy starts "
                        "afresh (stored candidates are reused, never evaluated again)", self.dir)
            return
        for seq, kind, strings in events:
            if kind == "ask":
                archs = self.strategy.ask(len(strings))
                trials = [Trial(self._number + i, a, self.space.to_string(a)) for i, a in enumerate(archs)]
                self._number += len(trials)
                self._open.extend(trials)
                self._seen.update(t.string for t in trials)
                if [t.string for t in trials] != strings:
                    log.warning("strategy %r proposed other architectures on resume than it did before "
                                "(event %d); continuing live from here, nothing is evaluated twice",
                                self.config.get("strategy"), seq)
                    self.store.truncate_events(seq)
                    self.store.log_event("ask", [t.string for t in trials])
                    return
                continue
            group = []
            for s in strings:
                trial = next((t for t in self._open if t.string == s and t not in group), None)
                if trial is None or s not in self._known:  # cannot happen unless the database lost rows
                    log.warning("the event log of %s does not match its results from event %d; dropping "
                                "the rest of the log", self.dir, seq)
                    self.store.truncate_events(seq)
                    return
                group.append(trial)
            for t in group:
                self._open.remove(t)
            self.strategy.tell([t.arch for t in group], [self.result.oriented(self._known[t.string]) for t in group])

    def close(self) -> None:
        """Release the run directory."""
        self.store.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- building a study ------------------------------------------------------------------------------------
def create_study(
    space: str | SearchSpace = "nb201",
    objectives: str | Sequence[str | Callable[..., float]] | None = None,
    strategy: str | strategies.StrategySpec | strategies.Strategy | None = None,
    storage: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    budget: int | None = None,
    constraints: Constraints | Mapping[str, float | None] | None = None,
    target: str | None = None,
    proxies: Sequence[str | Callable[..., float]] | None = None,
    data: str | None = None,
    batch_size: int | None = None,
    labels: str | os.PathLike[str] | Sequence[tuple[str, float]] | None = None,
    label_queries: int | None = None,
    oracle_queries: int | None = None,
    space_options: Mapping[str, Any] | None = None,
    strategy_options: Mapping[str, Any] | None = None,
    device: str | None = None,
    cache: Any = True,
    evaluator: str = "proxies",
) -> Study:
    """A new study in ``storage`` (a run directory; default: a fresh temporary one).

    ``space``, ``strategy`` and proxies are names or objects: a space instance, a strategy from
    :mod:`nas.strategies` (``Evolution(population_size=50)``) or any object with ``ask``/``tell``, and a
    proxy as a plain function ``fn(model, batch) -> float`` (registered under its name). Settings left
    ``None`` come from the space's ``search_defaults``, then :data:`DEFAULTS`. The run stores a spec of
    them, so :func:`load_study` rebuilds everything it can; custom objects must be passed again.
    ``strategy_options`` are options of a strategy given by name (or of the space's default strategy).
    """
    import tempfile

    run_dir = Path(storage) if storage is not None else Path(tempfile.mkdtemp(prefix="nas-run-"))
    if (run_dir / "run.sqlite").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it (--resume / nas.load_study) or choose "
                              "another directory")
    space_obj, space_name, space_opts = _resolve_space(space, space_options)
    objective_names, custom = _register_custom(objectives)
    extra, custom_extra = _register_custom(proxies)
    strategy_name, strategy_opts, strategy_obj = _resolve_strategy(strategy)
    own = strategy_obj if strategy_obj is not None else (
        strategies.registry.get(strategy_name) if strategy_name in strategies.registry else None)
    if evaluator == "proxies" and callable(getattr(own, "evaluate", None)):
        evaluator = "strategy"  # e.g. a one-shot method: its supernet scores what it proposes
        objective_names = objective_names or list(getattr(own, "default_objectives", []))
    if strategy_options:
        if strategy_obj is not None or strategy_opts:
            raise ValueError("strategy_options go with a strategy name; a strategy spec or object carries its own")
        strategy_opts = dict(strategy_options)
    if evaluator == "strategy" and strategy_obj is None:  # a one-shot method trains on --data itself
        strategy_opts = dict(strategy_opts or {})
        if data is not None:
            strategy_opts.setdefault("data", data)
            data = None
        if budget is None:  # its own default (SPOS: cells scored), else one new cell per epoch at most
            budget = int(getattr(own, "default_budget", None) or strategy_opts.get("epochs")
                         or _default_of(own, "epochs") or DEFAULTS["budget"])
    given = {"strategy": strategy_name, "budget": budget, "objectives": objective_names or None,
             "proxies": extra or None, "batch_size": batch_size, "data": data,
             "strategy_options": strategy_opts}
    settings = resolve_settings(space_obj, given, target)
    objs = parse_objectives(settings["objectives"])
    cons = constraints if isinstance(constraints, Constraints) else Constraints(**(constraints or {}))
    config: dict[str, Any] = {
        "space": space_name, "space_options": space_opts, "strategy": settings["strategy"],
        "strategy_options": settings["strategy_options"], "objectives": [str(o) for o in objs],
        "budget": int(settings["budget"]), "seed": int(seed), "target": target,
        "proxies": proxy_names(objs, settings["proxies"], cons.max_flops),
        "batch_size": int(settings["batch_size"]), "data": settings["data"],
        "constraints": {"latency_ms": cons.latency_ms, "max_params": cons.max_params,
                        "max_flops": cons.max_flops},
        "oracle_queries": int(oracle_queries or 0),
        "labels": resolve_labels(space_obj, labels, label_queries, int(seed)),
        "label_queries": int(label_queries or 0),
        "evaluator": evaluator, "custom_proxies": sorted(set(custom) | set(custom_extra)),
        "device": device, "cache": _cache_setting(cache),
    }
    validate(config, space_obj)
    batch = None
    if evaluator == "proxies":  # the data must fit the space before anything is written
        batch = load_data(config, space_obj)
        config["data_digest"] = data_digest(config, batch)
    if space_opts.get("accuracy_table"):
        config["accuracy_table_digest"] = file_digest(space_opts.get("accuracy_table"))
    run_dir.mkdir(parents=True, exist_ok=True)
    strat = strategy_obj if strategy_obj is not None else make_strategy(config, space_obj, run_dir)
    store = RunStore(run_dir)
    try:
        store.lock()
        store.set_meta("config", config)
    except BaseException:
        store.close()
        raise
    study = Study(space_obj, objs, strat, store, cons, config)
    study._batch = batch
    study.mirror = attach_mirror(study)
    return study


def load_study(storage: str | os.PathLike[str], *, space: SearchSpace | None = None,
               strategy: strategies.Strategy | None = None,
               proxies: Sequence[Callable[..., float]] = ()) -> Study:
    """Reopen the study in ``storage`` and replay its events; custom objects of the run are passed again.

    A custom strategy must be passed as a fresh instance made like the original (the replay brings it
    to where the run stopped); a custom proxy function is registered again under its name.
    """
    run_dir = Path(storage)
    if not (run_dir / "run.sqlite").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no run.sqlite)")
    store = RunStore(run_dir)
    try:
        store.lock()
        config = dict(store.get_meta("config") or {})
        if not config:
            raise FileNotFoundError(f"{run_dir}: the run has no stored settings")
        _register_custom(list(proxies))
        missing = [n for n in config.get("custom_proxies", []) if n not in proxy_lib.registry]
        if missing and config.get("evaluator") == "proxies":
            raise ValueError(f"{run_dir} uses the custom proxies {missing}: pass them again "
                             "(nas.load_study(..., proxies=[fn]))")
        space_obj = space if space is not None else _stored_space(config)
        if space is not None and space.name != config["space"]:
            raise ResumeConflict(f"{run_dir} searched the space {config['space']!r}, not {space.name!r}")
        if strategy is None and str(config["strategy"]).startswith("custom:"):
            raise ValueError(f"{run_dir} was searched with the custom strategy {config['strategy'][7:]}: "
                             "pass a fresh instance again (nas.load_study(..., strategy=...))")
        strat = strategy if strategy is not None else make_strategy(config, space_obj, run_dir)
        objs = parse_objectives(config["objectives"])
        cons = Constraints(**config.get("constraints", {}))
        study = Study(space_obj, objs, strat, store, cons, config)
        study.mirror = attach_mirror(study)
        return study
    except BaseException:
        store.close()
        raise


# -- settings --------------------------------------------------------------------------------------------
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


def proxy_names(objs: Sequence[Objective], extra: Sequence[str], max_flops: float | None) -> list[str]:
    """Proxies to compute: every objective that is not a latency, the extra ones, flops for a flops limit."""
    names = [o.name for o in objs if o.name not in METRIC_OBJECTIVES]
    if max_flops is not None:
        if "flops" not in proxy_lib.registry:
            raise ValueError("--max-flops needs the 'flops' proxy, which is not available; valid proxies: "
                             + ", ".join(proxy_lib.list()))
        names.append("flops")
    names += list(extra)
    return list(dict.fromkeys(names))


def validate(config: dict[str, Any], space: SearchSpace) -> None:
    """Check a run's settings before anything is written; raises ``ValueError`` naming the problem."""
    objs = parse_objectives(config["objectives"])
    if int(config["budget"]) < 1:
        raise ValueError(f"budget must be at least 1, got {config['budget']}")
    if not str(config["strategy"]).startswith("custom:"):
        strategies.registry.get(config["strategy"])
    target_name = config.get("target")
    if target_name is None and any(o.name in METRIC_OBJECTIVES for o in objs):
        raise ValueError("a latency objective needs a target (--target); see `nas targets`")
    if config.get("constraints", {}).get("latency_ms") is not None and target_name is None:
        raise ValueError("a latency limit (--latency-ms) needs a target (--target); see `nas targets`")
    if target_name is not None:
        hardware_models.get(target_name)
    check_oracle(space, int(config.get("oracle_queries", 0)))
    if config.get("labels") and "ensemble_fit" not in config["proxies"]:
        raise ValueError("labels (--labels or --label-queries) only fit the few-label ensemble: add "
                         "ensemble_fit to --objectives or --proxies")
    if config.get("evaluator") == "proxies":
        for name in config["proxies"]:
            if name not in proxy_lib.registry:
                valid = ", ".join([*proxy_lib.list(), "latency"])
                raise ValueError(f"unknown objective or proxy {name!r}; valid: {valid}")
        check = getattr(proxy_lib, "check_available", None)
        if check is not None:
            check(space, config["proxies"])


def build_evaluator(config: dict[str, Any], space: SearchSpace, batch: proxy_lib.Batch | None = None) -> Evaluate:
    """The proxy :class:`~nas.evaluate.Evaluator` of a run's settings; checks that its data fit the space."""
    from nas.evaluate import Evaluator
    from proxies.cache import ProxyCache

    if config.get("evaluator", "proxies") != "proxies":
        raise ValueError(f"{config.get('evaluator')!r} runs are evaluated by a custom function: pass it to "
                         "optimize(evaluate=...)")
    batch = batch if batch is not None else load_data(config, space)
    target = hardware_models.get(config["target"]) if config.get("target") else None
    cache_dir = config.get("cache")
    cache = ProxyCache(None if cache_dir is True else cache_dir) if cache_dir else None
    return Evaluator(space, tuple(config["proxies"]), batch, target, int(config["seed"]), config.get("device"),
                     cache, labels=config.get("labels"))


def load_data(config: dict[str, Any], space: SearchSpace) -> proxy_lib.Batch:
    """The calibration batch of a run, checked against what the space's networks take."""
    batch = proxy_lib.load_batch(config.get("data"), config.get("batch_size", 64), int(config["seed"]),
                                 tuple(space.input_shape))
    check_batch(space, batch, config.get("data"))
    return batch


def check_batch(space: SearchSpace, batch: proxy_lib.Batch, source: str | None) -> None:
    """Raise ``ValueError`` when ``batch`` cannot feed ``space``'s networks (channels, images vs tokens)."""
    shape = tuple(space.input_shape)
    x = batch.inputs
    name = source or "cifar10"
    if len(shape) == 1:
        if x.is_floating_point() or x.dim() != 2:
            raise ValueError(f"--data {name}: space {space.name!r} takes token sequences (a text file), "
                             f"got inputs of shape {tuple(x.shape)}")
        return
    if x.dim() != 4:
        raise ValueError(f"--data {name}: space {space.name!r} takes images (N, C, H, W), got inputs of "
                         f"shape {tuple(x.shape)}")
    if x.shape[1] != shape[0]:
        raise ValueError(f"--data {name}: its images have {x.shape[1]} channel(s), but space {space.name!r} "
                         f"takes {shape[0]}-channel inputs ({'x'.join(map(str, shape))})")


def data_digest(config: dict[str, Any], batch: proxy_lib.Batch) -> str | None:
    """A digest of the calibration batch a run reads (a changed data file is caught on resume)."""
    if config.get("data") in (None, "cifar10", "gaussian"):
        return None  # shipped or generated: fixed by the package and the seed
    return hashlib.sha1(batch.inputs.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def file_digest(path: str | os.PathLike[str] | None) -> str | None:
    """SHA-1 of a file's bytes (``None`` for no file)."""
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


RESUMABLE = frozenset({"budget", "oracle_queries", "device", "cache"})
"""Settings a resumed run may change; every other given flag must agree with the stored run."""

FLAGS = {"space": "--space", "strategy": "--strategy", "objectives": "--objectives", "seed": "--seed",
         "target": "--target", "latency_ms": "--latency-ms", "max_params": "--max-params",
         "max_flops": "--max-flops", "proxies": "--proxies", "batch_size": "--batch-size", "data": "--data",
         "labels": "--labels", "label_queries": "--label-queries", "strategy_options": "--option",
         "space_options": "--space-option"}
"""The command-line flag of each setting, for messages."""


def check_resume(run_dir: Path, config: dict[str, Any], given: dict[str, Any]) -> None:
    """Raise :class:`ResumeConflict` when a setting given on resume contradicts the stored run."""
    for key, value in given.items():
        if value is None or key in RESUMABLE:
            continue
        stored = _stored_setting(config, key)
        wanted = _normalise_setting(key, value, config)
        if wanted != stored:
            raise ResumeConflict(
                f"--resume {run_dir}: {FLAGS.get(key, key)} {_show(wanted)} contradicts the stored run's "
                f"{_show(stored)}; only --budget and --oracle-queries may change on resume (start a new "
                "run with another --out for other settings)")


def check_inputs_unchanged(run_dir: Path, config: dict[str, Any], space: SearchSpace) -> None:
    """Raise :class:`ResumeConflict` when the run's data or accuracy table changed since it started."""
    if config.get("data_digest") is not None and config.get("evaluator") == "proxies":
        now = data_digest(config, load_data(config, space))
        if now != config["data_digest"]:
            raise ResumeConflict(f"--resume {run_dir}: --data {config.get('data')} changed since the run started "
                                 f"(digest {config['data_digest']} then, {now} now); restore it or start a new run")
    table = config.get("space_options", {}).get("accuracy_table")
    if config.get("accuracy_table_digest") is not None:
        now = file_digest(table)
        if now != config["accuracy_table_digest"]:
            raise ResumeConflict(f"--resume {run_dir}: --accuracy-table {table} changed since the run started "
                                 f"(digest {config['accuracy_table_digest']} then, {now} now)")


def _stored_setting(config: dict[str, Any], key: str) -> Any:
    if key in ("latency_ms", "max_params", "max_flops"):
        return config.get("constraints", {}).get(key)
    if key == "proxies":  # the extra proxies: what was computed beyond the objectives
        objs = {o.name for o in parse_objectives(config["objectives"])}
        return [p for p in config.get("proxies", []) if p not in objs and p != "flops"] or None
    if key == "labels":
        return [tuple(x) for x in config.get("labels") or []] or None
    return config.get(key)


def _normalise_setting(key: str, value: Any, config: dict[str, Any]) -> Any:
    if key == "objectives":
        return [str(o) for o in parse_objectives(value_list(value) if isinstance(value, str) else list(value))]
    if key == "proxies":
        objs = {o.name for o in parse_objectives(config["objectives"])}
        return [p for p in value_list(value) if p not in objs and p != "flops"] or None
    if key == "space":
        return value if isinstance(value, str) else value.name
    if key == "labels":
        return [tuple(x) for x in resolve_labels(None, value, None, 0) or []] or None
    if key == "space_options":  # only the options given must agree; the space's defaults fill the rest
        stored = config.get("space_options", {})
        return {**stored, **value}
    if key == "strategy_options":
        return dict(value)
    if key in ("latency_ms", "max_params", "max_flops"):
        return float(value)
    if key in ("seed", "batch_size", "label_queries"):
        return int(value)
    if key == "data":
        return str(value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _cache_setting(cache: Any) -> bool | str:
    """A JSON-able form of the cache choice: True (default folder), False, or a folder path."""
    from proxies.cache import ProxyCache

    if isinstance(cache, ProxyCache):
        return str(cache.dir)
    if isinstance(cache, (str, os.PathLike)):
        return os.fspath(cache)
    return bool(cache)


def _resolve_space(space: str | SearchSpace, options: Mapping[str, Any] | None
                   ) -> tuple[SearchSpace, str, dict[str, Any]]:
    """The space object, its registered name and the options that rebuild it."""
    if isinstance(space, str):
        obj = search_spaces.get(space, **dict(options or {}))
        defaults = dict(getattr(obj, "search_defaults", None) or {})
        if defaults.get("space_options"):  # e.g. OFA scores proxies at half resolution unless told otherwise
            options = {**defaults["space_options"], **dict(options or {})}
            obj = search_spaces.get(space, **options)
        return obj, space, dict(options or {})
    if options:
        raise ValueError("space_options go with a space name; a space object carries its own options")
    return space, space.name, space_options_of(space)


def space_options_of(space: SearchSpace) -> dict[str, Any]:
    """Constructor options of a space object that differ from their defaults (JSON-able ones)."""
    try:
        params = inspect.signature(type(space).__init__).parameters
    except (TypeError, ValueError):
        return {}
    out = {}
    for n, p in params.items():
        if n == "self" or p.default is inspect.Parameter.empty or not hasattr(space, n):
            continue
        value = getattr(space, n)
        if isinstance(value, (int, float, str, bool)) and value != p.default:
            out[n] = value
    return out


def _stored_space(config: dict[str, Any]) -> SearchSpace:
    try:
        return search_spaces.get(config["space"], **config.get("space_options", {}))
    except search_spaces.UnknownNameError:
        raise ValueError(f"the run's space {config['space']!r} is not registered here: pass the space object "
                         "again (nas.load_study(..., space=...))") from None


def _register_custom(items: str | Sequence[str | Callable[..., float]] | None) -> tuple[list[str], list[str]]:
    """Names of ``items``, registering each plain function as a proxy under its name (idempotent)."""
    if items is None:
        return [], []
    if isinstance(items, str):
        return value_list(items), []
    names, custom = [], []
    for item in items:
        if callable(item):
            name = getattr(item, "__name__", None)
            if not name or name == "<lambda>":
                raise ValueError("a custom proxy must be a named function (def my_proxy(model, batch): ...)")
            doc = (inspect.getdoc(item) or name).splitlines()[0]
            proxy_lib.proxy(name, doc)(item)
            names.append(name)
            custom.append(name)
        else:
            names.append(str(item))
    return names, custom


def _resolve_strategy(strategy: Any) -> tuple[str | None, dict[str, Any] | None, strategies.Strategy | None]:
    """(name, options, instance) of a strategy given by name, spec or instance."""
    if strategy is None or isinstance(strategy, str):
        return strategy, None, None
    if isinstance(strategy, strategies.StrategySpec):
        return strategy.name, dict(strategy.options), None
    if callable(getattr(strategy, "ask", None)) and callable(getattr(strategy, "tell", None)):
        return f"custom:{type(strategy).__qualname__}", {}, strategy
    raise ValueError(f"strategy must be a name ({', '.join(strategies.registry.list())}), a spec such as "
                     f"nas.strategies.Evolution(population_size=50), or an object with ask/tell; got {strategy!r}")


def _default_of(factory: Any, name: str) -> Any:
    """A factory's default for keyword ``name``: its signature's, else its ``default_<name>`` attribute."""
    try:
        param = inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):
        param = None
    if param is not None and param.default is not inspect.Parameter.empty:
        return param.default
    return getattr(factory, f"default_{name}", None)


def make_strategy(config: dict[str, Any], space: SearchSpace, run_dir: Path) -> strategies.Strategy:
    """The configured strategy; one that keeps its own study gets a database inside the run directory."""
    options = dict(config.get("strategy_options", {}))
    factory = strategies.registry.get(config["strategy"])
    if getattr(factory, "uses_storage", False) and "storage" not in options:
        options["storage"] = str(run_dir / "optuna.journal")
    n_objectives = len(parse_objectives(config["objectives"]))
    strategies.registry.check_options(config["strategy"], options, fixed=("space", "seed", "n_objectives"))
    return factory(space, seed=int(config["seed"]), n_objectives=n_objectives, **options)


def as_candidate(arch: str, out: Any, objectives: Sequence[Objective]) -> Candidate:
    """An evaluation's output as a :class:`Candidate` (a candidate, a name -> value map, or values)."""
    if isinstance(out, Candidate):
        return out
    if isinstance(out, Mapping):
        scores = {str(k): float(v) for k, v in out.items()}
    else:
        values = [out] if np.isscalar(out) else list(out)
        if len(values) != len(objectives):
            raise ValueError(f"got {len(values)} values for {len(objectives)} objectives "
                             f"({', '.join(o.name for o in objectives)})")
        scores = {o.name: float(v) for o, v in zip(objectives, values, strict=True)}
    metrics = {k: scores.pop(k) for k in ("latency_ms", "params", "flops") if k in scores and k not in
               {o.name for o in objectives}}
    return Candidate(arch, scores, metrics)


@dataclass
class _Guarded:
    """Wraps an evaluation so that its output is a :class:`Candidate` and an exception a failed one."""

    evaluate: Evaluate
    objectives: tuple[Objective, ...]

    def __call__(self, arch: str) -> Candidate:
        start = time.perf_counter()
        try:
            return as_candidate(arch, self.evaluate(arch), self.objectives)
        except Exception as err:  # noqa: BLE001 - one candidate's failure is recorded, never a stop
            log.warning("evaluation of %s failed: %s", arch, err)
            text = "".join(traceback.format_exception_only(type(err), err)).strip()
            return Candidate(arch, {}, {}, status="failed", error=text, wall_s=time.perf_counter() - start)


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
            text = f"best {o.name} = {value:.4g}" if value is not None and math.isfinite(value) else ""
        self._bar.update(self._task, completed=len(result.candidates), best=text)

    def close(self) -> None:
        """Stop drawing."""
        if self._bar is not None:
            self._bar.stop()
