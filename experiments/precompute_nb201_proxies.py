"""Score every NAS-Bench-201 cell with some proxies once, into a CSV that benchmarks read as a cache.

Resumable: cells already in the output file are skipped, so the script can be stopped and restarted.

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


def main() -> None:
    """Parse flags and append missing cells' proxy values to the output CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", default="synflow", help="comma-separated proxy names")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.proxies.split(",") if n.strip()]
    space = search_spaces.get("nb201")
    batch = proxies.load_batch(None, args.batch_size, args.seed, tuple(space.input_shape))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if out.exists():
        with open(out, newline="") as f:
            done = {row["arch"] for row in csv.DictReader(f)}
    archs = [a for a in space.all_archs() if space.to_string(a) not in done]
    start = time.perf_counter()
    with open(out, "a", newline="") as f:
        writer = csv.writer(f)
        if not done:
            writer.writerow(["arch", *names])
        for i, arch in enumerate(archs):
            scores = proxies.score(space.build(arch), batch, names, seed=args.seed, device="cpu")
            writer.writerow([space.to_string(arch), *(repr(scores[n]) for n in names)])
            if i % 100 == 99:
                f.flush()
                rate = (time.perf_counter() - start) / (i + 1)
                print(f"{len(done) + i + 1}/{space.cardinality} cells, {rate * 1e3:.0f} ms/cell", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
