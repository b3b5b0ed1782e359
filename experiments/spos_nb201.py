"""SPOS and ENAS on NAS-Bench-201 (issue 18, must-show 3): how well inherited-weight accuracy ranks cells,
alone and with the label-free proxy ensemble, and ENAS's final pick over seeds.

Parts (``--parts``, default all; each writes CSVs under ``--out`` and reuses them when run again):

* ``spos``: trains the SPOS supernet (``spos`` strategy; C=``--channels``, N=``--cells``, ``--train-size``
  images of ``cifar10_jpeg/train`` halved into weight and held-out halves, ``--epochs``; checkpointed in
  ``OUT/spos-s<seed>``, so a rerun resumes), then scores ``--n`` distinct uniform random cells by
  ``acc_ws`` (BN recalibrated on ``--bn-batches`` x 256 training images, eval mode on ``--val-size``
  held-out images) into ``spos_acc_ws.csv``.
* ``ensemble``: the label-free ``ensemble`` proxy of the same cells on the real NAS-Bench-201 network
  (default space: C=16, N=5), as ``nas score`` computes it (``Evaluator(space, ("ensemble",), batch,
  seed=0)`` on the default 64-image CIFAR-10 batch, the proxy cache on) into ``ensemble.csv``.
* ``enas``: one ``enas`` study per seed (``OUT/enas-s<seed>``) at ``--enas-epochs`` / ``--enas-train-size``;
  its pick (the best of ``--final-samples`` controller samples by ``acc_ws``) and its benchmark accuracy.

Then it prints the Spearman (and Kendall) rank correlation against the benchmark's CIFAR-10 test accuracy
(``--table``, read only for this report) of ``acc_ws``, of the ensemble, and of two combinations: the mean
of the two ranks, and AZ-NAS's way (sum of log of the normalised ranks, i.e. the ensemble's own log-CDF
rule applied to the pair). Cells whose ensemble is NaN (output independent of the input) rank last.

Measured on a 2-core CPU (C=8, N=1, seed 0, 200 random cells, Spearman / Kendall with the benchmark):

* 20 epochs on 2k+2k images (``--train-size 4000 --val-size 1000 --bn-batches 2``): acc_ws -0.16; the
  undertrained supernet favours parameter-free cells.
* 50 epochs on 5k+5k (``--train-size 20000 --val-size 2000``, weights on 10k, 18.6 s/epoch): acc_ws
  0.536 / 0.385, the label-free ensemble 0.920 / 0.761, mean of the two ranks 0.863, sum of log ranks
  0.854: inherited weights rank cells, but below the untrained proxies, and adding them lowers the
  ensemble's correlation.
* ENAS, 50 epochs on 5k+5k (``--enas-train-size 10000``), seeds 0/1/2: 80.49 / 70.92 / 70.52 % (mean
  73.98 %) with 5, 6 and 6 parameter-free edges: the controller converges to skip connections, as
  NAS-Bench-201's own ENAS row (54.30 %, the all-skip cell) does.

Usage (the small CPU setting reported in the issue, then a larger one for a GPU machine):
    python experiments/spos_nb201.py --channels 8 --epochs 20 --train-size 4000 --val-size 1000 \\
        --bn-batches 2 --enas-epochs 10 --enas-train-size 4000 --final-samples 10
    python experiments/spos_nb201.py --device cuda --channels 16 --epochs 50 --train-size 10000
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau, rankdata, spearmanr

DATA = "../shared/data/cifar10_jpeg"
TABLE = "../shared/data/nb201_accuracy.csv"


def read_table(path: str) -> dict[str, float]:
    """CIFAR-10 test accuracy (%) by NAS-Bench-201 arch string."""
    with open(path, newline="") as f:
        return {row["arch"]: float(row["cifar10"]) for row in csv.DictReader(f)}


def random_cells(n: int, seed: int) -> list[str]:
    """``n`` distinct uniform random cells (seeded)."""
    import search_spaces

    space = search_spaces.get("nb201")
    rng = np.random.default_rng([seed, 201])
    cells: dict[str, None] = {}
    while len(cells) < n:
        cells[space.to_string(space.sample(rng))] = None
    return list(cells)


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a CSV with an ``arch`` column, by arch (empty when the file is absent)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["arch"]: row for row in csv.DictReader(f)}


def append_rows(path: Path, cols: list[str], rows: list[dict[str, Any]]) -> None:
    """Append rows (writing the header first for a new file)."""
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        if new:
            w.writeheader()
        w.writerows(rows)


def part_spos(args: argparse.Namespace, cells: list[str], out: Path) -> None:
    """Train the SPOS supernet (or resume it) and score ``cells`` by acc_ws into spos_acc_ws.csv."""
    import search_spaces
    from nas.strategies.weight_sharing import SPOS

    space = search_spaces.get("nb201", channels=args.channels, cells_per_stage=args.cells)
    run_dir = out / f"spos-s{args.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    spos = SPOS(space, seed=args.seed, storage=run_dir / "optuna.journal", data=args.data,
                train_size=args.train_size, epochs=args.epochs, batch_size=args.batch_size,
                bn_batches=args.bn_batches, val_size=args.val_size, device=args.device)
    path = out / "spos_acc_ws.csv"
    done = read_csv(path)
    start = time.perf_counter()
    todo = [c for c in cells if c not in done]
    for k, arch in enumerate(todo):
        t = time.perf_counter()
        scores = spos.evaluate(arch)  # the first call trains the epochs the checkpoint lacks
        append_rows(path, ["arch", "acc_ws", "seconds"], [{"arch": arch, "acc_ws": scores["acc_ws"],
                                                           "seconds": round(time.perf_counter() - t, 3)}])
        if k % 25 == 0:
            print(f"spos: {len(done) + k + 1}/{len(cells)} cells scored ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    epochs = [h["seconds"] for h in spos.history]
    if epochs:
        print(f"spos supernet: {len(epochs)} epochs, {np.mean(epochs):.1f} s/epoch; last train acc "
              f"{spos.history[-1]['train_acc']:.1f}%")


def part_ensemble(args: argparse.Namespace, cells: list[str], out: Path) -> None:
    """The label-free ensemble of ``cells`` on the default NAS-Bench-201 network, into ensemble.csv."""
    import proxies as proxy_lib
    import search_spaces
    from nas.evaluate import Evaluator
    from proxies.cache import resolve_cache

    space = search_spaces.get("nb201")
    batch = proxy_lib.load_batch(None, 64, 0, tuple(space.input_shape))
    evaluate = Evaluator(space, ("ensemble",), batch, seed=0, cache=resolve_cache(True))
    path = out / "ensemble.csv"
    done = read_csv(path)
    for arch in cells:
        if arch not in done:
            value = evaluate(arch).scores.get("ensemble", float("nan"))
            append_rows(path, ["arch", "ensemble"], [{"arch": arch, "ensemble": value}])


def part_enas(args: argparse.Namespace, out: Path, table: dict[str, float]) -> list[dict[str, Any]]:
    """One ENAS study per seed (resumed when present); a row per seed."""
    import nas
    import search_spaces
    from search_spaces.nb201_supernet import PARAM_FREE

    space = search_spaces.get("nb201", channels=args.channels, cells_per_stage=args.cells)
    rows = []
    for seed in args.enas_seeds:
        run_dir = out / f"enas-s{seed}"
        options = {"data": args.data, "train_size": args.enas_train_size, "epochs": args.enas_epochs,
                   "batch_size": args.batch_size, "final_samples": args.final_samples, "device": args.device}
        start = time.perf_counter()
        if (run_dir / "run.sqlite").exists():
            study = nas.load_study(run_dir, space=space)
        else:
            study = nas.create_study(space, ["acc_ws"], "enas", storage=run_dir, seed=seed,
                                     strategy_options=options)
        with study:
            study.optimize(budget=10**6)
            enas = study.strategy
            cell = space.to_string(enas.final)
            rows.append({"seed": seed, "cell": cell, "benchmark": table.get(cell, math.nan),
                         "param_free": sum(op in PARAM_FREE for op in enas.final),
                         "acc_ws": enas.evaluate(cell)["acc_ws"],
                         "greedy_last": enas.history[-1]["arch"],
                         "wall_s": time.perf_counter() - start,
                         "s_per_epoch": float(np.mean([h["seconds"] for h in enas.history]))})
        print(f"enas seed {seed}: {cell} benchmark {rows[-1]['benchmark']:.2f}% ({rows[-1]['wall_s']:.0f} s)",
              flush=True)
    return rows


def correlations(cells: list[str], out: Path, table: dict[str, float]) -> None:
    """Spearman / Kendall of acc_ws, the ensemble and their combinations against the benchmark."""
    ws, ens = read_csv(out / "spos_acc_ws.csv"), read_csv(out / "ensemble.csv")
    have = [c for c in cells if c in ws]
    if not have:
        return
    truth = np.array([table[c] for c in have])
    acc = np.array([float(ws[c]["acc_ws"]) for c in have])
    rows = [("acc_ws (SPOS, inherited weights)", acc)]
    if all(c in ens for c in have):
        e = np.array([float(ens[c]["ensemble"]) for c in have])
        e = np.where(np.isfinite(e), e, -np.inf)  # NaN: the output ignores the input; it ranks last
        ra, re = rankdata(acc) / len(have), rankdata(e) / len(have)
        rows += [("label-free ensemble (C=16, N=5, untrained)", e), ("mean of the two ranks", ra + re),
                 ("sum of log ranks (AZ-NAS)", np.log(ra) + np.log(re))]
    print(f"\nrank correlation with NAS-Bench-201 CIFAR-10 test accuracy, {len(have)} random cells")
    print(f"{'scorer':<45} {'Spearman':>9} {'Kendall':>8}")
    for name, score in rows:
        print(f"{name:<45} {spearmanr(score, truth)[0]:>9.3f} {kendalltau(score, truth)[0]:>8.3f}")


def main() -> None:
    """Parse the flags and run the parts."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DATA)
    p.add_argument("--table", default=TABLE)
    p.add_argument("--out", default="experiments/out/spos_nb201")
    p.add_argument("--parts", default="spos,ensemble,enas")
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--cells", type=int, default=1, help="cells per stage (N)")
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bn-batches", type=int, default=4)
    p.add_argument("--val-size", type=int, default=0, help="held-out images per score (0: the whole half)")
    p.add_argument("--n", type=int, default=200, help="random cells scored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--enas-seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--enas-epochs", type=int, default=50)
    p.add_argument("--enas-train-size", type=int, default=10000)
    p.add_argument("--final-samples", type=int, default=20)
    p.add_argument("--device", default="")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    table = read_table(args.table)
    cells = random_cells(args.n, args.seed)
    started = time.perf_counter()
    if "spos" in parts:
        part_spos(args, cells, out)
    if "ensemble" in parts:
        part_ensemble(args, cells, out)
    correlations(cells, out, table)
    if "enas" in parts:
        rows = part_enas(args, out, table)
        print(f"\nENAS final pick (best of {args.final_samples} controller samples by acc_ws), C={args.channels}, "
              f"N={args.cells}, {args.enas_epochs} epochs, train_size {args.enas_train_size}")
        print(f"{'seed':>4} {'benchmark %':>11} {'free':>4} {'acc_ws':>7} {'s/epoch':>7}  cell")
        for r in rows:
            print(f"{r['seed']:>4} {r['benchmark']:>11.2f} {r['param_free']:>4} {r['acc_ws']:>7.2f} "
                  f"{r['s_per_epoch']:>7.1f}  {r['cell']}")
        if rows:
            print(f"mean benchmark accuracy {np.mean([r['benchmark'] for r in rows]):.2f}%")
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
