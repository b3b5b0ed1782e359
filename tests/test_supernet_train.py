"""``nas supernet train``: the sandwich step, in-place distillation, ofa's phases, resume, checkpoints, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import search_spaces
from nas.cli import main
from nas.datasets import balanced_subset, load_split
from nas.errors import ResumeConflict
from nas.supernet_training import (
    distillation_loss,
    evaluate_subnet,
    ofa_phase,
    sandwich_archs,
    sandwich_step,
    train_supernet,
)
from nas.supernets import load_supernet, read_checkpoint, supernet_of
from nas.training import hold_out

TINY = {"nb201": {"channels": 4, "cells_per_stage": 1}, "fbnet": {},
        "ofa": {"min_resolution": 8, "max_resolution": 12}}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_npz(images_npz):
    """48 training and 8 test images of 8x8 pixels, two classes."""
    return Path(images_npz(np.arange(48) % 2, side=8, y_test=np.arange(8) % 2))


@pytest.fixture(scope="module")
def trained(tiny_npz, tmp_path_factory):
    """One short run per space: {space: result} (ofa: 4 one-step epochs, one per progressive phase)."""
    out = {}
    for name, epochs in (("nb201", 2), ("fbnet", 1), ("fbnet-nested", 1), ("ofa", 4)):
        space = name.split("-")[0]
        options = {"weight_sharing": "nested"} if name == "fbnet-nested" else TINY[space]
        out[name] = train_supernet(space, tiny_npz, epochs=epochs, batch_size=16, train_size=24, val_size=8,
                                   space_options=options, out=tmp_path_factory.mktemp(name), progress=False)
    return out


def _fbnet():
    space = search_spaces.get("fbnet", num_classes=2)
    return space, supernet_of(space, seed=0)


def test_sandwich_step_updates_the_largest_and_smallest_subnets():
    space, sup = _fbnet()
    archs = sandwich_archs(space, sup, np.random.default_rng(0), num_random=0)
    # By parameter count per layer: a 1x1 convolution skip (width or stride change) outweighs k3_e1_g2
    assert set(archs[0]) == {"k5_e6"} and set(archs[1]) == {"skip", "k3_e1_g2"}
    from search_spaces.fbnet import OPS

    big, unused = OPS.index("k5_e6"), OPS.index("k3_e1")
    width_change = archs[1].index("k3_e1_g2")  # the smallest subnet's first layer with weights
    small = OPS.index("k3_e1_g2")
    before = {k: v.clone() for k, v in sup.state_dict().items()}
    opt = torch.optim.SGD(sup.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    sandwich_step(sup, space, x, y, archs)
    opt.step()
    after = sup.state_dict()

    def changed(prefix: str) -> bool:
        return any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix) and
                   after[k].is_floating_point())

    assert changed(f"layers.0.{big}.") and changed(f"layers.{width_change}.{small}.")
    assert changed("stem.") and changed("classifier.")
    assert not changed(f"layers.0.{unused}.")  # no subnet of the step ran it


@pytest.mark.parametrize("label_weight", [0.0, 0.5])
def test_the_distillation_target_is_the_largest_subnets_output(label_weight):
    space, sup = _fbnet()
    archs = sandwich_archs(space, sup, np.random.default_rng(0), num_random=1)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    _, teacher = sandwich_step(sup, space, x, y, archs, label_smoothing=0.1, label_weight=label_weight)
    got = {n: p.grad.clone() for n, p in sup.named_parameters() if p.grad is not None}
    expected_teacher = F.softmax(sup(x, archs[0]).detach(), dim=1)
    assert torch.allclose(teacher, expected_teacher, atol=1e-6)
    # The same gradients by hand: labels for the largest, its soft predictions (plus label_weight times
    # the labels, as OFA's kd_ratio) for the others
    sup.zero_grad(set_to_none=True)
    loss = F.cross_entropy(sup(x, archs[0]), y, label_smoothing=0.1)
    for arch in archs[1:]:
        student = sup(x, arch)
        loss = loss + distillation_loss(student, expected_teacher)
        loss = loss + label_weight * F.cross_entropy(student, y, label_smoothing=0.1)
    loss.backward()
    for n, p in sup.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[n], p.grad, atol=1e-5), n


def test_distillation_loss_is_soft_cross_entropy():
    logits, teacher = torch.randn(3, 5), F.softmax(torch.randn(3, 5), dim=1)
    hard = F.one_hot(torch.tensor([1, 2, 3]), 5).float()
    assert torch.allclose(distillation_loss(logits, hard), F.cross_entropy(logits, torch.tensor([1, 2, 3])))
    kl = F.kl_div(F.log_softmax(logits, 1), teacher, reduction="batchmean")
    entropy = -(teacher * teacher.log()).sum(1).mean()
    assert torch.allclose(distillation_loss(logits, teacher), kl + entropy, atol=1e-6)


@pytest.mark.parametrize(("progress", "phase", "ks", "e", "d"), [
    (0.0, "full", {7}, {6}, {4}), (0.4, "kernel", {3, 5, 7}, {6}, {4}), (0.52, "depth", {3, 5, 7}, {6}, {3, 4}),
    (0.7, "depth", {3, 5, 7}, {6}, {2, 3, 4}), (0.76, "expand", {3, 5, 7}, {4, 6}, {2, 3, 4}),
    (0.99, "expand", {3, 5, 7}, {3, 4, 6}, {2, 3, 4})])
def test_progressive_shrinking_samples_only_the_phases_choices(progress, phase, ks, e, d):
    space = search_spaces.get("ofa", num_classes=2, **TINY["ofa"])
    name, allowed = ofa_phase(progress)
    assert name == phase
    seen: dict[str, set[int]] = {"ks": set(), "e": set(), "d": set()}
    rng = np.random.default_rng(0)
    for _ in range(20):
        for arch in sandwich_archs(space, None, rng, num_random=4, allowed=allowed):
            active = arch.active_blocks()
            seen["ks"] |= {arch.ks[i] for i in active}
            seen["e"] |= {arch.e[i] for i in active}
            seen["d"] |= set(arch.d)
            assert arch.r in space.resolutions
    assert seen == {"ks": ks, "e": e, "d": d}
    assert ofa_phase(progress, progressive=False)[1] == {"ks": (3, 5, 7), "e": (3, 4, 6), "d": (2, 3, 4)}


def test_ofa_run_goes_through_the_phases_and_sorts_channels_before_expand(trained):
    assert [r["phase"] for r in trained["ofa"].history] == ["full", "kernel", "depth", "expand"]
    # Sorted at the start of the expand epoch; one small step later the order is still nearly descending
    # (unsorted channels would be in descending order for about half the neighbouring pairs)
    for block in trained["ofa"].supernet.blocks:
        norms = block.pw.conv.weight.abs().sum(dim=(0, 2, 3))
        assert (norms[:-1] >= norms[1:]).float().mean() > 0.9


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tiny_npz, tmp_path):
    kwargs = {"epochs": 3, "batch_size": 16, "val_size": 8, "space_options": TINY["nb201"], "progress": False}
    whole = train_supernet("nb201", tiny_npz, out=tmp_path / "whole", **kwargs)

    def kill(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_supernet("nb201", tiny_npz, out=tmp_path / "cut", callback=kill, **kwargs)
    resumed = train_supernet(None, out=tmp_path / "cut", resume=True, progress=False)
    a, b = whole.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in whole.history] == [r["loss"] for r in resumed.history]


def test_ofa_resumed_across_the_channel_sort_equals_an_uninterrupted_run(trained, tiny_npz, tmp_path):
    def kill(row):
        if row["epoch"] == 3:  # the next epoch sorts the channels and resets the optimiser's momentum
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_supernet("ofa", tiny_npz, epochs=4, batch_size=16, train_size=24, val_size=8,
                       space_options=TINY["ofa"], out=tmp_path, progress=False, callback=kill)
    resumed = train_supernet(None, out=tmp_path, resume=True, progress=False)
    a, b = trained["ofa"].supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["nb201", "fbnet", "fbnet-nested", "ofa"])
def test_checkpoint_round_trip_and_subnet_equals_forward(trained, name):
    result = trained[name]
    path = result.out / "supernet.pt"
    assert (result.out / "curve.png").is_file() and (result.out / "train.csv").is_file()
    space = search_spaces.get(name.split("-")[0], **read_checkpoint(path)["space_options"])
    sup = load_supernet(path, space)
    ours = result.supernet.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in sup.state_dict().items())
    # nb201's supernet normalises with batch statistics only, so its subnet is compared in training mode
    sup.train(name == "nb201")
    arch = space.sample(np.random.default_rng(1))
    side = getattr(arch, "r", 8)
    x = torch.randn(4, 3, side, side)
    net = sup.subnet(arch)
    with torch.no_grad():
        assert torch.allclose(net(x), sup(x, arch), atol=1e-5)


def test_cli_rejects_bad_input_with_exit_2(tiny_npz, tmp_path, capsys):
    assert main(["supernet", "train", "--space", "darts", "--data", str(tiny_npz), "--epochs", "1",
                 "--out", str(tmp_path / "a")]) == 2
    assert "fbnet, nb201, ofa" in capsys.readouterr().err
    assert main(["supernet", "train", "--space", "fbnet", "--data", str(tmp_path / "none"), "--epochs", "1",
                 "--out", str(tmp_path / "b")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["supernet", "train", "--space", "fbnet", "--data", str(tiny_npz)]) == 2
    assert "--epochs, --out" in capsys.readouterr().err


def test_cli_trains_and_resumes(tiny_npz, tmp_path):
    args = ["supernet", "train", "--space", "nb201", "--space-option", "channels=4", "--space-option",
            "cells_per_stage=1", "--data", str(tiny_npz), "--epochs", "1", "--batch-size", "16", "--val-size", "8",
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0
    assert main(["supernet", "train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["supernet", "train", "--resume", str(tmp_path / "run"), "--seed", "3", "--no-progress"]) == 2


def test_warmup_trains_the_largest_alone_first(tiny_npz, tmp_path):
    from search_spaces.fbnet import OPS

    space = search_spaces.get("fbnet", num_classes=2)
    initial = supernet_of(space, seed=0).state_dict()
    kwargs = {"epochs": 2, "batch_size": 16, "train_size": 24, "val_size": 8, "progress": False}
    half = train_supernet("fbnet", tiny_npz, warmup=0.5, out=tmp_path / "half", **kwargs)
    assert [r["phase"] for r in half.history] == ["largest", "sandwich"]
    warm = train_supernet("fbnet", tiny_npz, warmup=0.9, out=tmp_path / "warm", **kwargs)
    assert [r["phase"] for r in warm.history] == ["largest", "largest"]
    after = warm.supernet.state_dict()
    moved = {k.split(".")[2] for k in after if k.startswith("layers.") and not torch.equal(after[k], initial[k])}
    assert moved == {str(OPS.index("k5_e6"))}  # in every layer, only the largest's op trained
    assert not torch.equal(after["classifier.weight"], initial["classifier.weight"])
    with pytest.raises(ValueError, match="--warmup must be a fraction"):
        train_supernet("fbnet", tiny_npz, warmup=1.0, out=tmp_path / "bad", **kwargs)
    with pytest.raises(ValueError, match="ofa's progressive shrinking already"):
        train_supernet("ofa", tiny_npz, warmup=0.3, out=tmp_path / "bad", **kwargs)


def test_label_weight_is_a_stored_setting(tiny_npz, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["supernet", "train", "--space", "fbnet", "--data", str(tiny_npz), "--epochs", "1", "--batch-size", "16",
            "--train-size", "24", "--val-size", "8", "--label-weight", "1", "--out", str(run), "--no-progress"]
    assert main(args) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["label_weight"] == 1.0
    assert main(["supernet", "train", "--resume", str(run), "--label-weight", "0", "--no-progress"]) == 2
    assert "--label-weight 0.0 differs from 1.0" in capsys.readouterr().err
    # A run stored before the setting existed trained by distillation alone, and resumes so
    del config["settings"]["label_weight"]
    (run / "config.json").write_text(json.dumps(config))
    assert main(["supernet", "train", "--resume", str(run), "--label-weight", "0", "--no-progress"]) == 0
    assert main(["supernet", "train", "--space", "fbnet", "--data", str(tiny_npz), "--epochs", "1",
                 "--label-weight", "-1", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "--label-weight must be a finite number >= 0" in capsys.readouterr().err


DDP_SCRIPT = """
import json, os, sys
import torch
import nas.supernet_training as st
import nas.training

data, root = sys.argv[1], sys.argv[2]
rank = os.environ.get("RANK", "0")
if "WORLD_SIZE" in os.environ:
    # One group for the three runs: each joins it, and a gloo group set up again after being destroyed hangs
    torch.distributed.init_process_group("gloo")
record = {"writes": [], "archs": [], "images": []}


def spy(name, note, module=st):
    real = getattr(module, name)

    def call(*args, **kwargs):
        out = real(*args, **kwargs)
        note(args, out)
        return out

    setattr(module, name, call)


for name in ("save_supernet", "write_csv", "plot_history"):
    spy(name, lambda args, out, name=name: record["writes"].append(name))
spy("write_json", lambda args, out: record["writes"].append("write_json"), nas.training)  # config.json
spy("sandwich_archs", lambda args, out: record["archs"].append([args[0].to_string(a) for a in out]))
# Each image's sum before augmentation identifies it: which images a step gave this rank
spy("augment", lambda args, out: record["images"].append(args[0].double().sum((1, 2, 3)).tolist()))
kwargs = dict(epochs=2, batch_size=16, val_size=8, space_options={"channels": 4, "cells_per_stage": 1},
              progress=False)
whole = st.train_supernet("nb201", data, out=os.path.join(root, "whole"), **kwargs)
torch.save(whole.supernet.state_dict(), os.path.join(root, f"whole{rank}.pt"))
record["history"] = [{k: r[k] for k in ("loss", "largest_val_acc")} for r in whole.history]
with open(os.path.join(root, f"record{rank}.json"), "w") as f:
    json.dump(record, f)
if len(sys.argv) > 3:  # killed after the first epoch, then resumed by every rank
    def stop(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    try:
        st.train_supernet("nb201", data, out=os.path.join(root, "cut"), callback=stop, **kwargs)
    except KeyboardInterrupt:
        pass
    resumed = st.train_supernet(None, out=os.path.join(root, "cut"), resume=True, progress=False)
    torch.save(resumed.supernet.state_dict(), os.path.join(root, f"resumed{rank}.pt"))
"""


def _launch(cmd: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its workers, which run in sessions of their own, on SIGTERM
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]


def test_ddp_gloo_ranks_hold_one_supernet_and_split_a_single_process_batches(tiny_npz, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    ddp.mkdir()
    one.mkdir()
    # --standalone: a local rendezvous on a free port, so parallel test sessions do not collide
    _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
             str(tiny_npz), str(ddp), "resume"])
    _launch([sys.executable, str(script), str(tiny_npz), str(one)])

    def weights(path: Path) -> dict[str, torch.Tensor]:
        return torch.load(path, weights_only=True)

    # Gradients averaged and buffers synchronised: the ranks hold the same supernet, resumed or not
    a = weights(ddp / "whole0.pt")
    for other in (weights(ddp / "whole1.pt"), weights(ddp / "resumed0.pt"), weights(ddp / "resumed1.pt")):
        assert all(torch.equal(a[k], other[k]) for k in a)
    rank0, rank1, single = (json.loads(p.read_text()) for p in (ddp / "record0.json", ddp / "record1.json",
                                                                one / "record0.json"))
    assert set(rank0["writes"]) == {"write_json", "save_supernet", "write_csv", "plot_history"}
    assert rank1["writes"] == []
    assert sorted(p.name for p in (ddp / "whole").iterdir()) == ["checkpoint.pt", "config.json", "curve.png",
                                                                  "supernet.pt", "train.csv"]
    settings = json.loads((ddp / "whole" / "config.json").read_text())["settings"]
    assert settings["world_size"] == 2
    # Every rank runs a single process's subnets, each on its half of a single process's batch
    assert rank0["archs"] == rank1["archs"] == single["archs"]
    assert len(rank0["images"]) == len(single["images"]) == 6  # 2 epochs of 40 images in batches of 16, 16, 8
    for half0, half1, batch in zip(rank0["images"], rank1["images"], single["images"], strict=True):
        assert len(half0) == len(half1) == len(batch) // 2
        assert np.allclose(sorted(half0 + half1), sorted(batch), rtol=0, atol=1e-9)
    assert rank0["history"] == rank1["history"]
    # The validation split over the ranks counts what one process counts on the same weights
    space = search_spaces.get("nb201", num_classes=2, **TINY["nb201"])
    train_set, val_set = hold_out(balanced_subset(load_split(str(tiny_npz), "train"), None, 0), 8, 0)
    largest = sandwich_archs(space, None, np.random.default_rng(0), 0)[0]
    sup = load_supernet(ddp / "whole" / "supernet.pt", space)
    assert evaluate_subnet(sup, space, largest, train_set.x, val_set, 16) == rank0["history"][-1]["largest_val_acc"]
    # Not the single process's weights: batch norm normalises over each rank's 8 images, not the 16 of a
    # step, and each rank's crops and flips come from its own stream; the losses only stay close
    assert all(math.isclose(d["loss"], s["loss"], rel_tol=0.2) for d, s in zip(rank0["history"], single["history"],
                                                                                strict=True))
    with pytest.raises(ResumeConflict, match="nproc_per_node"):
        train_supernet(None, out=ddp / "whole", resume=True, progress=False)
