"""``nas search``: run a search, write its run directory and print the best / Pareto candidates."""

from __future__ import annotations

import argparse
import math
import signal
import threading
from pathlib import Path
from typing import Any

import nas
from nas.cli.common import (
    add_cache_args,
    add_data_args,
    add_device_arg,
    add_space_args,
    cache_option,
    check_device,
    parse_options,
    space_options,
    split_names,
)
from nas.inherited import BN_BATCH_SIZE, DEFAULT_BN_BATCHES, DEFAULT_VAL_SIZE
from nas.result import METRIC_COLUMNS

TABLE_ROWS = 15
"""Pareto candidates shown in the final table (all of them are in ``pareto.csv``)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("search", help="search a space for the best architectures",
                       description="Flags left out take the space's defaults (tuned per space), then "
                                   "global ones: evolution, budget 100, objective synflow.")
    add_space_args(p)
    p.add_argument("--strategy", help="random, evolution, bayesian (Optuna TPE), nsga2, linas (NSGA-II guided by ridge "
                                      "predictions, DyNAS-T), reinforce, predictor "
                                      "(BANANAS: spends --option queries=20 oracle labels; needs --accuracy-table, "
                                      "--labels, or --option train='{\"data\": DIR, \"epochs\": 2}' to label by "
                                      "nas train) (default: the space's choice, else evolution)")
    p.add_argument("--objectives",
                   help="comma-separated: proxies, acc_ws (with --supernet) and predictor:DIR (a `nas predictor "
                        "fit` folder) are maximised; latency, params, flops, sram_kb, flash_kb minimised; "
                        "prefix max:/min: to choose; two or more give a Pareto front (default synflow)")
    p.add_argument("--proxies", help="extra proxies to record for every candidate")
    p.add_argument("--budget", type=int, help="distinct candidates to evaluate (default 100)")
    p.add_argument("--target", help="hardware target for latency (see `nas targets`)")
    p.add_argument("--latency-ms", type=float, help="keep only candidates predicted faster than this")
    p.add_argument("--max-params", type=float, help="limit on parameters (millions)")
    p.add_argument("--max-flops", type=float, help="limit on FLOPs (millions)")
    p.add_argument("--max-sram-kb", type=float, metavar="KB",
                   help="limit on peak activation memory (int8, kB = 1024 bytes; see `nas memory`)")
    p.add_argument("--max-flash-kb", type=float, metavar="KB",
                   help="limit on parameter memory (int8 weights, int32 biases, kB = 1024 bytes)")
    p.add_argument("--oracle-queries", type=int, metavar="K",
                   help="RoBoT exploitation: query the true accuracy of the top K candidates and pick the "
                        "best (needs an oracle, e.g. nb201 with --accuracy-table)")
    p.add_argument("--epochs", type=int, help="one-shot strategies (darts, pcdarts, gdas, spos, enas, ...): "
                                              "supernet training epochs (default 50); --data is then their "
                                              "training set")
    p.add_argument("--train-size", type=int, metavar="N",
                   help="one-shot strategies: a class-balanced subset of N training images, split in halves "
                        "for the weights and the architecture (default 10000)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy option, e.g. population_size=50 (repeatable; VALUE is JSON or a string)")
    p.add_argument("--labels", metavar="FILE", help="arch,accuracy CSV of a few trained architectures "
                   "(<= 50) for the few-label proxy ensemble_fit")
    p.add_argument("--label-queries", type=int, metavar="N",
                   help="fit ensemble_fit on the true accuracies of N random architectures (drawn with "
                        "--seed; RoBoT uses <= 50) queried from the oracle instead of a --labels file")
    p.add_argument("--supernet", metavar="PATH",
                   help="ofa, fbnet, nb201: a trained supernet (a checkpoint of `nas supernet train`, or an official "
                        "OFA state dict for ofa); adds the objective acc_ws, each candidate's inherited-weight "
                        "top-1 (%%) on held-out images of --data's train split after BN recalibration, and "
                        "gives best.onnx the inherited weights")
    p.add_argument("--val-size", type=int, metavar="N",
                   help=f"--supernet: held-out validation images for acc_ws (default {DEFAULT_VAL_SIZE})")
    p.add_argument("--bn-batches", type=int, metavar="N",
                   help=f"--supernet: batches of {BN_BATCH_SIZE} training images that recalibrate each subnet's "
                        f"BN statistics (default {DEFAULT_BN_BATCHES})")
    p.add_argument("--teacher", metavar="DIR",
                   help="a `nas train` output: the trained teacher that the proxies diswot and diswot_relation "
                        "compare each untrained candidate with (DisWOT: pick the student that distils best)")
    add_data_args(p)
    # None: "not given", so that --resume can tell a flag the user gave (and contradicts) from a default;
    # a new run then takes nb201 and seed 0
    p.set_defaults(batch_size=None, space=None, seed=None)
    add_device_arg(p)
    add_cache_args(p)
    p.add_argument("--executor", default="serial", help="serial (default) or ray")
    p.add_argument("--workers", type=int, help="ray: evaluations in flight (default: the cluster's CPUs)")
    p.add_argument("--ray-address", help="ray: join a cluster (auto, HOST:PORT or ray://HOST:PORT) instead "
                                         "of starting a local one")
    p.add_argument("--max-retries", type=int, help="ray: re-runs of a task whose worker died (default 3)")
    p.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="ray: CPUs (torch threads) each evaluation takes (default 1)")
    p.add_argument("--gpus-per-worker", type=float, metavar="F",
                   help="ray: GPUs each evaluation takes; a fraction shares one (e.g. 0.25; default 0: CPU)")
    p.add_argument("--out", default=None, help="run directory (default runs/<space>-<strategy>-s<seed>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (to --budget if given)")
    p.add_argument("--no-onnx", action="store_true", help="do not export the best network to best.onnx")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the search, write the outputs, then print the best and the Pareto candidates."""
    out = args.resume or args.out or _default_out(args)
    device = check_device(args.device, local=args.executor != "ray")  # Ray workers may have GPUs we lack
    cache = cache_option(args)
    # A scheduler's SIGTERM stops the search like Ctrl-C: the outputs are written and --resume continues.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    result = nas.search(
        space=args.space, strategy=args.strategy,
        objectives=split_names(args.objectives) if args.objectives else None,
        budget=args.budget, seed=args.seed, out=out, target=args.target, latency_ms=args.latency_ms,
        max_params=args.max_params, max_flops=args.max_flops, max_sram_kb=args.max_sram_kb,
        max_flash_kb=args.max_flash_kb,
        proxies=split_names(args.proxies) if args.proxies else None, batch_size=args.batch_size,
        data=args.data, oracle_queries=args.oracle_queries, labels=args.labels,
        label_queries=args.label_queries,
        executor=args.executor,
        executor_options=executor_options(args), strategy_options=_with_oneshot_flags(strategy_options(args.option), args) or None,
        space_options=space_options(args), resume=bool(args.resume), progress=not args.no_progress,
        device=device, cache=cache, supernet=args.supernet, val_size=args.val_size, bn_batches=args.bn_batches,
        teacher=args.teacher,
    )
    onnx = None
    if not args.no_onnx and result.best is not None:
        onnx = result.export_best(Path(out) / "best.onnx")
    print_result(result)
    files = ["run.sqlite", "best.json", "pareto.csv", "pareto.png"] + (["best.onnx"] if onnx else [])
    print(f"run directory: {out}  ({', '.join(files)})")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def executor_options(args: argparse.Namespace) -> dict[str, object]:
    """Keyword options for ``nas.executors.get`` from the Ray flags (``--workers``, ``--ray-address``...)."""
    flags = {"workers": "--workers", "address": "--ray-address", "max_retries": "--max-retries",
             "threads_per_worker": "--threads-per-worker", "gpus_per_worker": "--gpus-per-worker"}
    options = {k: getattr(args, f[2:].replace("-", "_")) for k, f in flags.items()}
    options = {k: v for k, v in options.items() if v is not None}
    if options and args.executor != "ray":
        raise ValueError(f"{', '.join(flags[k] for k in options)} need --executor ray (got --executor "
                         f"{args.executor})")
    return options


def _with_oneshot_flags(options: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``--epochs``/``--train-size`` as the options of a one-shot strategy (which names the others)."""
    for key in ("epochs", "train_size"):
        value = getattr(args, key, None)
        if value is not None:
            options.setdefault(key, value)
    return options


def strategy_options(items: list[str]) -> dict[str, Any]:
    """``["population_size=50", "lr=0.1"]`` -> ``{"population_size": 50, "lr": 0.1}``."""
    return parse_options(items, "--option", example="population_size=50")


def _default_out(args: argparse.Namespace) -> str:
    """``runs/<space>-<strategy>-s<seed>``, numbered when it already holds a run."""
    space = args.space if args.space is not None else "nb201"
    seed = args.seed if args.seed is not None else 0
    base = f"runs/{space}-{args.strategy or 'auto'}-s{seed}"
    out, k = base, 2
    while (Path(out) / "run.sqlite").exists():
        out, k = f"{base}-{k}", k + 1
    return out


def print_result(result: nas.SearchResult, rows: int = TABLE_ROWS) -> None:
    """Print the Pareto candidates (the best one first marked) as a rich table, and the counts."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    best = result.best
    front = result.pareto
    if not front:
        limits = {k: v for k, v in result.config.get("constraints", {}).items() if v is not None}
        console.print(f"no feasible candidate among {len(result.candidates)} evaluated "
                      f"({sum(c.status != 'ok' for c in result.candidates)} failed; limits: {limits or 'none'}); "
                      "loosen the limits or raise --budget")
        return
    if best is not None and best.arch not in {c.arch for c in front}:
        front = [best, *front]  # the oracle's pick may lie off the proxy front
    names = [o.name for o in result.objectives]
    extra = [m for m in METRIC_COLUMNS
             if m not in names and not (m == "latency_ms" and "latency" in names)
             and any(m in c.metrics or m in c.scores for c in front)]
    title = "Pareto front" if len(names) > 1 else "best candidate"
    table = Table(title=f"{title} ({len(front)} of {len(result.candidates)} evaluated, "
                        f"{len(result.feasible())} feasible)")
    table.add_column("#", justify="right")
    table.add_column("architecture", overflow="fold")
    for o in result.objectives:
        table.add_column(str(o), justify="right")
    for m in extra:
        table.add_column(m, justify="right")
    if result.oracle:
        table.add_column("accuracy (oracle)", justify="right")
    for i, cand in enumerate(front[:rows]):
        cells = [_fmt(_get(cand, n)) for n in [*names, *extra]]
        if result.oracle:
            acc = result.oracle.get(cand.arch)
            cells.append(f"{acc:.2f}" if acc is not None else "")
        mark = "[bold green]*[/]" if best is not None and cand.arch == best.arch else ""
        table.add_row(f"{i + 1}{mark}", cand.arch, *cells)
    console.print(table)
    if len(front) > rows:
        console.print(f"... {len(front) - rows} more in pareto.csv")
    if best is not None and len(names) > 1:
        console.print(f"pick [bold green]*[/] (best.json, best.onnx): {result.pick_rule}")
    if result.oracle and best is not None:
        console.print(f"oracle: {len(result.oracle)} queries; pick {best.arch} at "
                      f"{result.oracle[best.arch]:.2f} %")
    if result.config.get("label_queries"):
        console.print(f"labels: {result.config['label_queries']} oracle queries before the search fitted "
                      "ensemble_fit")


def _get(cand: Any, name: str) -> float:
    try:
        return float(cand.value(name))
    except KeyError:
        return math.nan


def _fmt(x: float) -> str:
    if not math.isfinite(x) or abs(x) >= 1e29:
        return "-"
    return f"{x:.4g}"
