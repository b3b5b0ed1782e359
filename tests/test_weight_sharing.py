"""SPOS and ENAS on tiny data: single-path steps, BN recalibration, the controller, resume, the CLI.

Data: 200 random 3x16x16 uint8 images in 10 classes (an .npz); nb201 supernet with C=4, N=1; DARTS' search
network with C=4 and 3 cells (a normal cell, then two reductions). What is checked is the machinery, not
accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nas
import search_spaces
from nas import strategies
from nas.cli import main
from nas.datasets import normalise
from nas.errors import ResumeConflict
from nas.strategies.weight_sharing import (
    DARTS_OPTION_NAMES,
    ENAS,
    SPOS,
    Controller,
    controller_decisions,
    decode_choices,
)
from search_spaces.darts import OPS as DARTS_OPS
from search_spaces.darts import DartsGenotype
from search_spaces.darts_supernet import DartsSuperNet
from search_spaces.nb201 import OPS

SPACE = search_spaces.get("nb201", channels=4, cells_per_stage=1, input_shape=(3, 16, 16))
TINY = {"train_size": 200, "batch_size": 32, "epochs": 2, "eval_batch_size": 50}
SPOS_OPTS = {**TINY, "population_size": 4, "sample_size": 2, "bn_batches": 1}
ENAS_OPTS = {**TINY, "epochs": 3, "final_samples": 4}
DARTS = search_spaces.get("darts", channels=4, layers=3, input_shape=(3, 16, 16))
DARTS_TINY = {"train_size": 100, "batch_size": 25, "epochs": 2, "eval_batch_size": 50}  # 2 steps per pass
DARTS_SPOS = {**DARTS_TINY, "population_size": 3, "sample_size": 2, "bn_batches": 1}
DARTS_ENAS = {**DARTS_TINY, "hidden": 16, "final_samples": 3}


@pytest.fixture(scope="module")
def data(images_npz) -> str:
    return images_npz(np.repeat(np.arange(10), 20), y_test=np.repeat(np.arange(10), 2))


def _op_params(model) -> dict[tuple[int, int, int], list[torch.Tensor]]:
    """The weights of each (cell, edge, op) of the supernet, copied."""
    cells = [m for m in model.modules() if m.__class__.__name__ == "SearchCell"]
    return {(c, e, j): [p.detach().clone() for p in op.parameters()]
            for c, cell in enumerate(cells) for e, edge in enumerate(cell.edges) for j, op in enumerate(edge.ops)}


def test_registered_and_options_checked(data):
    assert {"spos", "enas"} <= set(strategies.registry.list())
    with pytest.raises(ValueError, match="no architecture parameters"):
        strategies.get("spos", SPACE, data=data, arch_lr=1e-3)
    with pytest.raises(ValueError, match="needs data"):
        strategies.get("enas", SPACE)
    with pytest.raises(ValueError, match="bn_batches"):
        strategies.get("spos", SPACE, data=data, bn_batches=0)
    with pytest.raises(ValueError, match="hidden expects int"):
        strategies.get("enas", SPACE, data=data, hidden="big")


def test_spos_step_trains_only_the_sampled_path(data):
    s = SPOS(SPACE, seed=0, data=data, **SPOS_OPTS)
    s._setup()
    for _ in range(2):  # the second step also has momentum buffers for the first path's weights
        before = _op_params(s._model)
        path = [3, 2, 1, 3, 4, 0] if _ == 0 else [2, 3, 3, 1, 0, 4]
        xw, yw = s._halves[0]
        s._path_step((xw[:32].float() / 255, yw[:32]), path)
        after = _op_params(s._model)
        for (c, e, j), ps in before.items():
            moved = any(not torch.equal(p, q) for p, q in zip(ps, after[(c, e, j)], strict=True))
            has_weights = OPS[j] in ("nor_conv_1x1", "nor_conv_3x3")
            assert moved == (has_weights and j == path[e]), (c, e, OPS[j])


def test_recalibration_sets_running_stats_and_acc_ws_is_deterministic(data):
    s = SPOS(SPACE, seed=0, data=data, **SPOS_OPTS)
    s._setup()
    bns = [m for m in s._model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.track_running_stats and m.running_mean is not None for m in bns)

    def stats() -> list[torch.Tensor]:
        return [t.clone() for m in bns for t in (m.running_mean, m.running_var)]

    arch = ("nor_conv_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_3x3", "avg_pool_3x3", "nor_conv_3x3")
    other = ("nor_conv_1x1",) * 6
    s._recalibrate(arch)
    first = stats()
    # Reset, then one batch (bn_batches=1) through the BNs on the path; the others stay reset.
    on_path = [int(m.num_batches_tracked) for m in bns]
    assert set(on_path) == {0, 1} and not torch.equal(bns[-1].running_mean, torch.zeros_like(bns[-1].running_mean))
    s._recalibrate(other)
    assert any(not torch.equal(a, b) for a, b in zip(first, stats(), strict=True))
    s._recalibrate(arch)
    assert all(torch.equal(a, b) for a, b in zip(first, stats(), strict=True))
    a, b = s._score(arch), s._score(other)
    assert s._score(arch) == a and s._score(other) == b
    assert 0 <= a["acc_ws"] <= 100 and a["param_free_edges"] == 2
    # The score is a function of the weights and the arch alone: a second instance agrees.
    t = SPOS(SPACE, seed=0, data=data, **SPOS_OPTS)
    t._setup()
    assert t._score(arch) == a
    u = SPOS(SPACE, seed=0, data=data, **{**SPOS_OPTS, "val_size": 30})
    u._setup()
    assert u._score(arch) == u._score(arch) and round(u._score(arch)["acc_ws"] * 30 / 100, 9).is_integer()


def _spos_study(data: str, path: Path, **opts):
    s = SPOS(SPACE, seed=0, data=data, storage=path / "optuna.journal", **{**SPOS_OPTS, **opts})
    return nas.create_study(SPACE, ["acc_ws"], s, storage=path, evaluator="custom"), s


class _Killed(Exception):
    pass


def test_spos_interrupted_in_both_phases_resumes_to_the_uninterrupted_run(data, tmp_path, monkeypatch):
    study, full = _spos_study(data, tmp_path / "full")
    study.optimize(evaluate=full.evaluate, budget=8)
    done = [(c.arch, c.scores) for c in study.candidates]
    assert len(done) == 8 and full.final == SPACE.from_string(max(done, key=lambda c: c[1]["acc_ws"])[0])
    assert study.result.pick == SPACE.to_string(full.final)
    study.close()

    # Killed in phase 1 (second epoch, second step).
    study, s = _spos_study(data, tmp_path / "cut")
    real, calls = SPOS._path_step, []

    def dies(self, *a, **kw):
        calls.append(1)
        if len(calls) == 5:  # 3 steps per epoch (100 images, batches of 32)
            raise _Killed
        return real(self, *a, **kw)

    monkeypatch.setattr(SPOS, "_path_step", dies)
    with pytest.raises(_Killed):
        study.optimize(evaluate=s.evaluate, budget=8)
    study.close()
    monkeypatch.setattr(SPOS, "_path_step", real)
    assert len(s.history) == 1

    # Resumed: phase 1 ends, then stopped in phase 2 after 3 archs.
    s2 = SPOS(SPACE, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **SPOS_OPTS)
    study = nas.load_study(tmp_path / "cut", strategy=s2)
    study.optimize(evaluate=s2.evaluate, budget=3)
    study.close()

    # Resumed again: the replay re-asks, but nothing is trained again.
    s3 = SPOS(SPACE, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **SPOS_OPTS)
    monkeypatch.setattr(SPOS, "_train_epoch", lambda *a: pytest.fail("phase 1 trained again"))
    study = nas.load_study(tmp_path / "cut", strategy=s3)
    study.optimize(evaluate=s3.evaluate, budget=8)
    assert [(c.arch, c.scores) for c in study.candidates] == done
    assert s3.final == full.final
    keys = ("epoch", "train_loss", "train_acc", "lr")
    assert [[r[k] for k in keys] for r in s3.history] == [[r[k] for k in keys] for r in full.history]
    assert all(torch.equal(a, b) for a, b in zip(s3._model.parameters(), full._model.parameters(), strict=True))
    study.close()
    with pytest.raises(ResumeConflict):
        SPOS(SPACE, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **{**SPOS_OPTS, "bn_batches": 2})


def test_enas_controller_gradient_and_seeded_sampling():
    c = Controller(hidden=16, seed=0)
    ops, log_prob, entropy, probs = c.sample(torch.Generator().manual_seed(3))
    (-log_prob - 0.1 * entropy).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in c.parameters())
    assert any((p.grad != 0).any() for p in c.parameters())
    assert torch.allclose(probs.sum(-1), torch.ones(6))
    again = Controller(hidden=16, seed=0)
    assert [again.sample(torch.Generator().manual_seed(3))[0] for _ in range(1)] == [ops]
    draws = [tuple(c.sample(torch.Generator().manual_seed(k))[0]) for k in range(8)]
    assert len(set(draws)) > 1  # different seeds, different cells
    greedy = c.sample(greedy=True)
    assert greedy[0] == [int(p.argmax()) for p in greedy[3]]


def test_enas_epochs_final_and_files(data, tmp_path):
    s = ENAS(SPACE, seed=0, data=data, storage=tmp_path / "optuna.journal", **ENAS_OPTS)
    cells = s.ask(5)
    assert len(cells) == 3 and [r["epoch"] for r in s.history] == [0, 1, 2]
    with pytest.raises(strategies.Exhausted):
        s.ask(1)
    assert all(r["arch_loss"] is not None and 0 <= r["arch_acc"] <= 100 for r in s.history)
    assert len(s._final["samples"]) == 4
    assert SPACE.to_string(s.final) == max(s._final["samples"], key=lambda t: t[1])[0]
    assert s.evaluate(SPACE.to_string(s.final))["acc_ws"] == s._final["acc_ws"]
    assert {"supernet.pt", "alpha.csv", "alpha.png", "oneshot.csv"} <= set(os.listdir(tmp_path))
    # A fresh instance on the checkpoint answers everything without training.
    t = ENAS(SPACE, seed=0, data=data, storage=tmp_path / "optuna.journal", **ENAS_OPTS)
    assert t.ask(3) == cells and t._model is None and t.final == s.final


def _enas_killed_and_resumed(space, opts, data, tmp_path, monkeypatch, s, full):
    """A second run of ``s``'s settings killed in epoch 2 after its weight pass, then resumed: it must end as
    the uninterrupted ``s`` (candidates ``full``, alpha, final, baseline, controller and supernet weights)."""
    first = ENAS(space, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **opts)
    study = nas.create_study(space, ["acc_ws"], first, storage=tmp_path / "cut", evaluator="custom")
    real, calls = ENAS._controller_pass, []

    def dies(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:  # in epoch 2, after its weight pass
            raise _Killed
        return real(self, *a, **kw)

    monkeypatch.setattr(ENAS, "_controller_pass", dies)
    with pytest.raises(_Killed):
        study.optimize(evaluate=first.evaluate, budget=10**6)
    study.close()
    monkeypatch.setattr(ENAS, "_controller_pass", real)

    fresh = ENAS(space, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **opts)
    resumed = nas.load_study(tmp_path / "cut", strategy=fresh)
    resumed.optimize(evaluate=fresh.evaluate, budget=10**6)
    assert [(c.arch, c.scores) for c in resumed.candidates] == full
    assert [r["alpha"] for r in fresh.history] == [r["alpha"] for r in s.history]
    assert fresh._final == s._final and fresh._baseline == s._baseline and fresh.final == s.final
    for ours, theirs in ((fresh._controller, s._controller), (fresh._model, s._model)):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(),
                                                     strict=True))
    assert resumed.result.pick == space.to_string(s.final)
    resumed.close()


def test_enas_interrupted_mid_epoch_resumes_to_the_uninterrupted_run(data, tmp_path, monkeypatch):
    s = ENAS(SPACE, seed=0, data=data, storage=tmp_path / "full" / "optuna.journal", **ENAS_OPTS)
    study = nas.create_study(SPACE, ["acc_ws"], s, storage=tmp_path / "full", evaluator="custom")
    study.optimize(evaluate=s.evaluate, budget=10**6)
    full = [(c.arch, c.scores) for c in study.candidates]
    study.close()
    _enas_killed_and_resumed(SPACE, ENAS_OPTS, data, tmp_path, monkeypatch, s, full)


def test_cli_search_with_spos(data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nas", "search", "--strategy", "spos", "--data", data, "--epochs", "1",
           "--train-size", "100", "--budget", "3", "--space-option", "channels=4", "--space-option",
           "cells_per_stage=1", "--space-option", "input_shape=[3,16,16]", "--option", "population_size=2",
           "--option", "sample_size=1", "--option", "bn_batches=1", "--option", "eval_batch_size=50",
           "--out", str(out), "--no-progress", "--no-onnx"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "acc_ws" in proc.stdout
    assert {"supernet.pt", "oneshot.csv", "run.sqlite", "best.json"} <= set(os.listdir(out))
    assert len(nas.load_run(out).candidates) == 3


def test_spos_default_budget_counts_phase_two_cells(data, tmp_path):
    study = nas.create_study(SPACE, None, "spos", storage=tmp_path / "r", strategy_options={**SPOS_OPTS, "data": data})
    assert study.config["budget"] == SPOS.default_budget and study.config["objectives"] == ["max:acc_ws"]
    study.close()


# -- the darts space --------------------------------------------------------------------------------------
def test_spaces_other_than_nb201_and_darts_are_refused(data):
    for name in ("spos", "enas"):
        with pytest.raises(ValueError, match=r"searches the space\(s\) nb201, darts, not 'nb101'"):
            strategies.get(name, search_spaces.get("nb101"), data=data)


def test_spos_step_on_darts_trains_only_the_sampled_path(data):
    s = SPOS(DARTS, seed=0, data=data, **DARTS_SPOS)
    s._setup()
    assert all(m.track_running_stats and m.running_mean is not None
               for m in s._model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    gen = torch.Generator().manual_seed(0)
    paths = [s._uniform_path(gen) for _ in range(2)]
    assert paths[0] != paths[1] and paths[0] == s._uniform_path(torch.Generator().manual_seed(0))
    xw, yw = s._halves[0]
    for path in paths:  # the second step also has momentum buffers for the first path's weights
        assert isinstance(path, DartsGenotype) and DARTS.from_string(DARTS.to_string(path)) == path
        before = _darts_op_params(s._model)
        s._path_step((normalise(xw[:25]), yw[:25]), path)
        after = _darts_op_params(s._model)
        index = DartsSuperNet._indices(path)  # per cell type, the op of each of the 14 edges (-1: off the path)
        on_path = 0
        for (c, e, j), ps in before.items():
            moved = any(not torch.equal(p, q) for p, q in zip(ps, after[(c, e, j)], strict=True))
            sampled = index[int(s._model.cells[c].reduction)][e] == j
            assert moved == (bool(ps) and sampled), (c, e, j)
            on_path += moved
        assert on_path > 0


def test_spos_scores_darts_genotypes_after_recalibration(data):
    s = SPOS(DARTS, seed=0, data=data, **DARTS_SPOS)
    s._setup()
    a, b = DARTS.sample(np.random.default_rng(1)), DARTS.sample(np.random.default_rng(2))
    first = s._score(a)
    s._score(b)
    assert s._score(a) == first and 0 <= first["acc_ws"] <= 100
    assert first["param_free_edges"] == DartsSuperNet.param_free_edges(a)


def _darts_op_params(model) -> dict[tuple[int, int, int], list[torch.Tensor]]:
    """The weights of each (cell, edge, op) of DARTS' search network, copied."""
    return {(c, e, j): [p.detach().clone() for p in op.parameters()]
            for c, cell in enumerate(model.cells) for e, edge in enumerate(cell.edges) for j, op in enumerate(edge.ops)}


def test_enas_controller_samples_valid_darts_genotypes():
    decisions = controller_decisions(DARTS)
    assert len(decisions) == 2 * 4 * 4  # 2 cell types x 4 nodes x (2 inputs, 2 ops)
    c = Controller(hidden=16, seed=0, decisions=decisions)
    assert tuple(c.head.weight.shape) == (5 + len(DARTS_OPS), 16)  # inputs 0..4, then the 7 ops
    seen = set()
    for k in range(6):
        choices, log_prob, entropy, probs = c.sample(torch.Generator().manual_seed(k))
        genotype = decode_choices(DARTS, choices)
        text = DARTS.to_string(genotype)
        assert DARTS.to_string(DARTS.from_string(text)) == text  # the space's canonical form
        for cell in (genotype.normal, genotype.reduce):
            for node in range(4):
                (_, lo), (_, hi) = cell[2 * node], cell[2 * node + 1]
                assert 0 <= lo < hi < node + 2  # two different earlier states, sorted as the space keeps them
            assert all(op in DARTS_OPS for op, _ in cell)
        seen.add(text)
        assert probs.shape == (32, len(DARTS_OPTION_NAMES)) and torch.allclose(probs.sum(-1), torch.ones(32))
        cols = []
        for step, (d, choice) in enumerate(zip(decisions, choices, strict=True)):
            start = 0 if d.vocab == "input" else 5
            cols.append(start + choice)
            offered = torch.zeros(len(DARTS_OPTION_NAMES), dtype=torch.bool)
            offered[start:start + d.size] = True
            if d.differ is not None:
                offered[choices[d.differ]] = False  # a node's second input is never its first
            assert (probs[step][~offered] == 0).all() and (probs[step][offered] > 0).all()
        picked = probs[torch.arange(32), torch.tensor(cols)]
        assert torch.allclose(log_prob, picked.log().sum(), atol=1e-5)
        assert torch.allclose(entropy, -(probs[probs > 0] * probs[probs > 0].log()).sum(), atol=1e-5)
    assert len(seen) > 1
    (-log_prob - 0.1 * entropy).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in c.parameters())
    greedy, *_, probs = c.sample(greedy=True)
    assert greedy == [int(p.argmax()) - (0 if d.vocab == "input" else 5)
                      for p, d in zip(probs, decisions, strict=True)]


def test_enas_on_darts_end_to_end_and_resumed_mid_epoch(data, tmp_path, monkeypatch):
    # A plot of 32 panels costs a second or two; the CLI test below draws a real one.
    monkeypatch.setattr(ENAS, "_plot_alpha", lambda self, path, *a: Path(path).touch())
    s = ENAS(DARTS, seed=0, data=data, storage=tmp_path / "full" / "optuna.journal", **DARTS_ENAS)
    study = nas.create_study(DARTS, ["acc_ws"], s, storage=tmp_path / "full", evaluator="custom")
    study.optimize(evaluate=s.evaluate, budget=10**6)
    full = [(c.arch, c.scores) for c in study.candidates]
    assert len(full) == 2 and all(isinstance(DARTS.from_string(a), DartsGenotype) for a, _ in full)
    assert isinstance(s.final, DartsGenotype) and study.result.pick == DARTS.to_string(s.final)
    assert DARTS.to_string(s.final) == max(s._final["samples"], key=lambda t: t[1])[0]
    assert full[-1][1]["param_free_edges"] == DartsSuperNet.param_free_edges(DARTS.from_string(full[-1][0]))
    study.close()
    out = tmp_path / "full"
    assert {"supernet.pt", "alpha.csv", "alpha.png", "oneshot.csv"} <= {p.name for p in out.iterdir()}
    rows = (out / "alpha.csv").read_text().splitlines()
    assert rows[0].split(",")[2:] == list(DARTS_OPTION_NAMES) and len(rows) == 1 + 2 * 32
    assert rows[1].startswith("1,normal node2 input_a,")

    _enas_killed_and_resumed(DARTS, DARTS_ENAS, data, tmp_path, monkeypatch, s, full)
    # A fresh instance on the finished checkpoint answers without training.
    again = ENAS(DARTS, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **DARTS_ENAS)
    assert again.ask(2) == [DARTS.from_string(a) for a, _ in full] and again._model is None
    assert again.final == s.final and again.evaluate(DARTS.to_string(s.final)) == s.evaluate(DARTS.to_string(s.final))


def test_spos_on_darts_interrupted_in_phase_one_resumes_to_the_uninterrupted_run(data, tmp_path, monkeypatch):
    def study_of(name: str):
        s = SPOS(DARTS, seed=0, data=data, storage=tmp_path / name / "optuna.journal", **DARTS_SPOS)
        return nas.create_study(DARTS, ["acc_ws"], s, storage=tmp_path / name, evaluator="custom"), s

    study, full = study_of("full")
    study.optimize(evaluate=full.evaluate, budget=5)  # past the first population: the space's mutate
    done = [(c.arch, c.scores) for c in study.candidates]
    assert len(done) == 5 and study.result.pick == DARTS.to_string(full.final)
    study.close()

    study, s = study_of("cut")
    real, calls = SPOS._path_step, []

    def dies(self, *a, **kw):
        calls.append(1)
        if len(calls) == 4:  # the second step of the second epoch (2 steps per epoch)
            raise _Killed
        return real(self, *a, **kw)

    monkeypatch.setattr(SPOS, "_path_step", dies)
    with pytest.raises(_Killed):
        study.optimize(evaluate=s.evaluate, budget=5)
    study.close()
    monkeypatch.setattr(SPOS, "_path_step", real)
    assert len(s.history) == 1

    s2 = SPOS(DARTS, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **DARTS_SPOS)
    study = nas.load_study(tmp_path / "cut", strategy=s2)
    study.optimize(evaluate=s2.evaluate, budget=5)
    assert [(c.arch, c.scores) for c in study.candidates] == done and s2.final == full.final
    assert all(torch.equal(a, b) for a, b in zip(s2._model.state_dict().values(), full._model.state_dict().values(),
                                                 strict=True))
    study.close()


def test_cli_search_with_spos_and_enas_on_darts(data, tmp_path):
    common = ["--space", "darts", "--data", data, "--epochs", "1", "--train-size", "100", "--space-option",
              "channels=4", "--space-option", "layers=3", "--space-option", "input_shape=[3,16,16]", "--option",
              "batch_size=50", "--option", "eval_batch_size=50", "--no-progress", "--no-onnx"]
    assert main(["search", "--strategy", "spos", "--budget", "2", "--option", "population_size=2", "--option",
                 "sample_size=1", "--option", "bn_batches=1", "--out", str(tmp_path / "spos"), *common]) == 0
    assert main(["search", "--strategy", "enas", "--option", "hidden=8", "--option", "final_samples=2",
                 "--out", str(tmp_path / "enas"), *common]) == 0
    for name, n in (("spos", 2), ("enas", 1)):
        run = nas.load_run(tmp_path / name)
        assert len(run.candidates) == n and all(isinstance(DARTS.from_string(c.arch), DartsGenotype)
                                                for c in run.candidates)
        assert isinstance(DARTS.from_string(json.loads((tmp_path / name / "best.json").read_text())["arch"]),
                          DartsGenotype)
    assert (tmp_path / "enas" / "alpha.png").stat().st_size > 0
