"""Proxies on the NAS-Bench-101 and DARTS (NAS-Bench-301) cell spaces, on CPU: cost, and rank correlation.

1. Cost table (``--cost-n`` sampled architectures per row, 0 skips it): CPU seconds per architecture of
   the full image-proxy suite and of the label-free ``ensemble``'s components, on the benchmark's own
   network at calibration batch 64 (the CLI default) and 16, plus what the ensemble's reference sample
   (``proxies.ensemble.REFERENCE_SIZE`` architectures) costs once per run at that rate.
2. Correlation table, on the NASLib cells in ``experiments/data/naslib_zc_{nb101,nb301}.csv`` (public
   NAS-Bench-Suite-Zero values; see the files' headers): Spearman of each of our proxies and of the
   label-free ensemble with NASLib's CIFAR-10 validation accuracy, NASLib's own value of the same proxy on
   the same cells, and Spearman(ours, NASLib's). The ensemble is scored three ways, all label-free: against
   the scored cells themselves (AZ-NAS's protocol, as ``nas benchmark proxies`` does), and as ``nas score``
   / ``nas search`` score it, against a reference sample drawn from the space with the run's seed (the
   first 64 and the first 16 of that draw). Accuracies are for reporting only: nothing here is chosen or
   tuned on them.

Networks are initialised as ``nas.evaluate.Evaluator`` initialises them (``init_seed(seed, arch)``), so
the values equal what ``nas score --batch-size B`` writes; the correlation table goes through the Evaluator
itself, so with ``$ZCNAS_CACHE_DIR`` set its values (the reference sample's included) are cached and
reused by ``nas score``/``nas search`` runs with the same space, batch and seed.

Usage (CPU minutes: about 3 for the cost table with --cost-n 1; the correlation table about 5 s per
NASLib cell and 2 s per reference architecture, nothing for values already in $ZCNAS_CACHE_DIR):
    OMP_NUM_THREADS=1 nice python experiments/cell_spaces_proxies.py --cost-n 1 --threads 1
    ZCNAS_CACHE_DIR=~/.cache/zcnas python experiments/cell_spaces_proxies.py --cost-n 0 --limit 40 --reference 0
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import proxies
import search_spaces
from nas.evaluate import Evaluator, init_seed
from proxies.cache import ProxyCache
from proxies.ensemble import (
    LABEL_FREE_COMPONENTS,
    REFERENCE_SIZE,
    Reference,
    benchmark_label_free,
    label_free,
)

DATA = Path(__file__).parent / "data"
NASLIB_FILES = {"nb101": DATA / "naslib_zc_nb101.csv", "darts": DATA / "naslib_zc_nb301.csv"}
NASLIB_PROXIES = ("flops", "params", "snip", "jacov", "grad_norm", "plain", "epe_nas", "fisher", "grasp",
                  "l2_norm", "synflow")
FIRST_CHOICE = ("az_trainability", "logsynflow", "meco")
"""The label-free ensemble's components before the second selection run (reported beside the current ones)."""
NASLIB_PUBLISHED = {"nb101": "best single proxy ~0.70 (flops)", "darts": "best single proxy ~0.52 (params, l2_norm)"}
"""NAS-Bench-Suite-Zero's published Spearman of its best single proxy on the whole benchmark sample."""


def image_proxies() -> list[str]:
    """Every registered proxy for image classifiers (no ensembles, no sequence-model proxies)."""
    return [n for n in proxies.list() if not n.startswith("ensemble")
            and "sequence_pass" not in proxies.get(n).needs]


def score_archs(space: search_spaces.SearchSpace, archs: Sequence[object], names: Sequence[str],
                batch_size: int, seed: int, evaluator: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every proxy in ``names`` for each architecture, and this process's CPU seconds per architecture.

    With ``evaluator`` the values come through ``nas.evaluate.Evaluator``, so they are read from and
    stored in the proxy cache that ``$ZCNAS_CACHE_DIR`` names (shared with ``nas score``/``nas search``;
    a cached value costs no CPU); without, every value is computed (the cost table).
    """
    batch = proxies.calibration_batch(batch_size, seed, tuple(space.input_shape))
    evaluate = Evaluator(space, tuple(names), batch, seed=seed, device="cpu", cache=ProxyCache()) if evaluator else None
    values = {n: np.full(len(archs), np.nan) for n in names}
    cpu = np.zeros(len(archs))
    for i, arch in enumerate(archs):
        c0 = time.process_time()
        if evaluate is not None:
            scores = evaluate(space.to_string(arch)).scores
        else:
            model = search_spaces.build_seeded(space, arch, init_seed(seed, space.to_string(arch)))
            scores = proxies.score(model, batch, list(names), seed=seed, device="cpu")
        for name, value in scores.items():
            values[name][i] = value
        cpu[i] = time.process_time() - c0
    return values, cpu


def cost_table(space_names: Sequence[str], n: int, seed: int) -> None:
    """Print CPU s/arch of the full suite and of the ensemble components at batch 64 and 16."""
    suites = {"full suite": image_proxies(), "ensemble components": list(LABEL_FREE_COMPONENTS)}
    print(f"\n## Cost (CPU s/arch, median of {n} sampled architectures, benchmark networks, 1 thread)\n")
    print(f"| space | proxies | batch | CPU s/arch | reference sample ({REFERENCE_SIZE} archs), CPU s |")
    print("|---|---|---|---|---|")
    for space_name in space_names:
        space = search_spaces.get(space_name)
        rng = np.random.default_rng(seed)
        archs = [space.sample(rng) for _ in range(n)]
        for label, names in suites.items():
            for batch_size in (64, 16):
                _, cpu = score_archs(space, archs, names, batch_size, seed)
                ref = f"{REFERENCE_SIZE * np.median(cpu):.0f}" if label.startswith("ensemble") else ""
                print(f"| {space_name} | {label} ({len(names)}) | {batch_size} | {np.median(cpu):.1f} | {ref} |",
                      flush=True)


def read_naslib(path: Path, space: search_spaces.SearchSpace) -> tuple[list[object], np.ndarray,
                                                                         dict[str, np.ndarray]]:
    """Architectures, validation accuracies and NASLib's proxy values of a ``naslib_zc_*.csv`` file."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    archs = [space.from_string(r["arch"]) for r in rows]
    acc = np.array([float(r["val_accuracy"]) for r in rows])
    naslib = {p: np.array([float(r[f"naslib_{p}"]) for r in rows]) for p in NASLIB_PROXIES}
    return archs, acc, naslib


def correlation_table(space_name: str, batch_size: int, reference: int, seed: int, limit: int | None) -> None:
    """Print Spearman of our proxies and the ensemble with NASLib's accuracies, beside NASLib's proxies."""
    space = search_spaces.get(space_name)
    archs, acc, naslib = read_naslib(NASLIB_FILES[space_name], space)
    if limit:
        archs, acc, naslib = archs[:limit], acc[:limit], {k: v[:limit] for k, v in naslib.items()}
    names = list(dict.fromkeys([*LABEL_FREE_COMPONENTS, *FIRST_CHOICE, *NASLIB_PROXIES]))
    ours, cpu = score_archs(space, archs, names, batch_size, seed, evaluator=True)
    # The reference sample as nas.evaluate.Evaluator draws it: the space's sampler with the run's seed.
    rng = np.random.default_rng(seed)
    ref_archs = [space.sample(rng) for _ in range(reference)]
    ref_values, ref_cpu = score_archs(space, ref_archs, LABEL_FREE_COMPONENTS, batch_size, seed,
                                      evaluator=True)
    ensembles = {"ensemble (reference: the scored cells)": benchmark_label_free(ours),
                 "first choice " + "+".join(FIRST_CHOICE) + " (reference: the scored cells)":
                     benchmark_label_free(ours, FIRST_CHOICE)}
    for size in dict.fromkeys((reference, min(16, reference)) if reference else ()):
        ref = Reference.from_values({c: v[:size] for c, v in ref_values.items()})
        ensembles[f"ensemble (reference: {size} sampled archs)"] = label_free(ref).score_table(ours)
    n = len(archs)
    half = 1.96 / math.sqrt(n - 3)  # 95% half-width of a Spearman near 0 (Fisher z), for scale
    print(f"\n## {space_name}: {n} NASLib cells (CIFAR-10 val accuracy), our batch {batch_size}, "
          f"seed {seed}; CPU {np.median(cpu):.1f} s/cell, reference {ref_cpu.sum():.0f} s (0 where cached); 95% CI about "
          f"+-{half:.2f}\n")
    print("| proxy | Spearman ours vs acc | Spearman NASLib vs acc | Spearman ours vs NASLib |")
    print("|---|---|---|---|")
    for name in names:
        nl = naslib.get(name)
        row = [_spearman(ours[name], acc), _spearman(nl, acc) if nl is not None else math.nan,
               _spearman(ours[name], nl) if nl is not None else math.nan]
        print(f"| {name} | " + " | ".join(_fmt(r) for r in row) + " |")
    for label, values in ensembles.items():
        print(f"| {label} | {_fmt(_spearman(values, acc))} | | |")
    best = max(NASLIB_PROXIES, key=lambda p: abs(_spearman(naslib[p], acc)))
    print(f"\nNASLib's best single proxy on these cells: {best} {_fmt(_spearman(naslib[best], acc))}; "
          f"NAS-Bench-Suite-Zero publishes {NASLIB_PUBLISHED[space_name]} on its full sample.")
    if reference:
        agree = _spearman(ensembles[f"ensemble (reference: {reference} sampled archs)"],
                          ensembles[f"ensemble (reference: {min(16, reference)} sampled archs)"])
        print(f"Rank agreement of the ensemble with a {min(16, reference)}- vs a {reference}-architecture "
              f"reference on these cells (label-free): {_fmt(agree)}", flush=True)


def batch_check(space_name: str, n: int, batch_size: int, seed: int) -> None:
    """Print how well the ensemble's components at ``batch_size`` rank the first ``n`` NASLib cells as at 64."""
    space = search_spaces.get(space_name)
    archs = read_naslib(NASLIB_FILES[space_name], space)[0][:n]
    comps = list(LABEL_FREE_COMPONENTS)
    full, cpu_full = score_archs(space, archs, comps, 64, seed, evaluator=True)
    small, cpu_small = score_archs(space, archs, comps, batch_size, seed, evaluator=True)
    rhos = {c: _spearman(full[c], small[c]) for c in comps}
    rhos["ensemble (reference: these cells)"] = _spearman(benchmark_label_free(full), benchmark_label_free(small))
    print(f"\n## {space_name}: batch {batch_size} vs 64 on the first {n} NASLib cells (label-free; CPU s/cell "
          f"{np.median(cpu_full):.1f} at 64, {np.median(cpu_small):.1f} at {batch_size}, 0 where cached)\n")
    print(f"| proxy | Spearman batch {batch_size} vs 64 |")
    print("|---|---|")
    for name, rho in rhos.items():
        print(f"| {name} | {_fmt(rho)} |", flush=True)


def main() -> None:
    """Print the cost table and, for each space with NASLib cells, the correlation table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", default="nb101,darts")
    parser.add_argument("--cost-n", type=int, default=2, help="architectures per cost row (0: no cost table)")
    parser.add_argument("--batch-size", type=int, default=16, help="calibration batch of the correlation table")
    parser.add_argument("--reference", type=int, default=REFERENCE_SIZE,
                        help=f"sampled reference of the ensemble rows (default {REFERENCE_SIZE}; 0: none)")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only the first N NASLib cells (0: no correlation table)")
    parser.add_argument("--batch-check", type=int, default=0, metavar="N",
                        help="also compare the ensemble's components at --batch-size and 64 on N NASLib cells")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    spaces = args.spaces.split(",")
    print(f"torch threads {args.threads}, load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(CPU seconds are this process's; a loaded machine inflates wall time, not these)")
    if args.limit != 0:
        for space_name in spaces:
            correlation_table(space_name, args.batch_size, args.reference, args.seed, args.limit)
    if args.batch_check:
        for space_name in spaces:
            batch_check(space_name, args.batch_check, args.batch_size, args.seed)
    if args.cost_n:
        cost_table(spaces, args.cost_n, args.seed)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b) & (a > -1e29) & (b > -1e29)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def _fmt(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.2f}"


if __name__ == "__main__":
    main()
