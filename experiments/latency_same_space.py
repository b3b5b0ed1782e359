"""Few-shot latency on devices never seen, inside the spaces the package measured (OFA, FBNet), and zero-shot
by device class.

Split by device and by architecture: one device column of ``ofa_latency_ms.csv`` (6) or
``fbnet_latency_ms.csv`` (13) is held out at a time. The other columns are the references: their
same-space network (:mod:`hardware_models.space_references`) is trained on the first ``--ref-rows``
architectures only, and the cross-space node-cost references exclude the held-out device's own model. The
held-out device's 10 samples are drawn from the remaining architectures (``--draws`` draws, seeds
``--first-seed``..), and every method ranks the rest of those architectures (Spearman). Methods:

* ``ours``: :func:`hardware_models.few_shot.choose` over the shipped candidate list, averaged with weights
  from their leave-one-out on the 10 samples only (the held-out device's other measurements choose nothing;
  ``--first-seed 100``: OFA 0.903, FBNet 0.901, where the hard choice of one candidate gave 0.899, 0.900);
* ``macs``: MACs + layers fitted on the 10 (non-negative least squares);
* ``nnls``: NNLS over the references' predicted latencies (in log space) plus a constant;
* ``single``: the reference best correlated with the 10 samples;
* ``graph``: the cross-space node-cost mix (what ``nas latency adapt`` did before);
* ``choices``: one cost per option of the space (:func:`hardware_models.few_shot.option_counts`), on the 10,
  where the space offers it (not on OFA and FBNet: 0.29 and 0.35 mean when they did, seeds 100..109).

Zero-shot (``--zero-shot``): each FBNet phone, and separately each server CPU, is held out entirely; with
no sample, only its class, it is predicted by the mean of the same-space references of its class. Beside it:
MACs alone, and the recipe that built the shipped ``rpi4`` (a mix of the other devices' node-cost models
fitted to the device's NAS-Bench-201 measurements only, never its FBNet ones).

    python experiments/latency_same_space.py [--draws 10] [--zero-shot]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_data as ld  # noqa: E402

import search_spaces  # noqa: E402
from hardware_models.adapt import fit_mixture, references  # noqa: E402
from hardware_models.few_shot import (  # noqa: E402
    Choices,
    Macs,
    Mix,
    Single,
    choose,
    count_columns,
    default_candidates,
    macs_layers,
    option_counts,
    rows_for,
)
from hardware_models.space_references import device_class, fit_space_references  # noqa: E402

PAIRS = {"ofa": ld.OFA_TO_NB201, "fbnet": ld.FBNET_TO_NB201}
METHODS = ("ours", "macs", "nnls", "single", "embedding", "graph", "choices")


def graph_references(exclude: str | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The shipped cross-space references without the held-out device's own model."""
    names, W, b = references()
    keep = [i for i, n in enumerate(names) if n != exclude]
    return [names[i] for i in keep], W[keep], b[keep]


def few_shot_table(space: str, args: argparse.Namespace) -> list[tuple]:
    """Rows ``(device, class, {method: [spearman per draw]}, {candidate: times chosen})`` of one space."""
    archs, cols, Y, X = ld.space_rows(space)
    sp = search_spaces.get(space)
    C = option_counts(sp, [sp.from_string(a) for a in archs])  # None: no cost per option on these spaces
    train = np.arange(min(args.ref_rows, len(X) - 100))
    pool = np.arange(len(train), len(X))
    out = []
    for j, dev in enumerate(cols):
        others = [c for c in cols if c != dev]
        refs = fit_space_references(space, "", others, X[train], Y[np.ix_(train, [cols.index(c) for c in others])],
                                    args.epochs)
        R = refs.predict_log(X[pool])
        if args.counts:
            R = np.c_[R, count_columns(X[pool])]
        names, W, b = graph_references(PAIRS[space].get(dev))
        y = Y[pool, j]
        res: dict[str, list[float]] = {m: [] for m in METHODS if C is not None or m != "choices"}
        chosen: dict[str, int] = {}
        for seed in range(args.first_seed, args.first_seed + args.draws):
            idx = np.random.default_rng(seed).choice(len(pool), size=args.samples, replace=False)
            rest = np.setdiff1d(np.arange(len(pool)), idx)
            Xs, Rs, ys = X[pool][idx], R[idx], y[idx]
            best, _ = choose(default_candidates(names, W, b), Xs, Rs, ys, C=None if C is None else C[pool][idx])
            lead = best.parts[0][1].name  # the candidate with the largest weight
            chosen[lead] = chosen.get(lead, 0) + 1
            fixed = {"ours": best}
            for cand in (Macs(), Mix(0.0), Single(), Mix(1.0)):
                fixed[{"macs": "macs", "nnls": "nnls", "single": "single", "mix": "embedding"}[cand.name]] = \
                    cand.fit(Xs, Rs, ys)
            graph = next(c for c in default_candidates(names, W, b) if c.name == "graph").fit(Xs, Rs, ys)
            fixed["graph"] = graph
            if C is not None:
                fixed["choices"] = Choices().fit(C[pool][idx], Rs, ys)
            for m, model in fixed.items():
                if m == "ours":
                    pred = model.predict_log(X[pool][rest], R[rest], None if C is None else C[pool][rest])
                else:
                    pred = model.predict_log(rows_for(model, X[pool], None if C is None else C[pool])[rest], R[rest])
                res[m].append(spearmanr(pred, y[rest])[0])
        out.append((dev, device_class(dev), res, chosen))
        print(f"  {space}/{dev}: ours {np.mean(res['ours']):.3f}", file=sys.stderr, flush=True)
    return out


def print_table(space: str, rows: list[tuple], args: argparse.Namespace) -> None:
    """One table per space: mean +- standard deviation over the draws."""
    methods = [m for m in METHODS if m in rows[0][2]]
    print(f"\n{space}: leave one device out, {args.samples} samples, {args.draws} draws (seeds {args.first_seed}.."
          f"{args.first_seed + args.draws - 1}); references trained on the first {args.ref_rows} archs, "
          "Spearman on the other archs (mean +- std over draws)")
    head = f"{'device':15s} {'class':11s} " + " ".join(f"{m:>12s}" for m in methods) + "  largest weight in ours"
    print(head)
    print("-" * len(head))
    for dev, cls, res, chosen in rows:
        print(f"{dev:15s} {cls:11s} " + " ".join(f"{np.mean(res[m]):6.3f}+-{np.std(res[m]):.3f}" for m in methods)
              + "  " + ", ".join(f"{k} {v}" for k, v in sorted(chosen.items(), key=lambda kv: -kv[1])))
    print("-" * len(head))
    print(f"{'mean':27s} " + " ".join(f"{np.mean([np.mean(r[2][m]) for r in rows]):12.3f}" for m in methods))
    worst = {m: min(np.mean(r[2][m]) for r in rows) for m in methods}
    print(f"{'worst device':27s} " + " ".join(f"{worst[m]:12.3f}" for m in methods))


def zero_shot(args: argparse.Namespace) -> None:
    """Hold out each FBNet phone, then each server CPU, entirely: class prior vs MACs vs the rpi4 recipe."""
    _, cols, Y, X = ld.space_rows("fbnet")
    train = np.arange(min(args.ref_rows, len(X) - 100))
    test = np.arange(len(train), len(X))
    _, ncols, nY, nX = ld.nb201_subset(args.nb201_cells)
    sub = np.random.default_rng(0).choice(len(nX), size=min(4000, len(nX)), replace=False)
    macs = macs_layers(X[test])[:, 0]
    print(f"\nzero-shot on FBNet: device held out entirely, only its class known; Spearman on {len(test)} archs "
          "the references never saw")
    head = f"{'device':15s} {'class':11s} {'class prior':>11s} {'MACs':>6s} {'rpi4 recipe':>11s}  references of the class"
    print(head)
    print("-" * len(head))
    for cls in ("mobile_cpu", "server_cpu"):
        for dev in [c for c in cols if device_class(c) == cls]:
            others = [c for c in cols if c != dev]
            refs = fit_space_references("fbnet", "", others, X[train],
                                        Y[np.ix_(train, [cols.index(c) for c in others])], args.epochs)
            members = [i for i, c in enumerate(others) if device_class(c) == cls]
            prior = refs.predict_log(X[test])[:, members].mean(1)
            y = Y[test, cols.index(dev)]
            names, W, b = graph_references(dev)
            recipe = fit_mixture(nX[sub], nY[sub, ncols.index(dev)], names, W, b, "", 5.0)
            print(f"{dev:15s} {cls:11s} {spearmanr(prior, y)[0]:11.3f} {spearmanr(macs, y)[0]:6.3f} "
                  f"{spearmanr(recipe.predict_features(X[test]), y)[0]:11.3f}  "
                  + ", ".join(others[i] for i in members))


def main() -> None:
    """Run the few-shot tables (and the zero-shot one) and print them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="ofa,fbnet")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--ref-rows", type=int, default=2000, help="archs that train the reference networks")
    ap.add_argument("--epochs", type=int, default=200, help="epochs of the reference networks")
    ap.add_argument("--counts", type=int, default=1, help="1: MACs and layers are two more references")
    ap.add_argument("--nb201-cells", type=int, default=5000,
                    help="NAS-Bench-201 cells (fixed random subset) the rpi4 recipe may use (4000 of them)")
    ap.add_argument("--zero-shot", action="store_true", help="also the zero-shot table by device class")
    args = ap.parse_args()
    t0 = time.time()
    for space in args.spaces.split(","):
        if space:
            print_table(space, few_shot_table(space, args), args)
    if args.zero_shot:
        zero_shot(args)
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
