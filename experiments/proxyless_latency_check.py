"""ProxylessNAS's expected latency with one-hot choices vs ``nas latency predict`` (issue 19, must show 1).

For 50 random fbnet (CIFAR, 10 classes) and 50 random ofa archs (at each table's resolution), on rpi4 and a
GPU target, prints the max and mean relative error of the block latency table against ``target.predict``.

Run: ``python experiments/proxyless_latency_check.py [--n 50] [--targets rpi4,2080ti_1]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import hardware_models
import search_spaces
from hardware_models.block_latency import table_for
from search_spaces.ofa import OFAArch


def main() -> None:
    """Print one row per (space, resolution, target)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--targets", default="rpi4,2080ti_1")
    args = ap.parse_args()
    cases = [("fbnet", search_spaces.get("fbnet", num_classes=10), None),
             ("ofa", search_spaces.get("ofa", num_classes=10), 224),
             ("ofa", search_spaces.get("ofa", num_classes=10), 128)]
    print(f"{'space':6} {'res':>4} {'target':9} {'n':>3} {'pred ms (min-max)':>18} {'max rel err':>12} "
          f"{'mean rel err':>12} {'table s':>8}")
    for name, space, res in cases:
        rng = np.random.default_rng(0)
        archs = [space.sample(rng) for _ in range(args.n)]
        if res is not None:
            archs = [OFAArch(a.ks, a.e, a.d, res) for a in archs]
        for tname in args.targets.split(","):
            target = hardware_models.get(tname)
            start = time.perf_counter()
            table = table_for(target, space, res)
            built = time.perf_counter() - start
            pred = target.predict(space, archs)
            mine = np.array([table.arch_ms(space, a) for a in archs])
            rel = np.abs(mine / pred - 1)
            print(f"{name:6} {res or 32:>4} {tname:9} {len(archs):>3} {pred.min():8.2f}-{pred.max():<8.2f} "
                  f"{rel.max():12.2e} {rel.mean():12.2e} {built:8.1f}", flush=True)


if __name__ == "__main__":
    main()
