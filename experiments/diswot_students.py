"""DisWOT on a residual student family: does the training-free ``diswot`` rank students by how well they
distil from a given teacher? (issue 27, must-show 3)

1. A teacher (a ResNet-like chain, ``--teacher-arch``) is trained with ``nas.train`` on ``--data``.
2. ``--students`` students are drawn without repetition from a residual family: a 3x3 stem of width w,
   then three stages of ``d_i`` residual basic blocks of widths w, 2w, 4w separated by max pooling, with
   w in {8, 12, 16, 24} and each d_i in {1, 2, 3} (the seed fixes the draw).
3. Each untrained student is scored with ``diswot``, ``diswot_relation``, ``params`` and ``synflow`` on
   one batch of the training split (64 images, as ``nas score --teacher`` does), then distilled from the
   teacher with ``nas.train(..., teacher=...)`` (Hinton KD, T=4, alpha=0.9) with a short recipe.
4. The table: Kendall's tau and Spearman of each proxy against the distilled test accuracy.

Usage (CPU; about 20-40 s per student epoch on 5,000 images on one core):
    OMP_NUM_THREADS=1 nice python experiments/diswot_students.py --data ../shared/data/cifar10_jpeg \\
        --out experiments/out/diswot --teacher-epochs 10 --teacher-train-size 10000 \\
        --student-epochs 4 --student-train-size 5000
Everything is written under ``--out`` as it is produced; a rerun reuses finished trainings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

import proxies
import search_spaces.chain  # noqa: F401  (registers the chain space)
from nas.evaluate import init_seed
from nas.training import finished_metrics, load_trained
from proxies.distill import with_teacher
from search_spaces import build_seeded
from search_spaces.chain import ChainSpace

PROXIES = ("diswot", "diswot_relation", "params", "synflow")


def student_family(n: int, seed: int) -> list[str]:
    """``n`` distinct residual chains (width w in {8,12,16,24}, 1-3 blocks per stage), drawn with ``seed``."""
    combos = list(itertools.product((8, 12, 16, 24), (1, 2, 3), (1, 2, 3), (1, 2, 3)))
    picks = np.random.default_rng(seed).choice(len(combos), size=n, replace=False)
    out = []
    for w, d1, d2, d3 in (combos[i] for i in sorted(picks)):
        units = [f"c3-{w}", *[f"r3-{w}"] * d1, "p", *[f"r3-{2 * w}"] * d2, "p", *[f"r3-{4 * w}"] * d3]
        out.append(",".join(units))
    return out


def main() -> None:
    """Train the teacher, score and distil the students, print the correlation table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="experiments/out/diswot")
    p.add_argument("--teacher-arch", default="c3-32,r3-32,r3-32,p,r3-64,r3-64,p,r3-128,r3-128")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--teacher-train-size", type=int, default=10000)
    p.add_argument("--students", type=int, default=20)
    p.add_argument("--student-epochs", type=int, default=4)
    p.add_argument("--student-train-size", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64, help="proxy calibration batch")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    teacher_dir = out / "teacher"
    t_metrics = finished_metrics(teacher_dir, space="chain", arch=args.teacher_arch, data=args.data,
                        epochs=args.teacher_epochs, train_size=args.teacher_train_size, seed=args.seed)
    print(f"teacher {args.teacher_arch}: test {t_metrics['test_accuracy']:.2f}% "
          f"({t_metrics['params'] / 1e6:.2f} M params, {time.perf_counter() - start:.0f} s)", flush=True)
    teacher, _ = load_trained(teacher_dir)
    space = ChainSpace()
    batch = with_teacher(proxies.load_batch(args.data, args.batch_size, args.seed, space.input_shape), teacher)
    rows_file = out / "students.jsonl"
    done = {json.loads(line)["arch"]: json.loads(line) for line in rows_file.open()} if rows_file.exists() else {}
    rows = []
    for i, arch in enumerate(student_family(args.students, args.seed)):
        if arch in done:
            rows.append(done[arch])
            continue
        net = build_seeded(space, space.from_string(arch), init_seed(args.seed, arch))
        scores = proxies.score(net, batch, PROXIES, seed=args.seed)
        metrics = finished_metrics(out / f"student{i:02d}", space="chain", arch=arch, data=args.data,
                          epochs=args.student_epochs, train_size=args.student_train_size, seed=args.seed,
                          teacher=teacher_dir)
        row = {"arch": arch, **scores, "distilled_test": metrics["test_accuracy"]}
        rows.append(row)
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{i + 1}/{args.students}] {arch}: distilled {row['distilled_test']:.2f}%  "
              + "  ".join(f"{n} {scores[n]:.4g}" for n in PROXIES)
              + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    acc = [r["distilled_test"] for r in rows]
    print(f"\n{len(rows)} students, teacher {t_metrics['test_accuracy']:.2f}%, distilled test accuracy "
          f"{min(acc):.2f}-{max(acc):.2f}%  ({args.student_epochs} epochs on {args.student_train_size} images)")
    print(f"{'proxy':<16} {'Kendall tau':>12} {'Spearman':>10}")
    for name in PROXIES:
        values = [r[name] for r in rows]
        print(f"{name:<16} {kendalltau(values, acc)[0]:>12.3f} {spearmanr(values, acc)[0]:>10.3f}")


if __name__ == "__main__":
    main()
