"""Post-training INT8 quantization of an exported image network with ``onnxruntime.quantization``.

``quantize(model, data)`` takes an ONNX file or a ``nas train`` output folder (its ``model.onnx``), calibrates
static INT8 quantization on a seeded, class-balanced sample of ``data``'s train split, then measures what it
costs and buys: top-1 of the fp32 and the int8 model on the test split and the latency of both in
onnxruntime. Images go through :func:`nas.datasets.normalise`, the preprocessing of ``nas train``'s
training and test evaluation, so the int8 model sees what the fp32 one was trained on.

Defaults, chosen by measurement on this project's CPU (AMD EPYC with AVX-512 VNNI, onnxruntime 1.32; see
``experiments/quantize_nb201.py`` and the issue-24 note): QDQ format, MinMax calibration, per-channel int8
weights, uint8 activations, after onnxruntime's quantization pre-processing (shape inference and graph
optimisation). QDQ and QOperator lost within 0.11 points of each other (QOperator once its Relu bug is avoided,
see :func:`quantize_onnx`), QDQ ran 3-7 % faster than QOperator in each measurement, and it is the format
onnxruntime recommends. The three calibrations lost within 0.05 points of each other (5 of 10,000
test images; C=8: MinMax 0.18, entropy 0.23, percentile 0.23; C=16: 0.08, 0.05, 0.03), so MinMax, the one that
keeps no histogram of every activation, is the default. INT8 ran at 0.52x fp32's latency (batch 1) and 0.48x
(batch 64) for C=16, but no faster at batch 1 for C=8 (0.83x at batch 64): an onnxruntime profile shows its
8-channel QLinearConvs taking longer than fp32's NCHWc-blocked Convs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from nas.datasets import ImageData, balanced_subset, load_split, normalise

__all__ = ["FORMATS", "METHODS", "QuantizeResult", "accuracy", "latency_ms", "quantize", "quantize_onnx",
           "resolve_model"]

logger = logging.getLogger(__name__)

FORMATS = ("qdq", "qoperator")
"""``qdq``: QuantizeLinear/DequantizeLinear pairs around float ops (onnxruntime fuses them into integer
kernels); ``qoperator``: integer operators (QLinearConv, QLinearAdd, ...) written into the graph."""
METHODS = ("minmax", "entropy", "percentile")
"""Calibration: activation range from the min/max seen, from minimum KL divergence, or the 99.999th
percentile."""


@dataclass(frozen=True)
class QuantizeResult:
    """What quantizing one network gave: its files, settings, accuracies (%) and latencies (ms).

    Example:
        >>> r = quantize("runs/train-nb201-abc-s0", "../shared/data/cifar10_jpeg")  # doctest: +SKIP
        >>> r.drop, r.latency_ratio[64]  # doctest: +SKIP
        (0.21, 0.62)
    """

    fp32_model: str
    int8_model: str
    format: str
    calibrate_method: str
    per_channel: bool
    calibration_images: int
    test_images: int
    seed: int
    fp32_accuracy: float
    int8_accuracy: float
    agreement: float
    """% of test images on which both models pick the same class."""
    fp32_latency_ms: dict[int, float]
    int8_latency_ms: dict[int, float]
    threads: int
    fp32_bytes: int
    int8_bytes: int
    seconds: float
    source: dict[str, Any] = field(default_factory=dict)
    """``space``, ``arch`` and ``space_options`` of the ``nas train`` folder quantized, when it was one."""

    @property
    def drop(self) -> float:
        """Accuracy lost by quantizing, in percentage points (negative: int8 did better)."""
        return self.fp32_accuracy - self.int8_accuracy

    @property
    def latency_ratio(self) -> dict[int, float]:
        """int8 / fp32 median latency per batch size (below 1: int8 is faster)."""
        return {b: self.int8_latency_ms[b] / self.fp32_latency_ms[b] for b in self.fp32_latency_ms}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record with the drop and latency ratios included."""
        out = asdict(self)
        out["drop"] = self.drop
        out["latency_ratio"] = self.latency_ratio
        for key in ("fp32_latency_ms", "int8_latency_ms", "latency_ratio"):
            out[key] = {str(b): v for b, v in out[key].items()}  # JSON keys are strings
        return out


def resolve_model(model: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """``(onnx path, settings)`` of an ONNX file or a ``nas train`` folder (settings empty for a bare file)."""
    path = Path(model)
    if path.is_dir():
        onnx_path = path / "model.onnx"
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{path}: no model.onnx in this folder; give an ONNX file or a `nas train` "
                                    "output folder")
        config = path / "config.json"
        settings = json.loads(config.read_text()).get("settings", {}) if config.is_file() else {}
        return onnx_path, settings
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file or `nas train` folder")
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{path}: expected an .onnx file or a `nas train` output folder")
    return path, {}


def _session(path: str | os.PathLike[str], threads: int) -> Any:
    """A CPU onnxruntime session with ``threads`` intra-op threads and full graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # graph-optimiser notes about the quantized graph are noise to a user
    return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])


def _batches(data: ImageData, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(normalised float32 images, labels)`` in order, ``batch_size`` at a time."""
    for i in range(0, len(data), batch_size):
        yield (normalise(data.x[i:i + batch_size]).numpy().astype(np.float32, copy=False),
               data.y[i:i + batch_size].numpy())


def _check_fits(session: Any, data: ImageData, path: Path) -> str:
    """The model's input name, after checking ``data``'s images and classes fit it (a clear error if not)."""
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    want = [d if isinstance(d, int) else None for d in inp.shape[1:]]
    got = list(data.x.shape[1:])
    if any(w is not None and w != g for w, g in zip(want, got, strict=False)) or len(want) != len(got):
        raise ValueError(f"{path} takes images of shape {tuple(inp.shape[1:])}, the data has {tuple(got)}; "
                         "quantize with the data the network was trained on")
    classes = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) else None
    top_label = int(data.y.max()) if len(data) else -1
    if classes is not None and top_label >= classes:
        raise ValueError(f"{path} has {classes} outputs but the data has label {top_label}; "
                         "quantize with the data the network was trained on")
    return inp.name


class _Calibration(CalibrationDataReader):
    """Preprocessed calibration batches for onnxruntime's calibrator (a ``CalibrationDataReader``)."""

    def __init__(self, data: ImageData, input_name: str, batch_size: int) -> None:
        self._data, self._name, self._batch = data, input_name, batch_size
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next ``{input: batch}``, or None when the sample is used up."""
        item = next(self._it, None)
        return None if item is None else {self._name: item[0]}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._it = _batches(self._data, self._batch)


def _even_batch(n: int, most: int) -> int:
    """The largest batch size up to ``most`` that divides ``n``: the histogram calibrators stack the batches
    into one array, which fails on a shorter last batch."""
    return next(b for b in range(min(most, n), 0, -1) if n % b == 0)


def quantize_onnx(fp32: str | os.PathLike[str], int8: str | os.PathLike[str], calibration: ImageData, *,
                  fmt: str = "qdq", method: str = "minmax", per_channel: bool = True, preprocess: bool = True,
                  batch_size: int = 64) -> Path:
    """Write a static INT8 quantization of ``fp32`` to ``int8``, its activation ranges calibrated on
    ``calibration`` (normalised like training)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    if len(calibration) == 0:
        raise ValueError("the calibration sample is empty; give --calibration-size of at least 1")
    fp32, int8 = Path(fp32), Path(int8)
    name = _check_fits(_session(fp32, 1), calibration, fp32)
    reader = _Calibration(calibration, name, _even_batch(len(calibration), batch_size))
    int8.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = dict(
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator, per_channel=per_channel,
        # uint8 activations x int8 weights: the pairing onnxruntime's x86 integer kernels run fastest (int8
        # activations measured 1.6x slower than fp32 here)
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[method],
        # MinMax folds its ranges every 8 batches instead of holding every activation of the sample
        extra_options={"CalibMaxIntermediateOutputs": 8} if method == "minmax" else {})
    if fmt == "qoperator":
        # QOperator drops a Relu whose input it quantized and reads the Relu's output as that input: wrong when
        # the input is negative and also feeds a skip path (nb201's ReLU-Conv-BN edges beside skip_connect).
        # Measured on nb201: 33 points lost with Relu quantized, 0.1 without. QDQ keeps Relus correct.
        options["op_types_to_quantize"] = [op for op in QLinearOpsRegistry if op not in ("Relu", "Clip")]
    with tempfile.TemporaryDirectory(prefix="zcnas-quant-") as tmp:
        source = fp32
        if preprocess:
            # Symbolic shape inference and onnxruntime's basic graph optimisation first, as onnxruntime
            # advises before quantize_static: the calibrator and quantizer then see the graph that will run.
            source = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32), str(source))
        # A norm layer that is not after a Conv (nb201's last BN) has 1-D weights that cannot be per-channel;
        # onnxruntime warns on the root logger and quantizes it per tensor, which is what we want.
        with _quiet_root_warnings("is out-of-range for weight"):
            quantize_static(str(source), str(int8), reader, **options)
    return int8


def accuracy(model: str | os.PathLike[str], data: ImageData, *, batch_size: int = 256, threads: int = 1,
             progress: bool = True, label: str = "evaluate") -> tuple[float, np.ndarray]:
    """Top-1 accuracy (%) of an ONNX classifier on ``data`` and its predicted classes, batched."""
    session = _session(model, threads)
    name = _check_fits(session, data, Path(model))
    preds = np.empty(len(data), dtype=np.int64)
    bar = _Bar(progress, label, len(data))
    try:
        for i, (x, _) in enumerate(_batches(data, batch_size)):
            logits = session.run(None, {name: x})[0]
            preds[i * batch_size:i * batch_size + len(x)] = logits.argmax(1)
            bar.advance(len(x))
    finally:
        bar.close()
    return 100.0 * float((preds == data.y.numpy()).mean()), preds


def latency_ms(models: Sequence[str | os.PathLike[str]], input_shape: Sequence[int], *,
               batch_sizes: Sequence[int] = (1, 64), threads: int = 1, warmup: int = 10,
               seconds: float = 4.0, min_repeats: int = 20, seed: int = 0) -> list[dict[int, float]]:
    """Median latency (ms) of each model per batch size, the models timed in turn run by run so that each
    sees the same machine load; ``seconds`` bounds the timing of each batch size."""
    sessions = [_session(m, threads) for m in models]
    names = [s.get_inputs()[0].name for s in sessions]
    rng = np.random.default_rng(seed)
    out: list[dict[int, float]] = [{} for _ in models]
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        for s, n in zip(sessions, names, strict=True):
            for _ in range(warmup):
                s.run(None, {n: x})
        times: list[list[float]] = [[] for _ in models]
        deadline = time.perf_counter() + seconds
        while len(times[0]) < min_repeats or time.perf_counter() < deadline:
            order = range(len(models)) if len(times[0]) % 2 == 0 else reversed(range(len(models)))
            for i in order:  # the order alternates so that neither model always runs on a warm cache
                start = time.perf_counter()
                sessions[i].run(None, {names[i]: x})
                times[i].append(1000.0 * (time.perf_counter() - start))
        for o, t in zip(out, times, strict=True):
            o[batch] = statistics.median(t)
    return out


def quantize(model: str | os.PathLike[str], data: str | os.PathLike[str] | None = None, *,
             out: str | os.PathLike[str] | None = None, calibration_size: int = 1000, seed: int = 0,
             fmt: str = "qdq", method: str = "minmax", per_channel: bool = True, test_size: int | None = None,
             threads: int = 1, batch_sizes: Sequence[int] = (1, 64), latency_seconds: float = 4.0,
             progress: bool = True) -> QuantizeResult:
    """Quantize ``model`` (ONNX file or ``nas train`` folder) to INT8 calibrated on ``data``'s train split,
    compare it with fp32 on the test split, and write ``OUT/model_int8.onnx`` and ``OUT/quantize.json``.

    ``data`` defaults to the data a ``nas train`` folder was trained on; ``out`` to the model's folder.
    """
    started = time.perf_counter()
    fp32, settings = resolve_model(model)
    if data is None:
        data = settings.get("data")
        if data is None:
            raise ValueError(f"{model}: give --data (a folder with train/ and test/ class folders, or an .npz); "
                             "a bare ONNX file does not say what it was trained on")
    if calibration_size < 1:
        raise ValueError(f"--calibration-size must be at least 1, got {calibration_size}")
    if test_size is not None and test_size < 1:
        raise ValueError(f"--test-size must be at least 1, got {test_size}")
    test = balanced_subset(load_split(data, "test"), test_size, seed)  # the test split first: fail early
    calib = balanced_subset(load_split(data, "train"), calibration_size, seed)
    out_dir = Path(out) if out is not None else fp32.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    int8 = out_dir / "model_int8.onnx"
    if int8.resolve() == fp32.resolve():
        raise ValueError(f"{fp32}: the input is named model_int8.onnx; give another --out")
    logger.info("calibrating %s on %d training images (%s, %s)", fp32, len(calib), fmt, method)
    quantize_onnx(fp32, int8, calib, fmt=fmt, method=method, per_channel=per_channel)
    fp32_acc, fp32_pred = accuracy(fp32, test, threads=threads, progress=progress, label="fp32 test")
    int8_acc, int8_pred = accuracy(int8, test, threads=threads, progress=progress, label="int8 test")
    fp32_ms, int8_ms = latency_ms([fp32, int8], tuple(test.x.shape[1:]), batch_sizes=batch_sizes,
                                  threads=threads, seconds=latency_seconds, seed=seed)
    result = QuantizeResult(
        fp32_model=str(fp32), int8_model=str(int8), format=fmt, calibrate_method=method, per_channel=per_channel,
        calibration_images=len(calib), test_images=len(test), seed=seed, fp32_accuracy=fp32_acc,
        int8_accuracy=int8_acc, agreement=100.0 * float((fp32_pred == int8_pred).mean()),
        fp32_latency_ms=fp32_ms, int8_latency_ms=int8_ms, threads=threads, fp32_bytes=fp32.stat().st_size,
        int8_bytes=int8.stat().st_size, seconds=time.perf_counter() - started,
        source={k: settings[k] for k in ("space", "arch", "space_options") if k in settings})
    tmp = out_dir / "quantize.json.tmp"
    tmp.write_text(json.dumps({**result.to_dict(), "data": str(data)}, indent=2) + "\n")
    os.replace(tmp, out_dir / "quantize.json")  # a reader never sees half a file
    return result


@contextlib.contextmanager
def _quiet_root_warnings(text: str) -> Iterator[None]:
    """Drop root-logger records containing ``text`` for the duration (onnxruntime logs through the root)."""
    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class _Bar:
    """A rich progress bar over images; silent when disabled."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), transient=True)
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def advance(self, n: int) -> None:
        """``n`` more images done."""
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def close(self) -> None:
        """Stop drawing."""
        if self._bar is not None:
            self._bar.stop()
