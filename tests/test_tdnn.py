"""The ``tdnn`` space: published ECAPA-TDNN sizes, strings and errors, fbanks, ONNX parity, audio data, CLI."""

from __future__ import annotations

import json
import wave

import numpy as np
import onnxruntime as ort
import pytest
import torch

import proxies
import search_spaces
from nas.cli import main
from proxies.audio import load_audio_batch, read_wav
from search_spaces import ArchError
from search_spaces.tdnn import Fbank, count_macs, count_params, ecapa, frames, mel_filterbank

TINY = {"channels": [32], "widths": [16, 32], "kernels": [1, 3], "dilations": [1, 2], "depths": [1, 2],
        "mfa": [48], "seconds": 0.5, "num_classes": 4}
"""A space of networks small enough for milliseconds of CPU (options as the CLI passes them: JSON lists)."""


@pytest.fixture(scope="module")
def tiny():
    return search_spaces.get("tdnn", **TINY)


@pytest.mark.parametrize("channels,paper", [(512, 6.2e6), (1024, 14.7e6)])
def test_published_ecapa_parameter_count_within_2_percent(channels, paper):
    # Counted: every trainable weight, bias and BatchNorm affine term from the stem to the 192-d embedding's
    # BatchNorm; not the classifier head (AAM-softmax over 5,994 speakers in the paper), not the fbanks.
    space = search_spaces.get("tdnn", channels=[channels], widths=[channels])
    model = space.build(space.from_string(ecapa(channels)))
    n = count_params(model)
    assert abs(n / paper - 1) < 0.02, n
    assert n == {512: 6_194_432, 1024: 14_660_800}[channels]  # a change here changes the published config
    macs = space.macs(space.from_string(ecapa(channels)))
    assert macs == count_macs(model, space.samples)  # closed form == hooks on every conv / linear
    assert macs["body"] == {512: 1_026_908_160, 1024: 2_622_554_112}[channels]  # 2-s utterance, 198 frames


def test_ecapa_string_is_the_published_layout():
    assert ecapa(512) == "c512|k3d2w512se|k3d3w512se|k3d4w512se|mfa1536"
    space = search_spaces.get("tdnn")
    arch = space.from_string(ecapa(512))  # the default space holds ECAPA-TDNN (C=512)
    assert [(b.kernel, b.dilation, b.se) for b in arch.blocks] == [(3, 2, True), (3, 3, True), (3, 4, True)]
    assert space.stem_kernel == 5 and space.scale == 8 and space.se_bottleneck == 128
    assert space.attention == 128 and space.embedding == 192 and space.n_mels == 80


def test_round_trips_choices_encode_and_mutation(tiny):
    rng = np.random.default_rng(0)
    size = len(tiny.encode(tiny.sample(rng)))
    for _ in range(30):
        arch = tiny.sample(rng)
        assert tiny.from_string(tiny.to_string(arch)) == arch
        assert tiny.from_choices(tiny.to_choices(arch)) == arch
        assert tiny.encode(arch).shape == (size,)
        child = tiny.mutate(arch, rng)
        assert child != arch and tiny.check(child) == child
        assert tiny.check(tiny.crossover(arch, child, rng))
    assert tiny.cardinality == 1 * 1 * (16 + 16 ** 2)


@pytest.mark.parametrize("text,message", [
    ("c32|mfa48", "has 2 part(s)"),
    ("x32|k3d1w16|mfa48", "first part 'x32' must be c<channels>"),
    ("c32|k3d1w16|m48", "last part 'm48' must be mfa<width>"),
    ("c32|k3w16|mfa48", "block 0 'k3w16' must be k<kernel>d<dilation>w<width>"),
    ("c64|k3d1w16|mfa48", "channels 64 is not allowed; valid: 32"),
    ("c32|k5d1w16|mfa48", "block 0: kernel 5 is not allowed; valid: 1, 3"),
    ("c32|k3d1w16|k3d1w16|k3d1w16|mfa48", "depth (number of blocks) 3 is not allowed; valid: 1, 2"),
])
def test_bad_strings_name_the_part(tiny, text, message):
    with pytest.raises(ArchError) as err:
        tiny.from_string(text)
    assert message in str(err.value)


@pytest.mark.parametrize("options,message", [
    ({"widths": [12]}, "not multiples of scale=8"),
    ({"kernels": [2]}, "kernels must be odd"),
    ({"seconds": 0.01}, "too short"),
    ({"num_classes": 1}, "at least 2"),
    ({"depths": []}, "non-empty list"),
])
def test_bad_space_options_say_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        search_spaces.get("tdnn", **options)


def test_fbank_shape_and_finiteness():
    wav = torch.randn(3, 1, 1, 8000) * 0.1
    wav[1] = 0.0  # digital silence must stay finite (log of a floor, not of zero)
    feats = Fbank()(wav)
    assert feats.shape == (3, 80, frames(8000)) == (3, 80, 48)
    assert torch.isfinite(feats).all()
    assert torch.allclose(feats.mean(dim=2), torch.zeros(3, 80), atol=1e-4)  # mean-normalised per utterance
    # a 1 kHz tone switched on half way rises most in the mel band that holds 1 kHz
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(8000) / 16000) * (torch.arange(8000) >= 4000)
    feats = Fbank()(tone[None] + 1e-3 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(0)))
    band = int((feats[0, :, -1] - feats[0, :, 0]).argmax())
    assert mel_filterbank(80)[band, round(1000 / 8000 * 256)] > 0


def test_onnx_parity(tiny, tmp_path):
    arch = tiny.from_string("c32|k3d2w16se|k1d1w32|mfa48")
    torch.manual_seed(0)
    path = str(tmp_path / "tdnn.onnx")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        tiny.to_onnx(arch, path)
    torch.manual_seed(1)
    model = tiny.build(arch).eval()
    x = proxies.load_batch(None, 3, 0, tiny.input_shape).inputs  # speech-like input, batch 3 (dynamic axis)
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


def _write_wav(path, x, rate=16000):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((x * 32767).astype("<i2").tobytes())


def test_audio_batches_from_speech_folder_and_errors(tmp_path):
    batch = proxies.load_batch(None, 6, 0, (1, 1, 8000))
    assert batch.inputs.shape == (6, 1, 1, 8000) and batch.name == "speech" and len(set(batch.targets.tolist())) == 6
    assert torch.isfinite(batch.inputs).all() and batch.inputs.abs().max() <= 1
    again = proxies.load_batch(None, 6, 0, (1, 1, 8000))
    assert torch.equal(batch.inputs, again.inputs)  # same seed, same audio
    rng = np.random.default_rng(0)
    for spk in ("alice", "bob"):
        (tmp_path / "wavs" / spk).mkdir(parents=True)
        for u in range(2):
            _write_wav(tmp_path / "wavs" / spk / f"{u}.wav", 0.1 * rng.standard_normal(4000), rate=8000)
    assert len(read_wav(tmp_path / "wavs" / "bob" / "0.wav")) == 8000  # resampled 8 -> 16 kHz
    batch = proxies.load_batch(str(tmp_path / "wavs"), 4, 0, (1, 1, 12000))
    assert batch.inputs.shape == (4, 1, 1, 12000) and sorted(batch.targets.tolist()) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="this space takes audio"):
        load_audio_batch("cifar10", 4, 0, 8000)
    with pytest.raises(ValueError, match="no speaker sub-folders"):
        load_audio_batch(str(tmp_path), 4, 0, 8000)  # holds wavs/, whose sub-folders are not wav files
    assert proxies.load_batch("gaussian", 2, 0, (1, 1, 8000)).inputs.shape == (2, 1, 1, 8000)


def _cli_options():
    return [x for key, value in TINY.items() for x in ("--space-option", f"{key}={json.dumps(value)}")]


def test_cli_search_and_score(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["search", "--space", "tdnn", *_cli_options(), "--strategy", "evolution", "--objectives", "synflow,flops",
            "--budget", "3", "--batch-size", "4", "--out", str(out), "--no-progress", "--no-cache"]
    assert main(argv) == 0
    best = json.loads((out / "best.json").read_text())
    space = search_spaces.get("tdnn", **TINY)
    assert space.from_string(best["arch"])
    (tmp_path / "a.txt").write_text("c32|k3d2w16se|mfa48\n")
    assert main(["score", "--space", "tdnn", *_cli_options(), "--arch-file", str(tmp_path / "a.txt"),
                 "--proxies", "synflow,nwot,flops", "--batch-size", "4", "--out", str(tmp_path / "s.csv"),
                 "--no-progress", "--no-cache"]) == 0
    row = (tmp_path / "s.csv").read_text().splitlines()[1].split(",")
    assert all(np.isfinite(float(v)) for v in row[1:])


def test_cli_rejects_bad_tdnn_input(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("c32|k4d2w16se|mfa48\n")
    code = main(["score", "--space", "tdnn", *_cli_options(), "--arch-file", str(tmp_path / "a.txt"),
                 "--out", str(tmp_path / "s.csv")])
    assert code == 2 and "block 0: kernel 4 is not allowed; valid: 1, 3" in capsys.readouterr().err
    code = main(["search", "--space", "tdnn", "--space-option", "widths=[12]", "--out", str(tmp_path / "r")])
    assert code == 2 and "not multiples of scale=8" in capsys.readouterr().err
    code = main(["search", "--space", "tdnn", *_cli_options(), "--data", "cifar10", "--budget", "2",
                 "--out", str(tmp_path / "r2"), "--no-progress"])
    assert code == 2 and "this space takes audio" in capsys.readouterr().err
    code = main(["score", "--space", "tdnn", *_cli_options(), "--arch-file", str(tmp_path / "a.txt"),
                 "--proxies", "zen", "--out", str(tmp_path / "s.csv")])
    assert code == 2 and "zen is not available on space tdnn" in capsys.readouterr().err


def test_supernet_subnet_matches_shared_weights():
    from search_spaces.tdnn_supernet import TDNNSupernet

    space = search_spaces.get("tdnn", **{**TINY, "channels": [16, 32], "kernels": [1, 3, 5], "mfa": [24, 48]})
    torch.manual_seed(0)
    sup = TDNNSupernet(space)
    for m in sup.modules():  # non-trivial statistics, so that a wrong slice shows
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    sup.eval()
    x = 0.1 * torch.randn(2, 1, 1, 8000, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    for arch in [sup.largest(), sup.smallest(), *(space.sample(rng) for _ in range(4))]:
        with torch.no_grad():
            assert (sup(x, arch) - sup.subnet(arch).eval()(x)).abs().max() < 1e-5, space.to_string(arch)
    sup.train()
    sup(x, space.sample(rng)).sum().backward()  # a training step on a slice reaches the shared weights
    assert sup.stem.weight.grad is not None


@pytest.mark.parametrize("strategy", ["random", "bayesian", "reinforce", "nsga2"])  # evolution: the CLI test
def test_every_strategy_searches_tdnn_under_a_macs_limit(tiny, strategy, tmp_path):
    import nas

    result = nas.search(tiny, strategy, ["synflow", "flops"], budget=3, seed=0, out=tmp_path / "r",
                        batch_size=2, max_flops=40.0, progress=False, plot=False, cache=False)
    assert len(result.candidates) == 3
    assert all(tiny.from_string(c.arch) for c in result.candidates)
    assert all(c.scores["flops"] <= 40.0 for c in result.pareto)


def test_receptive_field_matches_the_gradient_support(tiny):
    from search_spaces.tdnn import receptive_field

    assert receptive_field(search_spaces.get("tdnn").from_string(ecapa(512))) == 5 + 7 * 2 * (2 + 3 + 4)
    arch = tiny.from_string("c32|k3d2w16se|k3d1w32|mfa48")
    model = tiny.build(arch).eval()
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        for name, child in seq.named_children():
            if isinstance(child, torch.nn.ReLU):  # a ReLU off at an edge tap would hide the frame behind it
                setattr(seq, name, torch.nn.Identity())
    fbank = torch.randn(1, 80, 101, generator=torch.Generator().manual_seed(0)).requires_grad_()
    x = model.stem(fbank)
    for block in model.blocks:
        x = block.body(x) + x  # the trunk without SE, whose utterance mean sees every frame
    x[0, :, 50].sum().backward()
    seen = (fbank.grad[0].abs().sum(0) > 0).nonzero()
    assert int(seen.max() - seen.min() + 1) == receptive_field(arch) == 5 + 7 * 2 * 2 + 7 * 1 * 2


def test_silence_has_finite_input_gradients(tiny):
    model = tiny.build(tiny.from_string("c32|k3d2w16se|mfa48"))
    wav = torch.zeros(2, 1, 1, tiny.samples, requires_grad=True)
    model(wav).sum().backward()
    assert torch.isfinite(wav.grad).all()
