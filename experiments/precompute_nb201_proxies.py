"""Score every NAS-Bench-201 cell with some proxies once, into a CSV that benchmarks read as a cache.

Resumable: cells already in the output file (or in any ``--skip`` file) are skipped, so the script can be
stopped and restarted; ``--shard I/N`` takes every N-th cell so that N processes can share the work.

Usage:
    nice python experiments/precompute_nb201_proxies.py --proxies synflow --out experiments/out/nb201_synflow.csv
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

import torch

import proxies
import search_spaces
from nas import proxy_benchmark as pb
from nas.evaluate import Evaluator


def main() -> None:
    """Parse flags and append missing cells' proxy values to the output CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", default="synflow", help="comma-separated proxy names")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shard", default="0/1", help="I/N: score only cells whose index is I modulo N")
    parser.add_argument("--skip", action="append", default=[], help="CSV of cells already scored elsewhere")
    parser.add_argument("--sample", type=int, default=0,
                        help="only the N cells that `nas benchmark proxies --n N --seed SEED` samples")
    parser.add_argument("--sample-seed", type=int, default=None,
                        help="draw the --sample cells with this seed instead of --seed (fresh cells, same weights)")
    parser.add_argument("--naslib", default=None, help="only the cells of this nb201_naslib_proxies.csv")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.proxies.split(",") if n.strip()]
    space = search_spaces.get("nb201")
    batch = proxies.load_batch(None, args.batch_size, args.seed, tuple(space.input_shape))
    # The search's own evaluator (seeded weights, same batch), so cached values equal what a search stores.
    evaluate = Evaluator(space, tuple(names), batch, seed=args.seed, device="cpu")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if out.exists():
        with open(out, newline="") as f:
            done = {row["arch"] for row in csv.DictReader(f)}
    skip = set(done)
    for path in args.skip:
        with open(path, newline="") as f:
            skip |= {row["arch"] for row in csv.DictReader(f)}
    shard, shards = (int(x) for x in args.shard.split("/"))
    if args.sample or args.naslib:
        sample_seed = args.seed if args.sample_seed is None else args.sample_seed
        chosen = pb.sample_archs(space, args.sample, sample_seed) if args.sample else []
        chosen += list(pb.read_naslib(args.naslib, "cifar10")) if args.naslib else []
        pool = [space.from_string(a) for a in dict.fromkeys(chosen)]
    else:
        pool = space.all_archs()
    archs = [a for i, a in enumerate(pool) if i % shards == shard and space.to_string(a) not in skip]
    start = time.perf_counter()
    with open(out, "a", newline="") as f:
        writer = csv.writer(f)
        if not done:
            writer.writerow(["arch", *names, "params_m"])
        for i, arch in enumerate(archs):
            cand = evaluate(space.to_string(arch))
            writer.writerow([cand.arch, *(repr(cand.scores.get(n, float("nan"))) for n in names),
                             repr(cand.metrics.get("params", float("nan")))])
            if i % 100 == 99:
                f.flush()
                rate = (time.perf_counter() - start) / (i + 1)
                print(f"{len(done) + i + 1}/{len(done) + len(archs)} cells, {rate * 1e3:.0f} ms/cell", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
