"""``nas.search``: one call that creates (or resumes) a study, optimizes it and writes the run's outputs.

The work happens in :mod:`nas.study` (ask/tell, the event log that makes resume exact, the executor
loop); this module adds what a finished search writes (``best.json``, ``pareto.csv``, ``pareto.png``) and
RoBoT's oracle step, and checks that a resumed run is given no setting that contradicts it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nas import executors, strategies
from nas.errors import SearchFailed
from nas.exploit import greedy_queries
from nas.result import SearchResult
from nas.run import Candidate
from nas.settings import (  # noqa: F401 - resolve_settings and value_list: part of this module's surface
    DEFAULTS,
    METRIC_OBJECTIVES,
    cache_setting,
    check_resume,
    resolve_settings,
    value_list,
)
from nas.study import create_study, load_study

__all__ = ["DEFAULTS", "METRIC_OBJECTIVES", "SearchResult", "search"]

log = logging.getLogger(__name__)


def search(
    space: Any = None,
    strategy: Any = None,
    objectives: Any = None,
    budget: int | None = None,
    seed: int | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    target: str | None = None,
    latency_ms: float | None = None,
    max_params: float | None = None,
    max_flops: float | None = None,
    max_sram_kb: float | None = None,
    max_flash_kb: float | None = None,
    proxies: Sequence[Any] | None = None,
    batch_size: int | None = None,
    data: str | None = None,
    oracle_queries: int | None = None,
    labels: str | os.PathLike[str] | Sequence[tuple[str, float]] | None = None,
    label_queries: int | None = None,
    executor: str | executors.Executor = "serial",
    executor_options: dict[str, Any] | None = None,
    strategy_options: dict[str, Any] | None = None,
    space_options: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    plot: bool = True,
    evaluate: Callable[[str], Candidate] | None = None,
    device: str | None = None,
    cache: Any = True,
    supernet: str | os.PathLike[str] | None = None,
    val_size: int | None = None,
    bn_batches: int | None = None,
    teacher: str | os.PathLike[str] | None = None,
) -> SearchResult:
    """Search ``space`` with ``strategy`` for ``budget`` distinct candidates and return the result.

    A thin driver over :func:`nas.create_study` / :func:`nas.load_study` and ``Study.optimize``. Settings
    left ``None`` come from the space's ``search_defaults`` and then :data:`DEFAULTS` (space ``nb201``,
    seed 0). Every candidate is written to ``out``'s database as it finishes. With ``resume=True`` the run
    in ``out`` continues to ``budget`` (default: its stored budget) with its stored settings, evaluating
    nothing twice; any other setting given must agree with the stored one (:class:`ResumeConflict`).
    ``oracle_queries=K`` (a space with true accuracies only) ends with RoBoT's greedy step: the top K
    candidates are queried and the best queried one is the pick. ``labels`` (an ``arch,accuracy`` CSV or
    pairs, stored in the run) feed the few-label ``ensemble_fit`` proxy; ``label_queries=N`` (an oracle
    only) makes them instead from the true accuracies of N architectures drawn with ``seed``.
    ``evaluate`` replaces the built evaluator (a lookup table in benchmarks); such a run can only be
    resumed with the same ``evaluate``. ``cache`` (default: ``~/.cache/zcnas`` or ``$ZCNAS_CACHE_DIR``)
    reuses proxy values; ``False`` computes everything. A run whose candidates all fail raises
    :class:`nas.errors.SearchFailed` and writes no ``best.json``. ``supernet`` (ofa, fbnet: a checkpoint of
    ``nas supernet train`` or an official OFA state dict) with ``data`` (a train/test folder or ``.npz``)
    makes ``acc_ws``, the inherited-weight accuracy on ``val_size`` held-out training images after BN
    recalibration on ``bn_batches`` batches, an objective; the checkpoint's digest is checked on resume.
    ``max_sram_kb`` and ``max_flash_kb`` limit the peak activation memory and the parameter memory (kB = 1024
    bytes, int8; :mod:`hardware_models.memory`); with them, or with an objective ``sram_kb`` or ``flash_kb``,
    every candidate records both. ``teacher`` (a ``nas train`` output) serves the proxies ``diswot`` and
    ``diswot_relation``, DisWOT's similarity of each untrained candidate to that trained teacher.
    The run directory gets ``best.json``, ``pareto.csv`` and (with ``plot``) ``pareto.png``.

    Example:
        >>> result = search("nb201", "random", ["params"], budget=3, seed=0, progress=False)
        >>> len(result.candidates)
        3
    """
    if resume:
        run_dir = Path(out) if out is not None else None
        if run_dir is None or not (run_dir / "run.sqlite").exists():
            raise FileNotFoundError(f"--resume {run_dir}: not a run directory (no run.sqlite)")
        given = {"space": space, "strategy": strategy if isinstance(strategy, str) else None,
                 "objectives": objectives if objectives is None or isinstance(objectives, str)
                 or all(isinstance(o, str) for o in objectives) else None,
                 "seed": seed, "target": target, "latency_ms": latency_ms, "max_params": max_params,
                 "max_flops": max_flops, "max_sram_kb": max_sram_kb, "max_flash_kb": max_flash_kb,
                 "proxies": proxies if proxies is None
                 or all(isinstance(p, str) for p in proxies) else None,
                 "batch_size": batch_size, "data": data, "labels": labels, "label_queries": label_queries,
                 "strategy_options": strategy_options, "space_options": space_options,
                 "supernet": None if supernet is None else os.fspath(supernet), "val_size": val_size,
                 "bn_batches": bn_batches, "teacher": None if teacher is None else os.fspath(teacher)}
        ex = executors.get(executor, **(executor_options or {})) if isinstance(executor, str) else executor
        try:
            study = load_study(run_dir, space=space if space is not None and not isinstance(space, str) else None,
                               strategy=strategy if _is_instance_strategy(strategy) else None,
                               proxies=[p for p in proxies or [] if callable(p)])
        except BaseException:
            _close(ex, executor)
            raise
        try:
            check_resume(run_dir, study.config, given)
            if study.config.get("evaluator") == "custom" and evaluate is None:
                raise ValueError(f"{run_dir} was searched with a custom evaluate function; resume it from "
                                 "Python with the same evaluate=")
            if device is not None:
                study.config["device"] = device
            if cache is not True:
                study.config["cache"] = cache_setting(cache)
            if budget is not None:
                study.config["budget"] = int(budget)
            if oracle_queries is not None:
                study.config["oracle_queries"] = int(oracle_queries)
            if budget is not None or oracle_queries is not None:
                from nas.exploit import check_oracle

                check_oracle(study.space, int(study.config.get("oracle_queries", 0)))
                study.store.set_meta("config", study.config)
            return _optimize(study, evaluate, ex, progress, plot)
        finally:
            _close(ex, executor)
            study.close()
    if isinstance(strategy, str) and strategy in strategies.registry and \
            getattr(strategies.registry.get(strategy), "one_shot", False) and executor != "serial":
        raise ValueError(f"strategy {strategy!r} trains its supernet in this process: use --executor serial")
    # The executor starts first: a failed Ray connect must not leave a run directory behind.
    ex = executors.get(executor, **(executor_options or {})) if isinstance(executor, str) else executor
    try:
        study = create_study(
            "nb201" if space is None else space, objectives, strategy, out, seed=0 if seed is None else seed,
            budget=budget, constraints={"latency_ms": latency_ms, "max_params": max_params, "max_flops": max_flops,
                                        "max_sram_kb": max_sram_kb, "max_flash_kb": max_flash_kb},
            target=target, proxies=proxies, data=data, batch_size=batch_size, labels=labels,
            label_queries=label_queries, oracle_queries=oracle_queries, space_options=space_options,
            strategy_options=strategy_options, device=device, cache=cache,
            evaluator="custom" if evaluate is not None else "proxies", supernet=supernet, val_size=val_size,
            bn_batches=bn_batches, teacher=teacher)
    except BaseException:
        _close(ex, executor)
        raise
    try:
        if evaluate is None:
            study.evaluator()  # builds the evaluator, checking the data, before anything is evaluated
        return _optimize(study, evaluate, ex, progress, plot)
    finally:
        _close(ex, executor)
        study.close()


def _is_instance_strategy(strategy: Any) -> bool:
    return strategy is not None and callable(getattr(strategy, "ask", None))


def _close(ex: executors.Executor, given: Any) -> None:
    if isinstance(given, str):
        ex.close()


def _optimize(study: Any, evaluate: Callable[[str], Candidate] | None, ex: executors.Executor, progress: bool,
              plot: bool) -> SearchResult:
    """Optimize to the stored budget, then the oracle step and the output files."""
    result = study.result
    finished = False
    try:
        study.optimize(evaluate, int(study.config["budget"]), ex, progress=progress)
        finished = True
    except SearchFailed:
        _remove_outputs(study.dir)
        raise
    finally:
        if not finished and any(c.status == "ok" for c in result.candidates):
            result.write_outputs(study.dir, plot)  # interrupted: outputs that match the database
    left = getattr(study.strategy, "queries_left", 0)
    if left > 0:
        log.warning("the budget of %d candidates ended with %d of the strategy's oracle queries unspent; "
                    "--resume with a larger --budget spends them", int(study.config["budget"]), left)
    queries = int(study.config.get("oracle_queries", 0))
    if queries:
        # A resumed run re-ranks its larger pool; earlier answers are reused, not asked again. Labels a
        # strategy queried itself (predictor) stay among the answers the pick is chosen from.
        result.oracle = {**getattr(study.strategy, "queried_", {}),
                         **greedy_queries(result, study.space, queries, study.store.oracle())}
        study.store.set_oracle(result.oracle)
    result.write_outputs(study.dir, plot)
    return result


def _remove_outputs(run_dir: Path) -> None:
    """A run with nothing scored has no best: drop outputs an earlier stop may have left."""
    for name in ("best.json", "pareto.csv", "pareto.png", "best.onnx"):
        (run_dir / name).unlink(missing_ok=True)
