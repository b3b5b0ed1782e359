"""INT8 post-training quantization of `nas train`-ed nb201 networks: accuracy drop and onnxruntime speed-up
(issue 24, must-show 3: "an INT8 ONNX export of a `nas train`-ed nb201 network loses < 1 point of test
accuracy on ../shared/data/cifar10_jpeg/test, and runs in onnxruntime faster than fp32 here").

(a) Trains NAS-Bench-201's best CIFAR-10 cell with `nas train` on cifar10_jpeg (the nb201 recipe shortened
to ``--epochs``; 10 % of the 20,000 training images held out for validation), unless ``--train-dir`` names
finished `nas train` folders to reuse (a folder that holds an unfinished run is resumed). (b) Quantizes each
network with :func:`nas.quantize.quantize` in every ``--formats`` (static, per-channel int8 weights, uint8
activations, MinMax on 1,000 seeded training images) and reports fp32 and int8 top-1 on all 10,000 test
images, the drop, and the median latency of both at batch 1 and 64 (timed in turn, run by run, so both see
the same load; one intra-op thread by default). The machine's load average is printed before and after,
since the machine is shared. Results go to OUT/summary.json and each quantization's own folder.

Usage (what the issue-24 note reports; `nas train` runs were started by hand with the same flags, niced,
OMP_NUM_THREADS=1, on a 2-core machine at load 5-8: 75-180 s an epoch on 9,000-18,000 images):
    # train C=16, N=1 on all 18,000 training images for 15 epochs, then quantize it
    OMP_NUM_THREADS=1 python experiments/quantize_nb201.py --channels 16 --cells-per-stage 1 --epochs 15
    # quantize networks trained before, in one table
    OMP_NUM_THREADS=1 python experiments/quantize_nb201.py --train-dir \
        experiments/out/train_nb201_cpu/e12-c8-n1-t6000-s0/cell0 experiments/out/quantize_nb201/c16-n1-e10-t10000-s0 \
        experiments/out/quantize_nb201/c16-n1-e15-s0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nas.quantize import FORMATS, quantize

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10_jpeg"
TOP = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def train(args: argparse.Namespace) -> Path:
    """The `nas train` folder of the configured network, trained (or resumed) first when it is not finished."""
    name = f"c{args.channels}-n{args.cells_per_stage}-e{args.epochs}" + (
        f"-t{args.train_size}" if args.train_size else "") + f"-s{args.seed}"
    out = Path(args.out) / name
    if (out / "metrics.json").is_file():
        return out
    cmd = [sys.executable, "-m", "nas", "train"]
    if (out / "config.json").is_file():
        cmd += ["--resume", str(out)]  # killed part-way: continue from its last epoch
    else:
        cmd += ["--arch", TOP, "--space", "nb201", "--space-option", f"channels={args.channels}",
                "--space-option", f"cells_per_stage={args.cells_per_stage}", "--data", str(args.data),
                "--epochs", str(args.epochs), "--seed", str(args.seed), "--device", "cpu", "--out", str(out)]
        if args.train_size:
            cmd += ["--train-size", str(args.train_size)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def load() -> str:
    """The 1-, 5- and 15-minute load averages (the machine is shared; latency depends on it)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def main() -> None:
    """Train (or reuse), quantize each network in each format, and print the must-show table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-dir", nargs="+", help="finished `nas train` folders to quantize (no training)")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells-per-stage", type=int, default=1)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--train-size", type=int, help="training-split images (default all 20,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    p.add_argument("--calibration-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latency-seconds", type=float, default=10.0, help="timing budget per batch size")
    p.add_argument("--out", default=str(ROOT / "experiments" / "out" / "quantize_nb201"))
    args = p.parse_args()

    dirs = [Path(d) for d in args.train_dir] if args.train_dir else [train(args)]
    rows = []
    for d in dirs:
        metrics = json.loads((d / "metrics.json").read_text())
        for fmt in args.formats:
            before = load()
            name = d.name if d.parent.resolve() == Path(args.out).resolve() else f"{d.parent.name}-{d.name}"
            r = quantize(d, args.data, out=Path(args.out) / "int8" / name / fmt,
                         calibration_size=args.calibration_size, seed=args.seed, fmt=fmt, threads=args.threads,
                         batch_sizes=(1, 64), latency_seconds=args.latency_seconds)
            rows.append({"train_dir": str(d), "channels": metrics["space_options"].get("channels"),
                         "cells_per_stage": metrics["space_options"].get("cells_per_stage"),
                         "epochs": metrics["epochs"], "train_images": metrics["train_images"],
                         "params": metrics["params"], "load_before": before, "load_after": load(),
                         **r.to_dict()})
            print(f"{d} {fmt}: fp32 {r.fp32_accuracy:.2f} int8 {r.int8_accuracy:.2f} drop {r.drop:+.2f}; "
                  f"latency ratio {r.latency_ratio}; load {before} -> {load()}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")

    table = Table(title=f"INT8 vs fp32, onnxruntime CPU, {args.threads} intra-op thread(s), "
                        f"{rows[0]['test_images']} test images")
    for col in ("network", "format", "fp32 %", "int8 %", "drop (pt)", "same top-1 %", "b1 fp32 ms", "b1 int8 ms", "b1 ratio",
                "b64 fp32 ms", "b64 int8 ms", "b64 ratio", "load (1/5/15 min)"):
        table.add_column(col)
    for row in rows:
        table.add_row(f"C={row['channels']} N={row['cells_per_stage']} {row['epochs']} ep "
                      f"{row['train_images']} img", row["format"], f"{row['fp32_accuracy']:.2f}",
                      f"{row['int8_accuracy']:.2f}", f"{row['drop']:+.2f}", f"{row['agreement']:.1f}",
                      f"{row['fp32_latency_ms']['1']:.3f}", f"{row['int8_latency_ms']['1']:.3f}",
                      f"{row['latency_ratio']['1']:.2f}", f"{row['fp32_latency_ms']['64']:.2f}",
                      f"{row['int8_latency_ms']['64']:.2f}", f"{row['latency_ratio']['64']:.2f}",
                      row["load_after"])
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
