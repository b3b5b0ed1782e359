"""EAS on CIFAR-10 at CPU scale: the meta-controller vs random transformations vs no growing (issue 27, must-show 2).

Per seed: ``nas.eas.grow`` from a small plain start network (``--start``), the same with uniformly drawn
transformations (``random=True``, same budget: episodes x children fine-tuned networks), and the start
network trained from scratch for as many epochs in total as the EAS pick's lineage received (its
start epochs plus the fine-tuning epochs of each ancestor). Validation accuracy is on the held-out part
of the training split (what every choice uses); test accuracy is reported beside it, never used.

Usage (CPU; about 10-20 minutes per seed at the defaults on one core):
    OMP_NUM_THREADS=1 nice python experiments/eas_cifar.py --data ../shared/data/cifar10_jpeg \\
        --out experiments/out/eas --seeds 0 1 2
Runs are resumable folders under ``--out``; a rerun reuses everything finished.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nas.eas import grow
from nas.training import finished_metrics


def main() -> None:
    """Run every seed, then print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="experiments/out/eas")
    p.add_argument("--start", default="c3-16,p,c3-32,p,c3-64")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--children", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--start-epochs", type=int, default=6)
    p.add_argument("--train-size", type=int, default=5000)
    args = p.parse_args()
    out = Path(args.out)
    common = {"episodes": args.episodes, "children": args.children, "steps": args.steps, "epochs": args.epochs,
              "start_epochs": args.start_epochs, "train_size": args.train_size}
    rows = []
    for seed in args.seeds:
        runs = {}
        for name, rnd in (("eas", False), ("random", True)):
            folder = out / f"{name}-s{seed}"
            resume = (folder / "run.sqlite").is_file()
            runs[name] = grow(None if resume else args.start, None if resume else args.data, folder,
                              resume=resume, random=None if resume else rnd, seed=None if resume else seed,
                              progress=True, **({"episodes": args.episodes} if resume else common))
        start = next(c for c in runs["eas"].candidates if c.arch == runs["eas"].candidates[0].arch)
        total = runs["eas"].total_epochs
        long = finished_metrics(out / f"start-{total}ep-s{seed}", space="chain", arch=args.start, data=args.data,
                        epochs=total, train_size=args.train_size, seed=seed)
        rows.append({"seed": seed, "start_val": start.scores["val_acc"], "long_val": long["val_accuracy"],
                     "long_test": long["test_accuracy"], "total_epochs": total,
                     "eas_val": runs["eas"].val_accuracy, "eas_test": runs["eas"].test_accuracy,
                     "eas_arch": runs["eas"].best_arch, "random_val": runs["random"].val_accuracy,
                     "random_test": runs["random"].test_accuracy, "random_arch": runs["random"].best_arch,
                     "random_epochs": runs["random"].total_epochs})
        (out / "table.json").write_text(json.dumps(rows, indent=1))
    print(f"\nstart {args.start}, {args.start_epochs} epochs; {args.episodes} episodes x {args.children} children x "
          f"{args.steps} steps, {args.epochs} fine-tuning epochs each; {args.train_size} training images "
          "(10% held out for validation)")
    print(f"{'seed':>4} {'start':>7} {'start, same epochs':>19} {'EAS':>7} {'random':>7}  EAS pick")
    for r in rows:
        print(f"{r['seed']:>4} {r['start_val']:>7.2f} {r['long_val']:>12.2f} ({r['total_epochs']:>2} ep) "
              f"{r['eas_val']:>7.2f} {r['random_val']:>7.2f}  {r['eas_arch']}")
    for key, label in (("long_val", "start, same epochs"), ("eas_val", "EAS"), ("random_val", "random")):
        print(f"mean validation accuracy, {label}: {np.mean([r[key] for r in rows]):.2f}%")
    print("test accuracy (reported, never used): " + ", ".join(
        f"{label} {np.mean([r[key] for r in rows]):.2f}%" for key, label in
        (("long_test", "start same epochs"), ("eas_test", "EAS"), ("random_test", "random"))))


if __name__ == "__main__":
    main()
