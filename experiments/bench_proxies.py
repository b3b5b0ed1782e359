"""Cost of each zero-cost proxy alone and of the whole suite through the engine (ms per cell).

NAS-Bench-201 cells, CIFAR-10 calibration batch, CPU. Each cell's network is built once; every proxy is
then timed alone (its own ``proxies.score`` call, i.e. its own passes), and the suite is timed as one
``proxies.score`` call that shares the passes. Prints a table and the ratio suite / sum of singles.

``--plain`` instead times SynFlow and NASWOT through the engine beside plain textbook implementations
written below (no engine, no shared passes), in the same run on the same cells, each including the
network build, interleaved cell by cell so that machine load hits both alike; it prints CPU ms per cell
and the ratio project / plain, and checks that both give the same values.

``--az-samples 8,16,32`` instead times AZ-NAS trainability on the first k samples of the batch against
the whole batch and prints how well the values agree (Spearman over the cells; no accuracies are read):
how ``proxies.aznas.TRAINABILITY_SAMPLES`` was chosen.

    python experiments/bench_proxies.py --cells 5 --batch-size 64 --threads 1
    python experiments/bench_proxies.py --plain --cells 30 --batch-size 64 --threads 1
    python experiments/bench_proxies.py --az-samples 8,16,32 --cells 200 --seed 100
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time

import numpy as np
import torch
from torch import nn

import proxies
import search_spaces


def plain_synflow(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """SynFlow as Tanaka et al. and Abdelfattah et al.'s code compute it: a float64 copy with |weights|,
    BatchNorm in eval mode, one all-ones input, backward of the summed output, log of sum |w * dR/dw|."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    out = net(torch.ones((1, *input_shape), dtype=torch.float64))
    out.sum().backward()
    with torch.no_grad():
        total = sum(float((m.weight * m.weight.grad).abs().sum()) for m in net.modules()
                    if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.grad is not None)
    return math.log(total)


def plain_nwot(model: nn.Module, inputs: torch.Tensor) -> float:
    """NASWOT as Mellor et al.'s code computes it: a hook on every ReLU adds C C^T + (1-C)(1-C)^T of the
    binary codes of its input to K (float64), train-mode forward of the batch, log|K|."""
    n = inputs.shape[0]
    kernel = np.zeros((n, n))

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal kernel
        c = (inp[0].reshape(n, -1) > 0).float()
        kernel = kernel + (c @ c.t()).numpy() + ((1.0 - c) @ (1.0 - c).t()).numpy()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        model.train()
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return float(np.linalg.slogdet(kernel)[1])


def side_by_side(space: search_spaces.SearchSpace, archs: list, batch: proxies.Batch, seed: int) -> None:
    """Print CPU ms per cell (network build included) of the engine's synflow / nwot vs the plain ones."""
    plain = {"synflow": lambda m: plain_synflow(m, tuple(batch.inputs.shape[1:])),
             "nwot": lambda m: plain_nwot(m, batch.inputs)}
    cpu = {(name, kind): 0.0 for name in plain for kind in ("project", "plain")}
    worst = dict.fromkeys(plain, 0.0)
    build = 0.0
    search_spaces.build_seeded(space, archs[0], 0)  # warm-up (allocator, kernels, lazy imports)
    proxies.score(search_spaces.build_seeded(space, archs[0], 0), batch, [*plain], seed=seed, device="cpu")
    for i, arch in enumerate(archs):
        c = time.process_time()
        search_spaces.build_seeded(space, arch, i)
        build += time.process_time() - c
        for name, fn in plain.items():
            values = {}
            # Alternate which goes first, so that neither always runs on a warmer cache.
            kinds = ("project", "plain") if i % 2 == 0 else ("plain", "project")
            for kind in kinds:
                c = time.process_time()
                model = search_spaces.build_seeded(space, arch, i)
                if kind == "project":
                    values[kind] = proxies.score(model, batch, [name], seed=seed, device="cpu")[name]
                else:
                    values[kind] = fn(model)
                cpu[name, kind] += time.process_time() - c
            a, b = values["project"], values["plain"]
            diff = 0.0 if a == b else abs(a - b) / max(abs(b), 1e-30)
            worst[name] = max(worst[name], diff if math.isfinite(diff) else math.inf)
    k = 1000.0 / len(archs)
    print(f"NB201, batch {batch.inputs.shape[0]}, {len(archs)} cells, CPU ms per cell incl. the network build")
    print(f"{'proxy':<10}{'project':>10}{'plain':>10}{'ratio':>8}{'max rel diff':>14}")
    for name in plain:
        a, b = cpu[name, "project"] * k, cpu[name, "plain"] * k
        print(f"{name:<10}{a:>10.0f}{b:>10.0f}{a / b:>7.2f}x{worst[name]:>14.1e}")
    print(f"(of which the network build alone: {build * k:.0f} ms per cell)")


def az_samples(space: search_spaces.SearchSpace, archs: list, batch: proxies.Batch, seed: int,
               sizes: list[int]) -> None:
    """Print CPU ms per cell of AZ-NAS trainability on the first k samples, and its agreement with the
    value on the whole batch (Spearman over the cells)."""
    from scipy.stats import spearmanr

    from proxies import aznas

    default = aznas.TRAINABILITY_SAMPLES
    values: dict[int, list[float]] = {}
    cpu: dict[int, float] = {}
    try:
        for k in [batch.inputs.shape[0], *sizes]:
            aznas.TRAINABILITY_SAMPLES = k
            c = time.process_time()
            values[k] = [proxies.score(search_spaces.build_seeded(space, arch, i), batch, ["az_trainability"],
                                       seed=seed, device="cpu")["az_trainability"] for i, arch in enumerate(archs)]
            cpu[k] = (time.process_time() - c) * 1000.0 / len(archs)
    finally:
        aznas.TRAINABILITY_SAMPLES = default
    full = np.asarray(values[batch.inputs.shape[0]])
    print(f"AZ-NAS trainability, NB201, batch {batch.inputs.shape[0]}, {len(archs)} cells (network build included)")
    print(f"{'samples':>8}{'cpu ms/cell':>13}{'Spearman with the whole batch':>32}")
    for k in values:
        v = np.asarray(values[k])
        ok = np.isfinite(v) & np.isfinite(full)
        rho = float(spearmanr(v[ok], full[ok])[0])
        print(f"{k:>8}{cpu[k]:>13.0f}{rho:>32.3f}")


def main() -> None:
    """Time the proxies and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=5, help="random non-degenerate cells (default 5)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proxies", default=",".join(proxies.SUITE))
    parser.add_argument("--plain", action="store_true",
                        help="time synflow and nwot beside plain textbook implementations instead")
    parser.add_argument("--az-samples", metavar="K,K", help="time AZ-NAS trainability on the first K samples "
                        "and print its agreement with the whole batch instead")
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
    if args.plain:
        side_by_side(space, archs, batch, args.seed)
        return
    if args.az_samples:
        az_samples(space, archs, batch, args.seed, [int(k) for k in args.az_samples.split(",")])
        return
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
