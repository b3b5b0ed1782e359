"""The microcontroller spaces: mcunet (MCUNet/TinyNAS MobileNetV2) and mcuvit (MCUFormer-style ViT)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import search_spaces
from proxies import Batch, score
from search_spaces import ArchError
from search_spaces.base import PooledImageNetwork
from search_spaces.mcunet import REFERENCES, MCUArch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_MCUNET = "w0.2-r48:k3e3,k5e4/k3e3,k3e3/k7e6,k3e3/k3e5,k3e3/k3e3,k3e3/k3e3"


def _macs(net: torch.nn.Module, side: int) -> float:
    """The ``flops`` proxy: multiply-accumulates of conv and linear layers for one image (not 2x FLOPs)."""
    # two distinct images: the engine returns NaN for a batch whose outputs cannot differ
    batch = Batch(torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0)), torch.zeros(2, dtype=torch.long))
    return score(net, batch, ["flops"], device="cpu")["flops"] * 1e6


# -- mcunet ---------------------------------------------------------------------------------------------

def test_mcunet_strings_round_trip_and_mutate_changes_one_decision():
    space = search_spaces.get("mcunet")
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        assert space.from_string(space.to_string(arch)) == arch
        assert space.from_choices(space.to_choices(arch)) == arch
        child = space.mutate(arch, rng)
        assert child != arch
        a, b = space.to_choices(arch), space.to_choices(child)
        changed = [name for (name, _), x, y in zip(space.decisions(), a, b, strict=True) if x != y]
        # A depth change may also bring in new blocks' k and e; any other mutation moves exactly one choice.
        if not any(n.startswith("d_") for n in changed):
            assert len(changed) == 1, changed
        other = space.crossover(arch, child, rng)
        assert space.from_string(space.to_string(other)) == other
        assert space.encode(arch).shape == space.encode(child).shape


@pytest.mark.parametrize("text, message", [
    ("w0.33-r144:k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6", "width multiplier 0.33"),
    ("w0.35-r150:k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6", "resolution 150"),
    ("w0.35-r144:k4e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6", "stage 1 block 1: kernel 4"),
    ("w0.35-r144:k3e6,k3e2/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6", "stage 1 block 2: expand ratio 2"),
    ("w0.35-r144:k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6", "stage 1 has 1 blocks"),
    ("w0.35-r144:k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6", "stage 6 has 2 blocks"),
    ("w0.35-r144:k3e6,k3e6/k3e6,k3e6", "got 2 stages"),
    ("w0.35-r144:k3e6,k3x6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6,k3e6/k3e6", "stage 1 block 2: 'k3x6'"),
    ("0.35-144:k3e6", "header '0.35-144'"),
    ("mobilenet", "model-zoo name"),
])
def test_mcunet_from_string_names_the_bad_part(text, message):
    with pytest.raises(ArchError, match=message):
        search_spaces.get("mcunet").from_string(text)


def test_mcunet_reference_on_the_wrong_backbone_says_which_to_use():
    with pytest.raises(ArchError, match="backbone='tinynas'"):
        search_spaces.get("mcunet").from_string("mcunet-320kB")


def test_mcunet_builds_pooled_network_at_its_resolution():
    space = search_spaces.get("mcunet", num_classes=10)
    arch = space.from_string(SMALL_MCUNET)
    assert space.arch_input_shape(arch) == (3, 48, 48)
    net = space.build(arch).eval()
    assert isinstance(net, PooledImageNetwork)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        features = net.forward_features(x)
        assert features.shape == (2, 256, 2, 2)  # 1280 x 0.2 head conv, 48 / 32 rounded up
        assert net(x).shape == (2, 10)
        torch.testing.assert_close(net(x), net.forward_head(features), rtol=0, atol=0)


def test_mcunet_onnx_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    space = search_spaces.get("mcunet", num_classes=10)
    arch = space.from_string(SMALL_MCUNET)
    torch.manual_seed(0)
    path = space.to_onnx(arch, tmp_path / "m.onnx")
    torch.manual_seed(0)  # to_onnx built its own network: draw the same weights again
    net = space.build(arch).eval()
    x = torch.randn(3, 3, 48, 48)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, net(x).numpy(), rtol=1e-4, atol=1e-5)


def test_mbv2_w035_r144_matches_published_params_and_macs():
    """MCUNet's model zoo: 0.75 M parameters, 23.5 M MACs (counted as the ``flops`` proxy does)."""
    space = search_spaces.get("mcunet")
    arch = space.from_string("mbv2-w0.35-r144")
    assert arch == MCUArch(0.35, 144, ((((3, 6),) * 2), ((3, 6),) * 3, ((3, 6),) * 4, ((3, 6),) * 3,
                                       ((3, 6),) * 3, ((3, 6),)))
    net = space.build(arch)
    params = sum(p.numel() for p in net.parameters())
    assert abs(params / 0.75e6 - 1) < 0.05
    assert abs(_macs(net, 144) / 23.5e6 - 1) < 0.10


def test_mcunet_320kb_matches_published_params_and_macs():
    """mcunet-320kB on the TinyNAS backbone: 0.74 M parameters, 81.8 M MACs."""
    space = search_spaces.get("mcunet", backbone="tinynas")
    arch = space.reference("mcunet-320kB")
    net = space.build(arch)
    assert abs(sum(p.numel() for p in net.parameters()) / 0.74e6 - 1) < 0.05
    assert abs(_macs(net, arch.r) / 81.8e6 - 1) < 0.10


def test_every_reference_parses_on_its_backbone():
    for name, (backbone, w, r, _) in REFERENCES.items():
        arch = search_spaces.get("mcunet", backbone=backbone).from_string(name)
        assert (arch.w, arch.r) == (w, r)


def test_mcunet_suggest_draws_valid_architectures():
    optuna = pytest.importorskip("optuna")
    space = search_spaces.get("mcunet")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        arch = space.suggest(trial)
        assert space.check(arch) == arch
        study.tell(trial, 0.0)


# -- mcuvit ---------------------------------------------------------------------------------------------

TINY_VIT = dict(num_classes=10, input_shape=(3, 32, 32), embed_dims=(32, 48), depths=(1, 2), heads=(1, 2),
                mlp_ratios=(2.0, 4.0), rank_ratios=(0.25, 0.5, 1.0), patch_sizes=(8, 16))
TINY_ARCH = '{"embed_dim":32,"patch_size":8,"rank_ratio":0.5,"layers":[{"num_heads":1,"mlp_ratio":2.0}]}'


def test_mcuvit_strings_round_trip_and_mutate_changes_one_decision():
    space = search_spaces.get("mcuvit")
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        assert space.from_string(space.to_string(arch)) == arch
        assert space.from_choices(space.to_choices(arch)) == arch
        child = space.mutate(arch, rng)
        assert child != arch
        changed = [n for (n, _), x, y in zip(space.decisions(), space.to_choices(arch), space.to_choices(child),
                                             strict=True) if x != y]
        if "depth" not in changed:
            assert len(changed) == 1, changed


def _vit_json(dim: object = 192, patch: object = 16, ratio: object = 0.5, heads: object = 3) -> str:
    layers = [{"num_heads": heads, "mlp_ratio": 4.0}] + [{"num_heads": 3, "mlp_ratio": 4.0}] * 11
    return json.dumps({"embed_dim": dim, "patch_size": patch, "rank_ratio": ratio, "layers": layers})


@pytest.mark.parametrize("text, message", [
    (_vit_json(dim=100), "embed_dim = 100"),
    (_vit_json(patch=28), "patch_size = 28"),
    (_vit_json(ratio=0.42), "rank_ratio = 0.42"),
    (_vit_json(heads=5), "layer 0: num_heads = 5"),
    ('{"embed_dim":192,"patch_size":16,"layers":[]}', "missing field 'rank_ratio'"),
    ('{"embed_dim":192,"patch_size":16,"rank_ratio":0.5,"layers":[{"num_heads":3,"mlp_ratio":4}]}', "1 layers"),
    ('{"embed_dim":192,"patch_size":16,"rank_ratio":0.5,"depth":12,"layers":[]}', "unknown field"),
    ("[192, 16]", "must be an object"),
])
def test_mcuvit_from_string_names_the_bad_part(text, message):
    with pytest.raises(ArchError, match=message):
        search_spaces.get("mcuvit").from_string(text)


def test_mcuvit_patch_sizes_must_tile_the_input():
    with pytest.raises(ValueError, match=r"patch sizes \[28\] do not tile a 240x240 input"):
        search_spaces.get("mcuvit", patch_sizes=(16, 28))
    assert search_spaces.get("mcuvit", input_shape=(3, 224, 224)).spec.global_fields[1].options == (16, 28, 32)


def test_mcuvit_low_rank_layers_have_the_expected_parameter_count():
    space = search_spaces.get("mcuvit", **TINY_VIT)
    dense = space.build(space.from_string(TINY_ARCH.replace('"rank_ratio":0.5', '"rank_ratio":1.0')))
    net = space.build(space.from_string(TINY_ARCH))
    block = net.blocks[0]
    # dim 32, one 64-wide head, MLP 64: rank int(0.5 * min(in, out)) = 16 everywhere.
    for layer, (d_in, d_out) in [(block.attn.query, (32, 64)), (block.attn.proj, (64, 32)),
                                 (block.fc, (32, 64)), (block.fc_out, (64, 32))]:
        assert layer.rank == 16
        assert sum(p.numel() for p in layer.parameters()) == 16 * (d_in + d_out) + d_out
    assert block.attn.query.zc_role == "head_proj"  # the proxies still find the attention projections
    # Six linears of the block: 4 of 32x64 or 64x32 (q, k, v, proj) and the MLP pair, each dense 2048 weights.
    saved = 6 * (32 * 64 - 16 * (32 + 64))
    count = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in net.parameters())
    assert count == saved


def test_mcuvit_builds_and_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    space = search_spaces.get("mcuvit", **TINY_VIT)
    arch = space.from_string(TINY_ARCH)
    torch.manual_seed(0)
    path = space.to_onnx(arch, tmp_path / "v.onnx")
    torch.manual_seed(0)
    net = space.build(arch).eval()
    x = torch.randn(3, 3, 32, 32)
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert net(x).shape == (3, 10)
        np.testing.assert_allclose(out, net(x).numpy(), rtol=1e-4, atol=1e-5)


def test_mcuvit_is_scored_by_the_vit_proxies():
    space = search_spaces.get("mcuvit", **TINY_VIT)
    net = space.build(space.from_string(TINY_ARCH))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    values = score(net, Batch(x, torch.arange(4) % 10), ["params", "synflow", "snip", "synaptic_diversity"],
                   device="cpu")
    assert all(np.isfinite(v) for v in values.values()), values
    # As on vit: zen reads a pooled feature map a class-token ViT does not have.
    assert "zen" in space.unavailable_proxies


# -- both spaces in the search loop -----------------------------------------------------------------------

SEARCH_OPTIONS = {
    "mcunet": dict(resolutions=[48], num_classes=10),
    "mcuvit": dict(input_shape=[3, 32, 32], patch_sizes=[8, 16], embed_dims=[32, 48], depths=[1, 2], heads=[1, 2],
                   mlp_ratios=[2.0], rank_ratios=[0.4, 0.7], num_classes=10),
}


@pytest.mark.parametrize("space", sorted(SEARCH_OPTIONS))
@pytest.mark.parametrize("strategy", ["random", "evolution", "bayesian", "reinforce", "nsga2"])
def test_every_strategy_searches_the_mcu_spaces(space, strategy, tmp_path):
    import nas

    objectives = ["synflow", "params"] if strategy == "nsga2" else ["synflow"]
    result = nas.search(space, strategy, objectives, budget=3, seed=0, out=tmp_path / "run", batch_size=4,
                        space_options=SEARCH_OPTIONS[space], progress=False, plot=False, cache=False, device="cpu")
    assert len(result.candidates) == 3
    parsed = search_spaces.get(space, **SEARCH_OPTIONS[space])
    for c in result.candidates:
        assert np.isfinite(c.scores["synflow"])
        assert parsed.to_string(parsed.from_string(c.arch)) == c.arch


def test_mcunet_backbone_is_part_of_the_proxy_cache_key():
    """One string builds different networks on the two backbones: their cached proxy values must not mix."""
    from nas.evaluate import space_key

    assert space_key(search_spaces.get("mcunet")) != space_key(search_spaces.get("mcunet", backbone="tinynas"))
