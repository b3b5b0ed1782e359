"""``nas.train`` / ``nas train``: outputs, learning, ONNX with trained weights, exact resume, run picks, DDP."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import nas
import search_spaces
from nas.cli import main
from nas.errors import ResumeConflict
from nas.recipes import RECIPES, recipe_for

TOP = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
TINY = {"channels": 4, "cells_per_stage": 1}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(learnable_npz) -> Path:
    return learnable_npz()


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "t"
    return nas.train("nb201", TOP, tiny, epochs=2, batch_size=32, space_options=TINY, out=out, progress=False)


def test_outputs_are_well_formed(trained, tiny):
    out = trained.out
    for name in ("config.json", "train.csv", "curve.png", "metrics.json", "model.pt", "model.onnx",
                 "checkpoint.pt"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "train.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "loss", "train_acc", "val_acc", "lr", "seconds"}
    assert float(rows[1]["lr"]) < float(rows[0]["lr"]) == pytest.approx(0.1)  # cosine from the nb201 recipe
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arch"] == TOP and metrics["space"] == "nb201" and metrics["space_options"] == TINY
    assert metrics["epochs"] == 2 and metrics["recipe"]["source"].startswith("NAS-Bench-201")
    assert 0 <= metrics["test_accuracy"] <= 100 and metrics["val_accuracy"] == float(rows[-1]["val_acc"])
    assert metrics["train_images"] == 180 and metrics["val_images"] == 20 and metrics["test_images"] == 100
    assert metrics["params"] == trained.params > 0 and metrics["seconds_per_epoch"] > 0
    # model.pt is a plain state dict of the space's own network
    state = torch.load(out / "model.pt", weights_only=True)
    net = search_spaces.get("nb201", **TINY).build(search_spaces.get("nb201").from_string(TOP), num_classes=10)
    net.load_state_dict(state)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng", "history"} <= set(ckpt)
    assert all(isinstance(v, torch.Tensor) for v in ckpt["rng"].values())


def test_onnx_carries_the_trained_weights(trained):
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = trained.model.eval()(x).numpy()
    sess = ort.InferenceSession(str(trained.out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    fresh = search_spaces.get("nb201", **TINY).build(search_spaces.get("nb201").from_string(TOP)).eval()
    with torch.no_grad():
        assert not np.allclose(fresh(x).numpy(), got, atol=1e-3)  # not a freshly initialised network


def test_learns_a_learnable_task(tiny, tmp_path):
    result = nas.train("nb201", TOP, tiny, epochs=8, batch_size=32, space_options=TINY, out=tmp_path / "l",
                       progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.test_accuracy >= 50  # chance is 10


def test_resume_after_an_interruption_is_exact(tiny, tmp_path):
    kw = {"epochs": 4, "batch_size": 32, "space_options": TINY, "progress": False, "seed": 3}
    full = nas.train("nb201", TOP, tiny, out=tmp_path / "full", **kw)

    class Killed(Exception):
        pass

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        nas.train("nb201", TOP, tiny, out=tmp_path / "cut", callback=stop_after_two, **kw)
    assert len(list(csv.DictReader((tmp_path / "cut" / "train.csv").open()))) == 2
    resumed = nas.train(out=tmp_path / "cut", resume=True, progress=False)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.test_accuracy == full.test_accuracy


def test_resume_refuses_changed_settings_and_fresh_runs_refuse_a_used_folder(trained, tiny):
    with pytest.raises(ResumeConflict, match="--epochs 5"):
        nas.train(out=trained.out, resume=True, epochs=5, progress=False)
    with pytest.raises(ResumeConflict, match="--seed"):
        nas.train(out=trained.out, resume=True, seed=1, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        nas.train("nb201", TOP, tiny, epochs=2, space_options=TINY, out=trained.out, progress=False)
    with pytest.raises(ValueError, match="not a `nas train` output"):
        nas.train(out=trained.out.parent / "nothing", resume=True)


def test_distillation_from_a_trained_teacher(trained, tiny, tmp_path):
    teacher, info = nas.training.load_trained(trained.out)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), trained.model.eval()(x))
    assert info["input_shape"] == [3, 16, 16] and info["num_classes"] == 10
    kw = {"epochs": 2, "batch_size": 32, "space_options": TINY, "progress": False, "seed": 2}
    plain = nas.train("nb201", TOP, tiny, out=tmp_path / "plain", **kw)
    # alpha 0 weighs only the labels: the run must follow plain training to the same weights
    zero = nas.train("nb201", TOP, tiny, out=tmp_path / "zero", teacher=trained.out, kd_alpha=0.0, **kw)
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(zero.model.state_dict()[key], value, rtol=0, atol=0)
    distilled = nas.train("nb201", TOP, tiny, out=tmp_path / "kd", teacher=trained.out, kd_alpha=1.0, **kw)
    assert distilled.history[-1]["loss"] != plain.history[-1]["loss"]
    metrics = json.loads((distilled.out / "metrics.json").read_text())
    assert metrics["kd"] == {"teacher": str(trained.out.resolve()), "temperature": 4.0, "alpha": 1.0}
    with pytest.raises(ResumeConflict, match="--teacher"):
        nas.train(out=distilled.out, resume=True, teacher=tmp_path / "plain", progress=False)
    # a run from before distillation existed stores no kd: a teacher given on resume still conflicts cleanly
    older = tmp_path / "older"
    shutil.copytree(plain.out, older)
    config = json.loads((older / "config.json").read_text())
    for key in ("kd", "init"):
        del config["settings"][key]
    (older / "config.json").write_text(json.dumps(config))
    with pytest.raises(ResumeConflict, match="--teacher"):
        nas.train(out=older, resume=True, teacher=trained.out, progress=False)


def test_init_starts_from_given_weights(trained, tiny, tmp_path):
    kw = {"epochs": 1, "batch_size": 32, "space_options": TINY, "progress": False, "lr": 1e-9}
    tuned = nas.train("nb201", TOP, tiny, out=tmp_path / "ft", init=trained.out / "model.pt", **kw)
    start = torch.load(trained.out / "model.pt", weights_only=True)
    weight = [k for k in start if k.endswith("conv.weight") or k.endswith("op.1.weight")][0]
    torch.testing.assert_close(tuned.model.state_dict()[weight], start[weight], rtol=0, atol=1e-6)
    other = search_spaces.get("nb201", channels=8, cells_per_stage=1).build(
        search_spaces.get("nb201").from_string(TOP), num_classes=10)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit"):
        nas.train("nb201", TOP, tiny, out=tmp_path / "bad", init=tmp_path / "other.pt", **kw)


@pytest.mark.parametrize("kwargs,message", [
    ({"teacher": "missing-folder"}, "no metrics.json"),
    ({"kd_alpha": 0.5}, "give --teacher"),
    ({"teacher": "TEACHER", "kd_alpha": 2.0}, "--kd-alpha in [0, 1]"),
])
def test_distillation_rejects_bad_settings(trained, tiny, tmp_path, kwargs, message):
    kwargs = {k: trained.out if v == "TEACHER" else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=re.escape(message)):
        nas.train("nb201", TOP, tiny, epochs=1, space_options=TINY, out=tmp_path / "x", progress=False, **kwargs)


def test_recipes():
    assert recipe_for("nb201") == RECIPES["nb201"]
    assert (RECIPES["nb201"].lr, RECIPES["nb201"].weight_decay, RECIPES["nb201"].nesterov) == (0.1, 5e-4, True)
    darts = RECIPES["darts"]
    assert (darts.lr, darts.cutout, darts.aux_weight, darts.drop_path, darts.grad_clip) == (0.025, 16, 0.4, 0.2, 5)
    assert recipe_for("ofa", batch_size=128).lr == pytest.approx(0.05)  # linear scaling
    assert recipe_for("ofa", batch_size=128, lr=0.3).lr == 0.3
    assert recipe_for("nb201", batch_size=64).lr == 0.1
    with pytest.raises(ValueError, match="--epochs"):
        recipe_for("nb201", epochs=0)


def test_darts_trains_with_auxiliary_head_and_drop_path(tmp_path, learnable_npz):
    data = learnable_npz(n_train=40, n_test=20, side=32)
    result = nas.train("darts", search_spaces.get("darts").to_string(
        search_spaces.get("darts").sample(np.random.default_rng(0))), data, epochs=2, batch_size=20,
        space_options={"channels": 2, "layers": 3}, out=tmp_path / "d", progress=False)
    state = torch.load(tmp_path / "d" / "checkpoint.pt", weights_only=True)["model"]
    assert any(k.startswith("auxiliary_head") for k in state)  # trained with DARTS's auxiliary head
    assert not any(k.startswith("auxiliary_head") for k in torch.load(result.out / "model.pt", weights_only=True))
    assert not any(m._forward_hooks for m in result.model.modules())  # drop path is gone after training
    sess = ort.InferenceSession(str(result.out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], result.model(x).numpy(),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, options", [("nb101", {"channels": 8, "num_stacks": 1}), ("ofa", {}),
                                           ("fbnet", {})])
def test_other_image_spaces_train_and_export(tmp_path, name, options, learnable_npz):
    data = learnable_npz(n_train=40, n_test=20, side=32)
    space = search_spaces.get(name, **options)
    arch = space.to_string(space.sample(np.random.default_rng(0)))
    result = nas.train(name, arch, data, epochs=1, batch_size=20, space_options=options, out=tmp_path / "o",
                       progress=False)
    assert result.params > 0 and (result.out / "model.onnx").is_file()
    assert result.history[0]["lr"] == pytest.approx(RECIPES[name].lr * (20 / 256 if name != "nb101" else 1))


def test_cli_trains_a_search_runs_pick(tiny, tmp_path, capsys):
    run = tmp_path / "search"
    found = nas.search("nb201", "random", ["params"], budget=3, seed=0, out=run, progress=False, plot=False,
                       space_options=TINY)
    assert main(["train", str(run), "--rank", "2", "--data", str(tiny), "--epochs", "1", "--batch-size", "64",
                 "--no-progress"]) == 0
    metrics = json.loads((run / "train-rank2" / "metrics.json").read_text())
    assert metrics["arch"] == found.ranked()[1].arch and metrics["space_options"] == TINY
    assert "test accuracy" in capsys.readouterr().out
    assert main(["train", str(run), "--rank", "9", "--data", str(tiny)]) == 2
    assert "3 feasible candidates" in capsys.readouterr().err


def test_cli_arch_file_and_resume(tiny, tmp_path, capsys):
    (tmp_path / "a.txt").write_text(f"# the top cell\n{TOP}\n")
    args = ["train", "--arch-file", str(tmp_path / "a.txt"), "--data", str(tiny), "--epochs", "1",
            "--space-option", "channels=4", "--space-option", "cells_per_stage=1", "--out", str(tmp_path / "o"),
            "--no-progress"]
    assert main(args) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["arch"] == TOP
    assert main(["train", "--resume", str(tmp_path / "o"), "--no-progress"]) == 0  # finished: same outputs
    assert main(["train", "--resume", str(tmp_path / "o"), "--lr", "0.5"]) == 2
    assert "--lr 0.5 differs" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--arch", TOP], "--data is required"),
    (["--data", "DATA"], "give the architecture"),
    (["--arch", "|bogus~0|+|none~0|none~1|+|none~0|none~1|none~2|", "--data", "DATA"], "bogus"),
    (["--arch", TOP, "--data", "missing.npz"], "no such folder or file"),
    (["--arch", TOP, "--data", "DATA", "--val-size", "500"], "--val-size 500"),
    (["--arch", TOP, "--data", "DATA", "--epochs", "0"], "--epochs must be at least 1"),
    (["--arch", TOP, "--data", "DATA", "--device", "tpu9"], "--device"),
    (["--rank", "2", "--arch", TOP, "--data", "DATA"], "--rank K picks from a search run"),
    (["--space", "bert", "--arch", "x", "--data", "DATA"], "image spaces"),
])
def test_cli_bad_input_exits_2(tiny, tmp_path, capsys, argv, message):
    argv = [str(tiny) if a == "DATA" else a for a in argv]
    assert main(["train", *argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing written, so the corrected command can use the folder


DDP_SCRIPT = """
import os, sys, torch, nas
result = nas.train("nb201", sys.argv[1], sys.argv[2], epochs=2, batch_size=32, seed=1,
                   space_options={"channels": 4, "cells_per_stage": 1}, out=sys.argv[3], progress=False)
torch.save(result.model.state_dict(), os.path.join(sys.argv[4], f"rank{os.environ['RANK']}.pt"))
"""


def test_ddp_two_gloo_processes_end_with_identical_weights(tiny, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # --standalone: a local rendezvous on a free port, so parallel test sessions do not collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), TOP, str(tiny), str(tmp_path / "out"), str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too, not only the launcher
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs"] == 2
    assert not list(tmp_path.glob("out/*.tmp"))


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, learnable_npz):
    data = learnable_npz(n_train=1500, n_test=100, side=32)
    common = ["--arch", TOP, "--data", str(data), "--epochs", "4", "--batch-size", "64", "--space-option",
              "channels=4", "--space-option", "cells_per_stage=1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    nas_cmd = [sys.executable, "-m", "nas", "train"]
    subprocess.run([*nas_cmd, *common, "--out", str(tmp_path / "full")], env=env, check=True, timeout=300)
    proc = subprocess.Popen([*nas_cmd, *common, "--out", str(tmp_path / "cut")], env=env)
    log = tmp_path / "cut" / "train.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    subprocess.run([*nas_cmd, "--resume", str(tmp_path / "cut"), "--no-progress"], env=env, check=True,
                   timeout=300)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["test_accuracy"] == full["test_accuracy"]
