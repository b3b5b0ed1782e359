"""The NAS-Bench-201 supernet and the differentiable one-shot strategies (DARTS, PC-DARTS, GDAS) on tiny data.

Data: 200 random 3x16x16 uint8 images in 10 classes (an .npz); supernet with C=4, N=1. What is checked is
the machinery (gradients, channel counts, sampling, derivation, checkpoints, resume), not accuracy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import nas
import search_spaces
from nas import strategies
from nas.datasets import normalise
from nas.errors import ResumeConflict
from nas.strategies.oneshot import CHECKPOINT, DARTS, GDAS, PCDARTS
from search_spaces.nb201 import EDGES, OPS
from search_spaces.nb201_supernet import NB201SuperNet, gumbel_sample, supernet

SPACE = search_spaces.get("nb201", channels=4, cells_per_stage=1, input_shape=(3, 16, 16))
TINY = {"train_size": 200, "batch_size": 32, "epochs": 3}


@pytest.fixture(scope="module")
def data(images_npz) -> str:
    return images_npz(np.repeat(np.arange(10), 20))


def _x(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _loss(net: NB201SuperNet, **kw) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(net(_x(), **kw), torch.arange(8) % 10)


# -- the supernet ----------------------------------------------------------------------------------------
def test_gradients_reach_alpha_and_beta():
    net = supernet(SPACE, partial_k=2, edge_norm=True)
    _loss(net).backward()
    assert net.alpha.grad is not None and (net.alpha.grad != 0).all()
    # Node 1 has one incoming edge: its normalised weight is 1 whatever beta, so only nodes 2 and 3 learn.
    assert net.beta.grad[0] == 0 and (net.beta.grad[1:] != 0).all()
    plain = supernet(SPACE)
    _loss(plain).backward()
    assert plain.beta is None and (plain.alpha.grad != 0).all()
    assert {id(p) for p in net.arch_parameters()} == {id(net.alpha), id(net.beta)}
    assert len(net.weight_parameters()) == len(list(net.parameters())) - 2


@pytest.mark.parametrize("k", [2, 4])
def test_partial_channels_pass_exactly_c_over_k_channels(k):
    space = search_spaces.get("nb201", channels=8, cells_per_stage=1, input_shape=(3, 16, 16))
    net = supernet(space, partial_k=k)
    seen: list[tuple[int, int]] = []  # (op input channels, cell width)
    for cell in (m for m in net.modules() if m.__class__.__name__ == "SearchCell"):
        width = cell.edges[0].op_channels * k
        for edge in cell.edges:
            for op in edge.ops:
                op.register_forward_pre_hook(lambda _m, args, w=width: seen.append((args[0].shape[1], w)))
    net(_x())
    assert len(seen) == 3 * len(EDGES) * (len(OPS) - 1)  # `none` adds zeros: the mixture skips it
    assert all(c == w // k for c, w in seen) and {w for _, w in seen} == {8, 16, 32}
    # The bypassed channels come out untouched (undo the shuffle to find them).
    edge = next(m for m in net.modules() if m.__class__.__name__ == "MixedEdge")
    x = torch.randn(2, 8, 4, 4)
    out = edge(x, torch.full((5,), 0.2))
    unshuffled = out.view(2, 8 // k, k, 4, 4).transpose(1, 2).reshape(2, 8, 4, 4)
    assert torch.equal(unshuffled[:, 8 // k:], x[:, 8 // k:])


def _count_op_calls(net: NB201SuperNet) -> list[list[int]]:
    """Per cell edge (flattened over cells), how often each op ran."""
    counts = []
    for cell in (m for m in net.modules() if m.__class__.__name__ == "SearchCell"):
        for edge in cell.edges:
            row = [0] * len(OPS)
            for j, op in enumerate(edge.ops):
                op.register_forward_hook(lambda *_a, row=row, j=j: row.__setitem__(j, row[j] + 1))
            counts.append(row)
    return counts


def test_gdas_computes_only_the_sampled_op_and_alpha_still_learns():
    net = supernet(SPACE)
    counts = _count_op_calls(net)
    hard, index = gumbel_sample(net.alpha, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(hard.detach(), torch.nn.functional.one_hot(index, 5).float())
    _loss(net, sample=(hard, index)).backward()
    per_cell = np.array(counts).reshape(3, len(EDGES), len(OPS))
    expected = np.zeros((len(EDGES), len(OPS)), dtype=int)
    expected[np.arange(len(EDGES)), index.numpy()] = 1
    assert (per_cell == expected).all()
    # Straight-through: every op's alpha of the edges gets a gradient through the softmax, though only
    # the drawn op ran.
    assert (net.alpha.grad != 0).all()


def test_fixed_path_runs_one_op_per_edge():
    net = supernet(SPACE)
    counts = _count_op_calls(net)
    arch = ("nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3")
    net(_x(), arch=arch)
    per_cell = np.array(counts).reshape(3, len(EDGES), len(OPS))
    assert (per_cell.sum(-1) == 1).all()
    assert [OPS[j] for j in per_cell[0].argmax(-1)] == list(arch)


def test_genotype_is_the_argmax_per_edge_none_included():
    net = supernet(SPACE)
    with torch.no_grad():
        net.alpha.zero_()
        for k, op in enumerate(["nor_conv_3x3", "none", "nor_conv_3x3", "skip_connect", "avg_pool_3x3",
                                "nor_conv_1x1"]):
            net.alpha[k, OPS.index(op)] = 1.0
    assert SPACE.to_string(net.genotype()) == \
        "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|"


def test_genotype_without_none_takes_each_edge_s_next_best_op():
    net = supernet(SPACE)
    with torch.no_grad():
        net.alpha.zero_()
        net.alpha[:, OPS.index("none")] = 2.0  # none leads everywhere; the runner-up differs per edge
        for k, op in enumerate(["nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3", "nor_conv_3x3",
                                "nor_conv_1x1"]):
            net.alpha[k, OPS.index(op)] = 1.0
    assert set(net.genotype()) == {"none"}
    assert SPACE.to_string(net.genotype(exclude_none=True)) == \
        "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    mask = torch.ones(len(EDGES), len(OPS), dtype=torch.bool)
    mask[0] = False
    mask[0, OPS.index("none")] = True  # an edge pruned to none alone still derives it
    net.set_op_mask(mask)
    assert net.genotype(exclude_none=True)[0] == "none"


def test_derivation_rule_per_method_and_space(data):
    assert DARTS(SPACE, data=data, **TINY).method["derive"] == "argmax"  # NAS-Bench-201's DARTS baselines
    assert PCDARTS(SPACE, data=data, K=2, **TINY).method["derive"] == "no_none"  # bypassed edges never vanish
    assert PCDARTS(SPACE, data=data, K=2, derive="argmax", **TINY).method["derive"] == "argmax"
    with pytest.raises(ValueError, match="derive must be one of argmax, no_none"):
        DARTS(SPACE, data=data, derive="best", **TINY)
    darts_space = search_spaces.get("darts", channels=4, layers=2)
    assert DARTS(darts_space, data=data, **TINY).method["derive"] == "no_none"
    with pytest.raises(ValueError, match="darts space derives cells by DARTS' rule"):
        DARTS(darts_space, data=data, derive="argmax", **TINY)


def test_pcdarts_derives_no_none_edge_and_runs_from_before_the_rule_resume_as_argmax(data, tmp_path):
    s = PCDARTS(SPACE, seed=0, data=data, K=2, storage=tmp_path / "j", **TINY)  # alpha frozen (warm-up)
    s._setup()
    with torch.no_grad():
        s._model.alpha[:, OPS.index("none")] = 5.0
    s.ask(3)
    assert all(max(row) == row[OPS.index("none")] for r in s.history for row in r["alpha"])
    assert all("none" not in r["genotype"] for r in s.history)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del ckpt["fingerprint"]["method"]["derive"]  # what a checkpoint written before ``derive`` holds
    torch.save(ckpt, tmp_path / CHECKPOINT)
    with pytest.raises(ResumeConflict, match="other settings"):  # it derived by argmax: not silently mixed
        PCDARTS(SPACE, seed=0, data=data, K=2, storage=tmp_path / "j", **TINY)
    old = PCDARTS(SPACE, seed=0, data=data, K=2, derive="argmax", storage=tmp_path / "j", **TINY)
    assert old.history == s.history


def test_supernet_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    a, b = supernet(SPACE, seed=3), supernet(SPACE, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="divide"):
        supernet(SPACE, partial_k=3)


# -- the strategies --------------------------------------------------------------------------------------
def test_registered_with_options_checked(data):
    assert {"darts", "pcdarts", "gdas"} <= set(strategies.registry.list())
    with pytest.raises(ValueError, match="no option 'colour'.*arch_lr"):
        strategies.get("darts", SPACE, data=data, colour=1)
    with pytest.raises(ValueError, match="needs data"):
        strategies.get("gdas", SPACE)
    with pytest.raises(ValueError, match="order"):
        strategies.get("darts", SPACE, data=data, order=3)
    with pytest.raises(ValueError, match="arch_lr expects float"):
        strategies.get("pcdarts", SPACE, data=data, arch_lr="fast")


def test_second_order_step_differs_from_first_and_restores_the_weights(data):
    alphas = {}
    for order in (1, 2):
        s = DARTS(SPACE, seed=0, data=data, order=order, **TINY)
        s._setup()
        (xw, yw), (xa, ya) = s._halves
        batch_w, batch_a = (normalise(xw[:32]), yw[:32]), (normalise(xa[:32]), ya[:32])
        before = [w.detach().clone() for w in s._weights]
        s._arch_step(batch_a, batch_w, lr=0.025, epoch=0, gen=torch.Generator())
        assert all(torch.equal(w, b) for w, b in zip(s._weights, before, strict=True))
        alphas[order] = s._model.alpha.detach().clone()
        assert torch.isfinite(alphas[order]).all()
    assert not torch.equal(alphas[1], alphas[2])
    one, two = DARTS(SPACE, seed=0, data=data, **TINY), DARTS(SPACE, seed=0, data=data, order=2, **TINY)
    one.ask(1), two.ask(1)
    assert not torch.equal(one._model.alpha, two._model.alpha)


def test_epochs_then_exhausted_with_scores_and_files(data, tmp_path):
    s = GDAS(SPACE, seed=0, data=data, storage=tmp_path / "optuna.journal", **TINY)
    cells = s.ask(2) + s.ask(5)  # asking past the end returns what is left
    assert len(cells) == 3 and [r["epoch"] for r in s.history] == [0, 1, 2]
    with pytest.raises(strategies.Exhausted):
        s.ask(1)
    taus = [r["tau"] for r in s.history]
    assert taus[0] == 10.0 and taus[-1] == pytest.approx(0.1)
    for cell in cells:
        scores = s.evaluate(SPACE.to_string(cell))
        assert 0 <= scores["acc_ws"] <= 100
        assert scores["param_free_edges"] == sum(op in ("none", "skip_connect", "avg_pool_3x3") for op in cell)
    assert {"supernet.pt", "alpha.csv", "alpha.png", "oneshot.csv"} <= set(os.listdir(tmp_path))
    assert len((tmp_path / "alpha.csv").read_text().splitlines()) == 1 + 3 * len(EDGES)
    assert s.final == cells[-1]


def test_pcdarts_freezes_alpha_during_warmup(data):
    s = PCDARTS(SPACE, seed=0, data=data, K=2, warmup_epochs=1, **TINY)
    initial = torch.softmax(s._build().alpha.detach(), -1)  # the same seed builds the same start
    s.ask(2)
    first, second = torch.tensor(s.history[0]["alpha"]), torch.tensor(s.history[1]["alpha"])
    assert torch.allclose(first, initial, rtol=0, atol=1e-7)  # frozen in epoch 1
    assert not torch.allclose(second, initial, rtol=0, atol=1e-7)  # learning from epoch 2
    assert len(s.history[1]["beta"]) == len(EDGES)


def test_checkpoint_round_trip(data, tmp_path):
    a = PCDARTS(SPACE, seed=1, data=data, K=2, warmup_epochs=0, storage=tmp_path / "optuna.journal", **TINY)
    a.ask(2)
    b = PCDARTS(SPACE, seed=1, data=data, K=2, warmup_epochs=0, storage=tmp_path / "optuna.journal", **TINY)
    assert b.history == a.history and b._model is None
    assert b.ask(2) == [tuple(r["genotype"]) for r in a.history]  # answered from the checkpoint, untrained
    assert b._model is None
    b._setup()
    for (ka, va), (kb, vb) in zip(a._model.state_dict().items(), b._model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb.to(va.device))
    assert b._a_opt.state_dict()["state"][0]["step"] == a._a_opt.state_dict()["state"][0]["step"]
    assert b._sched.get_last_lr() == a._sched.get_last_lr()
    with pytest.raises(ResumeConflict, match="other settings"):
        PCDARTS(SPACE, seed=1, data=data, K=2, warmup_epochs=0, arch_lr=1e-2, storage=tmp_path / "optuna.journal",
                **TINY)


def _study_run(data: str, path: Path, cls=DARTS, **options):
    strategy = cls(SPACE, seed=0, data=data, storage=path / "optuna.journal", **{**TINY, **options})
    study = nas.create_study(SPACE, ["acc_ws"], strategy, storage=path, evaluator="custom")
    return study, strategy


class _Killed(Exception):
    pass


@pytest.mark.parametrize("cls, opts", [(DARTS, {}), (GDAS, {}), (PCDARTS, {"K": 2, "order": 2, "warmup_epochs": 1})],
                         ids=["darts", "gdas", "pcdarts-2nd-order"])
def test_interrupted_mid_epoch_resumes_to_the_uninterrupted_run(data, tmp_path, monkeypatch, cls, opts):
    study, full = _study_run(data, tmp_path / "full", cls, **opts)
    study.optimize(evaluate=full.evaluate, budget=10**6)
    study.close()

    study, first = _study_run(data, tmp_path / "cut", cls, **opts)
    real, calls = cls._weight_step, []

    def dies_in_epoch_2(self, *a, **kw):
        calls.append(1)
        if len(calls) == 5:  # 3 steps per epoch: the second step of epoch 2
            raise _Killed
        return real(self, *a, **kw)

    monkeypatch.setattr(cls, "_weight_step", dies_in_epoch_2)
    with pytest.raises(_Killed):
        study.optimize(evaluate=first.evaluate, budget=10**6)
    study.close()
    monkeypatch.setattr(cls, "_weight_step", real)
    assert len(first.history) == 1

    fresh = cls(SPACE, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **TINY, **opts)
    resumed = nas.load_study(tmp_path / "cut", strategy=fresh)
    resumed.optimize(evaluate=fresh.evaluate, budget=10**6)
    assert [r["arch"] for r in fresh.history] == [r["arch"] for r in full.history]
    assert [r["alpha"] for r in fresh.history] == [r["alpha"] for r in full.history]
    assert torch.equal(fresh._model.alpha, full._model.alpha)
    done = nas.load_run(tmp_path / "full")
    assert [(c.arch, c.scores) for c in resumed.candidates] == [(c.arch, c.scores) for c in done.candidates]
    resumed.close()


def test_checkpoint_ahead_of_the_event_log_is_not_trained_again(data, tmp_path, monkeypatch):
    study, s = _study_run(data, tmp_path / "r")
    study.optimize(evaluate=s.evaluate, budget=1)  # epoch 1 logged
    s.ask(1)  # epoch 2 trained and checkpointed, then "killed" before the study logged it
    study.close()
    fresh = DARTS(SPACE, seed=0, data=data, storage=tmp_path / "r" / "optuna.journal", **TINY)
    trained: list[int] = []
    real = DARTS._train_epoch
    monkeypatch.setattr(DARTS, "_train_epoch", lambda self, e: (trained.append(e), real(self, e))[1])
    resumed = nas.load_study(tmp_path / "r", strategy=fresh)
    resumed.optimize(evaluate=fresh.evaluate, budget=10**6)
    assert trained == [2]
    full = DARTS(SPACE, seed=0, data=data, **TINY)
    full.ask(3)
    assert [r["alpha"] for r in fresh.history] == [r["alpha"] for r in full.history]
    resumed.close()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches(data, tmp_path):
    """A real SIGKILL of a process training a larger epoch, then a resume in this process."""
    opts = {"train_size": 200, "batch_size": 8, "epochs": 4}
    script = textwrap.dedent(f"""
        import nas, search_spaces
        from nas.strategies.oneshot import DARTS
        space = search_spaces.get("nb201", channels=4, cells_per_stage=1, input_shape=(3, 16, 16))
        s = DARTS(space, seed=0, data={data!r}, storage={str(tmp_path / 'cut' / 'optuna.journal')!r}, **{opts!r})
        study = nas.create_study(space, ["acc_ws"], s, storage={str(tmp_path / 'cut')!r}, evaluator="custom")
        study.optimize(evaluate=s.evaluate, budget=10**6)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    csv = tmp_path / "cut" / "oneshot.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (csv.is_file() and len(csv.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "cut" / CHECKPOINT).is_file()
    fresh = DARTS(SPACE, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **opts)
    assert 2 <= len(fresh.history) < 4
    resumed = nas.load_study(tmp_path / "cut", strategy=fresh)
    resumed.optimize(evaluate=fresh.evaluate, budget=10**6)
    full = DARTS(SPACE, seed=0, data=data, **opts)
    full.ask(4)
    assert [r["arch"] for r in fresh.history] == [r["arch"] for r in full.history]
    assert torch.equal(fresh._model.alpha, full._model.alpha)
    resumed.close()
