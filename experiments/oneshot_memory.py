"""Memory of one-shot search (issue 18, must-show 4): one supernet step at batch 64, and RSS over epochs.

Step memory: each setting runs in a fresh Python process (so no allocation of another setting or of the
flatness run inflates its peak). The process loads a small data set, builds the strategy's supernet and
optimizers (``_setup``), records the peak resident memory (``getrusage`` max RSS) as the baseline, runs one
step exactly as the strategy trains (an architecture step on an architecture batch, then a weight step on a
weight batch, both at batch 64, 3x32x32), and reports the peak RSS above the baseline. Torch's own
numbers: the bytes autograd saves for the backward pass (``saved_tensors_hooks``, each storage counted
once; the larger of the two steps), and on CUDA ``max_memory_allocated``. Settings:

* ``nb201-darts``: NAS-Bench-201 supernet, C=16, N=5 (NAS-Bench-201's DARTS search), first-order DARTS.
* ``darts-pcdarts``: DARTS' search network, 8 cells, C=16, PC-DARTS with K=4 and edge normalisation.
* ``darts-darts`` (only with ``--settings``): the same network with all channels (DARTS); large.

Flatness: a tiny darts-space PC-DARTS run (C=8, 5 cells, K=4, alpha learning from the first epoch) through
the registered strategy, resident memory at the end of every epoch (``oneshot.csv``'s ``rss_mb``): the last
and the largest within 10% of the first. (The strategy loads matplotlib before its first epoch, so the
one-off cost of the first ``alpha.png`` does not fall between two epochs' readings.)

Usage:
    python experiments/oneshot_memory.py                       # both, CPU: about 2 minutes on 2 cores
    python experiments/oneshot_memory.py --flat-epochs 50 --settings nb201-darts darts-pcdarts darts-darts
    python experiments/oneshot_memory.py --settings                # the flatness run alone
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SETTINGS: dict[str, tuple[str, dict[str, Any], str, dict[str, Any]]] = {
    "nb201-darts": ("nb201", {"channels": 16, "cells_per_stage": 5}, "darts", {}),
    "darts-pcdarts": ("darts", {"channels": 16, "layers": 8}, "pcdarts", {"K": 4}),
    "darts-darts": ("darts", {"channels": 16, "layers": 8}, "darts", {}),
}
"""Label -> (space, space options, strategy, strategy options)."""

BATCH = 64


def write_data(path: Path, n: int = 2 * BATCH, seed: int = 0) -> str:
    """A random CIFAR-shaped ``.npz`` (memory does not depend on the pixels; decoding CIFAR would dominate)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), y_train=np.arange(n) % 10)
    return str(path)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def step_memory(label: str, data: str, device: str, threads: int) -> dict[str, Any]:
    """Peak RSS above the post-build baseline of one architecture + weight step of ``label`` (this process)."""
    import torch

    torch.set_num_threads(threads)
    import search_spaces
    from nas import strategies
    from nas.datasets import normalise

    space_name, space_opts, strategy, opts = SETTINGS[label]
    space = search_spaces.get(space_name, **space_opts)
    s = strategies.registry.get(strategy)(space, seed=0, data=data, train_size=2 * BATCH, epochs=1, batch_size=BATCH,
                                 warmup_epochs=0, device=device, **opts)
    s._setup()  # data on the device, supernet and optimizers built: everything but the step
    (xw, yw), (xa, ya) = s._halves
    weight_batch, arch_batch = (normalise(xw[:BATCH]), yw[:BATCH]), (normalise(xa[:BATCH]), ya[:BATCH])
    gen = torch.Generator().manual_seed(0)
    params = sum(p.numel() for p in s._weights)
    baseline = _max_rss_mb()
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()  # a view saved twice holds its storage once
        return t

    saved_mb = []
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        s._arch_step(arch_batch, weight_batch, s.recipe.lr, 0, gen)
        saved_mb.append(sum(saved.values()) / 2**20)
        saved.clear()
        s._weight_step(weight_batch, 0, gen)
        saved_mb.append(sum(saved.values()) / 2**20)
    seconds = time.perf_counter() - start
    out = {"label": label, "params_m": params / 1e6, "baseline_mb": baseline, "peak_mb": _max_rss_mb(),
           "step_mb": _max_rss_mb() - baseline, "saved_mb": max(saved_mb), "seconds": seconds}
    if s.device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def flatness(epochs: int, data: str, out: Path, threads: int) -> dict[str, Any]:
    """RSS per epoch of a tiny darts-space PC-DARTS run (the registered strategy, with its run files)."""
    import torch

    torch.set_num_threads(threads)
    import search_spaces
    from nas.strategies.oneshot import PCDARTS
    space = search_spaces.get("darts", channels=8, layers=5)
    s = PCDARTS(space, seed=0, data=data, K=4, warmup_epochs=0, epochs=epochs, train_size=2 * BATCH,
                batch_size=32, storage=out / "optuna.journal")
    s.ask(epochs)
    rss = [r["rss_mb"] for r in s.history]
    return {"epochs": epochs, "rss_first_mb": rss[0], "rss_max_mb": max(rss), "rss_last_mb": rss[-1],
            "seconds_per_epoch": sum(r["seconds"] for r in s.history) / epochs, "peak_mb": _max_rss_mb(),
            "flat": max(rss) <= 1.10 * rss[0] and rss[-1] <= 1.10 * rss[0]}


def main() -> None:
    """Run each step setting in a fresh process, then the flatness run; print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="*", default=["nb201-darts", "darts-pcdarts"], choices=list(SETTINGS))
    p.add_argument("--flat-epochs", type=int, default=10, help="epochs of the flatness run (0: skip it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="experiments/out/oneshot_memory")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this setting here and print JSON
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(step_memory(a.one, a.data, a.device, a.threads)))
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "random.npz")
        rows = []
        for label in a.settings:
            proc = subprocess.run([sys.executable, __file__, "--one", label, "--data", data, "--device", a.device,
                                   "--threads", str(a.threads)], capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if rows:
            print(f"one supernet step (architecture + weights) at batch {BATCH}, {a.device}, fresh process each")
            print(f"{'setting':<15} {'params M':>8} {'baseline MB':>11} {'peak MB':>8} {'step MB':>8} "
                  f"{'autograd saved MB':>17} {'cuda peak MB':>12} {'step s':>7}")
        for r in rows:
            cuda = f"{r['cuda_peak_mb']:.0f}" if "cuda_peak_mb" in r else "-"
            print(f"{r['label']:<15} {r['params_m']:>8.2f} {r['baseline_mb']:>11.0f} {r['peak_mb']:>8.0f} "
                  f"{r['step_mb']:>8.0f} {r['saved_mb']:>17.0f} {cuda:>12} {r['seconds']:>7.1f}")
        flat = None
        if a.flat_epochs:
            run_dir = out / "flat"
            if run_dir.exists():  # a finished run would answer from its checkpoint without training
                import shutil

                shutil.rmtree(run_dir)
            run_dir.mkdir()
            flat = flatness(a.flat_epochs, data, run_dir, a.threads)
            print(f"\ndarts-space PC-DARTS (C=8, 5 cells, K=4), RSS at epoch end over {flat['epochs']} epochs: "
                  f"first {flat['rss_first_mb']:.0f} MB, max {flat['rss_max_mb']:.0f}, last {flat['rss_last_mb']:.0f} "
                  f"({100 * (flat['rss_last_mb'] / flat['rss_first_mb'] - 1):+.1f}%); flat within 10%: {flat['flat']}; "
                  f"{flat['seconds_per_epoch']:.1f} s/epoch")
    (out / "summary.json").write_text(json.dumps({"args": vars(a), "steps": rows, "flatness": flat}, indent=1))


if __name__ == "__main__":
    main()
