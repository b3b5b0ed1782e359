"""Searching ofa and fbnet with a trained supernet: ``acc_ws`` as an objective, exports with inherited weights.

Everything is tiny: a 10-class ``.npz`` of 32x32 images, an ofa supernet saved after a few SGD steps at 32
pixels, resolutions 32/40, a few candidates, a few held-out images.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nas
import search_spaces
from nas.cli import main
from nas.datasets import normalise
from nas.errors import ResumeConflict
from nas.inherited import SupernetScorer, held_out, recalibrate_bn, trained_images
from nas.result import run_network
from nas.supernets import save_supernet, supernet_of
from tests.test_ofa import ofa_state_dict

SMALL = {"resolutions": [32, 40]}
WS = {"val_size": 60, "bn_batches": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """200 training and 40 test images, 10 classes; each class has its own mean colour, so it is learnable."""
    rng = np.random.default_rng(0)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        base = (y[:, None] * 23 % 256)[:, :, None, None, None].reshape(n, 1, 1, 1)
        x = np.clip(base + rng.integers(-40, 40, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        return x, y

    path = tmp_path_factory.mktemp("ws-data") / "tiny.npz"
    (xtr, ytr), (xte, yte) = images(200), images(40)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, data: str) -> str:
    """An ofa supernet (10 classes) after a few SGD steps of its largest subnet at 32 pixels."""
    space = search_spaces.get("ofa", num_classes=10)
    sup = supernet_of(space, seed=0)
    with np.load(data) as d:
        x = torch.from_numpy(d["x_train"][:64]).permute(0, 3, 1, 2).float().div(255)
        y = torch.from_numpy(d["y_train"][:64]).long()
    opt = torch.optim.SGD(sup.parameters(), lr=0.01, momentum=0.9)
    sup.train()
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(sup(x, space.largest(32)), y).backward()
        opt.step()
    return str(save_supernet(tmp_path_factory.mktemp("ws-ckpt") / "ofa.pt", space, sup))


def _search(out: Path, data: str, ckpt: str, **kw) -> nas.SearchResult:
    options = {"space": "ofa", "strategy": "random", "objectives": ["acc_ws", "latency"], "budget": 4, "seed": 0,
               "out": out, "target": "rpi4", "data": data, "supernet": ckpt, "space_options": SMALL,
               "progress": False, "plot": False, **WS, **kw}
    return nas.search(**options)


def test_recalibrate_bn_is_the_plain_mean_over_the_batches():
    bn = nn.BatchNorm2d(3, momentum=0.1)
    bn.running_mean.fill_(5.0)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 2, 2, generator=gen) + i for i in range(3)]
    out = recalibrate_bn(nn.Sequential(bn), batches)
    means = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-6)
    assert not out.training and bn.momentum == 0.1  # eval mode, the layer's own momentum restored
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_bn(nn.Sequential(nn.BatchNorm2d(3)), [])
    with pytest.raises(ValueError, match="no running statistics"):
        recalibrate_bn(nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)), batches)


def test_held_out_is_balanced_disjoint_and_seeded(data):
    a, b = held_out(data, 50, 64, seed=0), held_out(data, 50, 64, seed=0)
    assert a.digest() == b.digest() and held_out(data, 50, 64, seed=1).digest() != a.digest()
    assert np.bincount(a.val.y.numpy(), minlength=10).tolist() == [5] * 10
    val = {bytes(t.numpy().tobytes()) for t in a.val.x}
    assert not val & {bytes(t.numpy().tobytes()) for t in a.calib.x}  # no image in both
    with pytest.raises(ValueError, match="lower --val-size"):
        held_out(data, 500, 64, seed=0)


def test_acc_ws_search_end_to_end_with_a_parity_checked_best_onnx(tmp_path, data, ckpt):
    out = tmp_path / "run"
    rc = main(["search", "--space", "ofa", "--target", "rpi4", "--supernet", ckpt, "--data", data,
               "--objectives", "acc_ws,latency", "--strategy", "evolution", "--budget", "5",
               "--space-option", "resolutions=[32,40]", "--val-size", "60", "--bn-batches", "1",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress"])
    assert rc == 0
    result = nas.load_run(out)
    assert [c.status for c in result.candidates] == ["ok"] * 5
    accs = [c.scores["acc_ws"] for c in result.candidates]
    assert all(0 <= a <= 100 for a in accs)
    best = json.loads((out / "best.json").read_text())
    assert "acc_ws" in best["scores"] and best["config"]["supernet_digest"]
    assert best["config"]["space_options"]["num_classes"] == 10  # taken from the checkpoint
    # acc_ws is a pure function of checkpoint, data, seed and arch: a fresh scorer agrees
    space = search_spaces.get("ofa", **result.config["space_options"])
    scorer = SupernetScorer(space, ckpt, data, 0, **WS)
    arch = result.candidates[0].arch
    assert scorer.accuracy(space.from_string(arch)) == result.candidates[0].scores["acc_ws"]
    # never cached: the proxy cache holds no acc_ws value
    assert not any(b"acc_ws" in f.read_bytes() for f in (tmp_path / "cache").rglob("*") if f.is_file())

    # best.onnx holds the inherited weights with recalibrated BN: onnxruntime equals torch, not a random net
    net = run_network(result.config, result.best.arch)
    r = space.from_string(result.best.arch).r
    with np.load(data) as d:  # test images: the inputs the recalibrated statistics are meant for
        x = normalise(torch.from_numpy(d["x_test"][:8]).permute(0, 3, 1, 2))
    x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = net(x).numpy()
        rand = space.build(space.from_string(result.best.arch)).eval()(x).numpy()
    sess = ort.InferenceSession(str(out / "best.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-4
    assert np.abs(got - rand).max() > 1e-2
    # nas export writes the same network
    assert main(["export", str(out), "--out", str(tmp_path / "exp.onnx")]) == 0
    sess = ort.InferenceSession(str(tmp_path / "exp.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0] - ref).max() <= 1e-4


def test_resume_checks_the_checkpoint_digest_and_path(tmp_path, data, ckpt):
    own = tmp_path / "ofa.pt"
    shutil.copy(ckpt, own)
    out = tmp_path / "run"
    first = _search(out, data, str(own), budget=3, objectives=["acc_ws"])
    again = _search(out, data, str(own), budget=4, objectives=["acc_ws"], resume=True)
    assert len(again.candidates) == 4
    assert [c.scores for c in again.candidates[:3]] == [c.scores for c in first.candidates]
    with pytest.raises(ResumeConflict, match="--supernet"):
        _search(out, data, ckpt, budget=5, objectives=["acc_ws"], resume=True)  # another file
    space = search_spaces.get("ofa", num_classes=10)
    save_supernet(own, space, supernet_of(space, seed=1))  # the same path, other weights
    with pytest.raises(ResumeConflict, match="changed since the run started"):
        nas.search(out=out, budget=5, resume=True, progress=False, plot=False)


@pytest.mark.parametrize("argv, message", [
    (["--space", "ofa", "--supernet", "CKPT"], "--supernet needs --data DIR"),
    (["--space", "darts", "--supernet", "CKPT", "--data", "DATA"], "spaces with one: fbnet"),
    (["--space", "ofa", "--objectives", "acc_ws", "--data", "DATA"], "acc_ws (inherited-weight accuracy) needs --supernet"),
    (["--space", "ofa", "--supernet", "missing.pt", "--data", "DATA"], "missing.pt"),
    (["--space", "ofa", "--val-size", "10"], "need --supernet"),
    (["--space", "ofa", "--supernet", "CKPT", "--data", "DATA", "--proxies", "acc_ws"], "not a proxy"),
])
def test_bad_supernet_settings_exit_2_with_a_clear_message(tmp_path, capsys, data, ckpt, argv, message):
    argv = [{"CKPT": ckpt, "DATA": data}.get(a, a) for a in argv]
    rc = main(["search", *argv, "--budget", "2", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "run.sqlite").exists()


def test_more_classes_than_the_supernet_has_is_refused(tmp_path, data):
    space = search_spaces.get("ofa", num_classes=5)
    five = save_supernet(tmp_path / "five.pt", space, supernet_of(space, seed=0))
    with pytest.raises(ValueError, match="10 classes but the supernet's classifier has 5"):
        _search(tmp_path / "run", data, str(five))


def test_official_ofa_state_dict_as_supernet(tmp_path, data):
    state = ofa_state_dict(supernet_of(search_spaces.get("ofa"), seed=0))  # OFA's key names, random tensors
    path = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": state}, path)
    result = _search(tmp_path / "run", data, str(path), budget=2, objectives=["acc_ws"])
    assert [c.status for c in result.candidates] == ["ok", "ok"]
    assert result.config["space_options"].get("num_classes") is None  # ImageNet's 1000 classes
    net = run_network(result.config, result.best.arch)
    assert net.classifier.out_features == 1000


def test_thread_executor_gives_the_serial_values_with_proxies_beside(tmp_path, data, ckpt):
    class Threads:
        """Two evaluations at once in threads of this process (the supernet is shared, subnets are not)."""

        parallelism = 2

        def __init__(self) -> None:
            self.pool = ThreadPoolExecutor(2)

        def map(self, evaluate, archs):
            yield from self.pool.map(evaluate, list(archs))

        def close(self) -> None:
            self.pool.shutdown()

    serial = _search(tmp_path / "serial", data, ckpt, objectives=["acc_ws", "synflow"], strategy="nsga2",
                     cache=False)
    threads = _search(tmp_path / "threads", data, ckpt, objectives=["acc_ws", "synflow"], strategy="nsga2",
                      cache=False, executor=Threads())
    by_arch = {c.arch: c.scores for c in serial.candidates}
    common = [c for c in threads.candidates if c.arch in by_arch]
    assert common and all(c.scores == by_arch[c.arch] for c in common)
    assert all(set(c.scores) == {"acc_ws", "synflow"} for c in threads.candidates)


@pytest.mark.parametrize("name, options", [("fbnet", {"num_classes": 10, "dataset": "cifar10"}),
                                           ("nb201", {"channels": 8, "cells_per_stage": 1})])
def test_other_spaces_with_a_supernet(tmp_path, data, name, options):
    space = search_spaces.get(name, **options)
    path = save_supernet(tmp_path / f"{name}.pt", space, supernet_of(space, seed=0))
    result = nas.search(name, "random", ["acc_ws"], budget=2, seed=0, out=tmp_path / "run", data=data,
                        supernet=str(path), progress=False, plot=False, **WS)
    assert [c.status for c in result.candidates] == ["ok", "ok"]
    assert result.config["space_options"] == options  # from the checkpoint
    assert result.export_best(tmp_path / "best.onnx") is not None


def test_validation_images_exclude_those_the_supernet_trained_on(tmp_path, data):
    space = search_spaces.get("ofa", num_classes=10)
    settings = {"data": data, "train_size": 150, "val_size": 30, "seed": 3}  # as `nas supernet train` stores
    path = save_supernet(tmp_path / "s.pt", space, supernet_of(space, seed=0), {"settings": json.dumps(settings)})
    trained = trained_images(path, data)
    assert trained is not None and len(trained) == 120
    scorer = SupernetScorer(space, str(path), data, 0, val_size=80, bn_batches=1)
    seen = {t.numpy().tobytes() for t in trained.x}
    assert not any(t.numpy().tobytes() in seen for t in scorer.images().val.x)  # 30 held out + 50 never used
    with pytest.raises(ValueError, match="did not train on"):
        held_out(data, 81, 64, 0, trained)
