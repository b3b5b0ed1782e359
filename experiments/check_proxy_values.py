"""Check that proxy values are unchanged by an engine change (cached values must stay valid).

Scores a few NAS-Bench-201 cells with every suite proxy, both as one shared ``proxies.score`` call and
each proxy alone, and either saves the values (``--save``) or compares them with saved ones
(``--compare``), printing the largest relative difference per proxy. Run ``--save`` on the code before
a change and ``--compare`` after it.

    python experiments/check_proxy_values.py --cells 6 --save /tmp/proxy_values.json
    python experiments/check_proxy_values.py --cells 6 --compare /tmp/proxy_values.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys

import numpy as np
import torch

import proxies
import search_spaces


def _values(cells: int, batch_size: int, seed: int, names: list[str], singles: bool) -> dict[str, float]:
    """``{"<arch>|<mode>|<proxy>": value}`` for ``cells`` sampled NB201 cells."""
    space = search_spaces.get("nb201")
    batch = proxies.calibration_batch(batch_size, seed)
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for i in range(cells):
        arch = space.sample(rng)
        model = search_spaces.build_seeded(space, arch, i)
        key = space.to_string(arch)
        for name, v in proxies.score(model, batch, names, seed=seed, device="cpu").items():
            out[f"{key}|suite|{name}"] = v
        if singles:
            for name in names:
                out[f"{key}|alone|{name}"] = proxies.score(model, batch, [name], seed=seed, device="cpu")[name]
    return out


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def main() -> None:
    """Save or compare proxy values."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proxies", default=",".join(proxies.SUITE))
    parser.add_argument("--no-singles", action="store_true", help="only the shared suite call")
    parser.add_argument("--tol", type=float, default=1e-5, help="largest relative difference allowed")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", metavar="JSON")
    group.add_argument("--compare", metavar="JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    names = [n.strip() for n in args.proxies.split(",") if n.strip()]
    values = _values(args.cells, args.batch_size, args.seed, names, not args.no_singles)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(values, f, indent=0, sort_keys=True)
        print(f"saved {len(values)} values to {args.save}")
        return
    with open(args.compare) as f:
        ref = json.load(f)
    worst: dict[str, float] = {}
    for key, v in values.items():
        if key in ref:
            name = key.rsplit("|", 1)[1]
            worst[name] = max(worst.get(name, 0.0), _rel(v, ref[key]))
    print(f"{'proxy':<18}{'max rel diff':>14}")
    for name in names:
        print(f"{name:<18}{worst.get(name, math.nan):>14.2e}")
    bad = [n for n, w in worst.items() if not w <= args.tol]
    print(f"compared {sum(k in ref for k in values)} values; "
          + (f"DIFFERENT beyond {args.tol:g}: {', '.join(bad)}" if bad else f"all within {args.tol:g}"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
