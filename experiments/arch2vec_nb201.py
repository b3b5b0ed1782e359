"""arch2vec on NAS-Bench-201: autoencoder reconstruction and latent search with 100 oracle queries (issue 23).

1. Pretrains (or reads from the cache) the default arch2vec model on all 15,625 NB201 cells and reports the
   fraction reconstructed exactly (decoded labels and edges equal to the input), and, with ``--holdout``,
   the same for a model trained on a seeded 90% of the cells and measured on the other 10%.
2. Runs random, bayesian (TPE), bayesian with ``latent=True``, reinforce and reinforce with ``latent=True``
   through their ask/tell API, one proposal at a time, telling each the cell's true accuracy from the
   table (the oracle; ``nas search`` has no objective for it), until ``--budget`` distinct cells were
   queried (a repeated proposal is told its known value again and not counted). The final pick is the
   best queried cell, so its accuracy is the maximum among the queries; mean and standard deviation
   over ``--seeds`` seeds, as a markdown table.

The accuracy column is ``cifar10`` of ``nb201_accuracy.csv``: the CIFAR-10 test accuracy after 200 epochs
(NATS-Bench), used both as the told value and as the reported one. arch2vec reports about 94.1 on
CIFAR-10 under another protocol: its searches are rewarded with the validation accuracy, the test
accuracy of the pick is reported, and the budget is simulated training time (12,000 s in its REINFORCE
script), not a count of queries.

    OMP_NUM_THREADS=1 python experiments/arch2vec_nb201.py --seeds 10 --budget 100
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

import search_spaces
from nas import strategies
from predictors.arch2vec import Arch2Vec, pretrained

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "random": ("random", {}),
    "bayesian": ("bayesian", {}),
    "bayesian latent": ("bayesian", {"latent": True}),
    "bayesian latent multivariate=false": ("bayesian", {"latent": True, "multivariate": False}),
    "reinforce": ("reinforce", {}),
    "reinforce latent": ("reinforce", {"latent": True}),
    "reinforce latent lr=0.1": ("reinforce", {"latent": True, "lr": 0.1}),
}
"""Table rows: the strategy and its options. The two non-default latent rows were chosen on seeds 100-109
(``--seed-start 100``), never on the reported seeds 0-9."""


def search(space: search_spaces.SearchSpace, name: str, options: dict, seed: int, budget: int) -> dict:
    """One search told the oracle accuracy; returns the best accuracy and the queries it took."""
    strategy = strategies.get(name, space, seed=seed, **options)
    known: dict = {}
    best, best_at, asks = -np.inf, 0, 0
    while len(known) < budget and asks < 50 * budget:
        (arch,) = strategy.ask(1)
        asks += 1
        if arch not in known:
            known[arch] = space.accuracy(arch)
            if known[arch] > best:
                best, best_at = known[arch], len(known)
        strategy.tell([arch], [(known[arch],)])
    return {"best": float(best), "best_at": best_at, "queries": len(known), "asks": asks}


def reconstruction(space: search_spaces.SearchSpace, holdout: bool) -> dict:
    """Exact reconstruction of all cells by the cached default model (and of held-out cells)."""
    archs = space.all_archs()
    start = time.perf_counter()
    vae = pretrained(space)
    out = {"load_or_train_s": round(time.perf_counter() - start, 1),
           "all_cells": vae.reconstruction_accuracy(space, archs), "epochs": vae.epochs,
           "final_epoch": vae.history_[-1] if vae.history_ else None}
    if holdout:
        order = np.random.default_rng(0).permutation(len(archs))
        cut = int(0.9 * len(archs))
        train, test = [archs[i] for i in order[:cut]], [archs[i] for i in order[cut:]]
        start = time.perf_counter()
        held = Arch2Vec().fit(space, train)
        out["holdout_train_s"] = round(time.perf_counter() - start, 1)
        out["holdout_train_cells"] = held.reconstruction_accuracy(space, train)
        out["holdout_test_cells"] = held.reconstruction_accuracy(space, test)
    return out


def main() -> None:
    """Run the reconstruction check and the searches; write CSV/JSON and print the markdown tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accuracy-table", default=str(ROOT.parent / "shared" / "data" / "nb201_accuracy.csv"))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--seed-start", type=int, default=0, help="first seed (100 for the tuning seeds)")
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--strategies", default=",".join(SETTINGS), help="comma-separated rows of the table")
    p.add_argument("--holdout", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--reconstruction", action=argparse.BooleanOptionalAction, default=True,
                   help="step 1 (--no-reconstruction: only the searches, e.g. the baselines in another process)")
    p.add_argument("--out", default=str(ROOT / "experiments" / "out" / "learned" / "arch2vec_nb201"))
    args = p.parse_args()
    unknown = [label for label in args.strategies.split(",") if label not in SETTINGS]
    if unknown:
        p.error(f"unknown --strategies {unknown}; valid: {', '.join(SETTINGS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = search_spaces.get("nb201", accuracy_table=args.accuracy_table)
    optimum = max(space.accuracy(a) for a in space.all_archs())

    if args.reconstruction:
        recon = reconstruction(space, args.holdout)
        (out / "reconstruction.json").write_text(json.dumps(recon, indent=1) + "\n")
        print("## arch2vec reconstruction (exact: every label and edge)\n")
        print(f"- all 15,625 cells, model trained on all of them: {100 * recon['all_cells']:.2f}%")
        if args.holdout:
            print(f"- trained on a seeded 90%: {100 * recon['holdout_train_cells']:.2f}% of those, "
                  f"{100 * recon['holdout_test_cells']:.2f}% of the 1,563 held-out cells")
        print(flush=True)

    rows = []
    for label in args.strategies.split(","):
        name, options = SETTINGS[label]
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            start = time.perf_counter()
            result = search(space, name, options, seed, args.budget)
            rows.append({"strategy": label, "seed": seed, **result,
                         "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
    with open(out / "searches.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    lines = [f"## NB201 CIFAR-10, {args.budget} oracle queries, seeds {args.seed_start}-"
             f"{args.seed_start + args.seeds - 1} (test accuracy %, best cell {optimum:.2f})", "",
             "| strategy | final pick mean ± std | min | max | found the best cell | mean s/run |",
             "|---|---|---|---|---|---|"]
    for label in args.strategies.split(","):
        best = np.array([r["best"] for r in rows if r["strategy"] == label])
        secs = np.mean([r["seconds"] for r in rows if r["strategy"] == label])
        hits = int(np.sum(np.isclose(best, optimum)))
        lines.append(f"| {label} | {best.mean():.2f} ± {best.std(ddof=1) if len(best) > 1 else 0:.2f} | "
                     f"{best.min():.2f} | {best.max():.2f} | {hits}/{len(best)} | {secs:.1f} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
