"""Measuring latency with onnxruntime: here (``nas latency measure``) or on a user's device (the kit).

Example:
    >>> import numpy as np, search_spaces, tempfile
    >>> space = search_spaces.get("nb201")
    >>> arch = space.sample(np.random.default_rng(0))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ms = measure_onnx(space.to_onnx(arch, d + "/a.onnx"), repeats=3, warmup=1)
    >>> ms > 0
    True
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

KIT_SCRIPT = '''"""Measure the latency of every ONNX model in this folder; needs only numpy and onnxruntime.

    pip install numpy onnxruntime
    python measure.py                # writes measurements.csv next to this script
    python measure.py --threads 4 --repeats 50

Then, on the machine with zcnas:  nas latency adapt --space {space} --name MYDEVICE --measurements measurements.csv
"""
import argparse, csv, os, time
import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(path, threads, warmup, repeats):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    if "int" in inp.type:  # token ids: 0 is valid in every vocabulary; lookup cost does not depend on it
        x = np.zeros(shape, dtype=np.int32 if inp.type == "tensor(int32)" else np.int64)
    else:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {{inp.name: x}})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {{inp.name: x}})
        times.append((time.perf_counter() - t) * 1000.0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(HERE, "measurements.csv"))
    args = ap.parse_args()
    with open(os.path.join(HERE, "archs.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "latency_ms", "threads"])
        for i, row in enumerate(rows, 1):
            ms = measure(os.path.join(HERE, row["file"]), args.threads, args.warmup, args.repeats)
            w.writerow([row["arch"], f"{{ms:.4f}}", args.threads])
            print(f"{{i}}/{{len(rows)}} {{row['file']}}: {{ms:.3f}} ms", flush=True)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
'''


def measure_onnx(path: str | os.PathLike[str], threads: int = 1, warmup: int = 5, repeats: int = 20,
                 stat: str = "median") -> float:
    """Latency (ms) of one batch-1 inference of an ONNX model on the CPU with onnxruntime: the median of
    ``repeats`` timed runs, or their minimum (``stat="min"``), which resists a busy shared machine."""
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = example_input(inp.type, shape)
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times) if stat == "median" else np.min(times))


def example_input(onnx_type: str, shape: Sequence[int]) -> np.ndarray:
    """An input for timing: token ids 0 for an integer input (valid in every vocabulary, and the cost of an
    embedding lookup does not depend on the id), else seeded float32 noise."""
    if "int" in onnx_type:
        return np.zeros(shape, dtype=np.int32 if onnx_type == "tensor(int32)" else np.int64)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def sample_unique(space: Any, n: int, rng: np.random.Generator, max_tries: int = 100) -> list[Any]:
    """``n`` distinct architectures drawn from ``space``."""
    seen: dict[str, Any] = {}
    tries = 0
    while len(seen) < n and tries < n * max_tries:
        arch = space.sample(rng)
        seen.setdefault(space.to_string(arch), arch)
        tries += 1
    return list(seen.values())


def measure_archs(space: Any, archs: Sequence[Any], threads: int = 1, warmup: int = 5, repeats: int = 20,
                  progress: Callable[[int, int], None] | None = None, stat: str = "median") -> list[float]:
    """Export each architecture to ONNX and measure it here; returns ms per architecture."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, arch in enumerate(archs):
            path = space.to_onnx(arch, os.path.join(tmp, "arch.onnx"))
            out.append(measure_onnx(path, threads, warmup, repeats, stat))
            if progress is not None:
                progress(i + 1, len(archs))
    return out


def write_measurements(path: str | os.PathLike[str], space: Any, archs: Sequence[Any], ms: Sequence[float],
                       threads: int) -> None:
    """CSV ``arch,latency_ms,threads`` (the format ``nas latency adapt`` reads)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "latency_ms", "threads"])
        for arch, value in zip(archs, ms, strict=True):
            w.writerow([space.to_string(arch), f"{value:.4f}", threads])


def write_kit(space: Any, archs: Sequence[Any], out_dir: str | os.PathLike[str],
              progress: Callable[[int, int], None] | None = None) -> Path:
    """A folder with one ONNX model per architecture, ``archs.csv`` and a standalone ``measure.py``."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --out folder")
    (out / "models").mkdir(parents=True, exist_ok=True)
    with open(out / "archs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "arch"])
        for i, arch in enumerate(archs):
            name = f"models/{i:04d}.onnx"
            space.to_onnx(arch, out / name)
            w.writerow([name, space.to_string(arch)])
            if progress is not None:
                progress(i + 1, len(archs))
    (out / "measure.py").write_text(KIT_SCRIPT.format(space=space.name))
    return out
