"""``nas.quantize`` / ``nas quantize``: static INT8 quantization of a ``nas train``-ed network, its accuracy and
speed against fp32, and clear errors on bad input."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from nas.cli import main
from nas.datasets import load_split, normalise
from nas.quantize import QuantizeResult, quantize, resolve_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOP = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def data(learnable_npz) -> Path:
    return learnable_npz(n_train=300, n_test=200)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A ``nas train`` output folder of a small nb201 network (C=8, N=1) trained by the CLI for 3 epochs."""
    out = tmp_path_factory.mktemp("train") / "t"
    assert main(["train", "--arch", TOP, "--space-option", "channels=8", "--space-option", "cells_per_stage=1",
                 "--data", str(data), "--epochs", "3", "--batch-size", "32", "--out", str(out),
                 "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def quantized(trained, tmp_path_factory) -> QuantizeResult:
    return quantize(trained, out=tmp_path_factory.mktemp("q"), calibration_size=100, batch_sizes=(1, 16),
                    latency_seconds=0.2, progress=False)


def test_int8_model_is_quantized_and_runs_integer_kernels(quantized, tmp_path):
    model = onnx.load(quantized.int8_model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 10  # every Conv's weights (and the classifier's) are stored as int8
    per_channel = [t for t in model.graph.initializer if t.name.endswith("_scale") and len(t.dims) == 1
                   and t.dims[0] > 1]
    assert per_channel  # per-channel weight scales
    # onnxruntime fuses the QDQ pairs around each Conv into one integer QLinearConv
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(quantized.int8_model, opts, providers=["CPUExecutionProvider"])
    assert "QLinearConv" in {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}


def test_int8_predictions_agree_with_fp32(quantized, data):
    assert quantized.fp32_accuracy >= 30  # the network learned something (chance is 10 %)
    assert quantized.agreement >= 90 and abs(quantized.drop) <= 5
    # the same images and preprocessing as training, run here without nas.quantize's evaluation
    test = load_split(data, "test")
    x = normalise(test.x).numpy()
    preds = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0].argmax(1)
             for p in (quantized.fp32_model, quantized.int8_model)]
    assert 100 * np.mean(preds[0] == test.y.numpy()) == pytest.approx(quantized.fp32_accuracy)
    assert 100 * np.mean(preds[1] == test.y.numpy()) == pytest.approx(quantized.int8_accuracy)
    assert 100 * np.mean(preds[0] == preds[1]) == pytest.approx(quantized.agreement)


def test_quantize_json_records_accuracy_latency_and_source(quantized):
    record = json.loads((Path(quantized.int8_model).parent / "quantize.json").read_text())
    for key in ("fp32_accuracy", "int8_accuracy", "drop", "agreement", "fp32_latency_ms", "int8_latency_ms",
                "latency_ratio", "threads", "format", "calibrate_method", "calibration_images", "test_images",
                "fp32_bytes", "int8_bytes", "data", "source"):
        assert key in record, key
    assert record["drop"] == pytest.approx(record["fp32_accuracy"] - record["int8_accuracy"])
    assert set(record["latency_ratio"]) == {"1", "16"}
    assert record["latency_ratio"]["16"] == pytest.approx(
        record["int8_latency_ms"]["16"] / record["fp32_latency_ms"]["16"])
    assert record["format"] == "qdq" and record["calibration_images"] == 100 and record["test_images"] == 200
    assert record["source"]["arch"] == TOP and record["source"]["space_options"]["channels"] == 8
    assert record["int8_bytes"] < record["fp32_bytes"]  # int8 weights: a smaller file


def test_qoperator_format_keeps_relu_before_skip_paths(trained, tmp_path):
    # onnxruntime's QOperator pass would drop Relus whose input also feeds a skip path (measured -33 points
    # on nb201); nas.quantize keeps them in float
    result = quantize(trained, out=tmp_path, calibration_size=100, fmt="qoperator", batch_sizes=(1,),
                      latency_seconds=0.1, progress=False)
    ops = [n.op_type for n in onnx.load(result.int8_model).graph.node]
    assert "QLinearConv" in ops and "QLinearAdd" in ops and "Relu" in ops
    assert result.agreement >= 90


def test_cli_prints_the_comparison(trained, data, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["quantize", str(trained / "model.onnx"), "--data", str(data), "--out", str(out),
                 "--calibration-size", "50", "--test-size", "100", "--latency-seconds", "0.1",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "latency batch 64" in text and "drop" in text
    record = json.loads((out / "quantize.json").read_text())
    assert record["test_images"] == 100 and record["calibration_images"] == 50 and record["source"] == {}
    assert (out / "model_int8.onnx").is_file()


def test_resolve_model_takes_a_file_or_a_train_folder(trained):
    path, settings = resolve_model(trained)
    assert path == trained / "model.onnx" and settings["arch"] == TOP
    assert resolve_model(path) == (path, {})


@pytest.mark.parametrize("case, message", [
    ("missing", "no such ONNX file"),
    ("empty_dir", "no model.onnx"),
    ("no_test_split", "x_test, y_test"),
    ("bare_onnx_no_data", "give --data"),
    ("wrong_size", "takes images of shape"),
    ("zero_calibration", "--calibration-size must be at least 1"),
])
def test_cli_bad_input_exits_2(case, message, trained, data, images_npz, tmp_path, capsys):
    model, extra = str(trained), ["--data", str(data)]
    if case == "missing":
        model = str(tmp_path / "nope.onnx")
    elif case == "empty_dir":
        model = str(tmp_path)
    elif case == "no_test_split":
        extra = ["--data", images_npz(np.arange(20) % 10)]
    elif case == "bare_onnx_no_data":
        model, extra = str(trained / "model.onnx"), []
    elif case == "wrong_size":
        extra = ["--data", images_npz(np.arange(20) % 10, side=32, y_test=np.arange(10))]
    else:
        extra += ["--calibration-size", "0"]
    assert main(["quantize", model, *extra, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
