"""Cost of the full image-proxy suite on the NAS-Bench-101 and DARTS (NAS-Bench-301) cell spaces, on CPU.

For each space and setting (the benchmark's own network, and a reduced width and/or batch) it samples
``--n`` architectures as the space samples them, builds each network and computes every image proxy in
one ``proxies.score`` call (the engine shares passes between proxies). It prints seconds per architecture
(wall clock and this process's CPU time, which a loaded machine inflates less) and, for each reduced
setting, the Spearman correlation of every proxy's values with the full-size values on the same
architectures: a reduction that keeps the ranking keeps that correlation near 1.

No public accuracies of these spaces are used or needed here.

Usage:
    python experiments/cell_spaces_proxies.py --n 10 --threads 1
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

import proxies
import search_spaces

SETTINGS: dict[str, list[tuple[str, dict[str, int], int]]] = {
    # (label, space options, batch size); the first row of each space is the benchmark's network.
    "nb101": [("C=128 (benchmark), batch 64", {}, 64),
              ("C=128, batch 16", {}, 16),
              ("C=32, batch 16", {"channels": 32}, 16)],
    "darts": [("C=32 L=8 (NB301), batch 64", {}, 64),
              ("C=32 L=8, batch 16", {}, 16),
              ("C=16 L=8, batch 16", {"channels": 16}, 16)],
}


def image_proxies() -> list[str]:
    """Every registered proxy for image classifiers (no ensembles, no sequence-model proxies)."""
    return [n for n in proxies.list() if not n.startswith("ensemble")
            and "sequence_pass" not in proxies.get(n).needs]


def run_setting(space_name: str, options: dict[str, int], batch_size: int, n: int, names: Sequence[str],
                seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Wall and CPU seconds per architecture and every proxy's values for ``n`` sampled cells."""
    space = search_spaces.get(space_name, **options)
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(n)]
    batch = proxies.calibration_batch(batch_size, seed, tuple(space.input_shape))
    wall, cpu = np.zeros(n), np.zeros(n)
    values = {name: np.full(n, np.nan) for name in names}
    for i, arch in enumerate(archs):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.manual_seed(seed)
        model = space.build(arch)
        scores = proxies.score(model, batch, names, seed=seed, device="cpu")
        wall[i], cpu[i] = time.perf_counter() - t0, time.process_time() - c0
        for name, value in scores.items():
            values[name][i] = value
    return wall, cpu, values


def main() -> None:
    """Print the cost table and the reduced-vs-full rank agreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", default="nb101,darts")
    parser.add_argument("--n", type=int, default=10, help="architectures per space (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    names = image_proxies()
    print(f"{len(names)} proxies: {', '.join(names)}")
    print(f"torch threads {args.threads}, n {args.n} per setting, load average at start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("\n| space | setting | params (M) | wall s/arch (median) | CPU s/arch (median) | "
          "min Spearman vs full | median Spearman vs full |")
    print("|---|---|---|---|---|---|---|")
    for space_name in args.spaces.split(","):
        full: dict[str, np.ndarray] | None = None
        for label, options, batch_size in SETTINGS[space_name]:
            wall, cpu, values = run_setting(space_name, options, batch_size, args.n, names, args.seed)
            params = float(np.median(values["params"]))
            if full is None:
                full, agree = values, ("", "")
            else:
                rhos = [_spearman(full[k], values[k]) for k in names if k not in ("params", "flops")]
                rhos = [r for r in rhos if math.isfinite(r)]
                agree = (f"{min(rhos):.2f}", f"{np.median(rhos):.2f}") if rhos else ("", "")
            print(f"| {space_name} | {label} | {params:.2f} | {np.median(wall):.2f} | {np.median(cpu):.2f} | "
                  f"{agree[0]} | {agree[1]} |", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b) & (a > -1e29) & (b > -1e29)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


if __name__ == "__main__":
    main()
