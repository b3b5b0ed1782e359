"""Throughput of NAS-Bench-201 candidate evaluation: serial vs the Ray executor with 1 and 2 workers.

Every mode evaluates the same distinct random NB201 cells with the same evaluator (calibration batch,
proxies, seed) and must produce identical scores. torch uses ONE thread per evaluation everywhere (the
serial baseline in this process, and each Ray worker), so 2 workers on 2 cores is a fair 2-core vs
1-core comparison. Ray start-up and the first task per worker (importing torch) are measured apart and
left out of the throughput. The per-task overhead is the round trip of a no-op evaluation through a
1-worker Ray executor, and the extra time per candidate of ray-1 over serial.

The ``search`` rows run ``nas.search`` end to end (strategy, SQLite writes, the loop asking in batches
of ``workers``) on the same budget with Ray already started, so they add the loop's wait for the slowest
task of each batch to the executor rows (which keep every worker busy).

Usage:
    nice python experiments/ray_scaling.py --n 40 --repeats 2 --out experiments/out/ray_scaling.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nas
import proxies
import search_spaces
from nas.evaluate import Evaluator
from nas.executors import RayExecutor, SerialExecutor, init_ray
from nas.run import Candidate


def _noop(arch: str) -> Candidate:
    """An evaluation that does nothing: isolates the executor's own cost per task."""
    return Candidate(arch, {})


def _timed(ex: Any, evaluate: Callable[[str], Candidate], archs: list[str]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    out = {c.arch: c.scores for c in ex.map(evaluate, archs)}
    return time.perf_counter() - start, out


def measure_executor(mode: str, workers: int, evaluate: Evaluator, archs: list[str], warmup: list[str],
                     repeats: int) -> dict[str, Any]:
    """Candidates per second of one executor on ``archs`` (best and median of ``repeats``)."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    ex = SerialExecutor() if mode == "serial" else RayExecutor(workers=workers, max_retries=0)
    startup = time.perf_counter() - start
    try:
        warm_s, _ = _timed(ex, evaluate, warmup[: max(1, workers)])  # starts workers, imports torch there
        times, scores = [], {}
        for _ in range(repeats):
            t, scores = _timed(ex, evaluate, archs)
            times.append(t)
        noop = None
        if mode == "ray" and workers == 1:
            ids = [f"noop-{i}" for i in range(200)]
            _timed(ex, _noop, ids[:10])
            noop = _timed(ex, _noop, ids)[0] / len(ids)
    finally:
        start = time.perf_counter()
        ex.close()
        shutdown = time.perf_counter() - start
    return {"mode": f"{mode}" if mode == "serial" else f"ray-{workers}", "workers": workers,
            "startup_s": startup, "first_tasks_s": warm_s, "shutdown_s": shutdown, "times_s": times,
            "cand_per_s": len(archs) / min(times), "cand_per_s_median": len(archs) / statistics.median(times),
            "noop_task_ms": noop * 1e3 if noop is not None else None, "load_before": load,
            "load_after": os.getloadavg()[0], "scores": scores}


def measure_search(executor: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Wall time of a whole ``nas.search`` (random strategy); Ray is started and warmed beforehand."""
    import ray

    options = {"workers": workers, "max_retries": 0} if executor == "ray" else {}
    if executor == "ray":
        init_ray(None, workers)
        warm = RayExecutor(workers=workers)  # reuses the session: starts the workers, imports torch there
        list(warm.map(_noop, [f"warm-{i}" for i in range(4 * workers)]))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["ZCNAS_CACHE_DIR"] = tmp  # a fresh proxy cache: every candidate is really scored
            start = time.perf_counter()
            result = nas.search("nb201", "random", args.proxies, budget=args.n, seed=args.seed + 1,
                                out=Path(tmp) / "run", batch_size=args.batch_size, executor=executor,
                                executor_options=options, progress=False)
            wall = time.perf_counter() - start
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return {"mode": f"search {executor}" + (f"-{workers}" if executor == "ray" else ""), "wall_s": wall,
            "cand_per_s": len(result.candidates) / wall}


def main() -> None:
    """Measure every mode and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="distinct candidates per measurement")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per mode (best is reported)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--proxies", default="synflow,nwot", type=lambda s: s.split(","))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-search", action="store_true", help="skip the end-to-end nas.search rows")
    parser.add_argument("--out", help="also write the numbers as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)  # the serial baseline gets one thread, like each Ray worker

    space = search_spaces.get("nb201")
    rng = np.random.default_rng(args.seed)
    pool = list(dict.fromkeys(space.to_string(space.sample(rng)) for _ in range(4 * args.n + 8)))
    archs, warmup = pool[: args.n], pool[args.n: args.n + 4]
    batch = proxies.load_batch(None, args.batch_size, args.seed, tuple(space.input_shape))
    evaluate = Evaluator(space, tuple(args.proxies), batch, None, args.seed)

    rows = [measure_executor("serial", 1, evaluate, archs, warmup, args.repeats),
            measure_executor("ray", 1, evaluate, archs, warmup, args.repeats),
            measure_executor("ray", 2, evaluate, archs, warmup, args.repeats)]
    same = all(r["scores"] == rows[0]["scores"] for r in rows)
    base = rows[0]["cand_per_s"]
    print(f"NB201, {args.n} distinct candidates, proxies {','.join(args.proxies)}, batch {args.batch_size}, "
          f"1 torch thread per evaluation, {os.cpu_count()} CPUs; identical scores in every mode: {same}")
    print(f"{'mode':<8} {'cand/s':>7} {'median':>7} {'speed-up':>8} {'start s':>8} {'1st task s':>10} "
          f"{'stop s':>7} {'load':>10}")
    for r in rows:
        print(f"{r['mode']:<8} {r['cand_per_s']:7.3f} {r['cand_per_s_median']:7.3f} {r['cand_per_s'] / base:7.2f}x "
              f"{r['startup_s']:8.2f} {r['first_tasks_s']:10.2f} {r['shutdown_s']:7.2f} "
              f"{r['load_before']:4.1f}->{r['load_after']:4.1f}")
    noop = rows[1]["noop_task_ms"]
    extra = (1 / rows[1]["cand_per_s"] - 1 / base) * 1e3
    print(f"per-task overhead: no-op round trip through ray-1 {noop:.2f} ms; ray-1 minus serial per "
          f"candidate {extra:.1f} ms ({extra / (1e3 / base) * 100:.1f} % of a serial evaluation)")
    searches = []
    if not args.no_search:
        print(f"nas.search, random strategy, budget {args.n} (Ray started and warmed before timing):")
        searches = [measure_search("serial", 1, args), measure_search("ray", 2, args)]
        for s in searches:
            print(f"{s['mode']:<14} {s['wall_s']:7.1f} s  {s['cand_per_s']:.3f} cand/s  "
                  f"({s['cand_per_s'] / searches[0]['cand_per_s']:.2f}x)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        slim = [{k: v for k, v in r.items() if k != "scores"} for r in rows]
        Path(args.out).write_text(json.dumps({"n": args.n, "proxies": args.proxies, "batch_size": args.batch_size,
                                              "identical_scores": same, "executors": slim,
                                              "searches": searches}, indent=2) + "\n")


if __name__ == "__main__":
    main()
