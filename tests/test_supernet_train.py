"""``nas supernet train``: the sandwich step, in-place distillation, ofa's phases, resume, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import search_spaces
from nas.cli import main
from nas.supernet_training import (
    distillation_loss,
    ofa_phase,
    sandwich_archs,
    sandwich_step,
    train_supernet,
)
from nas.supernets import load_supernet, read_checkpoint, supernet_of

TINY = {"nb201": {"channels": 4, "cells_per_stage": 1}, "fbnet": {},
        "ofa": {"min_resolution": 8, "max_resolution": 12}}


@pytest.fixture(scope="module")
def tiny_npz(images_npz):
    """48 training and 8 test images of 8x8 pixels, two classes."""
    return Path(images_npz(np.arange(48) % 2, side=8, y_test=np.arange(8) % 2))


@pytest.fixture(scope="module")
def trained(tiny_npz, tmp_path_factory):
    """One short run per space: {space: result} (ofa: 4 one-step epochs, one per progressive phase)."""
    out = {}
    for name, epochs in (("nb201", 2), ("fbnet", 1), ("ofa", 4)):
        out[name] = train_supernet(name, tiny_npz, epochs=epochs, batch_size=16, train_size=24, val_size=8,
                                   space_options=TINY[name], out=tmp_path_factory.mktemp(name), progress=False)
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


def test_the_distillation_target_is_the_largest_subnets_output():
    space, sup = _fbnet()
    archs = sandwich_archs(space, sup, np.random.default_rng(0), num_random=1)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    _, teacher = sandwich_step(sup, space, x, y, archs, label_smoothing=0.1)
    got = {n: p.grad.clone() for n, p in sup.named_parameters() if p.grad is not None}
    expected_teacher = F.softmax(sup(x, archs[0]).detach(), dim=1)
    assert torch.allclose(teacher, expected_teacher, atol=1e-6)
    # The same gradients by hand: labels for the largest, its soft predictions for the others
    sup.zero_grad(set_to_none=True)
    loss = F.cross_entropy(sup(x, archs[0]), y, label_smoothing=0.1)
    for arch in archs[1:]:
        loss = loss + distillation_loss(sup(x, arch), expected_teacher)
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


@pytest.mark.parametrize("name", ["nb201", "fbnet", "ofa"])
def test_checkpoint_round_trip_and_subnet_equals_forward(trained, name):
    result = trained[name]
    path = result.out / "supernet.pt"
    assert (result.out / "curve.png").is_file() and (result.out / "train.csv").is_file()
    space = search_spaces.get(name, **read_checkpoint(path)["space_options"])
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
