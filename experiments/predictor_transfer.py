"""Graph predictor transfer: trained on NAS-Bench-201 labels only, applied to NAS-Bench-101 and DARTS cells.

Issue 23, must-show 2. A ``graph`` predictor (:mod:`predictors.graph`) is fitted on ``--nb201-labels`` random
CIFAR-10 labels of the NB201 pool that ``nas benchmark proxies --n 1500 --seed 0`` scores (pretrained on that
pool's unlabelled graphs first), then scores the NASLib reporting cells of
``experiments/data/naslib_zc_{nb101,nb301}.csv`` (NASLib's CIFAR-10 validation accuracy; the arch column is our
nb101 / darts string, read by ``cell_spaces_proxies.read_naslib``):

* zero-shot: Spearman on all cells of the file, no label of that space;
* fine-tuned: for each of ``--draws`` draws (``numpy.random.default_rng(draw)``), a copy of the NB201 predictor
  continues training (``warm_start``; with the default frozen trunk, its accuracy head) on
  ``--fine-tune-labels`` cells and is scored on the others; beside it on exactly the same cells: the zero-shot
  predictor, the label-free ``ensemble`` and ``flops`` (components at ``--batch-size``, reference: the file's
  cells, as ``nas benchmark proxies`` and ``darts_few_label.py`` score them), and with ``--scratch`` the same
  predictor kind trained on those labels alone (no NB201, no pretraining: pretraining would export 1,500
  networks of that space; its trunk trains, minutes per draw on a CPU).

The predictor reads the graph alone (its defaults, no proxies; ``--options`` overrides them): its settings were
chosen on NB201 draws 100..102 only, and proxies at the predictor's batch 64 cost about 13 CPU s per DARTS or
NB101 cell plus a 64-cell reference per space. The NB101 and DARTS accuracies are reporting data only: nothing
here is chosen on them.

Result (run 2026-12-05, seed 0, 1,000 NB201 labels, 10 draws; Spearman 0.887 on 300 held-out NB201 cells):

| space (cells scored) | zero-shot, all cells | zero-shot, same cells | fine-tuned on 50 | label-free ensemble | flops |
|---|---|---|---|---|---|
| NB101 (92; 42 per draw) | 0.746 | 0.741 +- 0.028 | 0.934 +- 0.017 | 0.757 +- 0.059 (all: 0.780) | 0.683 +- 0.033 |
| DARTS (66; 16 per draw) | 0.475 | 0.537 +- 0.101 | 0.650 +- 0.079 | 0.572 +- 0.185 (all: 0.560) | 0.654 +- 0.149 |

Zero-shot the graph predictor ranks below the label-free ensemble on both spaces; 50 labels of the new space
(head only, the NB201 trunk frozen) lift it above the ensemble on NB101 and to flops' level on DARTS, where
only 16 cells per draw are scored. Most of the NB101 gain is the graph itself: ``--scratch`` (the same
predictor trained on the 50 NB101 labels alone) gives 0.914 +- 0.020 on the same cells (not run on DARTS).

Usage (CPU: the NB201 fit about a minute, graph export about 1 s per new cell and cached; ensemble
components as darts_few_label.py, nothing when cached):
    OMP_NUM_THREADS=1 nice python experiments/predictor_transfer.py --nb201-labels 1000 --draws 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

import search_spaces
from nas.proxy_benchmark import sample_archs
from predictors import base
from predictors.base import proxy_values
from predictors.graph import GraphPredictor
from proxies.ensemble import LABEL_FREE_COMPONENTS, benchmark_label_free

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling experiment it shares readers with
from cell_spaces_proxies import NASLIB_FILES, _spearman, read_naslib  # noqa: E402

NB201_TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nb201_accuracy.csv"
DEFAULT_OPTIONS: dict[str, object] = {}
"""Graph predictor options beyond its defaults (chosen on NB201 draws 100..104; see predictors.graph)."""


def fit_nb201(n_labels: int, options: dict[str, object], seed: int) -> tuple[GraphPredictor, float]:
    """The predictor fitted on ``n_labels`` random NB201 cells of the pool, and its Spearman on 300 others."""
    space = search_spaces.get("nb201", accuracy_table=NB201_TABLE)
    pool = [space.from_string(a) for a in sample_archs(space, 1500, 0)]
    acc = np.array([space.accuracy(a) for a in pool])
    perm = np.random.default_rng(seed).permutation(len(pool))
    labelled, held_out = perm[:n_labels], perm[1200:]
    predictor = base.create("graph", seed=seed, **options)
    predictor.fit(space, [pool[i] for i in labelled], acc[labelled])
    rho = _spearman(predictor.predict(space, [pool[i] for i in held_out]), acc[held_out])
    return predictor, rho  # type: ignore[return-value]


def _row(name: str, rhos: list[float]) -> str:
    r = np.asarray(rhos, dtype=float)
    return f"| {name} | {np.nanmean(r):.3f} +- {np.nanstd(r):.3f} | [{np.nanmin(r):.2f}, {np.nanmax(r):.2f}] |"


def transfer(space_name: str, nb201: GraphPredictor, options: dict[str, object], n_labels: int, draws: int,
             batch_size: int, seed: int, scratch: bool) -> None:
    """Print zero-shot and fine-tuned Spearman on one space's NASLib cells, beside the label-free ensemble."""
    space = search_spaces.get(space_name)
    archs, acc, _ = read_naslib(NASLIB_FILES[space_name], space)
    table = proxy_values(space, archs, LABEL_FREE_COMPONENTS, batch_size, seed)
    values = {c: table[:, j] for j, c in enumerate(LABEL_FREE_COMPONENTS)}
    free, flops = benchmark_label_free(values), values["flops"]
    zero = nb201.predict(space, archs)
    n = len(archs)
    print(f"\n## {space_name}: {n} NASLib cells, {n_labels} labels per draw, Spearman on the other {n - n_labels} "
          f"({draws} draws)\n")
    print(f"All {n} cells, no label of {space_name}: graph predictor (NB201 only) {_spearman(zero, acc):.3f}, "
          f"label-free ensemble {_spearman(free, acc):.3f}, flops {_spearman(flops, acc):.3f}\n")
    names = ["graph, NB201 only (zero-shot)", f"graph, NB201 + {n_labels} labels (fine-tuned)",
             "label-free ensemble", "flops"]
    if scratch:
        names.append(f"graph, {n_labels} labels only (no NB201, no pretraining)")
    rows: dict[str, list[float]] = {k: [] for k in names}
    for draw in range(draws):
        perm = np.random.default_rng(draw).permutation(n)
        lab, rest = perm[:n_labels], perm[n_labels:]
        rest_archs = [archs[i] for i in rest]
        tuned = GraphPredictor.from_state(*nb201.state()).fit(space, [archs[i] for i in lab], acc[lab])
        preds = [zero[rest], tuned.predict(space, rest_archs), free[rest], flops[rest]]
        if scratch:
            alone = base.create("graph", seed=seed, **{**options, "pretrain": 0})
            preds.append(alone.fit(space, [archs[i] for i in lab], acc[lab]).predict(space, rest_archs))
        for name, pred in zip(rows, preds, strict=True):
            rows[name].append(_spearman(pred, acc[rest]))
    print("| scorer | Spearman mean +- std | [min, max] |")
    print("|---|---|---|")
    for name, rhos in rows.items():
        print(_row(name, rhos), flush=True)


def main() -> None:
    """Fit on NB201, print the transfer tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nb201-labels", type=int, default=1000, help="random NB201 cells labelled (of 1,500)")
    parser.add_argument("--fine-tune-labels", type=int, default=50)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--spaces", default="nb101,darts")
    parser.add_argument("--batch-size", type=int, default=16, help="calibration batch of the ensemble's components")
    parser.add_argument("--options", default="{}", help="JSON graph predictor options (default: the chosen ones)")
    parser.add_argument("--scratch", action="store_true", help="also train on the new space's labels alone (slow)")
    parser.add_argument("--save", default=None, help="folder to save the NB201 predictor in (nas predictor format)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    if args.nb201_labels > 1200:
        raise SystemExit("--nb201-labels: at most 1200 (the last 300 pool cells are held out)")
    options = {**DEFAULT_OPTIONS, **json.loads(args.options)}
    start = time.time()
    nb201, rho = fit_nb201(args.nb201_labels, options, args.seed)
    print(f"# Graph predictor transfer (options {json.dumps(options)}, seed {args.seed})\n")
    print(f"Fitted on {args.nb201_labels} NB201 CIFAR-10 labels in {time.time() - start:.0f} s; Spearman on 300 "
          f"held-out NB201 cells {rho:.3f}")
    if args.save:
        base.save(nb201, args.save)
    for space_name in args.spaces.split(","):
        transfer(space_name, nb201, options, args.fine_tune_labels, args.draws, args.batch_size, args.seed,
                 args.scratch)
    print(f"\n{time.time() - start:.0f} s in all")


if __name__ == "__main__":
    main()
