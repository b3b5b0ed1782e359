"""``nas supernet train --space tdnn``: speaker folders, utterance split, noisy crops, AAM-softmax, resume, acc_ws."""

from __future__ import annotations

import csv
import json
import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import search_spaces
from nas.audio_data import (
    SNR_TRAIN,
    add_noise,
    crop_batch,
    crop_utterances,
    load_speakers,
    split_utterances,
)
from nas.cli import main
from nas.losses import AAMSoftmax
from nas.supernet_training import train_supernet
from nas.supernets import load_supernet, read_checkpoint

OPTIONS = {"channels": [16, 32], "widths": [16, 32], "kernels": [1, 3], "dilations": [1, 2], "depths": [1, 2],
           "mfa": [24, 48], "seconds": 0.5, "n_mels": 24, "se_bottleneck": 8, "attention": 16, "embedding": 16}
"""Networks of a few thousand weights on 0.5-s crops: an epoch takes a tenth of a second on one core."""
KWARGS = {"epochs": 2, "batch_size": 6, "space_options": OPTIONS, "progress": False}


def _write_wav(path: Path, x: np.ndarray, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def _speakers(root: Path, speakers: int = 3, utterances: int = 4, seed: int = 0) -> Path:
    """``speakers`` x ``utterances`` wav files of 0.5-1 s: a speaker is two sines at its own pitch, plus noise."""
    rng = np.random.default_rng(seed)
    for s in range(speakers):
        (root / f"spk{s}").mkdir(parents=True)
        f0 = 150.0 + 120.0 * s
        for u in range(utterances):
            t = np.arange(int(16000 * rng.uniform(0.5, 1.0))) / 16000
            x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(2 * np.pi * 2.7 * f0 * t + u)
            _write_wav(root / f"spk{s}" / f"{u}.wav", x + 0.02 * rng.standard_normal(len(t)))
    return root


@pytest.fixture(scope="module")
def speakers(tmp_path_factory):
    return _speakers(tmp_path_factory.mktemp("speakers"))


@pytest.fixture(scope="module")
def aam_run(speakers, tmp_path_factory):
    """Two uninterrupted epochs with AAM-softmax."""
    return train_supernet("tdnn", speakers, out=tmp_path_factory.mktemp("aam"), loss="aam", **KWARGS)


def test_split_holds_out_utterances_of_every_speaker(speakers):
    data = load_speakers(speakers)
    assert len(data) == 12 and data.speakers == ("spk0", "spk1", "spk2")
    train, val = split_utterances(data, 1, seed=0)
    assert sorted(val.labels.tolist()) == [0, 1, 2] and sorted(set(train.labels.tolist())) == [0, 1, 2]
    assert not set(train.files) & set(val.files) and len(train) + len(val) == 12
    assert split_utterances(data, 1, seed=0)[1].files == val.files  # seeded
    assert {split_utterances(data, 1, seed=s)[1].files for s in range(6)} != {val.files}


def test_crops_have_the_length_label_and_snr_asked_for():
    wavs = [torch.ones(100), torch.arange(1000.0) / 1000]  # the first shorter than a crop: tiled
    x, y = crop_utterances(wavs, [5, 7], torch.tensor([0, 1, 1]), 300, torch.Generator().manual_seed(0), (0, 0))
    assert x.shape == (3, 1, 1, 300) and y.tolist() == [5, 7, 7]
    clean = torch.randn(4, 4000, generator=torch.Generator().manual_seed(1))
    noisy = add_noise(clean, torch.tensor([0.0, 10.0, 20.0, 30.0]), torch.Generator().manual_seed(2))
    snr = 10 * torch.log10(clean.pow(2).mean(1) / (noisy - clean).pow(2).mean(1))
    assert torch.allclose(snr, torch.tensor([0.0, 10.0, 20.0, 30.0]), atol=1e-3)
    a = crop_batch(wavs, [5, 7], 4, 300, torch.Generator().manual_seed(3), SNR_TRAIN)
    b = crop_batch(wavs, [5, 7], 4, 300, torch.Generator().manual_seed(3), SNR_TRAIN)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_aam_with_no_margin_is_cross_entropy_on_scaled_cosines():
    torch.manual_seed(0)
    e, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 1])
    head = AAMSoftmax(8, 4, margin=0.0, scale=30.0)
    cos = F.normalize(e, dim=1) @ F.normalize(head.weight, dim=1).T
    assert torch.allclose(head(e), 30.0 * cos, atol=1e-5)
    assert torch.allclose(head.loss(head(e), y), F.cross_entropy(30.0 * cos, y), atol=1e-4)
    margin = AAMSoftmax(8, 4, margin=0.2, scale=30.0)
    margin.weight.data.copy_(head.weight)
    plain, widened = margin(e), margin.with_margin(margin(e), y)
    rows = torch.arange(5)
    assert (widened[rows, y] < plain[rows, y]).all()  # the target's logit falls ...
    others = torch.ones_like(plain, dtype=torch.bool)
    others[rows, y] = False
    assert torch.allclose(widened[others], plain[others], atol=1e-4)  # ... and only the target's
    assert margin.loss(plain, y) > head.loss(plain, y)
    target = plain[rows, y] / 30
    assert torch.allclose(widened[rows, y], 30 * torch.cos(torch.acos(target) + 0.2), atol=1e-3)
    with pytest.raises(ValueError, match="margin"):
        AAMSoftmax(8, 4, margin=-0.1)


def test_run_writes_its_outputs_and_supernet_pt_loads(aam_run):
    out = aam_run.out
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "curve.png", "supernet.pt",
                                                      "train.csv"]
    rows = list(csv.DictReader((out / "train.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0 <= float(r[k]) <= 100 for r in rows for k in ("largest_val_acc", "smallest_val_acc"))
    space = search_spaces.get("tdnn", **read_checkpoint(out / "supernet.pt")["space_options"])
    assert space.num_classes == 3 and space.channels == (16, 32)  # the data's speakers, the choice lists
    sup = load_supernet(out / "supernet.pt", space).eval()
    ours = aam_run.supernet.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in sup.state_dict().items())
    # The AAM head's centres are the classifier: a subnet classifies by cosine
    assert torch.allclose(sup.classifier.weight.norm(dim=1), torch.ones(3)) and not sup.classifier.bias.any()
    x = 0.1 * torch.randn(2, 1, 1, space.samples, generator=torch.Generator().manual_seed(0))
    arch = space.sample(np.random.default_rng(0))
    with torch.no_grad():
        assert torch.allclose(sup.subnet(arch).eval()(x), sup(x, arch), atol=1e-5)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(aam_run, speakers, tmp_path):
    def kill(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_supernet("tdnn", speakers, out=tmp_path, loss="aam", callback=kill, **KWARGS)
    resumed = train_supernet(None, out=tmp_path, resume=True, progress=False)
    a, b = aam_run.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in aam_run.history] == [r["loss"] for r in resumed.history]
    assert torch.equal(read_checkpoint(aam_run.out / "checkpoint.pt")["head"]["weight"],
                       read_checkpoint(tmp_path / "checkpoint.pt")["head"]["weight"])


def test_cli_trains_with_cross_entropy_and_refuses_a_changed_loss_on_resume(speakers, tmp_path):
    options = [x for k, v in OPTIONS.items() for x in ("--space-option", f"{k}={json.dumps(v)}")]
    out = tmp_path / "run"
    assert main(["supernet", "train", "--space", "tdnn", *options, "--data", str(speakers), "--epochs", "1",
                 "--batch-size", "6", "--train-size", "12", "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["loss"] == {"name": "ce"} and settings["recipe"]["optimizer"] == "adam"
    assert len(list(csv.DictReader((out / "train.csv").open()))) == 1
    assert main(["supernet", "train", "--resume", str(out), "--loss", "aam", "--no-progress"]) == 2


def test_bad_speaker_folders_give_clear_errors(tmp_path, capsys):
    def train(data: Path, *extra: str) -> str:
        assert main(["supernet", "train", "--space", "tdnn", "--data", str(data), "--epochs", "1",
                     "--out", str(tmp_path / "out"), "--no-progress", *extra]) == 2
        return capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert "no speaker sub-folders with .wav files" in train(tmp_path / "empty")
    assert "no such folder" in train(tmp_path / "missing")
    one = _speakers(tmp_path / "one", speakers=2, utterances=1)
    assert "needs at least 2 utterances" in train(one)
    assert "at least 2 (DIR/<speaker>/<utt>.wav)" in train(_speakers(tmp_path / "solo", speakers=1))
    # AAM needs an embedding: refused for an image space before any data are read
    assert main(["supernet", "train", "--space", "nb201", "--data", str(tmp_path), "--epochs", "1",
                 "--out", str(tmp_path / "img"), "--loss", "aam"]) == 2
    assert "--loss aam trains on a speaker embedding" in capsys.readouterr().err


def test_search_scores_acc_ws_on_the_utterances_the_supernet_held_out(aam_run, speakers, tmp_path):
    from nas.audio_data import validation_segments
    from nas.inherited import held_out_audio

    space = search_spaces.get("tdnn", **read_checkpoint(aam_run.out / "supernet.pt")["space_options"])
    data = held_out_audio(speakers, 500, 256, 0, space.samples, aam_run.out / "supernet.pt")
    trained_on, held = split_utterances(load_speakers(speakers), 1, seed=0)  # the run's default: 1 per speaker
    assert torch.equal(data.val.x, validation_segments(held, space.samples, 0))
    assert torch.equal(data.val.y, held.labels) and len(data.calib) == len(trained_on)
    out = tmp_path / "search"
    assert main(["search", "--space", "tdnn", "--supernet", str(aam_run.out / "supernet.pt"), "--data",
                 str(speakers), "--objectives", "acc_ws,flops", "--budget", "3", "--batch-size", "4",
                 "--out", str(out), "--no-progress", "--no-cache"]) == 0
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    # three validation utterances: a multiple of a third
    assert rows and all(any(math.isclose(float(r["acc_ws"]), k * 100 / 3) for k in range(4)) for r in rows)


def test_acc_ws_scores_a_supernet_on_shorter_utterances_than_it_trained_on(aam_run, speakers):
    from nas.inherited import SupernetScorer

    path = aam_run.out / "supernet.pt"
    options = read_checkpoint(path)["space_options"]
    trained, short = (search_spaces.get("tdnn", **{**options, "seconds": s}) for s in (0.5, 0.25))
    scorers = [SupernetScorer(sp, str(path), str(speakers), bn_batches=1) for sp in (trained, short)]
    # one process scores both: each gets segments of its own length, not the other's cached ones
    assert [s.images().val.x.shape[-1] for s in scorers] == [trained.samples, short.samples]
    assert [len(s.images().val) for s in scorers] == [3, 3]  # the utterance each speaker held out
    arch = short.sample(np.random.default_rng(0))
    assert 0.0 <= scorers[1].accuracy(arch) <= 100.0
