"""Compare the final picks of several ``search_nb201.py`` runs seed by seed: is one objective better?

Each ``LABEL=DIR`` names an output folder of ``search_nb201.py`` (its ``results-<strategy>.csv``). Runs are
paired by seed (same seed, same strategy and budget: same start), so the table shows each objective's mean
and spread and, against the first one, the paired mean difference with a bootstrap 95% interval, wins and
losses by seed and the Wilcoxon signed-rank p-value.

Usage:
    python experiments/compare_searches.py ensemble=experiments/out/search_nb201_ens4 \\
        synflow=experiments/out/search_nb201_synflow30 --strategy evolution --budget 100
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon


def read_picks(folder: str, strategy: str, budget: int, column: str) -> dict[int, float]:
    """Seed -> test accuracy of the final pick (``column``: acc_proxy or acc_oracle) of one folder's runs."""
    path = Path(folder) / f"results-{strategy}.csv"
    if not path.exists():
        raise SystemExit(f"{path} does not exist (run experiments/search_nb201.py --out {folder} first)")
    with open(path, newline="") as f:
        return {int(r["seed"]): float(r[column]) for r in csv.DictReader(f) if int(r["budget"]) == budget}


def paired_interval(diff: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the mean of paired differences."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    """Print one row per objective, paired against the first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=DIR")
    parser.add_argument("--strategy", default="evolution")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--pick", choices=("proxy", "oracle"), default="proxy",
                        help="proxy: the proxy's best; oracle: the best of the greedy oracle queries")
    parser.add_argument("--seeds", default=None, help="A-B: only these seeds (default: those all runs have)")
    args = parser.parse_args()
    column = "acc_proxy" if args.pick == "proxy" else "acc_oracle"
    runs = {}
    for spec in args.runs:
        label, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"{spec!r}: expected LABEL=DIR")
        runs[label] = read_picks(folder, args.strategy, args.budget, column)
    seeds = sorted(set.intersection(*(set(r) for r in runs.values())))
    if args.seeds:
        lo, hi = (int(x) for x in args.seeds.split("-"))
        seeds = [s for s in seeds if lo <= s <= hi]
    if not seeds:
        raise SystemExit("no seed is finished in every run")
    first = next(iter(runs))
    base = np.array([runs[first][s] for s in seeds])
    print(f"{args.strategy}, budget {args.budget}, {args.pick} pick: NAS-Bench-201 CIFAR-10 test accuracy "
          f"(%), {len(seeds)} seeds paired ({seeds[0]}..{seeds[-1]}); differences are {first} minus the row")
    print(f"{'objective':<22} {'mean ± std':>14} {'min':>6}  {first + ' - row':>16} {'95% interval':>18} "
          f"{'wins/ties/losses':>17} {'Wilcoxon p':>10}")
    for label, picks in runs.items():
        acc = np.array([picks[s] for s in seeds])
        line = f"{label:<22} {acc.mean():>7.2f} ± {acc.std(ddof=1):.2f} {acc.min():>6.2f}"
        if label != first:
            diff = base - acc
            lo, hi = paired_interval(diff)
            p = wilcoxon(diff).pvalue if np.any(diff != 0) else 1.0
            record = f"{(diff > 0).sum()}/{(diff == 0).sum()}/{(diff < 0).sum()}"
            line += f"  {diff.mean():>+16.3f} [{lo:+.3f}, {hi:+.3f}] {record:>17} {p:>10.3f}"
        print(line)


if __name__ == "__main__":
    main()
