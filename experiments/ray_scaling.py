"""Throughput of NAS-Bench-201 candidate evaluation: serial vs the Ray executor with 1 and 2 workers.

All modes evaluate the same distinct random NB201 cells with the same evaluator (calibration batch,
proxies, seed) and must produce identical scores. torch uses ONE thread per evaluation everywhere (the
serial baseline in this process, and each Ray worker), so 2 workers on 2 cores is a fair 2-core vs
1-core comparison. The modes run in interleaved rounds on one local 2-CPU Ray instance (ray-1 keeps one
task in flight, ray-2 two), so that load from other processes on a shared machine hits them alike; the
median over rounds is reported. Ray start-up and the first task per worker (process start, importing
torch) are measured apart and left out of the throughput. Beside wall-clock throughput the script
reports the CPU seconds per candidate spent by this process and all Ray processes, which shows Ray's
CPU overhead independently of how busy a shared machine is. The per-task overhead is the round trip of a
no-op evaluation through ray-1, and the extra time per candidate of ray-1 over serial.

The ``search`` rows run ``nas.search`` end to end (strategy, SQLite writes, the ask log) with Ray already
started. Random search is asynchronous, so on Ray the loop keeps ``workers`` evaluations in flight and
tells and asks one candidate as each finishes, like the executor rows; they add the loop's own cost.

Usage:
    python experiments/ray_scaling.py --n 30 --rounds 3 --out experiments/out/ray_scaling.json
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


def tree_cpu_s() -> float:
    """CPU seconds used so far by this process and all its descendants (Ray's raylet, GCS, workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += (int(stats[pid][11]) + int(stats[pid][12])) / tick  # utime + stime
        todo += children.get(pid, [])
    return total


def measure_executors(evaluate: Evaluator, rounds: list[list[str]], warmup: list[str]) -> dict[str, Any]:
    """Interleaved rounds of serial, ray-1 and ray-2 on one local 2-CPU Ray instance.

    Each round times the three modes back to back on the same candidates, so that a change in the load
    of a shared machine hits every mode alike; the per-mode throughput is the median over rounds.
    """
    import ray

    start = time.perf_counter()
    init_ray(None, 2)
    startup = time.perf_counter() - start
    modes = {"serial": SerialExecutor(), "ray-1": RayExecutor(workers=1, max_retries=0),
             "ray-2": RayExecutor(workers=2, max_retries=0)}
    first_tasks, _ = _timed(modes["ray-2"], evaluate, warmup[:2])  # starts both workers, imports torch
    _timed(modes["serial"], evaluate, warmup[2:3])
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu_per_cand: dict[str, list[float]] = {m: [] for m in modes}
    loads: list[float] = []
    same = True
    for archs in rounds:
        loads.append(os.getloadavg()[0])
        reference = None
        for name, ex in modes.items():
            cpu = tree_cpu_s()
            t, scores = _timed(ex, evaluate, archs)
            cpu_per_cand[name].append((tree_cpu_s() - cpu) / len(archs))
            times[name].append(len(archs) / t)
            reference = reference or scores
            same = same and scores == reference
    ids = [f"noop-{i}" for i in range(300)]
    _timed(modes["ray-1"], _noop, ids[:20])
    noop_ms = _timed(modes["ray-1"], _noop, ids)[0] / len(ids) * 1e3
    start = time.perf_counter()
    ray.shutdown()
    shutdown = time.perf_counter() - start
    return {"startup_s": startup, "first_tasks_s": first_tasks, "shutdown_s": shutdown,
            "cand_per_s": times, "cpu_s_per_cand": cpu_per_cand, "loads": loads, "noop_task_ms": noop_ms, "identical_scores": same}


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
    parser.add_argument("--n", type=int, default=30, help="distinct candidates per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median is reported)")
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
    pool = list(dict.fromkeys(space.to_string(space.sample(rng)) for _ in range(2 * args.rounds * args.n + 8)))
    pool = pool[: args.rounds * args.n + 3]  # distinct cells: every round scores new networks
    batch = proxies.load_batch(None, args.batch_size, args.seed, tuple(space.input_shape))
    evaluate = Evaluator(space, tuple(args.proxies), batch, None, args.seed)
    rounds = [pool[i * args.n:(i + 1) * args.n] for i in range(args.rounds)]
    m = measure_executors(evaluate, rounds, pool[args.rounds * args.n:])
    med = {k: statistics.median(v) for k, v in m["cand_per_s"].items()}
    print(f"NB201, {args.rounds} rounds x {args.n} distinct candidates, proxies {','.join(args.proxies)}, "
          f"batch {args.batch_size}, 1 torch thread per evaluation (serial and each worker), "
          f"{os.cpu_count()} CPUs; identical scores in every mode: {m['identical_scores']}; load average "
          f"at each round: {', '.join(f'{x:.1f}' for x in m['loads'])}")
    cpu = {k: statistics.median(v) for k, v in m["cpu_s_per_cand"].items()}
    print(f"{'mode':<8} {'cand/s (median)':>15} {'speed-up':>9} {'CPU s/cand':>11} {'CPU ratio':>9}   "
          "cand/s per round")
    for name, rates in m["cand_per_s"].items():
        print(f"{name:<8} {med[name]:15.3f} {med[name] / med['serial']:8.2f}x {cpu[name]:11.3f} "
              f"{cpu[name] / cpu['serial']:9.3f}   " + " ".join(f"{r:.3f}" for r in rates))
    print("(CPU s/cand: CPU time of this process and all Ray processes per candidate; unlike wall time it "
          "does not depend on what else runs on the machine)")
    extra = (1 / med["ray-1"] - 1 / med["serial"]) * 1e3
    print(f"Ray start-up {m['startup_s']:.1f} s, first task per worker (process start, torch import) "
          f"{m['first_tasks_s']:.1f} s, shutdown {m['shutdown_s']:.1f} s")
    print(f"per-task overhead: no-op round trip through ray-1 {m['noop_task_ms']:.2f} ms; ray-1 minus serial "
          f"per candidate {extra:.1f} ms ({extra * med['serial'] / 10:.1f} % of a serial evaluation)")
    searches = []
    if not args.no_search:
        print(f"nas.search, random strategy, budget {args.n} (Ray started and warmed before timing):")
        searches = [measure_search("serial", 1, args), measure_search("ray", 2, args)]
        for s in searches:
            print(f"{s['mode']:<14} {s['wall_s']:7.1f} s  {s['cand_per_s']:.3f} cand/s  "
                  f"({s['cand_per_s'] / searches[0]['cand_per_s']:.2f}x)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"n": args.n, "proxies": args.proxies, "batch_size": args.batch_size,
                                              "executors": m, "searches": searches}, indent=2) + "\n")


if __name__ == "__main__":
    main()
