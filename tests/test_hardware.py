"""Hardware targets: graph features (ONNX and torch agree), cache, registry, prediction, adaptation, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hardware_models
import search_spaces
from hardware_models.feature_cache import FeatureCache, space_key
from hardware_models.graph_features import FEATURE_NAMES, export_features, torch_features
from nas.cli import main

CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
NEEDS_MODELS = pytest.mark.skipif(not hardware_models.SHIPPED.is_file(),
                                  reason="shipped models not built (experiments/build_target_models.py)")


@pytest.fixture()
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user config dir and feature cache for the test."""
    monkeypatch.setenv("ZCNAS_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("ZCNAS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "config"


def feature(vec: np.ndarray, name: str) -> float:
    """One named entry of a feature vector."""
    return float(vec[FEATURE_NAMES.index(name)])


def small_nb201() -> object:
    """NAS-Bench-201 with one cell per stage: same node types, a third of the export time."""
    return search_spaces.get("nb201", cells_per_stage=1)


def test_torch_path_matches_the_onnx_graph() -> None:
    space = small_nb201()
    arch = space.from_string("|nor_conv_1x1~0|+|none~0|avg_pool_3x3~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|")
    onnx_vec, torch_vec = export_features(space, arch), torch_features(space, arch)
    np.testing.assert_allclose(torch_vec, onnx_vec, rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("space_name", ["nb201", "fbnet", "ofa"])
def test_features_do_not_depend_on_what_was_recorded_before(space_name: str) -> None:
    """Replayed module templates must not carry the context of the call they were recorded in."""
    import hardware_models.graph_features as gf

    space = search_spaces.get(space_name)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(8)]
    alone = []
    for arch in archs:
        gf._TEMPLATES.clear()
        alone.append(torch_features(space, arch))
    gf._TEMPLATES.clear()
    in_turn = [torch_features(space, arch) for arch in archs]
    in_reverse = [torch_features(space, arch) for arch in reversed(archs)][::-1]
    for a, b, c in zip(alone, in_turn, in_reverse, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_features_see_depthwise_and_hardswish_in_mobilenet_blocks() -> None:
    space = search_spaces.get("ofa")
    vec = torch_features(space, space.sample(np.random.default_rng(0)))
    dw = sum(feature(vec, f"dwconv_k{k}_count") for k in (3, 5, 7))
    assert dw >= 10
    assert feature(vec, "hswish_count") > 0 and feature(vec, "global_pool_count") > 1  # SE blocks


def test_dead_code_behind_zero_edges_is_counted_apart() -> None:
    space = search_spaces.get("nb201")
    # node 1 feeds only 'none' edges: its 3x3 conv is dead code for a runtime that folds x * 0
    vec = torch_features(space, space.from_string(
        "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|skip_connect~2|"))
    assert feature(vec, "dead_conv_k3_count") == 15 and feature(vec, "conv_k3_count") == 5


def test_cache_persists_features_on_disk(tmp_path: Path) -> None:
    space = search_spaces.get("nb201")
    arch = space.from_string(CELL)
    first = FeatureCache(tmp_path).features(space, [arch, arch])
    assert (tmp_path / f"{space_key(space)}.tsv").read_text().count("\n") == 1
    again = FeatureCache(tmp_path, extractor=lambda s, a: pytest.fail("must come from disk"))
    np.testing.assert_allclose(again.features(space, [arch]), first[:1])


def test_space_key_depends_on_settings() -> None:
    assert space_key(search_spaces.get("nb201")) != space_key(search_spaces.get("nb201", channels=8))


@NEEDS_MODELS
def test_registry_lists_devices_under_friendly_names() -> None:
    names = hardware_models.list()
    for name in ("rpi4", "pixel2", "pixel3", "eyeriss", "fpga", "gold_6226", "titan_rtx_256", "local"):
        assert name in names
    assert "raspi4" not in names
    with pytest.raises(ValueError, match="rpi4"):
        hardware_models.get("raspberry")


@NEEDS_MODELS
@pytest.mark.parametrize("space_name", ["nb201", "ofa", "fbnet"])
def test_rpi4_predicts_positive_ms_for_any_space(space_name: str, config_dir: Path) -> None:
    space = search_spaces.get(space_name)
    archs = [space.sample(np.random.default_rng(i)) for i in range(2)]
    ms = hardware_models.get("rpi4").predict(space, archs)
    assert ms.shape == (2,) and np.all(np.isfinite(ms)) and np.all(ms > 0)


@NEEDS_MODELS
def test_bigger_networks_are_slower_on_rpi4(config_dir: Path) -> None:
    space = search_spaces.get("ofa")
    ms = hardware_models.get("rpi4").predict(space, [space.smallest(), space.largest()])
    assert ms[1] > 2 * ms[0]


def measurements(space: object, n: int, target: str = "pixel3") -> list[tuple[str, float]]:
    """``n`` NB201 cells with latencies from a shipped model (stand-in for a device)."""
    archs = [space.sample(np.random.default_rng(100 + i)) for i in range(n)]
    ms = hardware_models.get(target).predict(space, archs)
    return [(space.to_string(a), float(v)) for a, v in zip(archs, ms, strict=True)]


@NEEDS_MODELS
def test_adapt_registers_a_user_target_usable_by_name(config_dir: Path) -> None:
    from hardware_models.adapt import adapt

    space = small_nb201()
    adapt(space, measurements(space, 10), "mydevice")
    assert (config_dir / "targets" / "mydevice.json").is_file()
    assert "mydevice" in hardware_models.list()
    archs = [space.sample(np.random.default_rng(i)) for i in range(12)]
    from scipy.stats import spearmanr

    rho = spearmanr(hardware_models.get("mydevice").predict(space, archs),
                    hardware_models.get("pixel3").predict(space, archs))[0]
    assert rho > 0.9


@NEEDS_MODELS
@pytest.mark.parametrize("bad, message", [
    ("few", "at least 10"),
    ("unknown", "not a nb201 architecture"),
    ("negative", "positive number"),
])
def test_adapt_bad_input_registers_nothing(bad: str, message: str, config_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    space = search_spaces.get("nb201")
    rows = [(space.to_string(space.sample(np.random.default_rng(i))), 1.0 + i) for i in range(3 if bad == "few" else 12)]
    if bad == "unknown":
        rows[4] = ("|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|", 3.0)
    if bad == "negative":
        rows[2] = (rows[2][0], -1.5)
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("arch", "latency_ms"), *rows])
    code = main(["latency", "adapt", "--space", "nb201", "--name", "bad", "--measurements", str(path)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (config_dir / "targets" / "bad.json").exists()


@NEEDS_MODELS
def test_cli_predict_keeps_input_order(config_dir: Path, tmp_path: Path) -> None:
    space = search_spaces.get("nb201")
    lines = [space.to_string(space.sample(np.random.default_rng(i))) for i in range(4)]
    (tmp_path / "archs.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.csv"
    assert main(["latency", "predict", "--space", "nb201", "--target", "rpi4", "--arch-file",
                 str(tmp_path / "archs.txt"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["arch"] for r in rows] == lines
    assert all(float(r["latency_ms"]) > 0 for r in rows)


@NEEDS_MODELS
def test_targets_listing_says_how_models_were_fitted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "rpi4", "--fitted"]) == 0
    out = capsys.readouterr().out
    assert "Raspberry Pi 4" in out and "NAS-Bench-201" in out


def test_kit_script_runs_with_onnxruntime_only(tmp_path: Path) -> None:
    from hardware_models.measure import write_kit

    space = small_nb201()
    kit = write_kit(space, [space.sample(np.random.default_rng(i)) for i in range(2)], tmp_path / "kit")
    assert len(list((kit / "models").glob("*.onnx"))) == 2
    subprocess.run([sys.executable, str(kit / "measure.py"), "--repeats", "2", "--warmup", "1"],
                   check=True, capture_output=True, cwd=tmp_path)
    rows = list(csv.DictReader(open(kit / "measurements.csv")))
    assert len(rows) == 2 and all(float(r["latency_ms"]) > 0 for r in rows)
    assert set(rows[0]) == {"arch", "latency_ms", "threads"}


def test_shipped_file_is_small_json() -> None:
    if hardware_models.SHIPPED.is_file():
        assert hardware_models.SHIPPED.stat().st_size < 2_000_000
        json.loads(hardware_models.SHIPPED.read_text())
    residuals = hardware_models.DATA / "residuals.npz"
    if residuals.is_file():
        assert residuals.stat().st_size < 1_000_000


@pytest.mark.slow
def test_cli_kit_and_measure(tmp_path: Path) -> None:
    assert main(["latency", "kit", "--space", "nb201", "--n", "2", "--out", str(tmp_path / "kit"),
                 "--no-progress"]) == 0
    assert (tmp_path / "kit" / "measure.py").is_file()
    out = tmp_path / "m.csv"
    assert main(["latency", "measure", "--space", "nb201", "--n", "2", "--repeats", "2", "--warmup", "1",
                 "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 2 and rows[0]["threads"] == "1"


def test_kit_refuses_a_non_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "kit").mkdir()
    (tmp_path / "kit" / "x").write_text("")
    assert main(["latency", "kit", "--space", "nb201", "--n", "1", "--out", str(tmp_path / "kit")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_measure_rejects_unknown_statistic() -> None:
    from hardware_models.measure import measure_onnx

    with pytest.raises(ValueError, match="median"):
        measure_onnx("model.onnx", stat="mean")


NEEDS_RESIDUALS = pytest.mark.skipif(not (hardware_models.DATA / "residuals.npz").is_file(),
                                     reason="residual networks not built (experiments/build_target_models.py)")


@NEEDS_MODELS
@NEEDS_RESIDUALS
def test_residual_net_applies_only_to_the_space_settings_it_was_trained_on(config_dir: Path) -> None:
    from hardware_models.model import GraphTarget, LatencyModel

    rpi4 = hardware_models.get("rpi4")
    linear = GraphTarget("rpi4-linear", "", LatencyModel(rpi4.model.coef, rpi4.model.intercept))
    for space, differs in ((search_spaces.get("nb201"), True), (small_nb201(), False),
                           (search_spaces.get("ofa"), False)):
        archs = [space.sample(np.random.default_rng(i)) for i in range(3)]
        gap = np.abs(rpi4.predict(space, archs) - linear.predict(space, archs))
        assert (gap.max() > 1e-6) == differs, space


def test_residual_networks_round_trip(tmp_path: Path) -> None:
    from hardware_models.residual import ResidualHead, SpaceResidual, load_residuals, save_residuals
    from predictors.mlp import MLPRegressor

    space = small_nb201()
    X = np.random.default_rng(0).random((20, len(FEATURE_NAMES)))
    mlp = MLPRegressor(hidden=(8,), epochs=2).fit(X, np.random.default_rng(1).random((20, 2)))
    net = SpaceResidual(space.name, space_key(space), ["a", "b"], np.array([2.0, 3.0]), mlp)
    save_residuals(tmp_path / "r.npz", {space.name: net})
    back = load_residuals(tmp_path / "r.npz")[space.name]
    assert back.devices == ["a", "b"] and back.key == net.key
    np.testing.assert_allclose(back.predict(X), net.predict(X))
    head = ResidualHead({"a": 0.5, "b": 2.0, "unknown": 1.0}, {space.name: back})
    np.testing.assert_allclose(head.predict(space, X), net.predict(X) @ [0.5, 2.0])
    assert ResidualHead({"a": 1.0}, {space.name: back}).predict(search_spaces.get("nb201"), X) is None


def test_model_json_keeps_residual_weights() -> None:
    from hardware_models.model import LatencyModel

    model = LatencyModel(np.ones(len(FEATURE_NAMES)), 0.5, "x", {"pixel3": 1.0}, {"pixel3": 1.0, "raspi4": 0.25})
    assert LatencyModel.from_dict(json.loads(json.dumps(model.to_dict()))).residual == model.residual
    assert "residual" not in LatencyModel(np.ones(len(FEATURE_NAMES)), 0.0).to_dict()
