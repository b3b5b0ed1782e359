"""Does a supernet trained here rank subnets as training them alone does? (issue 19, must-show 2)

1. Train the supernet of ``--space`` (fbnet, or ofa at reduced resolution) with ``nas supernet train``'s
   sandwich rule on a class-balanced part of ``--data`` (CIFAR-10), optionally down-scaled to ``--side``
   pixels so that a 2-core CPU affords it.
2. Pick ``--n`` subnets spread over sizes (the parameter-count quantiles of 300 random subnets, the
   largest and smallest included) and measure their inherited-weight top-1 on the held-out validation
   split, after recalibrating BN on 512 training images.
3. Train each from scratch with ``nas.train`` (same data, same validation split, ``--sub-epochs``).
4. Print the table and the Spearman correlation of inherited vs stand-alone validation accuracy, beside
   synflow's (one batch of 16 training images, seeded initial weights) vs stand-alone.

The test split is never used for a choice: ``nas.train`` reports a test accuracy of a 500-image test part,
which this script ignores. Results go to ``--out`` (``results.json``) and stdout.

    OMP_NUM_THREADS=2 python experiments/supernet_rank.py --space fbnet --side 16 --train-size 4000 \
        --epochs 6 --sub-epochs 4 --out experiments/out/supernet_rank_fbnet

``--warmup F`` and ``--label-weight W`` pass to ``nas supernet train`` (the largest alone for the first fraction
F of the steps; W times the label loss beside distillation). Measured in the README (fbnet, 16 px, 1,500
images, 40 epochs): with ``--warmup 0.305`` the two ends reach 34.4 / 34.0 %, the middle subnets stay at 10-14 %.
``--weight-sharing nested`` (fbnet's ``weight_sharing`` space option: a layer's ops are slices of its ``k5_e6``
block) lifts the middle to 14-19 % and 30 random subnets from a mean of 10.7 to 16.7 % (seed 0), and Spearman
inherited vs stand-alone from 0.35 to 0.64 (seed 1: 0.25 to 0.56); the README has the ofa run beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import nas
import proxies
import search_spaces
from nas.datasets import balanced_subset, load_split, normalise
from nas.supernet_training import evaluate_subnet, train_supernet
from nas.training import hold_out
from proxies.data import Batch


def small_data(source: str, side: int, train_size: int, test_size: int, seed: int, path: Path) -> Path:
    """A class-balanced part of ``source`` at ``side`` pixels as an .npz (one file both trainers read)."""
    if path.is_file():
        return path
    arrays = {}
    for split, n in (("train", train_size), ("test", test_size)):
        data = balanced_subset(load_split(source, split), n, seed)
        x = data.x
        if x.shape[-1] != side:  # antialiased down-scaling: the small images keep the content of the large
            x = F.interpolate(x.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255).to(torch.uint8)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x.numpy(), data.y.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def spread(space, sup, side: int, n: int, seed: int) -> list:
    """``n`` subnets spread over parameter counts: quantiles of 300 random ones, largest and smallest included."""
    rng = np.random.default_rng(seed)
    fix = (lambda a: replace(a, r=side)) if space.name == "ofa" else (lambda a: a)
    pool = [fix(space.sample(rng)) for _ in range(300)]
    if space.name == "ofa":
        pool += [space.largest(side), space.smallest(side)]
    else:
        from nas.supernet_training import sandwich_archs

        pool += sandwich_archs(space, sup, rng, 0)[:2]
    sized = sorted({space.to_string(a): a for a in pool}.values(),
                   key=lambda a: sum(p.numel() for p in sup.subnet(a).parameters()))
    return [sized[int(round(q))] for q in np.linspace(0, len(sized) - 1, n)]


def main() -> None:
    """Run the experiment and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", choices=("fbnet", "ofa"), required=True)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10_jpeg"))
    p.add_argument("--side", type=int, default=16, help="image side the experiment trains at")
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=6, help="supernet epochs")
    p.add_argument("--sub-epochs", type=int, default=4, help="stand-alone epochs of each subnet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-weight", type=float, default=None,
                   help="label loss weight of the non-largest subnets (nas supernet train --label-weight)")
    p.add_argument("--warmup", type=float, default=None,
                   help="fraction of the steps that train the largest alone first (nas supernet train --warmup)")
    p.add_argument("--weight-sharing", choices=("separate", "nested"), default=None,
                   help="fbnet: how a layer's ops share weights in the supernet (the space's weight_sharing option)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    data = small_data(args.data, args.side, args.train_size, 500, args.seed, out / "data.npz")
    options: dict = {}
    if args.space == "ofa":  # OFA's 128..224 scaled to the images: side..1.5 side, steps of 4
        options = {"min_resolution": args.side, "max_resolution": args.side * 3 // 2}
    sharing = {"weight_sharing": args.weight_sharing} if args.weight_sharing else {}
    start = time.perf_counter()
    result = train_supernet(args.space, data, epochs=args.epochs, out=out / "supernet", batch_size=args.batch_size,
                            val_size=args.val_size, seed=args.seed, space_options={**options, **sharing} or None,
                            resume=(out / "supernet" / "config.json").is_file(), progress=False,
                            label_weight=args.label_weight, warmup=args.warmup,
                            callback=lambda row: print(json.dumps(row), flush=True))
    sup_seconds = time.perf_counter() - start
    space = search_spaces.get(args.space, **result.space_options)
    sup = result.supernet
    pool = balanced_subset(load_split(data, "train"), None, args.seed)
    train_part, val = hold_out(pool, args.val_size, args.seed)  # nas.train's and the supernet's split
    archs = spread(space, sup, args.side, args.n, args.seed)
    calib = normalise(train_part.x[:16])
    rows = []
    for i, arch in enumerate(archs):
        text = space.to_string(arch)
        inherited = evaluate_subnet(sup, space, arch, train_part.x[:512], val, 256)
        net = search_spaces.build_seeded(space, arch, args.seed, num_classes=pool.num_classes,
                                         input_shape=(3, args.side, args.side))
        synflow = proxies.score(net, Batch(calib, train_part.y[:16]), ["synflow"], seed=args.seed)["synflow"]
        t0 = time.perf_counter()
        alone = nas.train(args.space, text, data, epochs=args.sub_epochs, batch_size=args.batch_size,
                          val_size=args.val_size, seed=args.seed, out=out / f"alone{i}",
                          space_options=options or None, resume=(out / f"alone{i}" / "config.json").is_file(),
                          progress=False)
        row = {"arch": text, "params": alone.params, "inherited_val_acc": inherited, "synflow": synflow,
               "alone_val_acc": alone.val_accuracy, "alone_seconds": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    inh = spearmanr([r["inherited_val_acc"] for r in rows], [r["alone_val_acc"] for r in rows])[0]
    syn = spearmanr([r["synflow"] for r in rows], [r["alone_val_acc"] for r in rows])[0]
    size = spearmanr([r["params"] for r in rows], [r["alone_val_acc"] for r in rows])[0]
    summary = {"space": args.space, "space_options": result.space_options, "side": args.side,
               "train_size": args.train_size, "val_size": args.val_size, "epochs": args.epochs,
               "sub_epochs": args.sub_epochs, "batch_size": args.batch_size,
               "supernet_seconds": sup_seconds, "supernet_seconds_per_epoch": result.seconds_per_epoch,
               "supernet_history": result.history, "rows": rows, "spearman_inherited_vs_alone": inh,
               "spearman_synflow_vs_alone": syn, "spearman_params_vs_alone": size}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{args.space}: supernet {args.epochs} epochs on {args.train_size - args.val_size} images at "
          f"{args.side}px, {result.seconds_per_epoch:.0f} s/epoch; stand-alone {args.sub_epochs} epochs each")
    print(f"{'#':>2} {'params':>9} {'inherited':>9} {'alone':>7} {'synflow':>10}  arch")
    for i, r in enumerate(rows):
        print(f"{i:>2} {r['params']:>9,} {r['inherited_val_acc']:>9.2f} {r['alone_val_acc']:>7.2f} "
              f"{r['synflow']:>10.3g}  {r['arch'][:60]}")
    print(f"Spearman vs stand-alone validation accuracy: inherited {inh:.3f}, synflow {syn:.3f}, params {size:.3f}")


if __name__ == "__main__":
    main()
