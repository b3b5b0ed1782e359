"""``nas score``: compute proxies for the architectures in a file."""

from __future__ import annotations

import argparse
import csv
import math
import sys

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
from nas.exploit import resolve_labels
from nas.settings import teacher_batch
from proxies.cache import resolve_cache
from proxies.distill import TEACHER_PROXIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("score", help="score architectures with zero-cost proxies")
    add_space_args(p)
    p.add_argument("--arch-file", required=True, help="one architecture string per line")
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
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score every architecture and write the CSV row by row."""
    from rich.progress import track

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
    archs = read_arch_file(space, args.arch_file)
    batch = proxy_lib.load_batch(args.data, args.batch_size, args.seed, tuple(space.input_shape))
    if args.teacher:
        batch = teacher_batch(batch, args.teacher, device)
    elif TEACHER_PROXIES.intersection(names):
        raise UsageError(f"{', '.join(sorted(TEACHER_PROXIES.intersection(names)))} compare each student with a "
                         "trained teacher: give --teacher DIR (a `nas train` output)")
    labels = resolve_labels(space, args.labels, args.label_queries, args.seed)
    evaluate = Evaluator(space, tuple(names), batch, seed=args.seed, labels=labels, device=device, cache=cache)
    failed: list[str] = []
    scored = False  # some proxy gave a number somewhere
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", *names])
        for text, arch in track(archs, description="scoring", disable=args.no_progress):
            cand = evaluate(space.to_string(arch))
            writer.writerow([text, *(repr(cand.scores.get(n, float("nan"))) for n in names)])
            f.flush()
            if cand.status != "ok":
                failed.append(f"{text}: {cand.error}")
            scored = scored or any(math.isfinite(v) for v in cand.scores.values())
    if failed:
        print(f"nas score: {len(failed)} of {len(archs)} architectures had a proxy that failed (NaN in "
              f"{args.out}); the first: {failed[0]}", file=sys.stderr)
        if not scored:
            raise SearchFailed(f"no proxy could be computed on any architecture; the first: {failed[0]}")
    return 0
