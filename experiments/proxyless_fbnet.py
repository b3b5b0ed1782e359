"""ProxylessNAS on fbnet / CIFAR-10 on CPU (issue 19, must show 1): latency weights and a trained pick.

1. ``nas search --strategy proxylessnas --space fbnet --target rpi4`` with additive latency weights 0, 0.1
   and 1 (same seed, data and epochs): the final architecture's predicted rpi4 latency must not increase
   with the weight.
2. The middle run's ``best.json`` and a random fbnet architecture of the closest predicted rpi4 latency
   (among ``--pool`` random draws) are trained with the same short ``nas train`` recipe.

Prints one table per part. Run (about 20 minutes on a loaded 2-core CPU at the defaults):
``python experiments/proxyless_fbnet.py --data ../shared/data/cifar10_jpeg --out experiments/out/proxyless_fbnet``

Measured (idle 2-core CPU, ``--arch-lr 0.05 --train-epochs 20 --train-train-size 5000``): weights 0 / 0.1 / 1
give 39.1 / 22.1 / 16.0 ms on rpi4 (monotone; about 15 s per search). Trained 20 epochs on 5,000 images, the
22.1 ms pick reaches 50.4 % CIFAR-10 test accuracy (19 s/epoch), the closest-latency random arch of 300
(35.4 ms; none faster) 55.1 % (45 s/epoch); 5 epochs on 2,000 images: 32.0 % vs 35.0 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import hardware_models
import search_spaces


def nas(*args: str) -> float:
    """Run the ``nas`` CLI (as a user would); returns the wall seconds; raises if it fails."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "nas", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    return time.perf_counter() - start


def best_arch(run: Path) -> str:
    """The architecture string a run's ``best.json`` holds."""
    return json.loads((run / "best.json").read_text())["arch"]


def test_acc(train_dir: Path) -> float:
    """Final test accuracy (%) of a ``nas train`` output folder (its ``metrics.json``)."""
    return float(json.loads((train_dir / "metrics.json").read_text())["test_accuracy"])


def main() -> None:
    """Run the searches and trainings (skipping finished ones) and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/cifar10_jpeg")
    ap.add_argument("--out", default="experiments/out/proxyless_fbnet")
    ap.add_argument("--weights", default="0,0.1,1")
    # Defaults sized for a shared 2-core CPU (a batch of 64 costs ~15 s per step there under load).
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--train-train-size", type=int, default=500)
    ap.add_argument("--train-batch-size", type=int, default=64)
    ap.add_argument("--pool", type=int, default=300)
    ap.add_argument("--arch-lr", type=float, default=1e-3, help="Adam lr of the logits (the paper's 1e-3)")
    ap.add_argument("--no-train", action="store_true", help="only the latency-weight table")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = search_spaces.get("fbnet", num_classes=10)
    rpi4 = hardware_models.get("rpi4")
    rows = []
    for w in args.weights.split(","):
        run = out / f"search_w{w}"
        seconds = 0.0
        if not (run / "best.json").is_file():
            seconds = nas("search", "--strategy", "proxylessnas", "--space", "fbnet", "--space-option",
                          "num_classes=10", "--target", "rpi4", "--data", args.data, "--epochs", str(args.epochs),
                          "--train-size", str(args.train_size), "--option", f"latency_weight={w}",
                          "--option", f"batch_size={args.batch_size}", "--option", f"arch_lr={args.arch_lr}",
                          "--executor", "serial", "--no-progress", "--out", str(run))
        arch = best_arch(run)
        ms = float(rpi4.predict(space, [space.from_string(arch)])[0])
        rows.append((float(w), arch, ms, seconds))
    print(f"\nProxylessNAS fbnet, additive latency loss, arch_lr {args.arch_lr}, rpi4 (predicted ms of the final argmax "
          "arch)")
    print(f"{'weight':>7} {'rpi4 ms':>8} {'search s':>9}  arch")
    for w, arch, ms, seconds in rows:
        print(f"{w:7.2f} {ms:8.2f} {seconds:9.0f}  {arch}")
    lat = [r[2] for r in rows]
    print("latency never increases with the weight:", all(b <= a + 1e-9 for a, b in zip(lat, lat[1:], strict=False)))
    if args.no_train:
        return

    pick = rows[len(rows) // 2]
    rng = np.random.default_rng(0)
    pool = [space.sample(rng) for _ in range(args.pool)]
    pool_ms = rpi4.predict(space, pool)
    j = int(np.argmin(np.abs(pool_ms - pick[2])))
    random_arch = space.to_string(pool[j])
    (out / "random_arch.txt").write_text(random_arch + "\n")
    (out / "proxyless_arch.txt").write_text(pick[1] + "\n")
    table = []
    for label, arch_file, ms in (("proxylessnas", out / "proxyless_arch.txt", pick[2]),
                                 ("random", out / "random_arch.txt", float(pool_ms[j]))):
        train_dir = out / f"train_{label}"
        if not (train_dir / "metrics.json").is_file():
            nas("train", "--space", "fbnet", "--space-option", "num_classes=10", "--arch-file", str(arch_file),
                "--data", args.data, "--epochs", str(args.train_epochs), "--train-size", str(args.train_train_size),
                "--batch-size", str(args.train_batch_size), "--no-progress", "--out", str(train_dir))
        table.append((label, ms, test_acc(train_dir), arch_file.read_text().strip()))
    print(f"\nnas train, {args.train_epochs} epochs on {args.train_train_size} images, batch {args.train_batch_size} "
          "(same recipe and seed)")
    print(f"{'arch':>13} {'rpi4 ms':>8} {'test acc %':>10}  arch")
    for label, ms, acc, arch in table:
        print(f"{label:>13} {ms:8.2f} {acc:10.2f}  {arch}")


if __name__ == "__main__":
    main()
