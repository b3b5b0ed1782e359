"""Pruning the one-shot mixture by a zero-cost proxy (``prune=PROXY keep=K``) on tiny data.

Data: 200 random 3x16x16 uint8 images (an .npz); supernet C=4, N=1. Checked: masked ops weigh 0, are never
computed, drawn, derived or updated; the mask is recorded (checkpoint, prune.csv, alpha.csv) and resumed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import search_spaces
from nas import strategies
from nas.errors import ResumeConflict
from nas.registry import UnknownNameError
from nas.strategies import oneshot
from nas.strategies.oneshot import CHECKPOINT, DARTS, GDAS, PCDARTS, keep_best
from search_spaces.nb201 import EDGES, OPS
from search_spaces.nb201_supernet import gumbel_sample, supernet

SPACE = search_spaces.get("nb201", channels=4, cells_per_stage=1, input_shape=(3, 16, 16))
TINY = {"train_size": 200, "batch_size": 32, "epochs": 3, "prune": "synflow", "keep": 2, "prune_cells": 10}
MASK = torch.tensor([[False, False, True, True, False]] * 3 + [[True, True, False, False, False]] * 3)


@pytest.fixture(scope="module")
def data(images_npz) -> str:
    return images_npz(np.repeat(np.arange(10), 20))


def test_masked_ops_weigh_nothing_get_no_gradient_and_are_never_derived_or_drawn():
    net = supernet(SPACE)
    net.set_op_mask(MASK)
    with torch.no_grad():
        net.alpha[~MASK] = 10.0  # the masked ops would win every edge if they counted
    assert (net.op_weights()[~MASK] == 0).all() and torch.allclose(net.op_weights().sum(-1), torch.ones(6))
    assert all(MASK[k, OPS.index(op)] for k, op in enumerate(net.genotype()))
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.nn.functional.cross_entropy(net(x), torch.arange(8)).backward()
    assert (net.alpha.grad[~MASK] == 0).all() and (net.alpha.grad[MASK] != 0).any()
    for k in range(len(EDGES)):
        for j in range(len(OPS)):
            grads = [p.grad for p in net.cells[0].edges[k].ops[j].parameters()]
            if not MASK[k, j]:
                assert all(g is None for g in grads)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        _, index = gumbel_sample(net.masked_alpha(), 1.0, gen)
        assert all(MASK[k, int(i)] for k, i in enumerate(index))
    with pytest.raises(ValueError, match="at least one op per edge"):
        net.set_op_mask(torch.zeros(6, 5, dtype=torch.bool))


def test_only_none_left_on_an_edge_outputs_zeros():
    net = supernet(SPACE)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0] = torch.tensor([True, False, False, False, False])
    net.set_op_mask(mask)
    assert net(torch.randn(2, 3, 16, 16)).isfinite().all()


def test_keep_best_and_options_checked(data):
    assert keep_best([[0.1, 0.5, 0.5, 0.9, 0.0]], 2) == [[False, True, False, True, False]]
    with pytest.raises(ValueError, match="keep"):
        DARTS(SPACE, data=data, **{**TINY, "keep": 0})
    with pytest.raises(ValueError, match="multiple"):
        DARTS(SPACE, data=data, **{**TINY, "prune_cells": 7})
    with pytest.raises(UnknownNameError, match="unknown proxy"):
        DARTS(SPACE, data=data, **{**TINY, "prune": "no_such_proxy"})
    with pytest.raises(ValueError, match="no op mixture to prune"):
        strategies.get("spos", SPACE, data=data, **TINY)


@pytest.mark.parametrize("cls, opts", [(DARTS, {}), (GDAS, {}), (PCDARTS, {"K": 2, "warmup_epochs": 0})],
                         ids=["darts", "gdas", "pcdarts"])
def test_pruned_run_never_uses_or_updates_masked_ops_and_records_the_mask(data, tmp_path, cls, opts):
    s = cls(SPACE, seed=0, data=data, storage=tmp_path / "optuna.journal", **TINY, **opts)
    s.ask(3)
    mask = torch.tensor(s.pruning["mask"])
    assert (mask.sum(-1) == 2).all() and len(s.pruning["cells"]) == 10
    for rec in s.history:
        assert all(mask[k, OPS.index(op)] for k, op in enumerate(rec["genotype"]))
        assert (torch.tensor(rec["alpha"])[~mask] == 0).all()
    start = s._build().state_dict()  # the seeded initial weights
    for name, value in s._model.state_dict().items():
        parts = name.split(".")
        if parts[0] == "cells" and len(parts) > 5 and parts[2] == "edges" and not mask[int(parts[3]), int(parts[5])]:
            assert torch.equal(value, start[name]), name  # a masked op's weights never moved
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["pruning"]["mask"] == s.pruning["mask"] and ckpt["fingerprint"]["recipe"]["prune"] == "synflow"
    rows = (tmp_path / "prune.csv").read_text().splitlines()
    assert rows[0] == "edge,op,synflow_mean_rank,kept" and len(rows) == 1 + 30
    assert sum(r.endswith(",1") for r in rows[1:]) == 12


def test_pruned_run_resumes_with_its_mask_and_matches(data, tmp_path, monkeypatch):
    full = DARTS(SPACE, seed=0, data=data, storage=tmp_path / "full" / "optuna.journal", **TINY)
    (tmp_path / "full").mkdir(), (tmp_path / "cut").mkdir()
    full.ask(3)
    first = DARTS(SPACE, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **TINY)
    first.ask(1)
    monkeypatch.setattr(oneshot, "prune_scores", lambda *a, **k: pytest.fail("the mask is read, not recomputed"))
    again = DARTS(SPACE, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **TINY)
    again.ask(3)
    assert [again.pruning[k] for k in ("mask", "scores", "cells")] == [full.pruning[k] for k in ("mask", "scores", "cells")]
    assert [r["alpha"] for r in again.history] == [r["alpha"] for r in full.history]
    done = DARTS(SPACE, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **TINY)
    assert done._model is None and done.pruning["mask"] == full.pruning["mask"]  # read with the checkpoint
    with pytest.raises(ResumeConflict, match="other settings"):
        DARTS(SPACE, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **{**TINY, "keep": 3})
    with pytest.raises(ResumeConflict, match="other settings"):
        DARTS(SPACE, seed=0, data=data, storage=tmp_path / "cut" / "optuna.journal", **{**TINY, "prune": ""})


def test_unpruned_fingerprint_is_unchanged(data):
    recipe = DARTS(SPACE, data=data, train_size=200)._fingerprint()["recipe"]
    assert not {"prune", "keep", "prune_cells"} & set(recipe)
