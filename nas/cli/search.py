"""``nas search``: run a search and write its run directory."""

from __future__ import annotations

import argparse
import json

import nas
from nas.cli.common import add_data_args, add_space_args, space_options, split_names


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("search", help="search a space for the best architectures")
    add_space_args(p)
    p.add_argument("--strategy", default="random", help="search strategy (default random)")
    p.add_argument("--objectives", default="synflow",
                   help="comma-separated: proxies are maximised; latency, params, flops minimised; "
                        "prefix max:/min: to choose")
    p.add_argument("--proxies", default="", help="extra proxies to record for every candidate")
    p.add_argument("--budget", type=int, default=100, help="distinct candidates to evaluate")
    p.add_argument("--target", help="hardware target for latency (see `nas targets`)")
    p.add_argument("--latency-ms", type=float, help="keep only candidates predicted faster than this")
    p.add_argument("--max-params", type=float, help="limit on parameters (millions)")
    p.add_argument("--max-flops", type=float, help="limit on FLOPs (millions)")
    add_data_args(p)
    p.add_argument("--executor", default="serial", help="serial (default) or ray")
    p.add_argument("--out", default=None, help="run directory (default runs/<space>-<strategy>-s<seed>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run to --budget")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the search, then print the best candidate."""
    out = args.resume or args.out or f"runs/{args.space}-{args.strategy}-s{args.seed}"
    result = nas.search(
        space=args.space, strategy=args.strategy, objectives=split_names(args.objectives),
        budget=args.budget, seed=args.seed, out=out, target=args.target, latency_ms=args.latency_ms,
        max_params=args.max_params, max_flops=args.max_flops, proxies=split_names(args.proxies),
        batch_size=args.batch_size, data=args.data, executor=args.executor,
        space_options=space_options(args), resume=bool(args.resume), progress=not args.no_progress,
    )
    print(json.dumps({k: v for k, v in result.summary().items() if k != "config"}, indent=2))
    print(f"run directory: {out}")
    return 0
