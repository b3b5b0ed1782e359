"""Every strategy on NAS-Bench-201 with one proxy: true CIFAR-10 accuracy of the final pick, with and
without RoBoT's greedy exploitation step (K oracle queries), over seeds and budgets.

Proxy values come from a CSV cache of all 15,625 cells (made once by ``precompute_nb201_proxies.py``), so
each search is the real loop (ask/tell, dedupe, SQLite run directory, resume) with a table lookup in
place of the network evaluation. The budget-100 run of each seed is resumed to the larger budget, which
by construction (ask-log replay) gives the same run as searching with that budget from scratch.

Usage:
    python experiments/search_nb201.py --accuracy-table ../shared/data/nb201_accuracy.csv \\
        --cache 'experiments/out/nb201_synflow*.csv' --proxy synflow
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import nas
import search_spaces
from nas import strategies
from nas.exploit import query_labels
from nas.run import Candidate


class CachedProxy:
    """Evaluates an arch string by looking its proxy value (and parameter count) up in the cache.

    A cell missing from every cache file is scored by the search's own evaluator (same batch, seed and
    seeded weights as the precompute script, so the value is identical) and appended to ``fill``; the
    cache files are re-read first, since precompute shards may still be writing them.
    """

    def __init__(self, patterns: list[str], proxy: str, fill: str | None = None, batch_size: int = 64,
                 seed: int = 0, labels: list[tuple[str, float]] | None = None) -> None:
        self.proxy, self.patterns, self.fill = proxy, list(patterns), fill
        self.batch_size, self.seed, self.labels = batch_size, seed, labels
        self.rows: dict[str, dict[str, str]] = {}
        self.computed = 0
        self._evaluator = None
        self._loaded_at = 0.0
        self._reload()

    def _reload(self) -> None:
        paths = sorted({p for pattern in self.patterns for p in glob.glob(pattern)})
        for path in paths:
            if not Path(path).exists():
                continue
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None:  # a shard that has not flushed its header yet
                    continue
                if self.proxy not in reader.fieldnames:
                    raise SystemExit(f"{path} has no column {self.proxy!r}; columns: {reader.fieldnames}")
                # A row cut short by a killed writer is skipped.
                self.rows.update((r["arch"], r) for r in reader if r.get(self.proxy) not in (None, ""))
        self._loaded_at = time.monotonic()

    def _compute(self, arch: str) -> dict[str, str]:
        if self._evaluator is None:
            import proxies
            from nas.evaluate import Evaluator

            space = search_spaces.get("nb201")
            batch = proxies.load_batch(None, self.batch_size, self.seed, tuple(space.input_shape))
            self._evaluator = Evaluator(space, (self.proxy,), batch, seed=self.seed, device="cpu",
                                        labels=self.labels)
        cand = self._evaluator(arch)
        row = {"arch": arch, self.proxy: repr(cand.scores.get(self.proxy, float("nan"))),
               "params_m": repr(cand.metrics.get("params", float("nan")))}
        if self.fill:
            new = not Path(self.fill).exists()
            with open(self.fill, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
        self.computed += 1
        return row

    def __call__(self, arch: str) -> Candidate:
        """The candidate as the full evaluator would have stored it, from the cache."""
        if arch not in self.rows and time.monotonic() - self._loaded_at > 30:
            self._reload()
        if arch not in self.rows:
            self.rows[arch] = self._compute(arch)
        row = self.rows[arch]
        params = row.get("params_m", row.get("params"))
        metrics = {"params": float(params)} if params is not None else {}
        return Candidate(arch, {self.proxy: float(row[self.proxy])}, metrics)


def _mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"


def run_strategy(name: str, args: argparse.Namespace) -> list[dict[str, object]]:
    """All seeds and budgets of one strategy; finished (seed, budget) rows in its results file are kept."""
    torch.set_num_threads(1)  # one thread per process: spinning OpenMP threads crawl on a shared machine
    out = Path(args.out)
    space = search_spaces.get("nb201", accuracy_table=args.accuracy_table)
    acc = {space.to_string(a): space.accuracy(a) for a in space.all_archs()}
    shared = None if args.labels else CachedProxy([args.cache, str(out / "filled-*.csv")], args.proxy,
                                                  fill=str(out / f"filled-{name}.csv"))
    budgets = sorted(int(b) for b in args.budgets.split(","))
    path = out / f"results-{name}.csv"
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        rows = list(csv.DictReader(open(path, newline=""))) if path.exists() else []
        if all((seed, b) in {(int(r["seed"]), int(r["budget"])) for r in rows} for b in budgets):
            continue
        if not _claim(out / "claims" / f"{name}-s{seed}"):
            continue  # another process of this benchmark is searching this seed
        run_dir = out / f"{name}-s{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        evaluate = shared
        labels = None
        if shared is None:  # few-label proxy: its own labelled cells, so its own values, per seed
            labels = query_labels(space, args.labels, seed)  # the cells `nas search --label-queries` draws
            evaluate = CachedProxy([str(out / f"filled-{name}-s{seed}.csv")], args.proxy,
                                   fill=str(out / f"filled-{name}-s{seed}.csv"), labels=labels)
        for i, budget in enumerate(budgets):
            result = nas.search(
                "nb201", name, [f"max:{args.proxy}"], budget=budget, seed=seed, out=run_dir, resume=i > 0,
                oracle_queries=args.oracle_queries, labels=labels,
                space_options={"accuracy_table": args.accuracy_table},
                strategy_options={"storage": None} if name in ("bayesian", "nsga2") else None,
                progress=False, plot=False, evaluate=evaluate)
            row = {"strategy": name, "seed": seed, "budget": budget,
                   "proxy_pick": result.best_by_proxy.arch, "acc_proxy": acc[result.best_by_proxy.arch],
                   "oracle_pick": result.best.arch, "acc_oracle": acc[result.best.arch],
                   "queries": len(result.oracle), "seconds": round(time.perf_counter() - t0, 1)}
            if args.labels:
                row["labels"] = args.labels
            new = not path.exists()
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
        print(f"{name} seed {seed}: {time.perf_counter() - t0:.0f} s ({evaluate.computed} cells scored "
              "because no cache held them)", flush=True)
    return list(csv.DictReader(open(path, newline=""))) if path.exists() else []


def _claim(path: Path) -> bool:
    """Atomically claim a (strategy, seed) for this process; a claim of a dead process is taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            path.unlink(missing_ok=True)
            return _claim(path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def main() -> None:
    """Run the grid (one process per strategy with --jobs) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accuracy-table", required=True, help="nb201_accuracy.csv (the oracle)")
    parser.add_argument("--cache", default="experiments/out/nb201_synflow*.csv",
                        help="glob of CSVs of proxy values (re-read as precompute shards add to them); cells "
                             "in none of them are scored and appended to <out>/filled-<strategy>.csv")
    parser.add_argument("--proxy", default="synflow",
                        help="the proxy column to maximise (also flops or params, which `nas search` would "
                             "minimise by default)")
    parser.add_argument("--strategies", default="all", help="comma-separated, or all")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budgets", default="100,500")
    parser.add_argument("--oracle-queries", type=int, default=20)
    parser.add_argument("--labels", type=int, default=0,
                        help="for ensemble_fit: labelled cells drawn at random per seed (oracle queries made "
                             "before the search; they add to --oracle-queries in the label count)")
    parser.add_argument("--jobs", type=int, default=1, help="strategies searched in parallel processes")
    parser.add_argument("--table-only", action="store_true", help="print the table of the rows saved so far")
    parser.add_argument("--out", default="experiments/out/search_nb201",
                        help="run dirs and results-<strategy>.csv; finished rows there are not redone")
    args = parser.parse_args()

    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = strategies.registry.list() if args.strategies == "all" else args.strategies.split(",")
    budgets = sorted(int(b) for b in args.budgets.split(","))
    if args.table_only:
        rows = [r for name in names if (out / f"results-{name}.csv").exists()
                for r in csv.DictReader(open(out / f"results-{name}.csv", newline=""))]
    else:
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = [r for part in pool.map(run_strategy, names, [args] * len(names)) for r in part]
    for r in rows:
        r["acc_proxy"], r["acc_oracle"] = float(r["acc_proxy"]), float(r["acc_oracle"])
        r["seed"], r["budget"] = int(r["seed"]), int(r["budget"])
    # A seed interrupted between its budgets is redone whole; its rows are identical (deterministic runs).
    rows = list({(r["strategy"], r["seed"], r["budget"]): r for r in rows}.values())

    # References: what the proxy alone gives on the cells scored (the whole space once the cache is full).
    space = search_spaces.get("nb201", accuracy_table=args.accuracy_table)
    acc = {space.to_string(a): space.accuracy(a) for a in space.all_archs()}
    cache = CachedProxy([args.cache, str(out / "filled-*.csv")], args.proxy)
    ranked = sorted(cache.rows, key=lambda a: float(cache.rows[a][args.proxy]), reverse=True)
    k = args.oracle_queries
    top_k = [acc[a] for a in ranked[:k]]
    print(f"\nNAS-Bench-201 CIFAR-10 test accuracy (%) of the final pick, proxy {args.proxy}, "
          f"seeds 0..{args.seeds - 1} (runs: seeds finished), mean ± std")
    print(f"{'strategy':<10} {'budget':>6}  {'proxy pick':>14}  {f'+{k} oracle queries':>20}  {'runs':>4}")
    for name in names:
        for budget in budgets:
            sel = [r for r in rows if r["strategy"] == name and r["budget"] == budget]
            if sel:
                print(f"{name:<10} {budget:>6}  {_mean_std([r['acc_proxy'] for r in sel]):>14}  "
                      f"{_mean_std([r['acc_oracle'] for r in sel]):>20}  {len(sel):>4}")
    print(f"\nreferences: optimum 94.37; proxy argmax over the {len(ranked)} of {space.cardinality} cells "
          f"scored {acc[ranked[0]]:.2f}; best of the proxy's top {k} of them {max(top_k):.2f}")
    print(f"wall time {time.perf_counter() - start:.0f} s; per-run rows in {out}/results-*.csv")


if __name__ == "__main__":
    main()
