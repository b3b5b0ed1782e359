"""Shared loading for the latency experiments: the public tables and their graph features.

NAS-Bench-201 networks repeat one cell five times per stage, and graph features are sums over nodes
(liveness and merging never cross a cell boundary), so the features of all 15,625 networks are computed
exactly as ``skeleton + 5 * (cell at stage 1 + cell at stage 2 + cell at stage 3)``; ``check_nb201`` compares
that with whole-network extraction on random cells. FBNet and OFA rows go through the feature cache.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

import search_spaces
from hardware_models.feature_cache import default_cache
from hardware_models.graph_features import torch_features, torch_module_features

DATA = Path(os.environ.get("ZCNAS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
HELP_TRAIN = ["1080ti_1", "1080ti_32", "1080ti_256", "silver_4114", "silver_4210r", "samsung_a50", "pixel3",
              "essential_ph_1", "samsung_s7"]
HELP_VAL = ["titanx_1", "titanx_32", "titanx_256", "gold_6240"]
HELP_TEST = ["titan_rtx_256", "gold_6226", "fpga", "pixel2", "raspi4", "eyeriss"]
# HELP's published Spearman (10 samples) and plain FLOPs on the test devices (shared/data/README.md).
HELP_PUBLISHED = [0.987, 0.989, 0.985, 0.802, 0.890, 0.940]
FLOPS_PUBLISHED = [0.950, 0.826, 0.900, 0.765, 0.846, 0.437]
# Batch-64 columns of the FBNet / OFA tables pair with no NAS-Bench-201 column; batch 1 and 32 do.
FBNET_TO_NB201 = {"1080ti_1": "1080ti_1", "1080ti_32": "1080ti_32", "titanx_1": "titanx_1",
                  "titanx_32": "titanx_32", "silver_4114": "silver_4114", "silver_4210r": "silver_4210r",
                  "gold_6240": "gold_6240", "samsung_a50": "samsung_a50", "samsung_s7": "samsung_s7",
                  "pixel3": "pixel3", "essential_ph_1": "essential_ph_1"}
OFA_TO_NB201 = {"titan_xp_1": "titanxp_1", "titan_xp_32": "titanxp_32", "2080ti_1": "2080ti_1",
                "2080ti_32": "2080ti_32"}


def read_table(name: str) -> tuple[list[str], list[str], np.ndarray]:
    """``(arch strings, device columns, latency matrix)`` of ``<name>_latency_ms.csv``."""
    with open(DATA / f"{name}_latency_ms.csv", newline="") as f:
        rows = list(csv.reader(f))
    return [r[0] for r in rows[1:]], rows[0][1:], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def nb201_features(arch_strings: list[str]) -> np.ndarray:
    """Graph features of full NAS-Bench-201 networks through the exact cell decomposition."""
    from search_spaces.nb201 import Cell

    space = search_spaces.get("nb201")
    skeleton = torch_features(search_spaces.get("nb201", cells_per_stage=0), space.sample(
        np.random.default_rng(0)))
    stages = [(space.channels * 2 ** s, 32 // 2 ** s) for s in range(3)]
    out = np.empty((len(arch_strings), len(skeleton)))
    for i, text in enumerate(arch_strings):
        arch = space.from_string(text)
        total = skeleton.copy()
        for c, hw in stages:
            with torch.device("meta"):
                cell = Cell(arch, c)
            total += space.cells_per_stage * torch_module_features(cell, (c, hw, hw))
        out[i] = total
    return out


def check_nb201(n: int = 5, seed: int = 0) -> float:
    """Largest absolute difference between decomposed and whole-network features on ``n`` random cells."""
    space = search_spaces.get("nb201")
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(n)]
    fast = nb201_features([space.to_string(a) for a in archs])
    full = np.stack([torch_features(space, a) for a in archs])
    return float(np.abs(fast - full).max())


def _chunk_features(job: tuple[str, list[str]]) -> str:
    """Worker: features of one chunk of cells, saved to ``path`` (so an interrupted run resumes)."""
    path, chunk = job
    torch.set_num_threads(1)
    if not Path(path).is_file():
        np.save(path + ".tmp.npy", nb201_features(chunk))
        os.replace(path + ".tmp.npy", path)
    return path


def nb201_all(workers: int = 3, chunk: int = 500) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """NAS-Bench-201 table with features for all rows, computed in chunks by ``workers`` processes and
    cached as NPY files beside the feature cache."""
    import multiprocessing

    archs, cols, Y = read_table("nb201")
    folder = (default_cache().directory or Path("/tmp/zcnas-graph-features")) / "nb201_decomposed"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"rows_{i:05d}_{len(archs[i:i + chunk])}.npy"), archs[i:i + chunk])
            for i in range(0, len(archs), chunk)]
    todo = [j for j in jobs if not Path(j[0]).is_file()]
    if todo:
        with multiprocessing.get_context("fork").Pool(min(workers, len(todo))) as pool:
            for _ in pool.imap_unordered(_chunk_features, todo):
                pass
    X = np.vstack([np.load(path) for path, _ in jobs])
    return archs, cols, Y, X


def space_rows(name: str, limit: int | None = None) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """FBNet / OFA table rows (first ``limit``) with their graph features from the cache."""
    archs, cols, Y = read_table(name)
    archs, Y = archs[:limit], Y[:limit]
    space = search_spaces.get(name)
    X = default_cache().features(space, [space.from_string(a) for a in archs])
    return archs, cols, Y, X


def nb201_subset(n: int, seed: int = 0, chunk: int = 250) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """A fixed random subset of ``n`` NAS-Bench-201 rows with features, cached in chunks like :func:`nb201_all`
    (all 15,625 cells cost about an hour of one loaded CPU core; a subset keeps a check affordable)."""
    archs, cols, Y = read_table("nb201")
    if n >= len(archs):
        return nb201_all()
    idx = np.sort(np.random.default_rng(seed).choice(len(archs), size=n, replace=False))
    folder = (default_cache().directory or Path("/tmp/zcnas-graph-features")) / f"nb201_subset_s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, n, chunk):
        rows = [archs[j] for j in idx[i:i + chunk]]
        path = folder / f"rows_{i:05d}_{len(rows)}_{hash_rows(rows)}.npy"
        _chunk_features((str(path), rows))
        parts.append(np.load(path))
    return [archs[j] for j in idx], cols, Y[idx], np.vstack(parts)


def hash_rows(rows: list[str]) -> str:
    """Short digest of a list of arch strings (a chunk file belongs to exactly these rows)."""
    import hashlib

    return hashlib.sha1("\n".join(rows).encode()).hexdigest()[:8]
