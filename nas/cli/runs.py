"""``nas runs show RUN_DIR``: summarise a finished or interrupted run."""

from __future__ import annotations

import argparse

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
