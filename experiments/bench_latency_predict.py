"""Prediction speed of graph-feature latency models: cached graphs (batch and one at a time) and cold, for a
shipped target and for targets adapted from 10 measurements (which on their own space mix the same-space
reference network's outputs).

    python experiments/bench_latency_predict.py [--cells 5000]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_data as ld  # noqa: E402

import hardware_models  # noqa: E402
import search_spaces  # noqa: E402
from hardware_models.feature_cache import default_cache  # noqa: E402
from hardware_models.graph_features import export_features, torch_features  # noqa: E402


def rate(fn, n: int) -> float:  # noqa: ANN001
    """Architectures per second of ``fn()`` processing ``n`` architectures (best of 3)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def adapted(space_name: str, column: str) -> object:
    """A target adapted (not saved) from 10 rows of a public table's column, as a user would."""
    from hardware_models.adapt import adapt

    archs, cols, Y = ld.read_table(space_name)
    rows = [(a, float(v)) for a, v in zip(archs[-10:], Y[-10:, cols.index(column)], strict=True)]
    return adapt(search_spaces.get(space_name), rows, f"bench_{space_name}", save=False)


def main() -> None:
    """Print the table."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=0, help="NB201 cells (fixed random subset; 0: all 15,625)")
    args = ap.parse_args()
    space = search_spaces.get("nb201")
    arch_strings, _, _, X = ld.nb201_subset(args.cells) if args.cells else ld.nb201_all()
    archs = [space.from_string(a) for a in arch_strings]
    default_cache().put(space, archs, X)
    target = hardware_models.get("rpi4")
    print(f"{'what':52s} {'archs/s':>10s}")
    print(f"{f'cached NB201 graphs, one call for {len(archs):,}':52s} "
          f"{rate(lambda: target.predict(space, archs), len(archs)):10.0f}")
    few = archs[:2000]
    print(f"{'cached NB201 graphs, one call per arch (search loop)':52s} "
          f"{rate(lambda: [target.predict(space, [a]) for a in few], len(few)):10.0f}")
    for name in ("ofa", "fbnet"):
        sp = search_spaces.get(name)
        cached = [sp.from_string(a) for a in ld.read_table(name)[0][:500]]
        default_cache().features(sp, cached)
        print(f"{'cached ' + name + ' graphs, one call per arch':52s} "
              f"{rate(lambda sp=sp, cached=cached: [target.predict(sp, [a]) for a in cached], len(cached)):10.0f}")
    for name, column in (("ofa", "2080ti_32"), ("fbnet", "samsung_a50"), ("nb201", "titan_rtx_256")):
        sp = space if name == "nb201" else search_spaces.get(name)
        cached = archs[:2000] if name == "nb201" else [sp.from_string(a) for a in ld.read_table(name)[0][:2000]]
        default_cache().features(sp, cached)
        own = adapted(name, column)
        kind = own.model.space_model.get("method", "graph mix")
        print(f"{f'adapted on {name} ({kind}), cached, one call for 2,000':52s} "
              f"{rate(lambda sp=sp, own=own, cached=cached: own.predict(sp, cached), len(cached)):10.0f}")
        few = cached[:500]
        print(f"{f'adapted on {name} ({kind}), cached, one call per arch':52s} "
              f"{rate(lambda sp=sp, own=own, few=few: [own.predict(sp, [a]) for a in few], len(few)):10.0f}")
    rng = np.random.default_rng(123)
    for name in ("nb201", "fbnet", "ofa"):
        sp = search_spaces.get(name)
        new = [sp.sample(rng) for _ in range(5)]
        start = time.perf_counter()
        for a in new:
            torch_features(sp, a)
        t_torch = (time.perf_counter() - start) / len(new)
        start = time.perf_counter()
        export_features(sp, new[0])
        t_onnx = time.perf_counter() - start
        print(f"{'cold ' + name + ': torch-path features / ONNX export+parse':52s} "
              f"{1 / t_torch:10.1f} / {1 / t_onnx:.1f}")
    print("target: >= 5,000 archs/s on cached graphs")


if __name__ == "__main__":
    main()
