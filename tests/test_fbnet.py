import csv
import json

import numpy as np
import optuna
import pytest
import torch

import proxies
import search_spaces
from search_spaces import ArchError
from search_spaces.fbnet import OPS, STAGE_WIDTHS


@pytest.fixture(scope="module")
def space():
    return search_spaces.get("fbnet")


def test_round_trip_encoding_and_choices(space):
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        text = space.to_string(arch)
        assert space.from_string(text) == arch and text.startswith('["') and " " not in text
        assert space.encode(arch).shape == (198,) and space.encode(arch).sum() == 22
        assert space.from_choices(space.to_choices(arch)) == arch
    assert space.cardinality == 9 ** 22


def test_reads_the_hw_nas_bench_latency_strings_verbatim(space, shared_data):
    with open(shared_data / "fbnet_latency_ms.csv", newline="") as f:
        rows = [row["arch"] for _, row in zip(range(300), csv.DictReader(f), strict=False)]
    for text in rows:
        assert space.to_string(space.from_string(text)) == text


def test_accepts_hw_nas_bench_op_indices(space):
    assert space.from_string(json.dumps(list(range(9)) * 2 + [8, 8, 0, 1])) == tuple(OPS * 2) + (
        "skip", "skip", "k3_e1", "k3_e1_g2")


@pytest.mark.parametrize(
    "text, fragment",
    [
        (json.dumps(["k3_e1"] * 21), "needs 22 ops"),
        (json.dumps(["k3_e1"] * 5 + ["k7_e6"] + ["k3_e1"] * 16), "layer 5: unknown op 'k7_e6'; valid ops: k3_e1"),
        ("k3_e1,k3_e3", "JSON list of 22 op names"),
    ],
)
def test_malformed_strings_say_what_is_wrong(space, text, fragment):
    with pytest.raises(ArchError, match=fragment):
        space.from_string(text)


def test_mutate_changes_one_layer_and_suggest_uses_optuna(space):
    rng = np.random.default_rng(1)
    arch = space.sample(rng)
    for _ in range(20):
        child = space.mutate(arch, rng)
        assert sum(a != b for a, b in zip(arch, child, strict=True)) == 1
        assert len(space.crossover(arch, child, rng)) == 22
        arch = child
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    assert len(space.suggest(trial)) == 22


def test_params_of_the_all_skip_network_follow_the_published_layout(space):
    # HW-NAS-Bench CIFAR layout: stem 3x3 (16), a 1x1 conv-BN where the width changes, header 1504, fc 100.
    widths = [16, *STAGE_WIDTHS]
    expected = 3 * 16 * 9 + 2 * 16
    expected += sum(a * b + 2 * b for a, b in zip(widths[1:], widths[2:], strict=False))
    expected += 352 * 1504 + 2 * 1504 + 1504 * 100 + 100
    model = space.build(("skip",) * 22)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_stride_schedule_gives_4x4_features_on_cifar(space):
    model = space.build(("k3_e3",) * 22)
    feats = model.layers(model.stem(torch.zeros(1, 3, 32, 32)))
    assert feats.shape == (1, 352, 4, 4)


@pytest.mark.parametrize("seed", [0, 1])
def test_forward_and_onnx_parity(space, onnx_parity, seed):
    arch = space.sample(np.random.default_rng(seed))
    arch = ("k3_e1_g2", "skip", *arch[2:])  # cover the grouped / shuffled op and an identity skip
    ref = onnx_parity(space, arch, torch.randn(2, 3, 32, 32), atol=1e-5)
    assert ref.shape == (2, 100)


def test_proxies_run(space):
    arch = space.sample(np.random.default_rng(2))
    errors: dict[str, str] = {}
    scores = proxies.score(space.build(arch), proxies.calibration_batch(batch_size=8), ["nwot", "params"],
                           errors=errors)
    assert all(np.isfinite(v) for v in scores.values()) and not errors, errors


@pytest.mark.slow
def test_imagenet_setting_builds_and_exports(onnx_parity):
    space = search_spaces.get("fbnet", dataset="imagenet", num_classes=1000)
    onnx_parity(space, space.sample(np.random.default_rng(3)), torch.randn(1, 3, 224, 224), atol=1e-5)


@pytest.mark.slow
def test_synflow_runs(space):
    arch = space.sample(np.random.default_rng(2))
    errors: dict[str, str] = {}
    value = proxies.score(space.build(arch), proxies.calibration_batch(batch_size=8), ["synflow"],
                          errors=errors)["synflow"]
    assert np.isfinite(value) and not errors, errors


def _nested(seed: int = 0):
    from nas.supernets import supernet_of

    space = search_spaces.get("fbnet", num_classes=10, input_shape=(3, 16, 16), weight_sharing="nested")
    return space, supernet_of(space, seed=seed)


def test_nested_subnet_equals_the_supernet_forward_in_both_modes():
    space, sup = _nested()
    rng = np.random.default_rng(0)
    x = torch.randn(4, 3, 16, 16)
    archs = [tuple(["k3_e1_g2", "k5_e1_g2"] * 11), *(space.sample(rng) for _ in range(3))]
    for arch in archs:
        sup.train()
        with torch.no_grad():
            sup(x, arch)  # moves the running statistics of the ops' slices
        for mode in (False, True):
            sup.train(mode)
            net = sup.subnet(arch).train(mode)
            with torch.no_grad():
                assert torch.equal(net(x), sup(x, arch))


def test_nested_ops_are_slices_of_the_layers_k5_e6_block():
    space, sup = _nested()
    layer = sup.layers[5]  # 24 -> 24 channels, stride 1
    block = layer.block
    small = sup.subnet(space.from_choices([0] * 22)).layers[5]  # k3_e1
    assert torch.equal(small.conv1.weight, block.conv1.weight[:24])
    assert torch.equal(small.conv2.weight, block.conv2.weight[:24, :, 1:4, 1:4])
    assert torch.equal(small.conv3.weight, block.conv3.weight[:, :24])
    assert torch.equal(small.bn1.running_var, block.bn1.running_var[:24])
    grouped = sup.subnet(space.from_choices([1] * 22)).layers[5]  # k3_e1_g2: the dense weights' diagonal blocks
    assert grouped.conv1.weight.shape == (24, 12, 1, 1)
    assert torch.equal(grouped.conv1.weight[12:], block.conv1.weight[12:24, 12:24])
    assert torch.equal(grouped.conv3.weight[:12], block.conv3.weight[:12, :12])
    sup.zero_grad()
    sup(torch.randn(2, 3, 16, 16), space.from_choices([0] * 22)).sum().backward()
    grad = block.conv2.weight.grad
    assert grad[:24, :, 1:4, 1:4].abs().sum() > 0  # the 3x3 op trains the centre of the shared 5x5 kernel ...
    assert grad[24:].abs().sum() == 0 and grad[:, :, 0].abs().sum() == 0  # ... and nothing else


def test_nested_supernet_has_fewer_weights_and_the_same_extremes():
    from nas.supernets import supernet_of

    space, nested = _nested()
    separate = supernet_of(search_spaces.get("fbnet", num_classes=10, input_shape=(3, 16, 16)), seed=0)
    assert sum(p.numel() for p in nested.parameters()) < sum(p.numel() for p in separate.parameters()) / 2
    assert nested.largest() == separate.largest() == ("k5_e6",) * 22
    assert nested.smallest() == separate.smallest()
    with pytest.raises(ValueError, match="separate or nested"):
        search_spaces.get("fbnet", weight_sharing="shared")
