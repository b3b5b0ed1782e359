"""``nas quantize MODEL``: post-training INT8 quantization of an ONNX network, with its accuracy and speed."""

from __future__ import annotations

import argparse
from pathlib import Path

from nas.cli import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser(
        "quantize", help="INT8-quantize an ONNX network (static, calibrated) and measure accuracy and latency",
        description="Static post-training INT8 quantization with onnxruntime.quantization, calibrated on a "
                    "seeded sample of --data's train split (normalised as `nas train` does); then top-1 of "
                    "fp32 and int8 on the test split and their onnxruntime latency (median, batch 1 and 64). "
                    "Writes OUT/model_int8.onnx and OUT/quantize.json.")
    p.add_argument("model", metavar="MODEL", help="an .onnx file or a `nas train` output folder (its model.onnx)")
    p.add_argument("--data", metavar="PATH",
                   help="a folder with train/ and test/ folders of one folder of images per class, or an .npz "
                        "with x_train, y_train, x_test, y_test (default for a `nas train` folder: its data)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the model's folder)")
    p.add_argument("--calibration-size", type=int, default=1000, metavar="N",
                   help="training-split images that calibrate activation ranges (default 1000)")
    p.add_argument("--test-size", type=int, metavar="N",
                   help="a seeded class-balanced subset of N test images (default all)")
    p.add_argument("--seed", type=int, default=0, help="which calibration and test images (default 0)")
    p.add_argument("--format", choices=("qdq", "qoperator"), default="qdq",
                   help="qdq: Quantize/DequantizeLinear around float ops, fused by onnxruntime (default; "
                        "faster here); qoperator: QLinearConv etc. written into the graph")
    p.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="how activation ranges are set (default minmax)")
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime intra-op threads for evaluation and latency (default 1)")
    p.add_argument("--latency-seconds", type=float, default=4.0, metavar="S",
                   help="timing budget per batch size, fp32 and int8 run in turn (default 4; at least 20 runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Quantize, evaluate, time, and print the comparison."""
    from nas.quantize import quantize

    model = Path(args.model)
    if model.is_dir() and not (model / "model.onnx").is_file():
        raise UsageError(f"{model}: no model.onnx in this folder; give an .onnx file or a `nas train` output "
                         "folder")
    if not model.exists():
        raise UsageError(f"{model}: no such ONNX file or `nas train` folder")
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    result = quantize(model, args.data, out=args.out, calibration_size=args.calibration_size, seed=args.seed,
                      fmt=args.format, method=args.calibration, test_size=args.test_size, threads=args.threads,
                      latency_seconds=args.latency_seconds, progress=not args.no_progress)
    _print_table(result)
    return 0


def _print_table(result: object) -> None:
    """fp32 vs int8: accuracy, latency per batch size, file size; the drop and ratios in the last column."""
    from rich.console import Console
    from rich.table import Table

    r = result
    table = Table(title=f"nas quantize · {r.format}, {r.calibrate_method} on {r.calibration_images} images, "
                        f"{r.test_images} test images, {r.threads} thread(s)")
    for col in ("", "fp32", "int8", "int8 vs fp32"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("top-1 (%)", f"{r.fp32_accuracy:.2f}", f"{r.int8_accuracy:.2f}", f"drop {r.drop:+.2f} points")
    for batch, ratio in r.latency_ratio.items():
        table.add_row(f"latency batch {batch} (ms)", f"{r.fp32_latency_ms[batch]:.3f}",
                      f"{r.int8_latency_ms[batch]:.3f}", f"x{ratio:.2f}")
    table.add_row("file (kB)", f"{r.fp32_bytes / 1024:.0f}", f"{r.int8_bytes / 1024:.0f}",
                  f"x{r.int8_bytes / r.fp32_bytes:.2f}")
    table.add_row("same top-1", "", "", f"{r.agreement:.1f} %")
    Console().print(table)
    Console().print(f"wrote {Path(r.int8_model)} and {Path(r.int8_model).with_name('quantize.json')}")
