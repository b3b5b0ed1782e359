"""``nas benchmark proxies``: rank correlation of every proxy with true accuracy, and with NASLib."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

import proxies as proxy_lib
import search_spaces
from nas import proxy_benchmark as pb
from nas.cli import UsageError
from nas.cli.common import add_cache_args, cache_option, parse_options, split_names
from proxies.cache import resolve_cache


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("benchmark", help="benchmark proxies against true accuracies")
    what = p.add_subparsers(dest="what", metavar="WHAT")
    what.required = True
    q = what.add_parser("proxies", help="Spearman / Kendall tau of proxies vs accuracy (NAS-Bench-201)")
    q.add_argument("--space", default="nb201",
                   help="nb201 (needs --accuracy-table), nb101 or darts (accuracies optional)")
    q.add_argument("--space-option", action="append", default=[], metavar="KEY=VALUE",
                   help="space constructor option (repeatable; VALUE is JSON, else a string), e.g. nb201: "
                        "channels=8 cells_per_stage=1; the dataset and table come from --dataset and "
                        "--accuracy-table")
    q.add_argument("--dataset", default="cifar10", choices=sorted(pb.NB201_DATASETS),
                   help="accuracy-table column (default cifar10)")
    q.add_argument("--accuracy-table", metavar="PATH",
                   help="CSV of true accuracies (nb201: required; nb101/darts: an arch,<dataset> CSV whose "
                        "cells are the ones benchmarked)")
    q.add_argument("--n", type=int, default=1000, help="uniformly sampled cells (default 1000; 0: none)")
    q.add_argument("--proxies", default="suite",
                   help="comma-separated proxy names, 'suite' (the classic image proxies, default) or 'all'")
    q.add_argument("--naslib", metavar="PATH", default=None,
                   help="NASLib proxy values (default: nb201_naslib_proxies.csv beside the accuracy table)")
    q.add_argument("--naslib-proxies", default=None,
                   help="proxies to compare with NASLib on its cells (default: those of --proxies NASLib has)")
    q.add_argument("--no-naslib", action="store_true", help="skip the comparison with NASLib")
    q.add_argument("--data", default=None, help="calibration data (default: shipped CIFAR-10 images)")
    q.add_argument("--batch-size", type=int, default=64, help="calibration batch size (default 64)")
    q.add_argument("--seed", type=int, default=0, help="sampling, data and initialisation seed")
    add_cache_args(q)
    q.add_argument("--cached-only", action="store_true", help="report cached values only; compute nothing")
    q.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    q.add_argument("--values-csv", default=None, help="write every computed value to this CSV")
    q.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for 95%% intervals of each Spearman and of each ensemble's gap to "
                        "the best single proxy (default 1000; 0: none)")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score the cells, print the correlation table and NASLib agreement."""
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 0:
        raise UsageError(f"--n must be >= 0, got {args.n}")
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.space == "nb201" and not args.accuracy_table:
        raise UsageError("nb201 needs --accuracy-table (nb201_accuracy.csv)")
    if args.cached_only and not args.cache:
        raise UsageError("--cached-only reads the cache; it contradicts --no-cache")
    options = dict(pb.NB201_DATASETS[args.dataset]) if args.space == "nb201" else {}
    given = parse_options(args.space_option, "--space-option")
    for key in ("accuracy_table", "dataset"):
        if key in given:
            raise UsageError(f"--space-option {key}=: use --{key.replace('_', '-')} with `nas benchmark proxies`")
    options.update(given)
    space = search_spaces.get(args.space, accuracy_table=args.accuracy_table, dataset=args.dataset, **options)
    # ensembles are scorer rows; the teacher-aware proxies need a teacher, which a benchmark has not
    singles = [n for n in proxy_lib.list() if n not in proxy_lib.ensemble.ENSEMBLE_NAMES
               and n not in proxy_lib.distill.TEACHER_PROXIES]
    names = {"all": singles, "suite": list(proxy_lib.SUITE)}.get(args.proxies) or split_names(args.proxies)
    for name in names:
        proxy_lib.get(name)
    cache = resolve_cache(cache_option(args))
    batch = proxy_lib.load_batch(args.data, args.batch_size, args.seed, tuple(space.input_shape))
    oracle = bool(getattr(space, "has_oracle", False))
    if oracle and hasattr(space, "oracle_archs"):  # a partial table (nb101, darts): benchmark its cells
        known = space.oracle_archs()
        idx = np.random.default_rng(args.seed).permutation(len(known))[: args.n]
        archs = [space.to_string(known[i]) for i in idx]
    else:
        archs = pb.sample_archs(space, args.n, args.seed)
    naslib, naslib_names = None, []
    if not args.no_naslib and (args.naslib or args.space == "nb201"):
        path = Path(args.naslib) if args.naslib else Path(args.accuracy_table).parent / "nb201_naslib_proxies.csv"
        naslib = pb.read_naslib(path, args.dataset)
        naslib_names = [n for n in (split_names(args.naslib_proxies) if args.naslib_proxies else names)
                        if n in pb.NASLIB_PROXIES]
    console = Console()
    start = time.perf_counter()
    with Progress(console=console, disable=args.no_progress, transient=True) as bar:
        task = bar.add_task("sampled cells", total=len(archs))
        table = pb.compute_values(space, archs, names, batch, args.seed, cache, args.cached_only,
                                  lambda i: bar.update(task, completed=i))
        per_cell = (time.perf_counter() - start) / max(1, len(archs))
        ours_naslib = None
        if naslib is not None and naslib_names:
            task = bar.add_task("NASLib cells", total=len(naslib))
            ours_naslib = pb.compute_values(space, list(naslib), naslib_names, batch, args.seed, cache,
                                            args.cached_only, lambda i: bar.update(task, completed=i))
    accuracy = np.array([space.accuracy(space.from_string(a)) if oracle else math.nan for a in archs])
    columns = pb.with_scorers(table.values, accuracy) if archs else {}
    rows = pb.rank_rows(columns, accuracy, args.bootstrap, args.seed) if archs else []
    agreement = pb.naslib_agreement(ours_naslib, naslib) if ours_naslib is not None else {}
    out = Table(title=f"{args.space} {args.dataset}: {len(archs)} cells, batch {args.batch_size}, seed {args.seed}, "
                      f"{per_cell:.2f} s/cell")
    naslib_cols = ("n NASLib", "Spearman(ours, NASLib)", "NASLib vs val acc", "ours vs test acc (NASLib cells)")
    with_naslib = ours_naslib is not None  # no NASLib comparison: no empty columns
    for col in ("proxy", "n", "Spearman", "95% interval", "Kendall", *(naslib_cols if with_naslib else ())):
        out.add_column(col, justify="left" if col == "proxy" else "right")
    acc_naslib = np.array([space.accuracy(space.from_string(a)) for a in ours_naslib.archs]) \
        if ours_naslib is not None else None
    ours_on_naslib = {r.name: r for r in pb.rank_rows(ours_naslib.values, acc_naslib)} \
        if ours_naslib is not None else {}
    listed = [r.name for r in rows]
    for r in rows + [pb.Row(n, 0, math.nan, math.nan) for n in agreement if n not in listed]:
        agree = agreement.get(r.name)
        on = ours_on_naslib.get(r.name)
        interval = f"{r.spearman_ci[0]:.3f}-{r.spearman_ci[1]:.3f}" if math.isfinite(r.spearman_ci[0]) else ""
        naslib_cells = (str(agree[0]) if agree else "", _f(agree[1]) if agree else "",
                        _f(agree[2]) if agree else "", _f(on.spearman) if on else "")
        out.add_row(r.name, str(r.n) if r.n else "", _f(r.spearman), interval, _f(r.kendall),
                    *(naslib_cells if with_naslib else ()))
    console.print(out)
    for line in _ensemble_gaps(columns, rows, accuracy, args.bootstrap, args.seed):
        console.print(line)
    if not oracle:
        finite = sum(bool(np.isfinite(v).all()) for v in table.values.values())
        console.print(f"no accuracies for {args.space}: {len(archs)} sampled cells scored by {len(names)} proxies "
                      f"({finite} finite on every cell); rank them with --accuracy-table (an arch,{args.dataset} "
                      "CSV), keep the values with --values-csv")
    if args.values_csv:
        extra = {n: columns[n] for n in pb.scorers.list() if n in columns}
        table.to_csv(args.values_csv, extra)
        if ours_naslib is not None:
            ours_naslib.to_csv(Path(args.values_csv).with_suffix(".naslib.csv"))
        console.print(f"values written to {args.values_csv}")
    return 0


def _ensemble_gaps(columns: dict[str, np.ndarray], rows: list[pb.Row], target: np.ndarray, resamples: int,
                   seed: int) -> list[str]:
    """One line per ensemble row: its Spearman minus the best single proxy's, with a paired 95% interval."""
    singles = [r for r in rows if r.name not in proxy_lib.ensemble.ENSEMBLE_NAMES and math.isfinite(r.spearman)]
    if not resamples or not singles:
        return []
    best = max(singles, key=lambda r: r.spearman).name
    lines = []
    for name in proxy_lib.ensemble.ENSEMBLE_NAMES:
        if name not in columns or not np.isfinite(columns[name]).any():
            continue
        diff, low, high, n = pb.spearman_gap(columns[name], columns[best], target, resamples, seed)
        if math.isfinite(diff):
            verdict = "above" if low > 0 else "below" if high < 0 else "not distinguishable from"
            lines.append(f"{name} - {best} (best single proxy): {diff:+.3f} Spearman, 95% interval "
                         f"[{low:+.3f}, {high:+.3f}] over {n} cells ({resamples} paired bootstrap resamples): "
                         f"{verdict} {best}")
    return lines


def _f(x: float) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.3f}"
