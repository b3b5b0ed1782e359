"""Mixed precision as a search dimension (search_spaces.precision) and the model_kb proxy."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import nas
import proxies
import search_spaces
from nas import strategies
from nas.cli import main
from search_spaces import ArchError
from search_spaces.precision import BITS, MixedPrecisionSpace, QArch, fake_quant, quantised_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {
    "ofa": {"num_classes": 10, "min_resolution": 32, "max_resolution": 48},
    "fbnet": {"num_classes": 10},
    "bert": {"seq_len": 8, "vocab_size": 64},
    "vit": {"embed_dims": (32,), "depths": (1, 2), "heads": (1, 2), "mlp_ratios": (2.0,)},
}
VIT_ONE_LAYER = '{"embed_dim":32,"layers":[{"num_heads":1,"mlp_ratio":2.0}]}'


def mixed(name: str) -> MixedPrecisionSpace:
    return search_spaces.get(name, precision="mixed", **SMALL[name])


def example_input(space: MixedPrecisionSpace, arch: QArch) -> torch.Tensor:
    if getattr(space, "input_kind", "image") == "tokens":
        return torch.randint(1, space.vocab_size, (2, space.seq_len))
    return torch.randn(2, *space.arch_input_shape(arch)) if hasattr(space.base, "arch_input_shape") \
        else torch.randn(2, *space.input_shape)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_default_precision_leaves_the_space_unchanged(name):
    plain = search_spaces.get(name, **SMALL[name])
    fp32 = search_spaces.get(name, precision="fp32", **SMALL[name])
    assert type(plain) is type(fp32) and not isinstance(plain, MixedPrecisionSpace)
    arch = plain.sample(np.random.default_rng(0))
    assert fp32.to_string(arch) == plain.to_string(arch) and "q=" not in plain.to_string(arch)
    assert not quantised_layers(plain.build(arch))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_strings_round_trip_and_operators_stay_in_the_space(name):
    space = mixed(name)
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(6)]
    n_code = len(space.encode(archs[0]))
    for a in archs:
        text = space.to_string(a)
        assert text.startswith(space.base.to_string(a.base) + " q=")
        assert space.from_string(text) == a and space.to_string(space.from_string(text)) == text
        child = space.mutate(a, rng)
        assert child != a
        for b in (child, space.crossover(a, archs[0], rng)):
            assert space.from_string(space.to_string(b)) == b
        assert space.from_choices(space.to_choices(a)) == a
        assert len(space.encode(a)) == n_code
        used = set(space.used_groups(a))
        assert all(bits == 32 for i, bits in enumerate(a.bits) if i not in used)  # canonical form
    plain = space.base.to_string(archs[0].base)
    assert space.from_string(plain) == QArch(archs[0].base, (32,) * len(space.groups))  # the fp32 network


def test_mutation_changes_one_decision_sometimes_a_bit_width():
    space = mixed("fbnet")
    rng = np.random.default_rng(0)
    arch = space.sample(rng)
    kinds = set()
    for _ in range(40):
        child = space.mutate(arch, rng)
        base_changed = sum(x != y for x, y in zip(arch.base, child.base, strict=True))
        bits_changed = sum(x != y for x, y in zip(arch.bits, child.bits, strict=True))
        if base_changed:
            kinds.add("base")
            assert base_changed == 1
        else:
            kinds.add("bits")
            assert bits_changed == 1
    assert kinds == {"base", "bits"}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_malformed_strings_name_the_bad_part(name):
    space = mixed(name)
    arch = space.sample(np.random.default_rng(2))
    base, n = space.base.to_string(arch.base), len(space.groups)
    with pytest.raises(ArchError, match=rf"q= needs {n} bit-widths.*got 2"):
        space.from_string(f"{base} q=8,8")
    bad = ["8"] * n
    bad[1] = "16"
    with pytest.raises(ArchError, match=rf"q\[1\] \(group {space.groups[1][0]}\) = '16': bits must be in "
                                        r"\{4, 8, 32\}"):
        space.from_string(f"{base} q={','.join(bad)}")
    bad = ["8"] * n
    bad[0] = "4"  # the stem / embedding takes 8 or 32 only
    with pytest.raises(ArchError, match=r"q\[0\] .* bits must be in \{8, 32\}"):
        space.from_string(f"{base} q={','.join(bad)}")
    bad[0] = "eight"
    with pytest.raises(ArchError, match=r"q\[0\] .* = 'eight'"):
        space.from_string(f"{base} q={','.join(bad)}")
    with pytest.raises(ArchError):  # the base's own error, naming its part
        space.from_string(f"{base[:-3]} q={','.join(['8'] * n)}")


def test_precision_option_errors_are_actionable():
    with pytest.raises(ValueError, match="precision must be one of fp32, mixed"):
        search_spaces.get("fbnet", precision="int4")
    with pytest.raises(ValueError, match="'nb201' names no layer groups.*ofa, fbnet, bert and vit"):
        search_spaces.get("nb201", precision="mixed")
    with pytest.raises(AttributeError, match="does not provide 'largest'"):
        mixed("ofa").largest()  # a base method taking base archs is not forwarded


@pytest.mark.parametrize("name", ["ofa", "fbnet", "bert"])
def test_weights_take_at_most_2_to_the_bits_levels_per_output_channel(name):
    space = mixed(name)
    arch = space.sample(np.random.default_rng(3))
    torch.manual_seed(0)
    model = space.build(arch)
    layers = quantised_layers(model)
    assert {m.q_bits for m in layers} <= set(BITS) - {32} and layers
    for m in layers:
        w = fake_quant(m.weight, m.q_bits).detach().reshape(m.weight.shape[0], -1)
        for row, latent in zip(w, m.weight.detach().reshape(w.shape[0], -1), strict=True):
            assert len(torch.unique(row)) <= 2 ** m.q_bits
            assert float(row.abs().max()) == pytest.approx(float(latent.abs().max()), rel=1e-6)
    # groups at 32 bits stay plain modules
    used = space.base.precision_layers(arch.base)
    for (group, _), bits in zip(space.groups, arch.bits, strict=True):
        for path in used.get(group, ()):
            sub = model.get_submodule(path)
            assert all(getattr(m, "q_bits", 32) == bits for m in sub.modules() if hasattr(m, "weight")
                       and isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding)))


def test_quantised_layers_compute_with_quantised_weights_and_pass_gradients_straight_through():
    space = mixed("vit")
    arch = space.from_string(f"{VIT_ONE_LAYER} q=8,4,32,8")
    model = space.build(arch)
    fc = model.blocks[0].fc
    assert fc.q_bits == 4 and isinstance(fc, torch.nn.Linear)
    x = torch.randn(3, 32, requires_grad=True)
    q = fake_quant(fc.weight, 4).detach()
    torch.testing.assert_close(fc(x), torch.nn.functional.linear(x, q, fc.bias))
    fc(x).square().sum().backward()
    # straight-through: the latent weight gets the gradient of the quantised one
    expected = (2 * torch.nn.functional.linear(x, q, fc.bias)).T.detach() @ x.detach()
    torch.testing.assert_close(fc.weight.grad, expected)
    model.zero_grad()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(m.weight.grad is not None and bool(m.weight.grad.abs().sum() > 0) for m in quantised_layers(model))


def test_model_kb_equals_a_hand_count():
    space = mixed("vit")
    arch = space.from_string(f"{VIT_ONE_LAYER} q=8,4,32,8")  # embed 8, block 4, (no 2nd block), head 8
    model = space.build(arch)
    dim, hidden, inner, patches = 32, 64, 64, 64  # one 64-wide head, MLP ratio 2, 8x8 patches
    embed_w = dim * 3 * 4 * 4
    block_w = 3 * dim * inner + inner * dim + dim * hidden + hidden * dim
    head_w = dim * 10
    fp32 = (dim                              # patch-embedding bias
            + dim + (patches + 1) * dim      # class token, positions
            + 2 * 2 * dim                    # the block's two LayerNorms
            + 3 * inner + dim + hidden + dim  # the block's biases
            + 2 * dim + 10)                  # final LayerNorm, head bias
    kb = (embed_w * 8 + block_w * 4 + head_w * 8 + fp32 * 32) / 8 / 1024
    batch = proxies.calibration_batch(batch_size=2)
    assert proxies.score(model, batch, ["model_kb"])["model_kb"] == kb
    n = embed_w + block_w + head_w + fp32
    assert sum(p.numel() for p in model.parameters()) == n
    full = space.build(space.from_string(VIT_ONE_LAYER))  # every group at 32 bits
    assert proxies.score(full, batch, ["model_kb"])["model_kb"] == n * 4 / 1024


def test_model_kb_of_fp32_networks_is_params_times_4():
    space = search_spaces.get("ofa", **SMALL["ofa"])
    model = space.build(space.sample(np.random.default_rng(0)))
    batch = proxies.calibration_batch(batch_size=2)
    out = proxies.score(model, batch, ["model_kb", "params"])
    assert out["model_kb"] == sum(p.numel() for p in model.parameters()) * 4 / 1024
    assert out["model_kb"] == pytest.approx(out["params"] * 1e6 * 4 / 1024)


@pytest.mark.parametrize("name", ["ofa", "bert"])
def test_onnx_export_holds_plain_quantised_weights_and_matches_torch(name, tmp_path):
    space = mixed(name)
    rng = np.random.default_rng(4)
    arch = space.sample(rng)
    while 4 not in [arch.bits[i] for i in space.used_groups(arch)]:
        arch = space.sample(rng)
    x = example_input(space, arch)[:1]
    torch.manual_seed(0)
    model = space.build(arch).eval()
    with torch.no_grad():
        ref = model(x).numpy()
    torch.manual_seed(0)  # to_onnx builds the same network from the same seed
    path = space.to_onnx(arch, tmp_path / "m.onnx")
    graph = onnx.load(path).graph
    assert not {"Round", "ReduceMax", "Clip"} & {n.op_type for n in graph.node}  # no rounding ops left
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for mod_name, m in model.named_modules():
        if getattr(m, "q_bits", 32) < 32 and f"{mod_name}.weight" in weights:
            w = weights[f"{mod_name}.weight"].reshape(m.weight.shape[0], -1)
            assert max(len(np.unique(row)) for row in w) <= 2 ** m.q_bits
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("strategy", ["random", "evolution", "bayesian", "nsga2", "reinforce"])
def test_every_strategy_searches_bits(strategy):
    space = mixed("ofa")
    kwargs = {"evolution": {"population_size": 4, "sample_size": 2}, "nsga2": {"population_size": 4}}.get(strategy, {})
    search = strategies.registry.get(strategy)(space, seed=0, n_objectives=2, **kwargs)
    seen = []
    for _ in range(6):
        archs = search.ask(2)
        for a in archs:
            assert isinstance(a, QArch) and space.from_string(space.to_string(a)) == a
        # a toy objective pair: fewer bits, more blocks
        search.tell(archs, [(-float(sum(a.bits)), float(sum(a.base.d))) for a in archs])
        seen += archs
    assert len({a.bits for a in seen}) > 1


def test_nas_search_mixed_ofa_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert main(["search", "--space", "ofa", "--space-option", "precision=mixed", "--objectives", "synflow,model_kb",
                 "--budget", "6", "--out", str(out), "--no-progress"]) == 0
    result = nas.load_run(out)
    assert result.config["space_options"]["precision"] == "mixed"
    space = search_spaces.get("ofa", **result.config["space_options"])
    assert len(result.candidates) == 6
    for cand in result.candidates:
        arch = space.from_string(cand.arch)
        assert " q=" in cand.arch and cand.value("model_kb") > 0
        if all(b == 32 for b in arch.bits):
            continue
        assert cand.value("model_kb") < cand.value("params") * 1e6 * 4 / 1024
    # the pick is a mixed arch, exported (best.onnx) by the space the run's stored options rebuild
    assert json.loads((out / "best.json").read_text())["arch"].count(" q=") == 1
    assert (out / "best.onnx").stat().st_size > 0 and (out / "pareto.png").exists()


def test_quantisation_aware_training_keeps_bits_and_exports_what_it_trained(images_npz, tmp_path):
    space = mixed("vit")
    arch = space.from_string(f"{VIT_ONE_LAYER} q=8,4,32,8")
    data = images_npz(np.arange(32) % 10, side=32, y_test=np.arange(16) % 10)
    result = nas.train("vit", space.to_string(arch), data, epochs=1, batch_size=16, val_size=0,
                       space_options={**SMALL["vit"], "precision": "mixed"}, out=tmp_path / "t", progress=False)
    model = space.build(arch)
    model.load_state_dict(torch.load(result.out / "model.pt"))  # the same keys as an fp32 network's
    assert sorted(m.q_bits for m in quantised_layers(model)) == [4] * 6 + [8, 8]
    x = torch.randn(2, 3, 32, 32)
    sess = ort.InferenceSession(str(result.out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], ref, rtol=1e-3, atol=1e-4)


def test_cache_keys_and_stored_options_include_the_base_options() -> None:
    from hardware_models.feature_cache import space_key as feature_key
    from nas.evaluate import space_key
    from nas.settings import space_options_of

    plain = search_spaces.get("ofa", width_mult=1.2)
    wide, narrow = (search_spaces.get("ofa", width_mult=w, precision="mixed") for w in (1.2, 1.0))
    assert space_options_of(wide) == {"width_mult": 1.2, "precision": "mixed"}
    assert search_spaces.get("ofa", **space_options_of(wide)).to_string(wide.sample(np.random.default_rng(0)))
    for key in (space_key, feature_key):
        assert len({key(plain), key(wide), key(narrow)}) == 3
