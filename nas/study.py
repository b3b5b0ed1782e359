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

import proxies as proxy_lib
from nas import executors, strategies
from nas.errors import ResumeConflict, SearchFailed
from nas.exploit import RecordedOracle, resolve_labels
from nas.objectives import Constraints, Objective, parse_objectives
from nas.optuna_mirror import OptunaMirror
from nas.optuna_mirror import attach as attach_mirror
from nas.result import SearchResult
from nas.run import Candidate, RunStore
from nas.settings import (
    DEFAULTS,
    METRIC_OBJECTIVES,
    Evaluate,
    build_evaluator,
    cache_setting,
    check_inputs_unchanged,
    data_digest,
    default_of,
    file_digest,
    load_data,
    make_strategy,
    predictor_settings,
    proxy_names,
    register_custom,
    resolve_settings,
    resolve_space,
    resolve_strategy,
    stored_space,
    supernet_scorer,
    validate,
)
from search_spaces import Arch, SearchSpace

__all__ = ["DEFAULTS", "METRIC_OBJECTIVES", "Study", "Trial", "create_study", "load_study"]

log = logging.getLogger(__name__)

MAX_STALE_ASKS = 200
"""Asks in a row that propose nothing new before a study decides its strategy has exhausted the space."""

FAIL_FAST = 5
"""A run whose first this many evaluations (or whole budget, if smaller) all failed stops: nothing works."""





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
        if getattr(strategy, "queries_oracle", False) and getattr(strategy, "oracle", None) is not None:
            # a strategy that labels with the oracle itself: answers are stored as they come, read back on replay
            strategy.oracle = RecordedOracle(strategy.oracle, space, store, self.result.oracle)  # type: ignore[attr-defined]
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
    supernet: str | os.PathLike[str] | None = None,
    val_size: int | None = None,
    bn_batches: int | None = None,
    teacher: str | os.PathLike[str] | None = None,
) -> Study:
    """A new study in ``storage`` (a run directory; default: a fresh temporary one).

    ``space``, ``strategy`` and proxies are names or objects: a space instance, a strategy from
    :mod:`nas.strategies` (``Evolution(population_size=50)``) or any object with ``ask``/``tell``, and a
    proxy as a plain function ``fn(model, batch) -> float`` (registered under its name). Settings left
    ``None`` come from the space's ``search_defaults``, then :data:`DEFAULTS`. The run stores a spec of
    them, so :func:`load_study` rebuilds everything it can; custom objects must be passed again.
    ``strategy_options`` are options of a strategy given by name (or of the space's default strategy).
    ``supernet`` (a checkpoint of ``nas supernet train``, or an official OFA state dict for ``ofa``) adds
    the objective ``acc_ws``: inherited-weight accuracy on ``val_size`` held-out images of ``data``'s train
    split after BN recalibration on ``bn_batches`` batches (:mod:`nas.inherited`); the checkpoint's space
    options fill those not given. ``teacher`` (a ``nas train`` output folder) serves the distillation-aware
    proxies ``diswot`` and ``diswot_relation`` (:mod:`proxies.distill`); its weights' digest is checked on
    resume.
    """
    import tempfile

    run_dir = Path(storage) if storage is not None else Path(tempfile.mkdtemp(prefix="nas-run-"))
    if (run_dir / "run.sqlite").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it (--resume / nas.load_study) or choose "
                              "another directory")
    if supernet is not None and isinstance(space, str):  # the checkpoint knows its classes and widths
        from nas.inherited import checkpoint_space_options

        if Path(supernet).is_file():
            space_options = {**checkpoint_space_options(supernet, space), **dict(space_options or {})}
    space_obj, space_name, space_opts = resolve_space(space, space_options)
    objective_names, custom = register_custom(objectives)
    extra, custom_extra = register_custom(proxies)
    strategy_name, strategy_opts, strategy_obj = resolve_strategy(strategy)
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
                         or default_of(own, "epochs") or DEFAULTS["budget"])
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
                        "max_flops": cons.max_flops, "max_sram_kb": cons.max_sram_kb,
                        "max_flash_kb": cons.max_flash_kb},
        "oracle_queries": int(oracle_queries or 0),
        "labels": resolve_labels(space_obj, labels, label_queries, int(seed)),
        "label_queries": int(label_queries or 0),
        "evaluator": evaluator, "custom_proxies": sorted(set(custom) | set(custom_extra)),
        "device": device, "cache": cache_setting(cache),
    }
    if supernet is not None:
        from nas.inherited import DEFAULT_BN_BATCHES, DEFAULT_VAL_SIZE

        # absolute: a run resumed or exported from another folder finds it
        config.update(supernet=str(Path(supernet).resolve()), val_size=int(val_size or DEFAULT_VAL_SIZE),
                      bn_batches=int(bn_batches or DEFAULT_BN_BATCHES))
    elif val_size is not None or bn_batches is not None:
        raise ValueError("--val-size and --bn-batches set how acc_ws is measured: they need --supernet PATH")
    predictors = predictor_settings(objs)
    if predictors:  # predictor:FOLDER objectives: where each fitted predictor is, and its digest for --resume
        config["predictors"] = predictors
    if teacher is not None:
        config["teacher"] = str(Path(teacher).resolve())
        config["teacher_digest"] = file_digest(Path(teacher) / "model.pt")
    validate(config, space_obj)
    if supernet is not None:  # load the checkpoint and the images now: a bad file fails before the run exists
        from nas.inherited import file_sha1

        config["supernet_digest"] = file_sha1(supernet)
        config["supernet_data_digest"] = supernet_scorer(config, space_obj).check().digest()
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

    A data file or accuracy table changed since the run started raises :class:`ResumeConflict`.
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
        register_custom(list(proxies))
        missing = [n for n in config.get("custom_proxies", []) if n not in proxy_lib.registry]
        if missing and config.get("evaluator") == "proxies":
            raise ValueError(f"{run_dir} uses the custom proxies {missing}: pass them again "
                             "(nas.load_study(..., proxies=[fn]))")
        space_obj = space if space is not None else stored_space(config)
        if space is not None and space.name != config["space"]:
            raise ResumeConflict(f"{run_dir} searched the space {config['space']!r}, not {space.name!r}")
        if strategy is None and str(config["strategy"]).startswith("custom:"):
            raise ValueError(f"{run_dir} was searched with the custom strategy {config['strategy'][7:]}: "
                             "pass a fresh instance again (nas.load_study(..., strategy=...))")
        strat = strategy if strategy is not None else make_strategy(config, space_obj, run_dir)
        objs = parse_objectives(config["objectives"])
        cons = Constraints(**config.get("constraints", {}))
        batch = check_inputs_unchanged(run_dir, config, space_obj)  # before anything is replayed
        study = Study(space_obj, objs, strat, store, cons, config)
        study._batch = batch
        study.mirror = attach_mirror(study)
        return study
    except BaseException:
        store.close()
        raise


# -- settings --------------------------------------------------------------------------------------------















































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
    metrics = {k: scores.pop(k) for k in ("latency_ms", "params", "flops", "sram_kb", "flash_kb")
               if k in scores and k not in {o.name for o in objectives}}
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
