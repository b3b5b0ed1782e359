"""``nas sweep SWEEP.toml``: run a grid of searches concurrently on Ray and summarise the best per cell."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

EXAMPLE = """\
example SWEEP.toml:
  [sweep]
  out = "sweeps/nb201"            # sweep directory; one run directory per cell inside
  [grid]                          # axes: space, target, strategy, seed, budget (a scalar is one value)
  strategy = ["random", "evolution"]
  seed = [0, 1, 2]
  budget = 50
  [options]                       # fixed keyword options of nas.search for every cell
  objectives = ["synflow"]
  batch_size = 32

on a cluster: `ray start --head` on one node, `ray start --address HEAD:6379` on the others (same
Python environment with zcnas installed), then `nas sweep SWEEP.toml --ray-address auto` on the head
node: evaluations run on every node, run directories are written on the head node. Where Ray uses token
authentication, export RAY_AUTH_MODE=token and give every node the cluster's token (~/.ray/auth_token).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("sweep", help="run a grid of searches concurrently on Ray",
                       description="Run every search of a TOML grid on Ray, each in its own run directory "
                                   "under one sweep directory, then print and write a summary "
                                   "(summary.csv, summary.json). Running it again resumes unfinished cells.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="SWEEP.toml", help="the sweep file")
    p.add_argument("--out", help="sweep directory (default: [sweep] out, else sweeps/<file name>)")
    p.add_argument("--ray-address", help="join a Ray cluster (auto, HOST:PORT or ray://HOST:PORT) instead of "
                                         "starting a local instance")
    p.add_argument("--cpus", type=int, help="CPUs of the local Ray instance (default: all of this machine)")
    p.add_argument("--concurrent", type=int, help="searches at once (default: the cluster's CPUs)")
    p.add_argument("--workers-per-search", type=int, help="evaluations in flight per search "
                                                           "(default: CPUs shared out among the searches)")
    p.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="CPUs (torch threads) each evaluation takes (default: [sweep] threads_per_worker, else 1)")
    p.add_argument("--gpus-per-worker", type=float, metavar="F",
                   help="GPUs each evaluation takes; a fraction shares one (default: [sweep] gpus_per_worker, "
                        "else 0)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and stop")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the sweep and print its summary table."""
    from rich.console import Console

    from nas.sweep import SweepSpec, run_sweep

    for flag in ("cpus", "concurrent", "workers_per_search", "threads_per_worker"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise ValueError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")
    if args.cpus is not None and args.ray_address:
        raise ValueError("--cpus sizes a local Ray instance; leave it out with --ray-address")
    spec = SweepSpec.load(args.file)
    out = Path(args.out or spec.out or Path("sweeps") / Path(args.file).stem)
    console = Console()
    cells = spec.cells()
    if args.dry_run:
        spec.validate_names()
        for cell in cells:
            console.print(str(out / cell.name))
        return 0
    console.print(f"sweep: {len(cells)} searches -> {out}")

    def report(res: Any) -> None:
        status = "[green]done[/]" if res.status == "ok" else f"[red]failed[/] {res.error}"
        console.print(f"  {res.cell.name}: {status} ({res.evaluated} evaluated, {res.wall_s:.1f} s)")

    try:
        result = run_sweep(spec, out, address=args.ray_address, cpus=args.cpus, concurrent=args.concurrent,
                           workers_per_search=args.workers_per_search, threads_per_worker=args.threads_per_worker,
                           gpus_per_worker=args.gpus_per_worker, on_cell=report)
    except KeyboardInterrupt:
        print("nas: interrupted; every finished candidate is saved; run the same `nas sweep` command again "
              "to resume", file=sys.stderr)
        return 130
    console.print(summary_table(result.records(), f"sweep {out} ({result.wall_s:.1f} s)",
                                show_arch=console.width >= 160))
    console.print(f"summary (with the best architectures): {out / 'summary.csv'}, {out / 'summary.json'}")
    return 0 if all(c.status == "ok" for c in result.cells) else 1


def summary_table(rows: list[dict[str, Any]], title: str, show_arch: bool = True) -> Any:
    """The per-cell summary as a rich table; the architectures (long strings) only when ``show_arch``."""
    from rich.table import Table

    values = list(dict.fromkeys(k for r in rows for k in r if k.startswith("best_") and k != "best_arch"))
    extra = ["oracle_accuracy"] if any("oracle_accuracy" in r for r in rows) else []
    table = Table(title=title)
    table.add_column("cell", min_width=max(len(r["run_dir"]) for r in rows), overflow="fold")
    for name in ["evals", "fails", *values, *extra, "wall_s"]:
        table.add_column(name.replace("_", " "), justify="right", no_wrap=True)
    if show_arch:
        table.add_column("best architecture", overflow="fold")
    for r in rows:
        cells = [str(r["evaluated"]), str(r["failed"])] + [_fmt(r.get(k)) for k in [*values, *extra]]
        cells.append(f"{r['wall_s']:.1f}")
        if show_arch:
            cells.append(r["best_arch"] or "-")
        name = r["run_dir"] if r["status"] == "ok" else f"{r['run_dir']}\n[red]failed: {r['error']}[/]"
        table.add_row(name, *cells)
    return table


def _fmt(x: Any) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) or abs(x) >= 1e29:
        return "-"
    return f"{x:.4g}"
