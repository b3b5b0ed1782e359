"""Sequence-model spaces: bert (FlexiBERT/ELECTRA-small), rnn (NAS-Bench-NLP), gpt, vit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import search_spaces
from search_spaces import ArchError
from search_spaces.bert import LinearTransform
from search_spaces.rnn import RNNSpace, generate
from search_spaces.seq_common import export_tokens_onnx

TINY = {
    "bert": dict(seq_len=8, vocab_size=300),
    "rnn": dict(seq_len=6, vocab_size=300, emb_size=12, hidden_size=16),
    "gpt": dict(seq_len=8, embed_dims=(32, 64), depths=(1, 2), heads=(1, 2), mlp_ratios=(2, 4)),
    "vit": dict(embed_dims=(32,), depths=(1, 2), heads=(1, 2), mlp_ratios=(2.0, 4.0), input_shape=(3, 16, 16)),
}


def _input(space, n: int = 3) -> torch.Tensor:
    if getattr(space, "input_kind", "image") == "tokens":
        return torch.randint(4, 260, (n, space.input_shape[0]))
    return torch.randn(n, *space.input_shape)


@pytest.mark.parametrize("name", sorted(TINY))
def test_round_trip_mutate_encode(name: str) -> None:
    space = search_spaces.get(name, **TINY[name])
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(8)]
    lengths = {len(space.encode(a)) for a in archs}
    assert len(lengths) == 1
    for a in archs:
        text = space.to_string(a)
        assert space.from_string(text) == a
        assert space.to_string(space.from_string(text)) == text
        b = space.mutate(a, rng)
        assert space.to_string(b) != text
        space.from_string(space.to_string(b))  # still valid
        if hasattr(space, "decisions"):
            assert space.from_choices(space.to_choices(a)) == a
    assert space.cardinality > 1
    assert [space.to_string(space.sample(np.random.default_rng(3))) for _ in range(2)] == \
        [space.to_string(space.sample(np.random.default_rng(3)))] * 2


@pytest.mark.parametrize("name", sorted(TINY))
def test_build_forward_and_onnx_parity(name: str, tmp_path) -> None:
    space = search_spaces.get(name, **TINY[name])
    arch = space.sample(np.random.default_rng(1))
    torch.manual_seed(0)
    model = space.build(arch).eval()
    x = _input(space)
    with torch.no_grad():
        ref = model(x).numpy()
    tokens = getattr(space, "input_kind", "image") == "tokens"
    if tokens:
        assert ref.shape == (3 * space.input_shape[0], space.num_classes)
        path = export_tokens_onnx(model, space.input_shape[0], tmp_path / "m.onnx")
    else:
        assert ref.shape == (3, space.num_classes)
        path = space.to_onnx(arch, tmp_path / "m.onnx")  # rebuilt: compare shapes only
        from search_spaces.base import export_onnx
        path = export_onnx(model, torch.zeros(1, *space.input_shape), tmp_path / "m2.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    if tokens:  # the space's own export takes int64 token ids
        p = space.to_onnx(arch, tmp_path / "own.onnx")
        assert onnx.load(p).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


# Published parameter counts: data/BERT_results_activation.csv ("Number of Parameters", rows ID 0, 1, 3, 5)
# of github.com/aaronserianni/training-free-nas, configs from data/BERT_benchmark.json of the same repo.
BERT_PUBLISHED = [
    (13330176, {"hidden_size": 256, "encoder_layers": [
        {"operation_type": "SA", "operation_parameter": "WMA", "num_operation_heads": 4, "feed_forward_dimension": 1024, "num_feed_forward": 3},
        {"operation_type": "LT", "operation_parameter": "DCT", "num_operation_heads": 2, "feed_forward_dimension": 512, "num_feed_forward": 3},
        {"operation_type": "SA", "operation_parameter": "SDP", "num_operation_heads": 4, "feed_forward_dimension": 512, "num_feed_forward": 3},
        {"operation_type": "SA", "operation_parameter": "SDP", "num_operation_heads": 4, "feed_forward_dimension": 1024, "num_feed_forward": 1}]}),
    (11106199, {"hidden_size": 256, "encoder_layers": [
        {"operation_type": "LT", "operation_parameter": "DFT", "num_operation_heads": 4, "feed_forward_dimension": 1024, "num_feed_forward": 3},
        {"operation_type": "SA", "operation_parameter": "SDP", "num_operation_heads": 2, "feed_forward_dimension": 1024, "num_feed_forward": 1},
        {"operation_type": "DSC", "operation_parameter": 9, "num_operation_heads": 4, "feed_forward_dimension": 512, "num_feed_forward": 3},
        {"operation_type": "DSC", "operation_parameter": 5, "num_operation_heads": 2, "feed_forward_dimension": 512, "num_feed_forward": 1}]}),
    (5526167, {"hidden_size": 128, "encoder_layers": [
        {"operation_type": "DSC", "operation_parameter": 9, "num_operation_heads": 4, "feed_forward_dimension": 512, "num_feed_forward": 1},
        {"operation_type": "DSC", "operation_parameter": 5, "num_operation_heads": 2, "feed_forward_dimension": 512, "num_feed_forward": 1}]}),
    (5356549, {"hidden_size": 256, "encoder_layers": [
        {"operation_type": "LT", "operation_parameter": "DCT", "num_operation_heads": 2, "feed_forward_dimension": 512, "num_feed_forward": 1},
        {"operation_type": "DSC", "operation_parameter": 5, "num_operation_heads": 2, "feed_forward_dimension": 512, "num_feed_forward": 1}]}),
]


@pytest.mark.parametrize("published,config", BERT_PUBLISHED)
def test_bert_parameter_counts_equal_published(published: int, config: dict) -> None:
    # The authors' metric code built every model 256 wide with 1,024-wide FFNs (their config defaults).
    space = search_spaces.get("bert", reference_code_dims=True)
    model = space.build(space.from_string(json.dumps(config)))
    assert sum(p.numel() for p in model.parameters()) == published


def test_bert_faithful_dims_match_reference_when_config_uses_the_defaults() -> None:
    config = json.loads(json.dumps(BERT_PUBLISHED[1][1]))
    for layer in config["encoder_layers"]:
        layer["feed_forward_dimension"] = 1024
    text = json.dumps(config)
    faithful = search_spaces.get("bert").build(search_spaces.get("bert").from_string(text))
    reference = search_spaces.get("bert", reference_code_dims=True)
    ref_model = reference.build(reference.from_string(text))
    assert sum(p.numel() for p in faithful.parameters()) == sum(p.numel() for p in ref_model.parameters())


def test_bert_canonical_string_is_the_papers_json_and_records_are_accepted() -> None:
    space = search_spaces.get("bert")
    config = BERT_PUBLISHED[0][1]
    text = json.dumps(config, separators=(",", ":"))
    assert space.to_string(space.from_string(json.dumps(config, indent=2))) == text
    record = {"id": 0, "scores": {"glue": 74.7}, "hparams": {"model_hparam_overrides": {
        "hidden_size": 256, "nas_config": {"encoder_layers": config["encoder_layers"]}}}}
    assert space.to_string(space.from_string(json.dumps(record))) == text


@pytest.mark.parametrize("edit,words", [
    (lambda c: c.update(hidden_size=300), ["hidden_size", "300", "128, 256"]),
    (lambda c: c["encoder_layers"][1].update(operation_type="XX"), ["encoder_layers[1]", "operation_type", "\"SA\", \"LT\", \"DSC\""]),
    (lambda c: c["encoder_layers"][0].update(operation_parameter="DFT"), ["operation_parameter", "SA", "\"SDP\", \"WMA\""]),
    (lambda c: c["encoder_layers"][0].update(num_operation_heads=3), ["num_operation_heads", "2, 4"]),
    (lambda c: c["encoder_layers"].pop(), ["encoder_layers", "2 or 4"]),
    (lambda c: c["encoder_layers"][0].pop("num_feed_forward"), ["missing field 'num_feed_forward'"]),
])
def test_bert_bad_configs_name_the_field_and_the_allowed_values(edit, words) -> None:
    config = json.loads(json.dumps(BERT_PUBLISHED[0][1]))
    edit(config)
    with pytest.raises(ArchError) as err:
        search_spaces.get("bert").from_string(json.dumps(config))
    for w in words:
        assert w in str(err.value)


def test_linear_transforms_equal_fft2_real_and_dct_ii() -> None:
    from scipy.fft import dctn

    lt = LinearTransform(16, 2, "DFT")
    x = torch.randn(2, 5, 16)
    h = lt.input(x).reshape(2, 5, 2, 8).transpose(1, 2)
    dft = torch.fft.fft2(h).real.transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(lt(x), dft, atol=1e-4, rtol=1e-4)
    lt.kind = "DCT"
    dct = torch.from_numpy(dctn(h.detach().numpy(), type=2, axes=(-2, -1))).float().transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(lt(x), dct, atol=1e-3, rtol=1e-4)


def _recipe(**nodes: tuple[str, list[str]]) -> str:
    return json.dumps({k: {"op": op, "input": inp} for k, (op, inp) in nodes.items()})


@pytest.mark.parametrize("text,words", [
    (_recipe(h_new_0=("activation_tanh", ["a"]), a=("linear", ["x", "b"]), b=("activation_sigm", ["a"])),
     ["cycle", "'a'"]),
    (_recipe(a=("linear", ["x", "h_prev_0"]), h_new_1=("activation_tanh", ["a"])), ["h_new_0"]),
    (_recipe(h_new_0=("activation_tanh", ["a"]), a=("linear", ["x", "h_prev_0"]), d=("linear", ["x"])),
     ["'d'", "dangling"]),
    (_recipe(h_new_0=("activation_relu", ["a"]), a=("linear", ["x"])), ["'h_new_0'", "activation_relu", "linear"]),
    (_recipe(h_new_0=("activation_tanh", ["x"])), ["'h_new_0'", "only linear"]),
    (_recipe(h_new_0=("activation_tanh", ["zz"])), ["'h_new_0'", "'zz'"]),
    (_recipe(h_new_0=("blend", ["a", "a"]), a=("linear", ["x"])), ["'h_new_0'", "3..3 inputs"]),
    (_recipe(h_new_0=("activation_tanh", ["a"]), a=("linear", ["h_prev_0"])), ["depend on 'x'"]),
])
def test_rnn_invalid_recipes_are_rejected_naming_the_node(text: str, words: list[str]) -> None:
    with pytest.raises(ArchError) as err:
        RNNSpace().from_string(text)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_rnn_classic_cells_parse_and_run(cell: str) -> None:
    space = RNNSpace(**TINY["rnn"])
    arch = space.from_string(RNNSpace.example(cell))
    assert space.to_string(arch) == RNNSpace.example(cell)
    out = space.build(arch)(torch.randint(4, 200, (2, 6)))
    assert out.shape == (12, 300) and torch.isfinite(out).all()


def test_rnn_lm_wrapper_is_the_benchmarks() -> None:
    # AWD-RNN as in NAS-Bench-NLP: 3 layers, emb 400, hidden 600, last layer emb wide, tied decoder.
    space = RNNSpace()
    model = space.build(space.from_string(RNNSpace.example("rnn")))
    layer_params = [(400 + 600) * 600 + 600, (600 + 600) * 600 + 600, (600 + 400) * 400 + 400]
    assert sum(p.numel() for p in model.parameters()) == 10000 * 400 + sum(layer_params) + 10000


def test_rnn_generator_is_seeded_and_follows_the_rules() -> None:
    rng = np.random.default_rng(5)
    recipes = [r for r in (generate(rng, h, n) for h in (1, 2, 3) for n in (7, 14, 21)) if r is not None]
    assert recipes
    for r in recipes:
        names = {name for name, _, _ in r}
        assert "h_new_0" in names and len(names) <= 24
    a = RNNSpace().sample(np.random.default_rng(9))
    assert a == RNNSpace().sample(np.random.default_rng(9))


@pytest.mark.parametrize("name,text,words", [
    ("gpt", json.dumps({"embed_dim": 100, "layers": [{"num_heads": 4, "mlp_ratio": 4}] * 10}),
     ["embed_dim", "100", "192, 384, 768"]),
    ("gpt", json.dumps({"embed_dim": 192, "layers": [{"num_heads": 5, "mlp_ratio": 4}] * 10}),
     ["layer 0", "num_heads", "4, 8, 12"]),
    ("vit", '{"embed_dim":240,"layers":[{"num_heads":3,"mlp_ratio":4.0}]}', ["1 layers", "12, 13, 14"]),
    ("vit", '{"embed_dim":240}', ["missing field 'layers'"]),
    ("bert", "not json", ["not valid JSON"]),
])
def test_bad_transformer_configs_are_rejected(name: str, text: str, words: list[str]) -> None:
    with pytest.raises(ArchError) as err:
        search_spaces.get(name).from_string(text)
    for w in words:
        assert w in str(err.value)


def test_gpt_accepts_hwgpt_bench_and_vit_autoformer_configs() -> None:
    gpt = search_spaces.get("gpt")
    a = gpt.from_string(json.dumps({"sample_embed_dim": 384, "sample_n_layer": 10, "sample_n_head": [8] * 12,
                                    "sample_mlp_ratio": [4] * 12, "sample_bias": True}))
    assert len(a.layers) == 10 and a.globals == (384,)
    vit = search_spaces.get("vit")
    b = vit.from_string(json.dumps({"layer_num": 13, "embed_dim": [216] * 13, "num_heads": [4] * 13,
                                    "mlp_ratio": [3.5] * 13}))
    assert vit.to_string(b).startswith('{"embed_dim":216,"layers":[{"num_heads":4,"mlp_ratio":3.5}')


@pytest.mark.slow
def test_gpt2_small_parameter_count() -> None:
    gpt = search_spaces.get("gpt", vocab_size=50257)
    arch = gpt.from_string(json.dumps({"embed_dim": 768, "layers": [{"num_heads": 12, "mlp_ratio": 4}] * 12}))
    assert sum(p.numel() for p in gpt.build(arch).parameters()) == 124_439_808  # GPT-2 small, tied head


def test_token_models_reject_out_of_vocabulary_ids_clearly() -> None:
    space = search_spaces.get("gpt", **TINY["gpt"])
    model = space.build(space.sample(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="token ids must lie in 0..259"):
        model(torch.full((1, 8), 999))


@pytest.mark.parametrize("name", ["bert", "rnn"])
def test_token_models_can_be_timed_with_onnxruntime(name: str, tmp_path) -> None:
    from hardware_models.measure import measure_onnx, write_kit

    space = search_spaces.get(name, **TINY[name])
    arch = space.sample(np.random.default_rng(0))
    assert measure_onnx(space.to_onnx(arch, tmp_path / "m.onnx"), repeats=2, warmup=1) > 0
    kit = write_kit(space, [arch], tmp_path / "kit")
    done = subprocess.run([sys.executable, str(kit / "measure.py"), "--repeats", "1", "--warmup", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # the device script feeds token ids to token models
    assert (kit / "measurements.csv").read_text().count("\n") == 2
