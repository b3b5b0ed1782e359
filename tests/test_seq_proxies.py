"""Calibration text, the sequence proxies, and generic proxies on sequence models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import proxies
import search_spaces
from nas.evaluate import Evaluator
from proxies.sequence import _shared_pass, eig_score, hidden_cov_layers
from proxies.text import MASK, ByteTokenizer, as_objective, load_tokens, shipped_text, text_batch

SEQUENCE = ["hidden_cov", "head_confidence", "head_importance", "synaptic_diversity", "activation_distance",
            "embedding_jacov"]
TINY = {
    "bert": dict(seq_len=8, vocab_size=300),
    "rnn": dict(seq_len=6, vocab_size=300, emb_size=12, hidden_size=16),
    "gpt": dict(seq_len=8, embed_dims=(32,), depths=(2,), heads=(2,), mlp_ratios=(2,)),
}


def test_shipped_corpus_is_small_public_domain_text_and_tokenizer_round_trips() -> None:
    text = shipped_text()
    assert 2_000 < len(text.encode()) < 200_000 and "public domain" in text
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text
    assert load_tokens().max() < tok.vocab_size


def test_text_batches_are_seeded_and_shaped_for_next_token_and_masked_objectives(tmp_path) -> None:
    a, b = text_batch(4, 16, seed=1), text_batch(4, 16, seed=1)
    assert torch.equal(a.inputs, b.inputs) and a.inputs.dtype == torch.int64
    assert a.targets.shape == (64,)
    assert torch.equal(a.inputs[:, 1:].reshape(4, 15), a.targets.reshape(4, 16)[:, :-1])  # shifted by one
    m = as_objective(a, "mlm", seed=0)
    assert torch.equal(m.targets, a.inputs.reshape(-1)) and (m.inputs == MASK).any()
    user = tmp_path / "mine.txt"
    user.write_text("the quick brown fox jumps over the lazy dog " * 10)
    u = proxies.load_batch(str(user), batch_size=2, seed=0, input_shape=(8,))
    assert ByteTokenizer().decode(u.inputs[0].tolist()).strip(" ") in ("the quick brown fox jumps over the lazy dog " * 3)
    np.save(tmp_path / "ids.npy", np.arange(100) % 50)
    assert proxies.load_batch(str(tmp_path / "ids.npy"), 2, 0, (8,)).inputs.max() < 50
    with pytest.raises(ValueError, match="objective"):
        text_batch(2, 8, objective="cls")
    with pytest.raises(ValueError, match="text data"):
        load_tokens(tmp_path / "missing.txt")


def test_load_batch_gives_tokens_for_one_dimensional_input_shapes() -> None:
    batch = proxies.load_batch(None, batch_size=3, seed=0, input_shape=(12,))
    assert batch.inputs.shape == (3, 12) and not batch.inputs.is_floating_point()
    assert batch.resized(()) is batch  # token ids are never resized


def test_hidden_cov_score_matches_the_papers_numpy_definition() -> None:
    rows = torch.randn(6, 40)
    v = np.linalg.eigvals(np.corrcoef(rows.numpy()))
    ref = -np.sum(np.log(v.real + 1e-5) + 1.0 / (v.real + 1e-5))
    assert math.isclose(eig_score(rows), ref, rel_tol=1e-6)
    rows[2] = 1.0
    assert math.isnan(eig_score(rows))  # a constant unit: np.corrcoef gives NaN too
    rows[2, 0] = float("inf")
    assert math.isnan(eig_score(rows))  # exploding hidden states


def _model_and_batch(name: str):
    space = search_spaces.get(name, **TINY[name])
    # a sampled recipe may ignore its input (h_new_0 = h_prev * ...), which the engine ranks last
    arch = space.from_string(space.example("lstm")) if name == "rnn" else space.sample(np.random.default_rng(0))
    torch.manual_seed(0)
    batch = as_objective(proxies.load_batch(None, 6, 0, tuple(space.input_shape)), space.objective)
    return space.build(arch), batch


BERT_ROUNDING_NOISE = {"head_importance", "synaptic_diversity", "embedding_jacov"}
"""Gradient metrics that measure float rounding on post-LayerNorm bert (proxies/sequence.py): across
ATEN_CPU_CAPABILITY=default/avx2/avx512 and 1 or 2 threads they moved by 18-53 % or turned NaN."""


@pytest.mark.parametrize("name", ["bert", "gpt"])
def test_sequence_proxies_are_finite_and_deterministic_on_transformers(name: str) -> None:
    # only the metrics the space offers: a value that is rounding noise would pass or fail by CPU kernel
    space = search_spaces.get(name, **TINY[name])
    names = [n for n in SEQUENCE if n not in proxies.unavailable(space, SEQUENCE)]
    assert set(SEQUENCE) - set(names) == (BERT_ROUNDING_NOISE if name == "bert" else set())
    model, batch = _model_and_batch(name)
    errors: dict[str, str] = {}
    a = proxies.score(model, batch, names, seed=0, device="cpu", errors=errors)
    b = proxies.score(model, batch, names, seed=0, device="cpu")
    assert a == b and not errors, (a, errors)
    assert all(math.isfinite(v) for v in a.values()), a
    assert len(hidden_cov_layers(model, batch)) == len(list(model.layers if name == "bert" else model.blocks))


def test_rounding_noise_proxies_are_unavailable_on_bert_with_the_reason() -> None:
    bert = search_spaces.get("bert", **TINY["bert"])
    assert proxies.unavailable(bert, SEQUENCE + ["params"]) == {n: bert.unavailable_proxies[n] for n in
                                                                SEQUENCE if n in BERT_ROUNDING_NOISE}
    for name in sorted(BERT_ROUNDING_NOISE):
        with pytest.raises(ValueError, match=rf"proxy {name} is not available on space bert: .*float "
                                             r"rounding.*; available: .*head_confidence"):
            proxies.check_available(bert, ["head_confidence", name])
    proxies.check_available(bert, ["head_confidence", "hidden_cov", "activation_distance", "params"])
    for other in ("gpt", "rnn"):  # pre-LN blocks and RNN cells: every metric is a measurement there
        space = search_spaces.get(other, **TINY[other])
        assert proxies.unavailable(space, SEQUENCE) == {}
        proxies.check_available(space, SEQUENCE)


def test_each_sequence_proxy_alone_equals_its_value_in_a_shared_call() -> None:
    model, batch = _model_and_batch("gpt")
    together = proxies.score(model, batch, SEQUENCE + ["snip", "synflow"], seed=0, device="cpu")
    for name in SEQUENCE:  # metrics are computed lazily from one recorded pass: same numbers either way
        assert proxies.score(model, batch, [name], seed=0, device="cpu")[name] == together[name], name
    assert hidden_cov_layers(model, batch)[-1] == together["hidden_cov"]


def test_rnn_gets_hidden_cov_and_attention_metrics_fail_clearly(caplog) -> None:
    model, batch = _model_and_batch("rnn")
    errors: dict[str, str] = {}
    scores = proxies.score(model, batch, SEQUENCE, seed=0, device="cpu", errors=errors)
    for name in ("hidden_cov", "activation_distance", "embedding_jacov"):
        assert math.isfinite(scores[name]) and name not in errors
    for name in ("head_confidence", "head_importance", "synaptic_diversity"):  # a failure is never a number
        assert math.isnan(scores[name]), scores
    assert errors["head_confidence"] == "ValueError: head_confidence needs attention/projection heads; " \
        "this model has none"
    assert set(errors) == {"head_confidence", "head_importance", "synaptic_diversity"}
    proxies.score(model, batch, ["head_confidence"], seed=0, device="cpu")  # no errors dict: it is logged
    assert "head_confidence needs attention/projection heads" in caplog.text


def test_sequence_proxies_fail_on_image_cnns_with_a_reason() -> None:
    space = search_spaces.get("nb201")
    model = space.build(space.sample(np.random.default_rng(0)))
    errors: dict[str, str] = {}
    scores = proxies.score(model, proxies.calibration_batch(4), ["hidden_cov"], device="cpu", errors=errors)
    assert math.isnan(scores["hidden_cov"])
    assert errors["hidden_cov"].startswith("ValueError: ") and "zc_role" in errors["hidden_cov"]


@pytest.mark.parametrize("name", ["gpt", "rnn", "bert"])
def test_generic_proxies_work_on_token_models(name: str) -> None:
    model, batch = _model_and_batch(name)
    errors: dict[str, str] = {}
    scores = proxies.score(model, batch, ["params", "synflow", "snip", "grad_norm"], seed=0, device="cpu",
                           errors=errors)
    assert all(math.isfinite(v) for v in scores.values()) and not errors, (scores, errors)


def test_evaluator_scores_token_spaces_with_their_objective() -> None:
    space = search_spaces.get("bert", **TINY["bert"])
    batch = proxies.load_batch(None, 4, 0, tuple(space.input_shape))
    evaluate = Evaluator(space, ("head_confidence", "params"), batch, seed=0, device="cpu")
    cand = evaluate(space.to_string(space.sample(np.random.default_rng(2))))
    assert cand.status == "ok", cand.error
    assert math.isfinite(cand.scores["head_confidence"])
    assert (evaluate._batches[(8,)].inputs == MASK).any()  # masked-LM batch for bert


ENSEMBLE_TINY = {**TINY, "gpt": dict(seq_len=8, embed_dims=(32, 64), depths=(1, 2), heads=(1, 2), mlp_ratios=(2, 4)),
                 "vit": dict(embed_dims=(32,), depths=(1, 2), heads=(1, 2), mlp_ratios=(2.0, 4.0),
                             input_shape=(3, 16, 16))}


def test_sequence_spaces_name_registered_ensemble_components() -> None:
    for name in ENSEMBLE_TINY:
        components = search_spaces.get(name, **ENSEMBLE_TINY[name]).ensemble_components
        assert components and all(c in proxies.list() for c in components), (name, components)
        assert "nwot" not in components  # the image ensemble's ReLU term does not apply here


@pytest.mark.parametrize("name", sorted(ENSEMBLE_TINY))
def test_label_free_ensemble_on_sequence_spaces_uses_the_space_components(name: str) -> None:
    space = search_spaces.get(name, **ENSEMBLE_TINY[name])
    batch = proxies.load_batch(None, 4, 0, tuple(space.input_shape))
    evaluate = Evaluator(space, ("ensemble",), batch, seed=0, device="cpu")
    assert evaluate.ensembles["ensemble"].components == space.ensemble_components
    rng = np.random.default_rng(5)
    cands = [evaluate(space.to_string(space.sample(rng))) for _ in range(3)]
    assert all(c.status == "ok" and math.isfinite(c.scores["ensemble"]) for c in cands), cands
    again = Evaluator(space, ("ensemble",), batch, seed=0, device="cpu")(cands[0].arch)
    assert again.scores["ensemble"] == cands[0].scores["ensemble"]  # seeded reference: stable values


def test_head_importance_sees_the_convolution_blocks_of_a_narrow_bert() -> None:
    # 128 wide, convolution blocks only: their 64-wide projections are token-mixing layers, the per-token
    # kernel generator (64 -> 2 heads x 5 taps) is not. The layers are checked, not the values: on bert
    # these gradients are rounding noise (the space declares the metrics unavailable).
    space = search_spaces.get("bert", seq_len=8, vocab_size=300)
    layer = {"operation_type": "DSC", "operation_parameter": 5, "num_operation_heads": 4,
             "feed_forward_dimension": 512, "num_feed_forward": 1}
    arch = space.from_string('{"hidden_size": 128, "encoder_layers": [%s, %s]}' % ((json.dumps(layer),) * 2))
    torch.manual_seed(0)
    batch = as_objective(proxies.load_batch(None, 4, 0, tuple(space.input_shape)), space.objective)
    model = space.build(arch)
    kept = [tuple(w.shape) for w, _ in _shared_pass(model, batch).linears]
    every = [tuple(m.weight.shape) for op in model.modules() if getattr(op, "zc_role", None) == "operation"
             for m in op.modules() if isinstance(m, torch.nn.Linear)]
    dropped = [s for s in every if s not in kept]
    assert kept and all(s[0] * 4 >= s[1] for s in kept) and (64, 128) in kept, kept
    assert dropped and all(s[0] * 4 < s[1] for s in dropped), dropped  # the kernel generator only
