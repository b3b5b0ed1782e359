"""Few-shot adaptation (issue 21): candidates, leave-one-out choice, same-space references, adapted targets."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

import hardware_models
import search_spaces
from hardware_models.few_shot import (
    Blend,
    Macs,
    Mix,
    Single,
    choose,
    embedding_prior,
    loo_spearman,
    macs_layers,
)
from hardware_models.space_references import (
    SPACE_REFERENCES,
    SpaceModel,
    device_class,
    fit_space_references,
    load_space_references,
    save_space_references,
)
from nas.cli import main

NEEDS_REFS = pytest.mark.skipif(not SPACE_REFERENCES.is_file() or not hardware_models.SHIPPED.is_file(),
                                reason="shipped models not built (experiments/build_target_models.py)")


@pytest.fixture()
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user config dir for the test."""
    monkeypatch.setenv("ZCNAS_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def references_and_device(n: int = 10, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` reference log latencies of ``n`` rows and a device that is 0.7 ref1 + 0.3 ref2 (log space)."""
    R = np.random.default_rng(seed).normal(size=(n, k))
    return R, np.exp(0.4 + 0.7 * R[:, 1] + 0.3 * R[:, 2])


def test_device_classes_of_the_public_columns() -> None:
    assert device_class("2080ti_1") == "gpu_b1"
    assert device_class("titan_xp_64") == "gpu_batch"
    assert device_class("gold_6226") == "server_cpu"
    assert device_class("essential_ph_1") == "mobile_cpu"
    assert device_class("eyeriss") == "accelerator"


def test_nnls_mix_recovers_the_device_as_a_mix_of_references() -> None:
    R, y = references_and_device(20)
    mix = Mix(0.0).fit(np.zeros((20, 1)), R, y)
    assert mix.weights_ == pytest.approx([0.0, 0.7, 0.3, 0.0], abs=1e-6)
    assert mix.intercept_ == pytest.approx(0.4, abs=1e-6)


def test_embedding_prior_favours_the_reference_that_tracks_the_samples() -> None:
    R, y = references_and_device(10)
    prior = embedding_prior(np.log(y), R)
    assert prior.sum() == pytest.approx(1.0)
    assert int(np.argmax(prior)) == 1
    # a strong ridge pulls the fit to the prior, a weak one lets the data speak
    assert np.abs(Mix(1e6).fit(np.zeros((10, 1)), R, y).weights_ - prior).max() < 1e-3
    assert Mix(1e-6).fit(np.zeros((10, 1)), R, y).weights_[2] > 0.25


def test_loo_does_not_see_the_row_it_predicts() -> None:
    # the device is noise: NNLS over 40 random references fits the 10 rows in-sample, but a leave-one-out
    # fit must be re-made without each row, so it cannot look good
    rng = np.random.default_rng(3)
    R, y = rng.normal(size=(10, 40)), np.exp(rng.normal(size=10))
    X = np.zeros((10, 1))
    in_sample = spearmanr(Mix(0.0).fit(X, R, y).predict_log(X, R), y)[0]
    assert in_sample > 0.9
    assert loo_spearman(Mix(0.0), X, R, y) < in_sample - 0.4


def test_choice_follows_what_explains_the_samples() -> None:
    from hardware_models.graph_features import FEATURE_NAMES

    rng = np.random.default_rng(1)
    X = np.zeros((10, len(FEATURE_NAMES)))
    X[:, FEATURE_NAMES.index("conv_k3_mmacs")] = rng.uniform(10, 100, 10)
    X[:, FEATURE_NAMES.index("conv_k3_count")] = rng.integers(5, 20, 10)
    R = rng.normal(size=(10, 3))
    by_macs = 0.05 * macs_layers(X)[:, 0] + 1.0
    candidates = [Blend([Mix(1.0), Mix(0.0), Single()]), Macs()]
    best, scores = choose(candidates, X, R, by_macs)
    assert scores["macs"] == pytest.approx(1.0) and scores["blend"] < 0.9
    assert best.parts[0][1].name == "macs" and best.parts[0][0] > 0.75
    best, _ = choose(candidates, X, R, by_macs, margin=2.0)  # the first keeps the weight when led by a margin
    assert best.name == "blend" and best.parts[0][0] == 1.0
    best, _ = choose(candidates, X, R, np.exp(R[:, 2]))
    assert best.name == "blend" and int(np.argmax(best.parts[0][1].weights_)) == 2


def test_choice_averages_candidates_whose_leave_one_out_is_close() -> None:
    # two references that explain the samples equally well, as two candidates: neither is dropped, and the
    # average predicts the weighted mean of their log latencies
    from hardware_models.few_shot import loo_sharpness

    rng = np.random.default_rng(4)
    R = rng.normal(size=(10, 2))
    R[:, 1] = R[:, 0] + 0.01 * rng.normal(size=10)
    y = np.exp(R[:, 0])
    first, second = Single(), Mix(0.0)
    best, scores = choose([first, second], np.zeros((10, 1)), R, y, margin=0.0)
    assert best.name == "average" and len(best.parts) == 2
    weights = dict((c.name, w) for w, c in best.parts)
    gap = scores["single"] - scores["nnls"]
    assert weights["single"] / weights["nnls"] == pytest.approx(np.exp(loo_sharpness(10) * gap))
    new = rng.normal(size=(5, 2))
    expected = weights["single"] * first.predict_log(None, new) + weights["nnls"] * second.predict_log(None, new)
    assert best.predict_log(np.zeros((5, 1)), new) == pytest.approx(expected)


def test_space_references_round_trip_and_fold_into_a_space_model(tmp_path: Path) -> None:
    from hardware_models.feature_cache import space_key

    space = search_spaces.get("nb201", cells_per_stage=1)
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 50, size=(64, 170))
    lat = np.exp(np.c_[X[:, :5].sum(1) / 100, X[:, 5:9].sum(1) / 80])
    refs = fit_space_references("nb201", space_key(space), ["dev_a_1", "dev_b_32"], X, lat, epochs=30)
    save_space_references(tmp_path / "r.npz", {"nb201": refs})
    back = load_space_references(tmp_path / "r.npz")["nb201"]
    assert back.devices == ["dev_a_1", "dev_b_32"] and back.key == refs.key
    assert np.abs(back.predict_log(X) - refs.predict_log(X)).max() < 1e-3  # weights stored as float32
    spec = {"space": "nb201", "key": refs.key, "kind": "mix", "weights": {"dev_b_32": 0.8}, "intercept": 0.1}
    model = SpaceModel(spec, {"nb201": back})
    expected = np.exp(0.1 + 0.8 * back.predict_log(X)[:, 1])
    assert model.predict(space, X) == pytest.approx(expected, rel=1e-6)
    assert model.predict(search_spaces.get("nb201", cells_per_stage=2), X) is None  # other settings: not this one


@NEEDS_REFS
def test_adapt_on_ofa_leans_on_the_matching_same_space_device(config_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from hardware_models.feature_cache import default_cache
    from hardware_models.space_references import shipped_space_references

    space = search_spaces.get("ofa")
    refs = shipped_space_references()["ofa"]
    archs = [space.sample(np.random.default_rng(200 + i)) for i in range(16)]
    X = default_cache().features(space, archs)
    j = refs.devices.index(next(d for d in refs.devices if d.endswith("_32")))
    truth = 3.0 * np.exp(refs.predict_log(X)[:, j])  # a device that ranks like that batch-32 GPU
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("arch", "latency_ms"),
                                 *[(space.to_string(a), f"{v:.6f}") for a, v in zip(archs[:10], truth, strict=False)]])
    assert main(["latency", "adapt", "--space", "ofa", "--name", "gpu32", "--measurements", str(path)]) == 0
    out = capsys.readouterr().out
    assert "leave-one-out Spearman" in out and "leans on: " in out
    saved = json.loads((config_dir / "targets" / "gpu32.json").read_text())
    model = saved["space_model"]
    parts = model["parts"] if model["kind"] == "average" else [{**model, "weight": 1.0}]
    assert parts[0]["kind"] == "mix" and parts[0]["weight"] > 0.5  # the same-space blend leads
    assert sum(p["weight"] for p in parts) == pytest.approx(1.0)
    assert max(saved["adaptation"]["leans_on"].items(), key=lambda kv: kv[1])[0] == refs.devices[j]
    target = hardware_models.get("gpu32")
    pred = target.predict(space, archs[10:])
    assert spearmanr(pred, truth[10:])[0] > 0.9
    # the reloaded average is the weighted geometric mean of its parts, each predicted on its own
    from hardware_models.model import GraphTarget
    from hardware_models.space_references import SpaceModel

    cross_space = GraphTarget("x", "", dataclasses.replace(target.model, space_model={}))
    log_ms = sum(p["weight"] * np.log(cross_space.predict(space, archs[10:]) if p["kind"] == "graph" else
                                      SpaceModel({**model, **p}).predict(space, X[10:], archs[10:]))
                 for p in parts)
    assert pred == pytest.approx(np.exp(log_ms), rel=1e-9)
    nb201 = search_spaces.get("nb201", cells_per_stage=1)  # another space: the cross-space model answers
    assert np.all(hardware_models.get("gpu32").predict(nb201, [nb201.sample(np.random.default_rng(0))]) > 0)


def test_graph_mix_is_the_default_where_a_residual_network_applies() -> None:
    from hardware_models.few_shot import default_candidates

    W, b = np.zeros((2, 170)), np.zeros(2)
    assert [c.name for c in default_candidates(["a", "b"], W, b)] == ["blend", "graph", "macs", "choices"]
    assert [c.name for c in default_candidates(["a", "b"], W, b, offsets=lambda X: np.zeros((len(X), 2)))] == \
        ["graph", "blend", "macs", "choices"]


def test_option_counts_count_each_option_over_decisions_sharing_an_option_list() -> None:
    from hardware_models.few_shot import option_counts
    from search_spaces.nb201 import OPS

    nb201 = search_spaces.get("nb201", cells_per_stage=1)
    cell = nb201.from_string("|skip_connect~0|+|nor_conv_3x3~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|")
    counts = option_counts(nb201, [cell])
    assert counts.shape == (1, len(OPS))
    assert dict(zip(OPS, counts[0], strict=True)) == {"none": 1, "skip_connect": 2, "nor_conv_1x1": 0,
                                                      "nor_conv_3x3": 2, "avg_pool_3x3": 1}
    ofa = search_spaces.get("ofa")  # a layer's cost depends on its stage there: no shared cost per option
    assert option_counts(ofa, [ofa.sample(np.random.default_rng(0))]) is None


def test_adapt_picks_per_option_costs_for_a_device_that_pays_for_skip_connections(
        config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An identity edge has no node in the graph, so only the option counts can see what it costs here
    from hardware_models.few_shot import option_counts

    space = search_spaces.get("nb201", cells_per_stage=1)
    archs = [space.sample(np.random.default_rng(300 + i)) for i in range(30)]
    counts = option_counts(space, archs)
    truth = 1.0 + counts @ np.array([0.0, 3.0, 0.05, 0.1, 0.02])  # none, skip, conv1x1, conv3x3, pool
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("arch", "latency_ms"),
                                 *[(space.to_string(a), f"{v:.6f}") for a, v in zip(archs[:10], truth, strict=False)]])
    assert main(["latency", "adapt", "--space", "nb201", "--space-option", "cells_per_stage=1", "--name", "acc",
                 "--measurements", str(path)]) == 0
    assert "leans on: one cost per option of the space" in capsys.readouterr().out
    saved = json.loads((config_dir / "targets" / "acc.json").read_text())
    assert saved["adaptation"]["chosen"] == "choices" and saved["space_model"]["kind"] == "choices"
    assert saved["adaptation"]["loo_spearman"]["choices"] > 0.95 > saved["adaptation"]["loo_spearman"]["graph"]
    hardware_models.refresh_user_targets()
    pred = hardware_models.get("acc").predict(space, archs[10:])
    assert pred == pytest.approx(truth[10:], rel=1e-6)


def test_counting_mix_needs_no_reference_network() -> None:
    from hardware_models.few_shot import count_columns

    space = search_spaces.get("nb201", cells_per_stage=1)
    from hardware_models.feature_cache import space_key

    X = np.zeros((3, 170))
    X[:, 0] = [10.0, 20.0, 40.0]  # conv_k1_mmacs
    X[:, 3] = [2.0, 2.0, 4.0]  # conv_k1_count
    spec = {"space": "nb201", "key": space_key(space), "kind": "mix", "weights": {"MACs": 1.0, "layers": 0.5},
            "intercept": 0.2}
    expected = np.exp(0.2 + count_columns(X) @ [1.0, 0.5])
    assert SpaceModel(spec, {}).predict(space, X) == pytest.approx(expected, rel=1e-9)
