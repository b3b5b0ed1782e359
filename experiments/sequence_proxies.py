"""Cost and agreement of zero-cost proxies on the sequence spaces (bert, rnn, gpt, vit).

For every space: (1) seconds per architecture of each proxy computed alone (its own ``proxies.score``
call) against all of them in one call that shares passes, on the first ``--time-n`` sampled
architectures; (2) the Spearman correlation between proxies over ``--n`` sampled architectures. No
trained accuracies of these spaces ship with zcnas, so nothing here is compared with (or tuned on)
accuracies; the script only reports what it measures.

    python experiments/sequence_proxies.py --n 200 --time-n 10
    python experiments/sequence_proxies.py --spaces rnn --n 40 --out experiments/out/seq_rnn.csv
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import proxies
import search_spaces
from proxies.text import as_objective

SEQUENCE = ["hidden_cov", "head_confidence", "head_importance", "synaptic_diversity", "activation_distance",
            "embedding_jacov"]
GENERIC = ["params", "flops", "synflow", "snip", "grad_norm", "fisher", "l2_norm", "zico"]
SPACES = {  # the published spaces; sequence length and batch kept small for 2 CPU cores
    "bert": {"seq_len": 16},
    "rnn": {"seq_len": 16},
    "gpt": {"seq_len": 16},
    "vit": {},
}


def batch_for(space: object, batch_size: int, seed: int) -> proxies.Batch:
    """The calibration batch the search loop would use for ``space``."""
    batch = proxies.load_batch(None, batch_size, seed, tuple(space.input_shape))
    if getattr(space, "input_kind", "image") == "tokens":
        batch = as_objective(batch, space.objective, seed)
    return batch


def timed_score(model: torch.nn.Module, batch: proxies.Batch, names: list[str]) -> tuple[dict[str, float], float]:
    """Proxy values and wall seconds of one ``proxies.score`` call."""
    start = time.perf_counter()
    values = proxies.score(model, batch, names, seed=0, device="cpu")
    return values, time.perf_counter() - start


def run_space(name: str, n: int, time_n: int, batch_size: int, names: list[str], seed: int,
              rows: list[dict[str, object]]) -> None:
    """Score ``n`` sampled architectures of ``name``; print cost and correlation tables."""
    space = search_spaces.get(name, **SPACES[name])
    batch = batch_for(space, batch_size, seed)
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    while len(archs) < n:
        a = space.sample(rng)
        if space.to_string(a) not in seen:
            seen.add(space.to_string(a))
            archs.append(a)
    alone = {p: [] for p in names}
    shared_s, values = [], {p: [] for p in names}
    for i, arch in enumerate(archs):
        torch.manual_seed(seed + i)
        model = space.build(arch)
        scores, seconds = timed_score(model, batch, names)
        shared_s.append(seconds)
        for p in names:
            values[p].append(scores[p])
        if i < time_n:
            for p in names:
                alone[p].append(timed_score(model, batch, [p])[1])
        rows.append({"space": name, "arch": space.to_string(arch), "shared_s": seconds, **scores})
        logging.getLogger(__name__).warning("%s %d/%d %.1fs", name, i + 1, n, seconds)
    print(f"\n## {name}: {n} architectures, batch {tuple(batch.inputs.shape)}, CPU threads "
          f"{torch.get_num_threads()}")
    print(f"{'proxy':<20} {'alone s/arch':>12} {'failed':>7}")
    for p in names:
        failed = sum(v == proxies.SENTINEL for v in values[p])
        print(f"{p:<20} {np.mean(alone[p]):>12.3f} {failed:>7}")
    print(f"{'sum of alone':<20} {sum(np.mean(alone[p]) for p in names):>12.3f}")
    print(f"{'shared (one call)':<20} {np.mean(shared_s[:time_n]):>12.3f}   (all {n}: {np.mean(shared_s):.3f})")
    ok = [p for p in names if sum(v != proxies.SENTINEL for v in values[p]) >= max(3, n // 2)]
    print(f"\nSpearman between proxies (architectures where both are valid), {name}:")
    print(" " * 20 + "".join(f"{p[:9]:>10}" for p in ok))
    for p in ok:
        cells = []
        for q in ok:
            a, b = np.array(values[p]), np.array(values[q])
            keep = (a != proxies.SENTINEL) & (b != proxies.SENTINEL)
            rho = spearmanr(a[keep], b[keep]).statistic if keep.sum() >= 3 else math.nan
            cells.append(f"{rho:>10.2f}")
        print(f"{p:<20}" + "".join(cells))


def main() -> None:
    """Parse flags, run every space, optionally write per-architecture values to CSV."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", default="bert,rnn,gpt,vit")
    ap.add_argument("--n", type=int, default=200, help="architectures per space for the correlations")
    ap.add_argument("--time-n", type=int, default=10, help="architectures timed proxy by proxy")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--proxies", default=",".join(GENERIC + SEQUENCE))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="CSV of every architecture's values")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: timings per core)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)  # failed proxies are counted in the table instead
    logging.getLogger(__name__).setLevel(logging.WARNING)  # progress lines
    names = [p for p in args.proxies.split(",") if p]
    rows: list[dict[str, object]] = []
    for name in args.spaces.split(","):
        run_space(name, args.n, min(args.time_n, args.n), args.batch_size, names, args.seed, rows)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
