import csv
import json

import numpy as np
import optuna
import pytest
import torch
from torch import nn

import proxies
import search_spaces
from search_spaces import ArchError
from search_spaces.mbv3_blocks import MobileNetV3, mobilenetv3_large_specs
from search_spaces.ofa import N_BLOCKS, OFAArch, OFASupernet, official_key_to_ours


@pytest.fixture(scope="module")
def space():
    return search_spaces.get("ofa")


def arch_from_stages(stages, r):
    """OFAArch from per-stage lists of (expand, kernel) of the used blocks."""
    ks, e = [3] * N_BLOCKS, [3] * N_BLOCKS
    for s, blocks in enumerate(stages):
        for j, (ee, k) in enumerate(blocks):
            ks[4 * s + j], e[4 * s + j] = k, ee
    return OFAArch(tuple(ks), tuple(e), tuple(len(b) for b in stages), r)


def hook_sum(model, shape, types, amount):
    """Sum ``amount(module, output)`` over the modules of ``types`` in one eval forward of ``shape``."""
    total = 0

    def hook(m, _inp, out):
        nonlocal total
        total += amount(m, out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, types)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def count_macs(model, shape):
    """Multiply-accumulates of Conv2d and Linear layers (the convention of OFA's and thop's counters)."""

    def macs(m, out):
        if isinstance(m, nn.Linear):
            return m.in_features * m.out_features
        return out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    return hook_sum(model, shape, (nn.Conv2d, nn.Linear), macs)


def count_norm_act(model, shape):
    """Elements through BN (counted twice: scale and shift) and ReLU, as mmcv-style counters add them."""
    return hook_sum(model, shape, (nn.BatchNorm2d, nn.ReLU),
                    lambda m, out: out.numel() * (2 if isinstance(m, nn.BatchNorm2d) else 1))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# Published specialised OFA subnets: OFA's note8 nets as converted by MMRazor
# (configs/nas/mmcls/onceforall/OFA_SUBNET_NOTE8_LAT22.yaml and _LAT31.yaml; README table:
# params 4.3 M / 4.6 M, FLOPs 70.9 M / 105.4 M), per stage [(expand, kernel), ...].
NOTE8_22 = arch_from_stages([[(3, 3), (3, 3)], [(3, 5), (3, 5)], [(4, 7), (3, 3)], [(3, 5), (4, 3)],
                             [(6, 3), (6, 7)]], 140)
NOTE8_31 = arch_from_stages([[(3, 5), (3, 3)], [(4, 5), (3, 5)], [(4, 3), (4, 3), (4, 5)],
                             [(4, 3), (3, 5), (4, 7)], [(6, 3), (3, 3), (3, 5), (3, 5)]], 152)


def test_round_trip_canonical_form_and_encoding(space):
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        text = space.to_string(arch)
        assert space.from_string(text) == arch
        assert text.startswith('{"ks":[') and '"r":' in text and " " not in text
        assert space.encode(arch).shape == (136,)
        assert space.from_choices(space.to_choices(arch)) == arch


def test_unused_blocks_do_not_change_the_canonical_string(space):
    a = arch_from_stages([[(4, 5), (6, 7)]] * 5, 160)
    data = a.to_dict()
    data["ks"][2], data["e"][3] = 7, 6  # stage 0 block 2 and 3 are beyond depth 2
    b = space.from_string(json.dumps(data))
    assert b == a and space.to_string(b) == space.to_string(a)


def test_accepts_the_ofa_latency_data_strings(space, shared_data):
    with open(shared_data / "ofa_latency_ms.csv", newline="") as f:
        rows = [row["arch"] for _, row in zip(range(200), csv.DictReader(f), strict=False)]
    for text in rows:
        arch = space.from_string(text)
        raw = json.loads(text)
        assert arch.d == tuple(raw["d"]) and arch.r == raw["r"]
        for i in arch.active_blocks():
            assert (arch.ks[i], arch.e[i]) == (raw["ks"][i], raw["e"][i])


@pytest.mark.parametrize(
    "patch, fragment",
    [
        ({"ks": [9] + [3] * 19}, r'"ks"\[0\] = 9: ks must be in \{3, 5, 7\}'),
        ({"r": 100}, r'"r" = 100: r must be in 128\.\.224 step 4'),
        ({"r": 130}, "step 4"),
        ({"e": [3] * 19}, r'"e" must be a list of 20 ints in \{3, 4, 6\}'),
        ({"d": [2, 3, 4, 5, 2]}, r'"d"\[3\] = 5: d must be in \{2, 3, 4\}'),
        ({"w": 1}, "unknown key"),
    ],
)
def test_bad_archs_name_the_field_and_allowed_values(space, patch, fragment):
    data = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 224, **patch}
    with pytest.raises(ArchError, match=fragment):
        space.from_string(json.dumps(data))


def test_mutate_changes_one_used_decision_and_crossover_is_valid(space):
    rng = np.random.default_rng(1)
    arch = space.sample(rng)
    for _ in range(30):
        child = space.mutate(arch, rng)
        assert child != arch and space.from_string(space.to_string(child)) == child
        mixed = space.crossover(arch, child, rng)
        assert space.from_string(space.to_string(mixed)) == mixed
        arch = child


def test_suggest_draws_archs_through_optuna(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        arch = space.suggest(trial)
        assert space.from_string(space.to_string(arch)) == arch
        study.tell(trial, 0.0)


def test_cardinality_matches_ofa(space):
    assert space.cardinality == (9 ** 2 + 9 ** 3 + 9 ** 4) ** 5 * 25 > 10 ** 19


def test_forward_and_onnx_parity(space, onnx_parity):
    arch = space.sample(np.random.default_rng(3))
    arch = OFAArch(arch.ks, arch.e, arch.d, 128)
    ref = onnx_parity(space, arch, torch.randn(2, 3, 128, 128))
    assert ref.shape == (2, 1000) and space.arch_input_shape(arch) == (3, 128, 128)


def test_params_and_macs_of_published_specialised_subnets(space):
    for arch, params_m, flops_m in ((NOTE8_22, 4.3, 70.9), (NOTE8_31, 4.6, 105.4)):
        model = space.build(arch)
        shape = space.arch_input_shape(arch)
        assert round(n_params(model) / 1e6, 1) == params_m
        macs = count_macs(model, shape)
        # MMRazor's counter adds BN (2 ops per element) and ReLU elements to conv/linear MACs.
        total = macs + count_norm_act(model, shape)
        assert abs(total / 1e6 - flops_m) / flops_m < 0.005, (macs, total)


def test_blocks_reproduce_mobilenetv3_large():
    # Howard et al. 2019 / TF-slim model table: MobileNetV3-Large 1.0 at 224: 217 M MACs, 5.4 M params
    # (5,483,032 in torchvision, whose 960->1280 layer has a bias; OFA's feature mix has none).
    model = MobileNetV3(16, mobilenetv3_large_specs(), 960, 1280, 1000)
    assert n_params(model) == 5_483_032 - 1280
    assert round(count_macs(model, (3, 224, 224)) / 1e6) == 217


def test_width_1_2_matches_ofa_stage_widths():
    # OFA tutorial (ofa_mbv3_d234_e346_k357_w1.2 module_str): 24 | 24 | 32, 48, 96, 136, 192 | 1152, 1536.
    space = search_spaces.get("ofa", width_mult=1.2)
    model = space.build(space.smallest(128))
    assert model.stem.conv.out_channels == 24
    assert [b.spec.c_out for b in model.blocks] == [24, 32, 32, 48, 48, 96, 96, 136, 136, 192, 192]
    assert (model.final_expand.conv.out_channels, model.feature_mix.conv.out_channels) == (1152, 1536)


def _randomise(sup):
    with torch.no_grad():
        for name, p in sup.named_parameters():
            if name.endswith(("k7to5", "k5to3")):
                p.add_(0.1 * torch.randn_like(p))
        for m in sup.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


def test_supernet_subnet_is_slices_of_the_supernet():
    torch.manual_seed(0)
    sup = OFASupernet()
    _randomise(sup)
    sup.eval()
    arch = arch_from_stages([[(3, 3), (6, 5)], [(4, 7), (3, 3), (6, 3)], [(3, 5)] * 4, [(6, 7), (4, 3)],
                             [(3, 3), (4, 5), (6, 7)]], 64)
    x = torch.randn(2, 3, 64, 64)
    net = sup.subnet(arch).eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), sup(x, arch).numpy(), rtol=1e-4, atol=1e-5)
    # Width: the first mid channels; kernel: centre crop through the transform matrices.
    block, big = net.blocks[1], sup.blocks[0]  # stage 0, block 0: e 3, k 3
    mid = 3 * 16  # stage 0 takes the first block's 16 channels
    assert torch.equal(block.pw.conv.weight, big.pw.conv.weight[:, :mid])
    w5 = (big.dw.conv.weight[:mid, :, 1:6, 1:6].reshape(mid, 25) @ big.k7to5.T).reshape(mid, 1, 5, 5)
    w3 = (w5[:, :, 1:4, 1:4].reshape(mid, 9) @ big.k5to3.T).reshape(mid, 1, 3, 3)
    torch.testing.assert_close(block.dw.conv.weight, w3)
    assert len(net.blocks) == 1 + sum(arch.d)


def test_supernet_trains_through_shared_weights():
    sup = OFASupernet(num_classes=10).train()
    arch = search_spaces.get("ofa").smallest(64)
    loss = sup(torch.randn(4, 3, 64, 64), arch).square().mean()
    loss.backward()
    assert sup.blocks[0].dw.conv.weight.grad is not None and sup.blocks[0].k5to3.grad is not None
    assert sup.blocks[2].dw.conv.weight.grad is None  # depth 2: the third block is unused


def ofa_state_dict(sup, generation="old"):
    """A state dict named as OFA's OFAMobileNetV3 names it, built from the published module layout."""
    wrap = "mobile_inverted_conv" if generation == "old" else "conv"
    state = {}

    def bn(prefix, m):
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            state[f"{prefix}.{k}"] = torch.randn_like(getattr(m, k).float()).to(getattr(m, k).dtype)

    state["first_conv.conv.weight"] = torch.randn_like(sup.stem.conv.weight)
    bn("first_conv.bn", sup.stem.bn)
    state[f"blocks.0.{wrap}.depth_conv.conv.weight"] = torch.randn_like(sup.first_block.dw.conv.weight)
    bn(f"blocks.0.{wrap}.depth_conv.bn", sup.first_block.dw.bn)
    state[f"blocks.0.{wrap}.point_linear.conv.weight"] = torch.randn_like(sup.first_block.pw.conv.weight)
    bn(f"blocks.0.{wrap}.point_linear.bn", sup.first_block.pw.bn)
    for i, b in enumerate(sup.blocks, start=1):
        p = f"blocks.{i}.{wrap}"
        state[f"{p}.inverted_bottleneck.conv.conv.weight"] = torch.randn_like(b.expand.conv.weight)
        bn(f"{p}.inverted_bottleneck.bn.bn", b.expand.bn)
        state[f"{p}.depth_conv.conv.conv.weight"] = torch.randn_like(b.dw.conv.weight)
        state[f"{p}.depth_conv.conv.7to5_matrix"] = torch.randn(25, 25)
        state[f"{p}.depth_conv.conv.5to3_matrix"] = torch.randn(9, 9)
        bn(f"{p}.depth_conv.bn.bn", b.dw.bn)
        if b.se is not None:
            for part in ("reduce", "expand"):
                conv = getattr(b.se, part)
                state[f"{p}.depth_conv.se.fc.{part}.weight"] = torch.randn_like(conv.weight)
                state[f"{p}.depth_conv.se.fc.{part}.bias"] = torch.randn_like(conv.bias)
        state[f"{p}.point_linear.conv.conv.weight"] = torch.randn_like(b.pw.conv.weight)
        bn(f"{p}.point_linear.bn.bn", b.pw.bn)
    state["final_expand_layer.conv.weight"] = torch.randn_like(sup.final_expand.conv.weight)
    bn("final_expand_layer.bn", sup.final_expand.bn)
    state["feature_mix_layer.conv.weight"] = torch.randn_like(sup.feature_mix.conv.weight)
    state["classifier.linear.weight"] = torch.randn_like(sup.classifier.weight)
    state["classifier.linear.bias"] = torch.randn_like(sup.classifier.bias)
    return state


@pytest.mark.parametrize("generation", ["old", "new"])
def test_load_official_maps_ofa_keys(tmp_path, generation):
    sup = OFASupernet()
    state = ofa_state_dict(sup, generation)
    assert len(state) == len(sup.state_dict())
    path = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": state}, path)
    sup.load_official(path)
    wrap = "mobile_inverted_conv" if generation == "old" else "conv"
    assert torch.equal(sup.blocks[4].dw.conv.weight, state[f"blocks.5.{wrap}.depth_conv.conv.conv.weight"])
    assert torch.equal(sup.blocks[19].k7to5, state[f"blocks.20.{wrap}.depth_conv.conv.7to5_matrix"])
    assert torch.equal(sup.blocks[5].se.expand.bias, state[f"blocks.6.{wrap}.depth_conv.se.fc.expand.bias"])
    assert torch.equal(sup.first_block.pw.bn.running_var, state[f"blocks.0.{wrap}.point_linear.bn.running_var"])
    assert torch.equal(sup.classifier.weight, state["classifier.linear.weight"])
    assert official_key_to_ours("feature_mix_layer.conv.weight") == "feature_mix.conv.weight"


def test_load_official_rejects_the_other_width():
    state = ofa_state_dict(OFASupernet(width_mult=1.2))
    with pytest.raises(ValueError, match="shape"):
        OFASupernet(width_mult=1.0).load_official(state)


def test_proxies_run_at_the_reduced_proxy_resolution():
    space = search_spaces.get("ofa", proxy_scale=0.5)
    arch = space.sample(np.random.default_rng(5))
    shape = space.proxy_input_shape(arch)
    assert shape[1] == round(arch.r / 2 / 4) * 4 and space.arch_input_shape(arch)[1] == arch.r
    batch = proxies.calibration_batch(batch_size=8).resized(shape[1:])
    errors: dict[str, str] = {}
    scores = proxies.score(space.build(arch), batch, ["nwot", "params"], errors=errors)
    assert all(np.isfinite(v) for v in scores.values()) and not errors, errors


@pytest.mark.slow
def test_onnx_parity_of_the_largest_subnets(onnx_parity):
    for width in (1.0, 1.2):
        space = search_spaces.get("ofa", width_mult=width)
        onnx_parity(space, space.largest(224), torch.randn(1, 3, 224, 224))


@pytest.mark.slow
def test_supernet_subnets_match_for_many_random_archs():
    torch.manual_seed(1)
    sup = OFASupernet()
    _randomise(sup)
    sup.eval()
    space = search_spaces.get("ofa")
    rng = np.random.default_rng(7)
    for _ in range(10):
        arch = space.sample(rng)
        x = torch.randn(1, 3, arch.r, arch.r)
        with torch.no_grad():
            np.testing.assert_allclose(sup.subnet(arch).eval()(x).numpy(), sup(x, arch).numpy(),
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_synflow_runs_at_the_proxy_resolution():
    space = search_spaces.get("ofa", proxy_scale=0.5)
    arch = space.smallest(128)
    batch = proxies.calibration_batch(batch_size=8).resized(space.proxy_input_shape(arch)[1:])
    errors: dict[str, str] = {}
    value = proxies.score(space.build(arch), batch, ["synflow"], errors=errors)["synflow"]
    assert np.isfinite(value) and not errors, errors


def test_channel_sorting_keeps_the_largest_subnet_and_orders_by_importance():
    torch.manual_seed(2)
    sup = OFASupernet()
    _randomise(sup)
    sup.eval()
    x = torch.randn(1, 3, 64, 64)
    arch = search_spaces.get("ofa").largest(64)
    with torch.no_grad():
        before = sup(x, arch)
        sup.sort_channels()
        after = sup(x, arch)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    norms = sup.blocks[5].pw.conv.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(norms[:-1] >= norms[1:])


def _official_active_block(state, prefix, c_in, kernel, expand, se):
    """The tensors OFA's ``DynamicMBConvLayer.get_active_subnet`` keeps, written from OFA's published rules
    on the official key names (independent of our key mapping): expand slice ``make_divisible(round(c_in *
    e), 8)``, kernel centre crops through ``7to5``/``5to3`` (``x @ M.T``), SE width ``make_divisible(mid //
    4, 8)``, projection input slice, BN statistics of the first channels."""
    from search_spaces.mbv3_blocks import make_divisible

    mid = make_divisible(round(c_in * expand), 8)
    out = {"expand.conv.weight": state[f"{prefix}.inverted_bottleneck.conv.conv.weight"][:mid, :c_in]}
    w = state[f"{prefix}.depth_conv.conv.conv.weight"][:mid]
    for src, dst in ((7, 5), (5, 3)):
        if src <= kernel:
            break
        lo = (src - dst) // 2
        flat = w[:, :, lo:lo + dst, lo:lo + dst].reshape(mid * w.size(1), dst * dst)
        w = (flat @ state[f"{prefix}.depth_conv.conv.{src}to{dst}_matrix"].T).reshape(mid, w.size(1), dst, dst)
    out["dw.conv.weight"] = w
    if se:
        n = make_divisible(mid // 4, 8)
        out["se.reduce.weight"] = state[f"{prefix}.depth_conv.se.fc.reduce.weight"][:n, :mid]
        out["se.reduce.bias"] = state[f"{prefix}.depth_conv.se.fc.reduce.bias"][:n]
        out["se.expand.weight"] = state[f"{prefix}.depth_conv.se.fc.expand.weight"][:mid, :n]
        out["se.expand.bias"] = state[f"{prefix}.depth_conv.se.fc.expand.bias"][:mid]
    out["pw.conv.weight"] = state[f"{prefix}.point_linear.conv.conv.weight"][:, :mid]
    for ours, theirs, n in (("expand.bn", "inverted_bottleneck.bn.bn", mid), ("dw.bn", "depth_conv.bn.bn", mid),
                            ("pw.bn", "point_linear.bn.bn", None)):
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{ours}.{k}"] = state[f"{prefix}.{theirs}.{k}"][:n]
    return out


@pytest.mark.parametrize("width", [1.0, 1.2])
def test_official_state_dict_lands_where_ofa_puts_every_tensor(width):
    """Every official key is used, and every active tensor of random subnets equals OFA's own slice of it."""
    sup = OFASupernet(width_mult=width)
    state = ofa_state_dict(sup, "new")
    sup.load_official(state)
    own = sup.state_dict()
    for key, value in state.items():  # nothing dropped: each official tensor is in the supernet unchanged
        assert torch.equal(own[official_key_to_ours(key)], value), key
    assert len({official_key_to_ours(k) for k in state}) == len(own)
    space = search_spaces.get("ofa", width_mult=width)
    rng = np.random.default_rng(11)
    for _ in range(4):
        arch = space.sample(rng)
        net = sup.subnet(arch)
        checked = 0
        for pos, i in enumerate(arch.active_blocks(), start=1):
            block = net.blocks[pos]
            c_in = block.spec.c_in
            expected = _official_active_block(state, f"blocks.{i + 1}.conv", c_in, arch.ks[i], arch.e[i],
                                              block.se is not None)
            got = block.state_dict()
            assert set(expected) <= set(got), set(expected) - set(got)
            for k, v in expected.items():
                torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=f"block {i} {k}")
                checked += 1
        assert checked > 100
        for ours, theirs in (("stem.conv.weight", "first_conv.conv.weight"),
                             ("blocks.0.dw.conv.weight", "blocks.0.conv.depth_conv.conv.weight"),
                             ("final_expand.conv.weight", "final_expand_layer.conv.weight"),
                             ("feature_mix.conv.weight", "feature_mix_layer.conv.weight"),
                             ("classifier.weight", "classifier.linear.weight")):
            assert torch.equal(net.state_dict()[ours], state[theirs]), ours
