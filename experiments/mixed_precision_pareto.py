"""Does searching per-layer bit-widths buy a better (synflow, model_kb) front on OFA? (issue 24, must-show 4)

For each seed, five searches with the same budget and seed on ``ofa`` (proxies at half resolution, the
space's CPU default), objectives ``synflow`` (maximised) and ``model_kb`` (minimised):

* ``mixed-nsga2``: NSGA-II over architecture and per-block weight bits (``precision=mixed``),
* ``fp32-nsga2``: NSGA-II over the architecture alone (every weight in fp32),
* ``mixed-random``: random search over the mixed space,
* ``mixed-linas`` and ``fp32-linas``: the same pair searched by LINAS (NSGA-II guided by ridge
  predictions, DyNAS-T's search and SimQ-NAS'), generations of the same size.

Printed per seed: front sizes; for each point of an fp32 front, the smallest ``model_kb`` on the mixed
front of the same strategy with at least its synflow (the mixed front dominates on size at equal
synflow when that is below the fp32 point's ``model_kb``); the hypervolume of each front in (synflow,
model_kb) normalised to [0, 1] by the range of every candidate of the seed's runs, reference point (1.1, 1.1) in the minimised
coordinates (1 - synflow', model_kb'). Each run directory gets ``nas search``'s ``pareto.png``; the out
folder gets ``fronts-seed<S>.png`` with the fronts together, and ``summary.json``.

Finished run folders are read back, not searched again. Settings of linas were looked at on seeds 100
and 101 only (``--inner-generations 30`` covered 95 of their 97 fp32 front points, ``100`` fewer on seed 100).

Measured (2-core CPU, ``OMP_NUM_THREADS=1``, seeds 0, 1, 2; fp32 front points covered = a mixed point of the
same strategy with at least the synflow and less model_kb):

| budget | mixed-nsga2 covers fp32-nsga2 | mixed-linas covers fp32-linas | hypervolume mixed-nsga2 / mixed random / fp32-nsga2 |
|---|---|---|---|
| 200 | 37 of 43 (seed 0: 7/13) | 126 of 139 | 1.128 / 1.027 / 0.567 |
| 600 | 77 of 79 (seed 0: 24/26) | - | 1.181 / 1.032 / 0.625 |
| 1000 | **98 of 98** (30/30, 33/33, 35/35) | 615 of 618 (seed 0: 211/214) | 1.154 / 1.019 / 0.617 |

Hypervolumes are normalised by the candidates of each budget's runs: compare within a row. At budget 1000
the mixed NSGA-II front needs 0.20-0.64x the fp32 front's model_kb at equal synflow (0.20-0.26x
on seeds 1-2). Below that budget the larger mixed space reaches the biggest base networks later than the
fp32 search, so the top of the fp32 front is not yet covered (bits barely move synflow).

Usage:
    python experiments/mixed_precision_pareto.py --budget 200 --seeds 0,1,2 [--runs mixed-linas,fp32-linas]
    python experiments/mixed_precision_pareto.py --budget 1000 --seeds 0,1,2 --out experiments/out/mixed_precision_pareto_b1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import nas

RUNS = {  # label -> (strategy, space options)
    "mixed-nsga2": ("nsga2", {"precision": "mixed"}),
    "fp32-nsga2": ("nsga2", {}),
    "mixed-random": ("random", {"precision": "mixed"}),
    "mixed-linas": ("linas", {"precision": "mixed"}),
    "fp32-linas": ("linas", {}),
}
PAIRS = (("mixed-nsga2", "fp32-nsga2"), ("mixed-linas", "fp32-linas"))
"""(mixed, fp32) runs compared point by point on the fp32 front."""
REFERENCE = (1.1, 1.1)


def points(cands: list) -> np.ndarray:
    """(synflow, model_kb) rows of candidates with finite values."""
    rows = [(c.value("synflow"), c.value("model_kb")) for c in cands]
    pts = np.array(rows, dtype=float).reshape(-1, 2)
    return pts[np.isfinite(pts).all(axis=1)]


def hypervolume_2d(minimised: np.ndarray, ref: tuple[float, float] = REFERENCE) -> float:
    """Area dominated by a set of 2-D points (both coordinates minimised) and bounded by ``ref``."""
    pts = minimised[(minimised[:, 0] < ref[0]) & (minimised[:, 1] < ref[1])]
    area, best_y = 0.0, ref[1]
    for x, y in sorted(map(tuple, pts)):  # sweep by the first coordinate; keep the lowest second so far
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def normalise(pts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(1 - synflow', model_kb') with both scaled to [0, 1] by ``lo``..``hi``: both minimised."""
    span = np.where(hi > lo, hi - lo, 1.0)
    z = (pts - lo) / span
    return np.column_stack([1.0 - z[:, 0], z[:, 1]])


def cover(fp32_front: np.ndarray, mixed_front: np.ndarray) -> list[dict[str, float]]:
    """Per fp32 front point: the smallest model_kb on the mixed front with synflow >= the point's."""
    rows = []
    for s, kb in sorted(map(tuple, fp32_front)):
        ok = mixed_front[mixed_front[:, 0] >= s]
        best = float(ok[:, 1].min()) if len(ok) else float("nan")
        rows.append({"synflow": s, "fp32_kb": kb, "mixed_kb": best, "ratio": best / kb})
    return rows


def plot(fronts: dict[str, np.ndarray], clouds: dict[str, np.ndarray], path: Path, title: str) -> None:
    """All candidates (faint) and the three fronts as steps, model_kb on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"mixed-nsga2": "tab:blue", "fp32-nsga2": "tab:red", "mixed-random": "tab:green",
               "mixed-linas": "tab:purple", "fp32-linas": "tab:orange"}
    for label, pts in clouds.items():
        ax.scatter(pts[:, 1], pts[:, 0], s=6, alpha=0.2, color=colours[label])
    for label, pts in fronts.items():
        order = np.argsort(pts[:, 1])
        ax.step(pts[order, 1], pts[order, 0], where="post", color=colours[label], label=f"{label} ({len(pts)})")
        ax.scatter(pts[:, 1], pts[:, 0], s=18, color=colours[label])
    ax.set_xscale("log")
    ax.set_xlabel("model_kb (weights at their bit-widths, kB)")
    ax.set_ylabel("synflow (log)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Run the searches of every seed, print the comparison and write the plots and summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--population", type=int, default=20, help="generation size of nsga2 and linas (default 20)")
    parser.add_argument("--inner-generations", type=int, default=30,
                        help="linas: generations of the inner search on predictions (default 30)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated runs (default all: {', '.join(RUNS)})")
    parser.add_argument("--out", default="experiments/out/mixed_precision_pareto")
    args = parser.parse_args()
    labels = [r for r in args.runs.split(",") if r]
    if unknown := sorted(set(labels) - set(RUNS)):
        parser.error(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for seed in (int(s) for s in args.seeds.split(",")):
        results, seconds = {}, {}
        for label in labels:
            strategy, options = RUNS[label]
            t = time.perf_counter()
            run_dir = out / f"{label}-s{seed}"
            strategy_options = {"population_size": args.population} if strategy in ("nsga2", "linas") else None
            if strategy == "linas":
                strategy_options["inner_generations"] = args.inner_generations
            # a finished run folder is read back (resume with its budget spent evaluates nothing)
            results[label] = nas.search("ofa", strategy, "synflow,model_kb", args.budget, seed, run_dir,
                                        space_options=options, strategy_options=strategy_options,
                                        progress=False, resume=(run_dir / "run.sqlite").exists())
            seconds[label] = time.perf_counter() - t
        clouds = {k: points(r.candidates) for k, r in results.items()}
        fronts = {k: points(r.pareto) for k, r in results.items()}
        every = np.vstack(list(clouds.values()))
        lo, hi = every.min(axis=0), every.max(axis=0)
        volumes = {k: hypervolume_2d(normalise(f, lo, hi)) for k, f in fronts.items()}
        print(f"\nseed {seed}, budget {args.budget} per run ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})")
        print(f"{'run':<14}{'front':>6}{'hypervolume':>13}{'best synflow':>14}{'min model_kb':>14}")
        for k in labels:
            print(f"{k:<14}{len(fronts[k]):>6}{volumes[k]:>13.4f}{fronts[k][:, 0].max():>14.2f}"
                  f"{fronts[k][:, 1].min():>14.1f}")
        covers = {}
        for mixed, fp32 in PAIRS:
            if mixed not in fronts or fp32 not in fronts:
                continue
            rows = cover(fronts[fp32], fronts[mixed])
            dominated = int(sum(r["mixed_kb"] <= r["fp32_kb"] for r in rows))
            covers[f"{mixed}/{fp32}"] = {"cover": rows, "dominated": dominated}
            print(f"{fp32} front point -> smallest model_kb on the {mixed} front with synflow >= it:")
            print(f"{'synflow':>10}{'fp32 kB':>10}{'mixed kB':>10}{'ratio':>8}")
            for r in rows:
                print(f"{r['synflow']:>10.2f}{r['fp32_kb']:>10.1f}{r['mixed_kb']:>10.1f}{r['ratio']:>8.3f}")
            print(f"{mixed} front at or below the {fp32} front's model_kb at equal synflow: "
                  f"{dominated}/{len(rows)} points")
        plot(fronts, clouds, out / f"fronts-seed{seed}.png",
             f"ofa, (synflow, model_kb), budget {args.budget}, seed {seed}")
        summary.append({"seed": seed, "budget": args.budget, "seconds": seconds,
                        "front_sizes": {k: len(f) for k, f in fronts.items()}, "hypervolume": volumes,
                        "covers": covers, "bounds": {"lo": lo.tolist(), "hi": hi.tolist()}})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if len(summary) > 1:
        print("\nhypervolume over seeds (mean, min..max):")
        for k in labels:
            v = np.array([s["hypervolume"][k] for s in summary])
            print(f"  {k:<14}{v.mean():.4f}  {v.min():.4f}..{v.max():.4f}")
        for pair in summary[0]["covers"]:
            got = sum(s["covers"][pair]["dominated"] for s in summary)
            total = sum(len(s["covers"][pair]["cover"]) for s in summary)
            print(f"  {pair}: the mixed front at or below the fp32 front's model_kb at equal synflow on "
                  f"{got}/{total} fp32 front points")
    print(f"\nwrote {out}/summary.json and fronts-seed*.png; each run folder has pareto.png")


if __name__ == "__main__":
    main()
