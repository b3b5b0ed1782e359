"""``nas score``: compute proxies for the architectures in a file, every architecture of a space, or a sample.

Rows are written in input order as they are scored (a small reorder buffer absorbs the completion order
of parallel workers), so a killed run leaves every finished row on disk; ``--resume`` keeps those rows and
scores only the rest, appending to the same file. Memory stays flat: only the architectures in flight and
their rows are held.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

import proxies as proxy_lib
import search_spaces
from nas.cli import UsageError
from nas.cli.common import (
    add_cache_args,
    add_data_args,
    add_device_arg,
    add_space_args,
    cache_option,
    check_device,
    read_arch_file,
    space_options,
    split_names,
)
from nas.errors import SearchFailed
from nas.evaluate import Evaluator
from nas.executors import Executor
from nas.exploit import resolve_labels
from nas.run import Candidate
from nas.settings import teacher_batch
from proxies.cache import resolve_cache
from proxies.distill import TEACHER_PROXIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("score", help="score architectures with zero-cost proxies")
    add_space_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch-file", help="one architecture string per line")
    which.add_argument("--all", action="store_true",
                       help="every architecture of the space (spaces with an enumerable set, e.g. nb201)")
    which.add_argument("--n", type=int, metavar="N", help="N distinct architectures drawn uniformly with --seed")
    p.add_argument("--proxies", default="synflow,nwot,params",
                   help="comma-separated proxy names, or 'all' single proxies (see `nas proxies`)")
    p.add_argument("--labels", metavar="FILE", help="arch,accuracy CSV of a few trained architectures "
                   "(<= 50) for the few-label proxy ensemble_fit")
    p.add_argument("--label-queries", type=int, metavar="N",
                   help="fit ensemble_fit on the true accuracies of N random architectures (drawn with "
                        "--seed) queried from the oracle (needs --accuracy-table) instead of --labels")
    p.add_argument("--teacher", metavar="DIR", help="a `nas train` output: the trained teacher that the "
                   "distillation-aware proxies (diswot, diswot_relation) compare each student with")
    add_data_args(p)
    add_device_arg(p)
    add_cache_args(p)
    p.add_argument("--out", required=True, help="output CSV: arch,<proxy>... in input order")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in --out (same proxies) and score only the missing architectures")
    p.add_argument("--executor", default="serial", help="serial (default) or ray (both cores busy)")
    p.add_argument("--workers", type=int, help="ray: evaluations in flight (default: the machine's CPUs)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def architectures(space: search_spaces.SearchSpace, args: argparse.Namespace) -> list[tuple[str, object]]:
    """The (text, arch) pairs to score: from --arch-file, every architecture (--all) or a sample (--n)."""
    if args.arch_file:
        return read_arch_file(space, args.arch_file)
    if args.all:
        all_archs = getattr(space, "all_archs", None)
        if all_archs is None:
            raise UsageError(f"--all: the space {space.name!r} has {float(space.cardinality):.3g} architectures and "
                             "does not enumerate them; score a sample with --n N")
        return [(space.to_string(a), a) for a in all_archs()]
    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    from nas.proxy_benchmark import sample_archs

    return [(text, space.from_string(text)) for text in sample_archs(space, args.n, args.seed)]


def finished_rows(path: str, header: list[str]) -> set[str]:
    """Architectures already in an output CSV being resumed; a torn last line (a kill mid-write) is cut."""
    file = Path(path)
    if not file.exists() or file.stat().st_size == 0:
        return set()
    data = file.read_bytes()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(file, "r+b") as f:
            f.truncate(len(data))
    rows = list(csv.reader(data.decode().splitlines()))
    if not rows:
        return set()
    if rows[0] != header:
        raise UsageError(f"--resume: {path} has the columns {','.join(rows[0])}, this run writes "
                         f"{','.join(header)}; use the same --proxies or another --out")
    return {r[0] for r in rows[1:] if r}


def run(args: argparse.Namespace) -> int:
    """Score every architecture and write the CSV row by row."""
    device = check_device(args.device)
    cache = resolve_cache(cache_option(args))
    space = search_spaces.get(args.space, **space_options(args))
    singles = [n for n in proxy_lib.list() if n not in proxy_lib.ensemble.ENSEMBLE_NAMES]
    if args.proxies == "all":  # every single proxy the space offers (the teacher's only with a teacher)
        names = [n for n in singles if n not in proxy_lib.unavailable(space, singles)
                 and (args.teacher or n not in TEACHER_PROXIES)]
    else:
        names = split_names(args.proxies)
    for name in names:
        proxy_lib.get(name)
    proxy_lib.check_available(space, names)
    archs = architectures(space, args)
    batch = proxy_lib.load_batch(args.data, args.batch_size, args.seed, tuple(space.input_shape))
    if args.teacher:
        batch = teacher_batch(batch, args.teacher, device)
    elif TEACHER_PROXIES.intersection(names):
        raise UsageError(f"{', '.join(sorted(TEACHER_PROXIES.intersection(names)))} compare each student with a "
                         "trained teacher: give --teacher DIR (a `nas train` output)")
    labels = resolve_labels(space, args.labels, args.label_queries, args.seed)
    evaluate = Evaluator(space, tuple(names), batch, seed=args.seed, labels=labels, device=device, cache=cache)
    header = ["arch", *names]
    done = finished_rows(args.out, header) if args.resume else set()
    todo = [(text, arch) for text, arch in archs if text not in done]
    failed: list[str] = []
    scored = bool(done)  # a resumed file already holds numbers
    executor = _executor(args)
    fresh = not (args.resume and os.path.exists(args.out) and os.path.getsize(args.out))
    with open(args.out, "w" if fresh else "a", newline="") as f, _progress(args.no_progress) as progress:
        task = progress.add_task("scoring", total=len(archs), completed=len(archs) - len(todo))
        writer = csv.writer(f)
        if fresh:
            writer.writerow(header)
        strings = [space.to_string(arch) for _, arch in todo]
        try:
            for i, cand in _in_order(strings, executor.map(evaluate, iter(strings))):
                text = todo[i][0]
                writer.writerow([text, *(repr(cand.scores.get(n, float("nan"))) for n in names)])
                f.flush()
                progress.advance(task)
                if cand.status != "ok":
                    failed.append(f"{text}: {cand.error}")
                scored = scored or any(math.isfinite(v) for v in cand.scores.values())
        finally:
            executor.close()
    if failed:
        print(f"nas score: {len(failed)} of {len(todo)} architectures had a proxy that failed (NaN in "
              f"{args.out}); the first: {failed[0]}", file=sys.stderr)
        if not scored:
            raise SearchFailed(f"no proxy could be computed on any architecture; the first: {failed[0]}")
    return 0


def _executor(args: argparse.Namespace) -> Executor:
    """The executor of --executor/--workers (serial, or Ray with one process per core)."""
    from nas import executors

    if args.executor not in executors.registry:
        raise UsageError(f"--executor {args.executor!r}: choose one of {', '.join(executors.registry.list())}")
    if args.workers is not None and args.executor != "ray":
        raise UsageError("--workers needs --executor ray")
    options = {"workers": args.workers} if args.workers else {}
    return executors.get(args.executor, **options)


def _in_order(strings: list[str], candidates: Iterator[Candidate]) -> Iterator[tuple[int, Candidate]]:
    """Candidates that arrive in completion order, yielded in the order of ``strings`` with their index.

    An executor draws the next architecture only when one finishes, so at most its parallelism of
    candidates wait here."""
    index: dict[str, list[int]] = {}
    for i, text in enumerate(strings):
        index.setdefault(text, []).append(i)
    waiting: dict[int, Candidate] = {}
    nxt = 0
    for cand in candidates:
        waiting[index[cand.arch].pop(0)] = cand
        while nxt in waiting:
            yield nxt, waiting.pop(nxt)
            nxt += 1


class _RateColumn(ProgressColumn):
    """Architectures scored per second (rich's own speed columns format bytes)."""

    def render(self, task: Task) -> Text:
        """The task's rate, blank until rich has measured one."""
        return Text(f"{task.speed:.2f} arch/s" if task.speed else "", style="progress.data.speed")


def _progress(disable: bool) -> Progress:
    """A bar with count, rate, elapsed time and ETA."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=disable)
