"""Does scoring OFA subnets at a reduced resolution keep the proxies' ranking, and what does it save?

Samples OFA subnets (seeded), scores each with the proxies at its own resolution ``r`` and at
``r * scale`` (the space's ``proxy_scale``), and prints the Spearman rank correlation between the two
and the mean CPU seconds per candidate (process time, one thread). Usage:

    python experiments/ofa_proxy_resolution.py --n 16 --scales 1.0 0.5 --proxies nwot synflow
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

import proxies
import search_spaces


def main() -> None:
    """Print one row per (proxy, scale): Spearman vs full resolution and seconds per candidate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--proxies", nargs="+", default=["nwot", "synflow"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)  # one thread: CPU time is robust to a busy host
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = search_spaces.get("ofa")
    rng = np.random.default_rng(args.seed)
    archs = [space.sample(rng) for _ in range(args.n)]
    base = proxies.calibration_batch(batch_size=args.batch_size, seed=args.seed)
    scores = {(p, s): [] for p in args.proxies for s in args.scales}
    seconds = {(p, s): 0.0 for p in args.proxies for s in args.scales}  # CPU seconds (process time)
    for i, arch in enumerate(archs):
        model = search_spaces.build_seeded(space, arch, args.seed)
        for s in args.scales:
            side = search_spaces.get("ofa", proxy_scale=s).proxy_input_shape(arch)[1]
            batch = base.resized((side, side))
            for p in args.proxies:
                start = time.process_time()
                scores[(p, s)].append(proxies.score(model, batch, [p], seed=args.seed)[p])
                seconds[(p, s)] += time.process_time() - start
        print(f"# {i + 1}/{args.n} r={arch.r} done", flush=True)
    full = max(args.scales)
    print(f"{'proxy':<10} {'scale':>5} {'spearman_vs_full':>17} {'cpu_s_per_cand':>14}")
    for p in args.proxies:
        for s in args.scales:
            rho = spearmanr(scores[(p, full)], scores[(p, s)]).statistic
            print(f"{p:<10} {s:>5.2f} {rho:>17.3f} {seconds[(p, s)] / args.n:>14.3f}")
    if len(args.proxies) > 1:
        a, b = args.proxies[:2]
        rho = spearmanr(scores[(a, full)], scores[(b, full)]).statistic
        print(f"# spearman({a}, {b}) at full resolution: {rho:.3f}")


if __name__ == "__main__":
    main()
