"""Local CPU across spaces: measure OFA subnets here, adapt ``local`` from 10 (or from no OFA at all).

1. Measure 100 OFA subnets (batch 1, each at its own resolution), 40 NAS-Bench-201 cells and 40 FBNet
   networks on this machine with onnxruntime (fixed thread count, warm-up, median of repeats; exports run in parallel first, then
   every model is timed alone). The CSVs
   are kept in ``experiments/out/`` and reused unless ``--remeasure``.
2. Adapt from 10 OFA measurements (5 different draws of the 10) and report Spearman on the other 90.
3. Adapt with no OFA measurement at all (NAS-Bench-201 and/or FBNet measurements made here) and report
   Spearman on all 100 OFA subnets; plain FLOPs and the shipped ``local`` prior for scale (the prior is
   fitted to the NAS-Bench-201 and FBNet measurements of this machine, copied into
   ``hardware_models/data/local_onnxruntime.csv``, never to OFA ones).

    python experiments/latency_local_ofa.py [--threads 1] [--repeats 30] [--measure-only]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

import hardware_models
import search_spaces
from hardware_models.adapt import fit_mixture, fit_spaces, references
from hardware_models.feature_cache import default_cache
from hardware_models.graph_features import FEATURE_NAMES
from hardware_models.measure import measure_onnx, sample_unique, write_measurements

OUT = Path(__file__).resolve().parent / "out"
PLAN = {"ofa": 100, "nb201": 40, "fbnet": 40}


def _export(job: tuple[str, str, str]) -> str:
    """Worker: export one architecture (exports are CPU-heavy; measuring stays sequential)."""
    space_name, text, path = job
    space = search_spaces.get(space_name)
    if not Path(path).is_file():
        space.to_onnx(space.from_string(text), path + ".tmp.onnx")
        Path(path + ".tmp.onnx").replace(path)
    return path


def measured(space_name: str, n: int, args: argparse.Namespace) -> tuple[list, np.ndarray]:
    """Architectures and ms measured here (read back from the CSV when present)."""
    import multiprocessing
    import shutil
    import tempfile

    space = search_spaces.get(space_name)
    path = OUT / f"local_{space_name}_{n}_{args.stat}.csv"
    if path.is_file() and not args.remeasure:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [space.from_string(r["arch"]) for r in rows], np.array([float(r["latency_ms"]) for r in rows])
    archs = sample_unique(space, n, np.random.default_rng(args.seed))
    tmp = Path(tempfile.mkdtemp(prefix=f"zcnas-{space_name}-"))
    jobs = [(space_name, space.to_string(a), str(tmp / f"{i:04d}.onnx")) for i, a in enumerate(archs)]
    start = time.time()
    with multiprocessing.get_context("fork").Pool(args.export_workers) as pool:
        files = pool.map(_export, jobs)
    print(f"  {space_name}: {len(files)} exported ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    ms = []
    for i, file in enumerate(files, 1):
        ms.append(measure_onnx(file, args.threads, args.warmup, args.repeats, args.stat))
        if i % 10 == 0:
            print(f"  {space_name} {i}/{len(files)} measured ({time.time() - start:.0f} s)", file=sys.stderr,
                  flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    write_measurements(path, space, archs, ms, args.threads)
    return archs, np.array(ms)


def main() -> None:
    """Measure, adapt and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--remeasure", action="store_true")
    ap.add_argument("--stat", choices=("median", "min"), default="min",
                    help="statistic of the repeats: min resists other processes on a shared machine")
    ap.add_argument("--only", default="ofa,nb201,fbnet", help="spaces to measure/use")
    ap.add_argument("--export-workers", type=int, default=2, help="processes exporting ONNX in parallel")
    ap.add_argument("--measure-only", action="store_true")
    args = ap.parse_args()
    data = {name: measured(name, n, args) for name, n in PLAN.items() if name in args.only.split(",")}
    if args.measure_only:
        return
    cache = default_cache()
    X = {name: cache.features(search_spaces.get(name), archs) for name, (archs, _) in data.items()}
    y = {name: ms for name, (_, ms) in data.items()}
    names, W, b = references()
    ofa_X, ofa_y = X["ofa"], y["ofa"]
    print(f"local CPU (onnxruntime, {args.threads} thread(s), {args.stat} of {args.repeats}); "
          f"{len(ofa_y)} OFA subnets, resolutions {sorted({a.r for a in data['ofa'][0]})}")
    print(f"{'adapted from':40s} {'Spearman on OFA':>16s}")
    rhos = []
    for split in range(5):
        perm = np.random.default_rng(split).permutation(len(ofa_y))
        fit, rest = perm[:10], perm[10:]
        model = fit_mixture(ofa_X[fit], ofa_y[fit], names, W, b, "")
        rhos.append(spearmanr(model.predict_features(ofa_X[rest]), ofa_y[rest])[0])
    print(f"{'10 OFA (5 draws; other 90)':40s} {np.mean(rhos):9.3f}+-{np.std(rhos):.3f}")
    for label, spaces in (("40 NB201, no OFA (all 100)", ["nb201"]), ("40 FBNet, no OFA (all 100)", ["fbnet"]),
                          ("40 NB201 + 40 FBNet, no OFA (all 100)", ["nb201", "fbnet"])):
        if any(s not in data for s in spaces):
            continue
        # relative errors: each space weighs the same although their latencies differ
        model = fit_spaces([(search_spaces.get(s), X[s], y[s]) for s in spaces], names, W, b, "")
        print(f"{label:40s} {spearmanr(model.predict_features(ofa_X), ofa_y)[0]:16.3f}")
    macs = ofa_X[:, [i for i, n in enumerate(FEATURE_NAMES) if n.endswith("mmacs") and not n.startswith("dead")]]
    print(f"{'plain FLOPs (no measurement)':40s} {spearmanr(macs.sum(1), ofa_y)[0]:16.3f}")
    prior = hardware_models.get("local").predict(search_spaces.get("ofa"), data["ofa"][0])
    print(f"{'shipped local prior (no OFA measurement)':40s} {spearmanr(prior, ofa_y)[0]:16.3f}")
    print("target: >= 0.9 from 10 OFA samples")


if __name__ == "__main__":
    main()
