"""``nas runs show RUN_DIR``: summarise a finished or interrupted run; ``nas runs export-optuna``: its Optuna copy."""

from __future__ import annotations

import argparse
from pathlib import Path

import nas
from nas.run import RunStore


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("runs", help="inspect run directories")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    show = verbs.add_parser("show", help="print a run's settings, progress, best and Pareto candidates")
    show.add_argument("run_dir", metavar="RUN_DIR")
    show.add_argument("--rows", type=int, default=15, help="Pareto rows to show (default 15)")
    show.set_defaults(func=run)
    export = verbs.add_parser("export-optuna", help="write a run (or every cell of a sweep) to its Optuna storage",
                              description="Write every candidate of RUN_DIR as a trial of an Optuna study in "
                                          "RUN_DIR/trials.journal (a sweep cell: the sweep's trials.journal, "
                                          "one study per cell), replacing an earlier copy; given a sweep "
                                          "directory, every cell. Open it with `nas dashboard` or "
                                          "optuna.load_study. New runs write it as they go.")
    export.add_argument("run_dir", metavar="RUN_DIR|SWEEP_DIR")
    export.set_defaults(func=export_optuna)


def run(args: argparse.Namespace) -> int:
    """Print the summary of ``args.run_dir``."""
    from rich.console import Console
    from rich.table import Table

    from nas.cli.search import print_result

    result = nas.load_run(args.run_dir)
    store = RunStore(args.run_dir, readonly=True)
    try:
        elapsed = float(store.get_meta("elapsed_s", 0.0))
        duplicates = int(store.get_meta("duplicate_evaluations", 0))
    finally:
        store.close()
    cfg = result.config
    budget = int(cfg.get("budget", 0))
    done = len(result.candidates)
    cons = {k: v for k, v in cfg.get("constraints", {}).items() if v is not None}
    table = Table(show_header=False, title=f"run {args.run_dir}")
    rows = [
        ("space", f"{cfg.get('space')} {cfg.get('space_options') or ''}".strip()),
        ("strategy", f"{cfg.get('strategy')} {cfg.get('strategy_options') or ''}".strip()),
        ("objectives", ", ".join(cfg.get("objectives", []))),
        ("constraints", ", ".join(f"{k}={v}" for k, v in cons.items()) or "none"),
        ("target", str(cfg.get("target") or "none")),
        ("proxies computed", ", ".join(cfg.get("proxies", []))),
        ("seed / batch size / data", f"{cfg.get('seed')} / {cfg.get('batch_size')} / {cfg.get('data') or 'cifar10'}"),
        ("status", "complete" if done >= budget else f"interrupted: continue with nas search --resume "
                                                     f"{args.run_dir}"),
        ("evaluated", f"{done} of {budget} ({len(result.feasible())} feasible, "
                      f"{sum(c.status != 'ok' for c in result.candidates)} failed)"),
        ("duplicate evaluations", str(duplicates)),
        ("search time", f"{elapsed:.1f} s"),
    ]
    if cfg.get("oracle_queries"):
        rows.append(("oracle queries", f"{len(result.oracle)} of {cfg['oracle_queries']}"))
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
    if result.candidates:
        print_result(result, rows=args.rows)
    return 0


def export_optuna(args: argparse.Namespace) -> int:
    """Write ``args.run_dir`` (a run or a sweep) to its Optuna storage and say where."""
    from nas.optuna_mirror import export

    path = Path(args.run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run or sweep directory")
    done = export(path)
    if not done:
        raise FileNotFoundError(f"{path}: a sweep directory without any run yet")
    for journal, study, trials in done:
        print(f"{study}: {trials} trials -> {journal}")
    print(f"open it with: nas dashboard {path}")
    return 0
