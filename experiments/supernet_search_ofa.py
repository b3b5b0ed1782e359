"""Issue 19, must-show 3: an ofa search on inherited-weight accuracy and rpi4 latency, and its best.onnx.

Runs ``nas search --space ofa --target rpi4 --supernet CKPT --objectives acc_ws,latency --budget 50 --data
DIR`` as a user would (a subprocess, timed), then checks the run's ``best.onnx``: onnxruntime's output on
training images equals the PyTorch subnet with the inherited weights and recalibrated BN
(``nas.result.run_network``), and differs from a randomly initialised network of the same architecture.
Prints the numbers and writes them to ``OUT/summary.json``.

    python experiments/supernet_search_ofa.py --supernet experiments/out/supernet_search_ofa/supernet/supernet.pt \
        --data ../shared/data/cifar10_jpeg --budget 50 --out experiments/out/supernet_search_ofa/search
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

import nas
import search_spaces
from nas.datasets import load_split, normalise
from nas.result import run_network


def main() -> int:
    """Run the search, then the parity checks; print and write the summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--supernet", required=True, help="checkpoint of `nas supernet train` (or official OFA); with "
                   "--own-steps, where to write a quickly trained one")
    p.add_argument("--own-steps", type=int, default=0,
                   help="fallback when no trained supernet exists: train a fresh ofa supernet (10 classes, "
                        "resolutions 32-64) for this many SGD steps first (largest + one random subnet per step)")
    p.add_argument("--data", default="../shared/data/cifar10_jpeg")
    p.add_argument("--budget", type=int, default=50)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="experiments/out/supernet_search_ofa/search")
    args = p.parse_args()

    if args.own_steps:
        quick_supernet(args.supernet, args.data, args.own_steps, args.seed)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "nas", "search", "--space", "ofa", "--target", "rpi4", "--supernet", args.supernet,
           "--objectives", "acc_ws,latency", "--budget", str(args.budget), "--data", args.data,
           "--val-size", str(args.val_size), "--seed", str(args.seed), "--out", str(out), "--no-progress"]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start

    result = nas.load_run(out)
    space = search_spaces.get("ofa", **result.config["space_options"])
    arch = space.from_string(result.best.arch)
    images = load_split(args.data, "train").x[:16]  # any real images: the parity check reads no labels
    x = F.interpolate(normalise(images), size=(arch.r, arch.r), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = run_network(result.config, result.best.arch)(x).numpy()
        torch.manual_seed(12345)
        rand = space.build(arch).eval()(x).numpy()
    sess = ort.InferenceSession(str(out / "best.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    accs = [c.scores["acc_ws"] for c in result.candidates if c.status == "ok"]
    summary = {
        "command": " ".join(cmd), "wall_s": round(wall, 1), "evaluated": len(result.candidates),
        "failed": sum(c.status != "ok" for c in result.candidates), "space_options": result.config["space_options"],
        "acc_ws_min_median_max": [min(accs), float(np.median(accs)), max(accs)],
        "best": {"arch": result.best.arch, **result.best.scores, **result.best.metrics},
        "pareto_size": len(result.pareto),
        "onnx_vs_torch_max_abs_diff": float(np.abs(got - ref).max()),
        "onnx_vs_random_init_max_abs_diff": float(np.abs(got - rand).max()),
        "logit_max_abs": float(np.abs(ref).max()),
        "onnx_top1_agrees_with_torch": float((got.argmax(1) == ref.argmax(1)).mean()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def quick_supernet(path: str, data: str, steps: int, seed: int, train_size: int = 6000) -> None:
    """A short stand-in for `nas supernet train`: SGD on the largest and one random subnet per step, on the
    images `nas supernet train --train-size N` would train on (stored the same way, so acc_ws excludes them)."""
    from nas.datasets import augment, balanced_subset
    from nas.supernets import save_supernet, supernet_of
    from nas.training import hold_out

    space = search_spaces.get("ofa", num_classes=10, min_resolution=32, max_resolution=64)
    train = hold_out(balanced_subset(load_split(data, "train"), train_size, seed), round(0.1 * train_size), seed)[0]
    sup = supernet_of(space, seed=seed).train()
    opt = torch.optim.SGD(sup.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-5, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(train), (64,), generator=gen)
        x, y = augment(normalise(train.x[idx]), gen), train.y[idx]
        opt.zero_grad(set_to_none=True)
        for arch in (space.largest(), space.sample(rng)):
            xs = F.interpolate(x, size=(arch.r, arch.r), mode="bilinear", align_corners=False)
            F.cross_entropy(sup(xs, arch), y).backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(f"step {step}/{steps}: {time.perf_counter() - start:.0f} s", flush=True)
    settings = {"space": "ofa", "data": data, "train_size": train_size, "val_size": None, "seed": seed,
                "own_steps": steps}
    save_supernet(path, space, sup.eval(), {"settings": json.dumps(settings)})


if __name__ == "__main__":
    sys.exit(main())
