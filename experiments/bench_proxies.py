"""Cost of each zero-cost proxy alone and of the whole suite through the engine (ms per cell).

NAS-Bench-201 cells, CIFAR-10 calibration batch, CPU. Each cell's network is built once; every proxy is
then timed alone (its own ``proxies.score`` call, i.e. its own passes), and the suite is timed as one
``proxies.score`` call that shares the passes. Prints a table and the ratio suite / sum of singles.

    python experiments/bench_proxies.py --cells 5 --batch-size 64 --threads 1
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

import proxies
import search_spaces


def main() -> None:
    """Time the proxies and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=5, help="random non-degenerate cells (default 5)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proxies", default=",".join(proxies.SUITE))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    names = [n.strip() for n in args.proxies.split(",") if n.strip()]
    space = search_spaces.get("nb201")
    batch = proxies.calibration_batch(args.batch_size, args.seed)
    rng = np.random.default_rng(args.seed)
    archs = []
    while len(archs) < args.cells:
        arch = space.sample(rng)
        if not space.is_degenerate(arch):
            archs.append(arch)
    alone = {n: 0.0 for n in names}
    suite_wall = suite_cpu = 0.0
    alone_cpu = {n: 0.0 for n in names}
    for i, arch in enumerate(archs):
        model = search_spaces.build_seeded(space, arch, i)
        proxies.score(model, batch, ["params"], device="cpu")  # warm-up (allocator, kernels)
        for name in names:
            t, c = time.perf_counter(), time.process_time()
            proxies.score(model, batch, [name], seed=args.seed, device="cpu")
            alone[name] += time.perf_counter() - t
            alone_cpu[name] += time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        proxies.score(model, batch, names, seed=args.seed, device="cpu")
        suite_wall += time.perf_counter() - t
        suite_cpu += time.process_time() - c
    k = 1000.0 / len(archs)
    print(f"NB201, batch {args.batch_size}, {len(archs)} cells, {args.threads} thread(s), CPU")
    print(f"{'proxy':<16}{'wall ms/cell':>14}{'cpu ms/cell':>14}")
    for name in names:
        print(f"{name:<16}{alone[name] * k:>14.0f}{alone_cpu[name] * k:>14.0f}")
    total, total_cpu = sum(alone.values()), sum(alone_cpu.values())
    print(f"{'sum of singles':<16}{total * k:>14.0f}{total_cpu * k:>14.0f}")
    print(f"{'suite (engine)':<16}{suite_wall * k:>14.0f}{suite_cpu * k:>14.0f}")
    print(f"suite / sum of singles: wall {suite_wall / total:.2f}, cpu {suite_cpu / total_cpu:.2f}")


if __name__ == "__main__":
    main()
