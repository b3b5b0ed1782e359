"""Train the NAS-Bench-201 top cell and four cells spread over the benchmark's range with one short recipe;
check that our test accuracies rank them as the benchmark's 200-epoch ones do (issue 18, must-show 1).

The cells: the benchmark's best CIFAR-10 cell (94.37 %; the issue's 94.36 % is its rounded
``|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|``) and the
cells at ``--quantiles`` of the trainable cells' CIFAR-10 accuracies (cells above 11 %; the 341 at 10 % have
no path from input to output), sorted by accuracy then string, so the pick is deterministic. Each is trained
by ``nas train`` in its own process (``--jobs`` at once) with the NAS-Bench-201 recipe shortened to
``--epochs`` (SGD Nesterov 0.9, lr 0.1, wd 5e-4, cosine, batch 256, crop + flip; see ``nas.recipes``) on
``cifar10_jpeg`` (20,000 training images, 10% held out for validation; the 10,000 test images for the
reported accuracy only). A run folder that exists is resumed (``--resume``), a finished one reused.

``--kill-resume K`` also runs the top cell again, SIGKILLs it once K epochs are checkpointed, resumes it
with ``nas train --resume`` and compares it with the uninterrupted run of the same seed.

Measured on a 2-core CPU (``--device cpu --epochs 12 --channels 8 --cells-per-stage 1 --train-size 6000
--kill-resume 6``): test accuracies 55.01 / 43.85 / 43.12 / 46.97 / 54.39 % against the benchmark's 94.36 /
69.98 / 80.65 / 88.78 / 91.57 %, Spearman 0.90; 24-48 s per epoch; the top cell SIGKILLed after epoch 6 and
resumed ends at 55.01 % like the uninterrupted run (largest weight difference 0).

Usage:
    # one GPU, 5 cells x 30 epochs at C=16, N=5, all five at once
    python experiments/train_nb201.py --device cuda --amp --epochs 30 --channels 16 --cells-per-stage 5 \\
        --jobs 5 --kill-resume 10
    # a tiny CPU check
    python experiments/train_nb201.py --epochs 2 --channels 4 --cells-per-stage 1 --train-size 1000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

from nas.datasets import load_split

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TOP = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def pick_cells(table: Path, quantiles: list[float]) -> list[tuple[str, float]]:
    """The top cell, then the cell at each quantile of the trainable cells' accuracy: (arch, accuracy)."""
    df = pd.read_csv(table)
    trainable = df[df["cifar10"] > 11].sort_values(["cifar10", "arch"]).reset_index(drop=True)
    cells = [(TOP, float(df.loc[df["arch"] == TOP, "cifar10"].iloc[0]))]
    for q in quantiles:
        row = trainable.iloc[int(round(q * (len(trainable) - 1)))]
        cells.append((row["arch"], float(row["cifar10"])))
    return cells


def train_args(args: argparse.Namespace, arch: str, out: Path) -> list[str]:
    """The ``nas train`` command line of one cell (``--resume`` when its folder holds a run)."""
    if (out / "config.json").is_file():
        return [sys.executable, "-m", "nas", "train", "--resume", str(out), "--no-progress"]
    cmd = [sys.executable, "-m", "nas", "train", "--arch", arch, "--data", str(args.data), "--out", str(out),
           "--epochs", str(args.epochs), "--seed", str(args.seed), "--space-option", f"channels={args.channels}",
           "--space-option", f"cells_per_stage={args.cells_per_stage}", "--no-progress"]
    for flag, value in (("--train-size", args.train_size), ("--batch-size", args.batch_size),
                        ("--lr", args.lr), ("--device", args.device)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.amp:
        cmd.append("--amp")
    return cmd


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment of a training process: the CPU's threads shared out among the parallel jobs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    return env


def train_cell(args: argparse.Namespace, arch: str, out: Path) -> dict:
    """Train one cell in a process (or reuse its finished folder) and return its ``metrics.json``."""
    metrics = out / "metrics.json"
    if not metrics.is_file():
        log = out.with_suffix(".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            proc = subprocess.run(train_args(args, arch, out), env=child_env(args), stdout=f, stderr=f)
        if proc.returncode:
            raise RuntimeError(f"nas train {arch} failed (exit {proc.returncode}); see {log}")
    return json.loads(metrics.read_text())


def kill_resume(args: argparse.Namespace, out: Path, reference: dict) -> dict:
    """Train the top cell, SIGKILL it after ``--kill-resume`` epochs, resume it; compare with ``reference``."""
    if not (out / "config.json").exists():  # else killed (or finished) before: resume or reuse it below
        proc = subprocess.Popen(train_args(args, TOP, out), env=child_env(args), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        csv_log = out / "train.csv"
        while proc.poll() is None:
            if csv_log.is_file() and len(csv_log.read_text().splitlines()) > args.kill_resume:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:
            raise RuntimeError(f"the run to kill ended by itself (exit {proc.returncode}); lower --kill-resume")
    resumed = train_cell(args, TOP, out)
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(Path(reference["_out"]) / "model.pt", weights_only=True)
    max_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return {"killed_after_epoch": args.kill_resume, "resumed_test_accuracy": resumed["test_accuracy"],
            "uninterrupted_test_accuracy": reference["test_accuracy"],
            "difference_points": abs(resumed["test_accuracy"] - reference["test_accuracy"]),
            "max_weight_difference": max_diff}


def main() -> None:
    """Pick, train, tabulate, correlate."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "cifar10_jpeg")
    p.add_argument("--accuracy-table", type=Path, default=SHARED / "nb201_accuracy.csv")
    p.add_argument("--quantiles", default="0.02,0.1,0.3,0.6",
                   help="quantiles of the trainable cells' accuracy for the four other cells")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--channels", type=int, default=16, help="NB201's C (the benchmark: 16)")
    p.add_argument("--cells-per-stage", type=int, default=5, help="NB201's N (the benchmark: 5)")
    p.add_argument("--train-size", type=int, default=None, help="training-split images (default all 20,000)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's 256")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's 0.1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (GPUs)")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at once (one process each)")
    p.add_argument("--kill-resume", type=int, default=None, metavar="K",
                   help="also SIGKILL a top-cell run after K epochs, resume it and compare")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "train_nb201")
    args = p.parse_args()
    if not args.data.exists():
        sys.exit(f"--data {args.data}: not found (a folder with train/ and test/ class folders, or an .npz)")
    cells = pick_cells(args.accuracy_table, [float(q) for q in args.quantiles.split(",")])
    tag = f"e{args.epochs}-c{args.channels}-n{args.cells_per_stage}-t{args.train_size or 'all'}-s{args.seed}"
    outs = [args.out / tag / f"cell{i}" for i in range(len(cells))]
    # Decode the image folder once here: parallel first decodes would all write the same cache file
    load_split(args.data, "train"), load_split(args.data, "test")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads wait on the processes
        results = list(pool.map(lambda c: train_cell(args, c[0][0], c[1]), zip(cells, outs, strict=True)))
    wall = time.perf_counter() - start
    table = Table(title=f"NB201 cells, {args.epochs} epochs, C={args.channels}, N={args.cells_per_stage}, "
                        f"{results[0]['train_images']} training images")
    for col in ("cell", "benchmark test %", "our test %", "our val %", "s/epoch"):
        table.add_column(col, overflow="fold")
    for (arch, bench), m in zip(cells, results, strict=True):
        table.add_row(arch, f"{bench:.2f}", f"{m['test_accuracy']:.2f}",
                      f"{m['val_accuracy']:.2f}" if m["val_accuracy"] is not None else "-",
                      f"{m['seconds_per_epoch']:.1f}")
    console = Console(width=max(Console().width, 150))  # room for the cell strings
    console.print(table)
    rho = float(spearmanr([b for _, b in cells], [m["test_accuracy"] for m in results]).statistic)
    console.print(f"Spearman (benchmark vs ours, {len(cells)} cells): {rho:.3f}; wall time {wall:.0f} s; "
                  f"device {results[0]['device']}")
    summary = {"cells": [{"arch": a, "benchmark": b, **{k: m[k] for k in ("test_accuracy", "val_accuracy",
                                                                          "seconds_per_epoch", "params")}}
                         for (a, b), m in zip(cells, results, strict=True)],
               "spearman": rho, "wall_seconds": wall, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.kill_resume is not None:
        reference = {**results[0], "_out": str(outs[0])}
        check = kill_resume(args, args.out / tag / "killed", reference)
        console.print(f"kill after epoch {check['killed_after_epoch']} + resume: test "
                      f"{check['resumed_test_accuracy']:.2f} % vs uninterrupted {check['uninterrupted_test_accuracy']:.2f}"
                      f" % ({check['difference_points']:.2f} points; largest weight difference "
                      f"{check['max_weight_difference']:.3g})")
        summary["kill_resume"] = check
    (args.out / tag / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
