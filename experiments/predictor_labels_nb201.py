"""Learned predictors on NAS-Bench-201 CIFAR-10 from a few labels: Spearman on 1,000 held-out cells.

Protocol (issue 23, must-show 1): a pool of ``--pool`` cells (``sample_archs(nb201, pool, 0)``, the cells
``nas benchmark proxies --n <pool> --seed 0`` scores, so their proxy values are in the proxy cache). For
draw ``d``, ``perm = default_rng(d).permutation(pool)``: the labels are ``pool[perm[:k]]`` for every
``k`` in ``--labels`` (nested), the test cells ``pool[perm[200:1200]]`` (the same 1,000 for every ``k``
and kind within a draw, never labelled). Each kind is created with ``seed=d`` and its ``--option``s,
fitted on the labels (true test accuracy of the table's column) and ranks the test cells. Settings are
chosen on draws 100 and up; the reported draws are 0..9.

Usage:
    python experiments/predictor_labels_nb201.py --kinds graph,parzc,ensemble_fit \\
        --accuracy-table ../shared/data/nb201_accuracy.csv --draws 0-9 --out experiments/out/learned/labels.csv

Draws 0-9 (mean over draws, 20 / 50 / 100 / 200 labels): ``ensemble_parzc`` (:mod:`predictors.stacked`,
settings from draws 100-109) 0.930 / 0.953 / 0.959 / 0.966; ``ensemble_fit`` 0.920 / 0.941 / 0.944 / 0.946.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search_spaces  # noqa: E402
from nas.cli.common import parse_options  # noqa: E402
from nas.proxy_benchmark import sample_archs  # noqa: E402
from predictors import base  # noqa: E402
from proxies.ensemble import spearman  # noqa: E402

TEST_START, TEST_SIZE = 200, 1000


def draw_split(pool_size: int, draw: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` labelled cells and of the 1,000 test cells of draw ``draw``."""
    if pool_size < TEST_START + TEST_SIZE:
        raise ValueError(f"--pool must be >= {TEST_START + TEST_SIZE}")
    if k > TEST_START:
        raise ValueError(f"at most {TEST_START} labels (the test cells start there), got {k}")
    perm = np.random.default_rng(draw).permutation(pool_size)
    return perm[:k], perm[TEST_START:TEST_START + TEST_SIZE]


def parse_draws(text: str) -> list[int]:
    """``0-9`` or ``0,3,5`` to a list of draws."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def main() -> None:
    """Fit every kind on every draw and label count; print mean/std Spearman per kind and count."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="ensemble_fit", help="comma-separated predictor kinds")
    ap.add_argument("--labels", default="20,50,100,200", help="label counts")
    ap.add_argument("--draws", default="0-9")
    ap.add_argument("--pool", type=int, default=1500)
    ap.add_argument("--accuracy-table", default="../shared/data/nb201_accuracy.csv")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--option", action="append", default=[], metavar="KIND:KEY=VALUE",
                    help="an option of one kind (repeatable), e.g. graph:epochs=200")
    ap.add_argument("--out", help="per-draw CSV (appended to; rows already there are skipped)")
    args = ap.parse_args()

    space = search_spaces.get("nb201", accuracy_table=args.accuracy_table, dataset=args.dataset)
    pool = [space.from_string(s) for s in sample_archs(space, args.pool, 0)]
    accuracy = np.array([space.accuracy(a) for a in pool])
    kinds = args.kinds.split(",")
    counts = [int(k) for k in args.labels.split(",")]
    options: dict[str, list[str]] = {k: [] for k in kinds}
    for item in args.option:
        kind, _, kv = item.partition(":")
        if kind not in options:
            ap.error(f"--option {item!r}: kind {kind!r} is not in --kinds {kinds}")
        options[kind].append(kv)
    parsed = {k: parse_options(v, "--option") for k, v in options.items()}

    done: set[tuple[str, int, int]] = set()
    rows: list[dict[str, str]] = []
    if args.out and os.path.exists(args.out):
        with open(args.out, newline="") as f:
            rows = list(csv.DictReader(f))
        done = {(r["kind"], int(r["labels"]), int(r["draw"])) for r in rows}
    writer = None
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        fresh = not os.path.exists(args.out)
        handle = open(args.out, "a", newline="")  # noqa: SIM115 - kept open for the whole run
        writer = csv.DictWriter(handle, ["kind", "labels", "draw", "spearman", "seconds"])
        if fresh:
            writer.writeheader()
    for draw in parse_draws(args.draws):
        for kind in kinds:
            for k in counts:
                if (kind, k, draw) in done:
                    continue
                lab, test = draw_split(len(pool), draw, k)
                t0 = time.perf_counter()
                predictor = base.create(kind, seed=draw, **parsed[kind])
                predictor.fit(space, [pool[i] for i in lab], accuracy[lab])
                pred = predictor.predict(space, [pool[i] for i in test])
                rho = spearman(pred, accuracy[test])
                row = {"kind": kind, "labels": str(k), "draw": str(draw), "spearman": f"{rho:.4f}",
                       "seconds": f"{time.perf_counter() - t0:.1f}"}
                rows.append(row)
                print(f"draw {draw} {kind} {k} labels: Spearman {rho:.4f} ({row['seconds']} s)", flush=True)
                if writer is not None:
                    writer.writerow(row)
                    handle.flush()

    wanted = set(parse_draws(args.draws))
    print(f"\n## NB201 {args.dataset}: Spearman on 1,000 held-out cells, mean ± std over draws "
          f"{min(wanted)}..{max(wanted)}\n")
    print("| kind | " + " | ".join(f"{k} labels" for k in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for kind in kinds:
        cells = []
        for k in counts:
            vals = [float(r["spearman"]) for r in rows
                    if r["kind"] == kind and int(r["labels"]) == k and int(r["draw"]) in wanted]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.3f} ± {sd:.3f} (n={len(vals)})" if vals else "-")
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
