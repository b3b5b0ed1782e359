"""DARTS' search network on the darts space, and the one-shot strategies running on it, on tiny data.

Supernet with C=8 (C=4 where the channel count does not matter) and 3 cells (a normal cell, then two
reductions); 16x16 inputs. What is checked is the machinery, not accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import search_spaces
from nas.cli import main
from nas.strategies.oneshot import GDAS, PCDARTS
from search_spaces.darts import DartsGenotype
from search_spaces.darts_supernet import EDGES, OPS, DartsSuperNet, derive_cell
from search_spaces.nb201_supernet import gumbel_sample

SPACE = search_spaces.get("darts", channels=4, layers=3, input_shape=(3, 16, 16))
TINY = {"train_size": 100, "batch_size": 25, "epochs": 1, "warmup_epochs": 0}


@pytest.fixture(scope="module")
def data(images_npz) -> str:
    return images_npz(np.repeat(np.arange(10), 10), y_test=np.repeat(np.arange(10), 2))


def _loss(net: DartsSuperNet, **kw) -> torch.Tensor:
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return torch.nn.functional.cross_entropy(net(x, **kw), torch.arange(8) % 10)


def test_gradients_reach_alpha_and_beta():
    net = SPACE.supernet(partial_k=2, edge_norm=True)
    assert [tuple(p.shape) for p in net.arch_parameters()] == [(2, 14, 8), (2, 14)]
    _loss(net).backward()
    # Every node has at least two incoming edges, so every beta learns; every op's alpha through the softmax.
    assert (net.alpha.grad != 0).all() and (net.beta.grad != 0).all()
    assert len(net.weight_parameters()) == len(list(net.parameters())) - 2
    # The cell BatchNorms carry no scale that could absorb alpha.
    cell_bns = [m for m in net.cells.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert cell_bns and not any(m.affine or m.track_running_stats for m in cell_bns)


@pytest.mark.parametrize("k", [2, 4])
def test_partial_channels_pass_exactly_c_over_k_channels(k):
    space = search_spaces.get("darts", channels=8, layers=3, input_shape=(3, 16, 16))
    net = space.supernet(partial_k=k)
    seen: list[tuple[int, int]] = []  # (op input channels, cell width C)
    for cell in net.cells:
        width = cell.preprocess1.op[1].out_channels
        for edge in cell.edges:
            for name, op in zip(OPS, edge.ops, strict=True):
                if name != "none":  # `none` adds zeros: the mixture skips it
                    op.register_forward_pre_hook(lambda _m, args, w=width: seen.append((args[0].shape[1], w)))
    _loss(net)
    assert len(seen) == 3 * len(EDGES) * (len(OPS) - 1)
    assert all(c == w // k for c, w in seen) and {w for _, w in seen} == {8, 16, 32}
    # A normal edge passes the bypassed channels untouched (undo the shuffle to find them).
    edge = net.cells[0].edges[0]
    x = torch.randn(2, 8, 4, 4)
    out = edge(x, torch.full((8,), 1 / 8))
    unshuffled = out.view(2, 8 // k, k, 4, 4).transpose(1, 2).reshape(2, 8, 4, 4)
    assert torch.equal(unshuffled[:, 8 // k:], x[:, 8 // k:])
    # A reduction edge halves them with the ops.
    assert net.cells[1].edges[0](torch.randn(2, 16, 4, 4), torch.full((8,), 1 / 8)).shape == (2, 16, 2, 2)


def _hand_set(net: DartsSuperNet) -> None:
    """Alpha for which DARTS' rule gives NORMAL (both cell types alike)."""
    with torch.no_grad():
        net.alpha.zero_()
        strong = {
            (2, 0): {"none": 5.0, "sep_conv_3x3": 1.0},  # none is strongest but never chosen
            (2, 1): {"skip_connect": 0.5},
            (3, 0): {"max_pool_3x3": 0.3},  # the weakest of node 3's three edges: dropped
            (3, 1): {"dil_conv_3x3": 2.0},
            (3, 2): {"sep_conv_5x5": 1.5},
            (4, 3): {"avg_pool_3x3": 2.0},
            (4, 0): {"dil_conv_5x5": 1.0},
            # The rule compares softmax weights: an edge whose `none` dominates is weak whatever its best op.
            (5, 4): {"sep_conv_3x3": 3.0, "none": 9.0},
            (5, 2): {"skip_connect": 2.0},
            (5, 1): {"dil_conv_5x5": 1.0},
        }
        for (node, src), ops in strong.items():
            for op, value in ops.items():
                net.alpha[:, EDGES.index((node, src)), OPS.index(op)] = value


NORMAL = (("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 1), ("sep_conv_5x5", 2),
          ("dil_conv_5x5", 0), ("avg_pool_3x3", 3), ("dil_conv_5x5", 1), ("skip_connect", 2))


def test_genotype_derivation_on_hand_set_alphas():
    net = SPACE.supernet()
    _hand_set(net)
    assert net.genotype() == DartsGenotype(NORMAL, NORMAL)
    # All-equal weights: of equally strong edges the earlier input wins, of equal ops the first.
    assert derive_cell(torch.zeros(14, 8))[:2] == (("max_pool_3x3", 0), ("max_pool_3x3", 1))


def test_edge_normalisation_reorders_the_edges_of_a_node():
    net = SPACE.supernet(edge_norm=True)
    _hand_set(net)
    with torch.no_grad():
        net.beta.zero_()
        net.beta[0, EDGES.index((3, 0))] = 10.0  # node 3's weakest op edge, weighted up by beta
    normal = net.genotype().normal
    assert normal[2:4] == (("max_pool_3x3", 0), ("dil_conv_3x3", 1))
    assert net.genotype().reduce == NORMAL  # beta of the reduction cell left at zero: the plain rule


def test_derived_genotype_builds_in_the_darts_space_and_scores_as_a_fixed_path():
    net = SPACE.supernet(partial_k=2, edge_norm=True)
    _hand_set(net)
    genotype = net.genotype()
    text = SPACE.to_string(genotype)
    assert SPACE.from_string(text) == genotype
    model = SPACE.build(SPACE.from_string(text))
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    # The fixed path runs exactly the genotype's 8 ops per cell, one per chosen edge.
    counts = np.zeros((3, len(EDGES), len(OPS)), dtype=int)
    for c, cell in enumerate(net.cells):
        for e, edge in enumerate(cell.edges):
            for j, op in enumerate(edge.ops):
                op.register_forward_hook(lambda *_a, c=c, e=e, j=j: counts.__setitem__((c, e, j), counts[c, e, j] + 1))
    _loss(net, arch=genotype)
    assert (counts.sum(axis=(1, 2)) == 8).all()
    for pos, (op, src) in enumerate(NORMAL):
        assert counts[0, EDGES.index((pos // 2 + 2, src)), OPS.index(op)] == 1
    assert DartsSuperNet.param_free_edges(genotype) == 2 * 3  # two skips and an avg pool per cell type


def test_gdas_sample_computes_only_the_drawn_ops():
    net = SPACE.supernet()
    hard, index = gumbel_sample(net.alpha, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert hard.shape == (2, 14, 8) and index.shape == (2, 14)
    _loss(net, sample=(hard, index)).backward()
    assert (net.alpha.grad != 0).any()


def test_pcdarts_checkpoint_answers_darts_genotypes(data, tmp_path):
    a = PCDARTS(SPACE, seed=0, data=data, K=2, storage=tmp_path / "optuna.journal", **TINY)
    (cell,) = a.ask(1)
    assert isinstance(cell, DartsGenotype) and a.final == cell
    scores = a.evaluate(SPACE.to_string(cell))
    assert 0 <= scores["acc_ws"] <= 100 and scores["param_free_edges"] == DartsSuperNet.param_free_edges(cell)
    assert len(a.history[0]["alpha"]) == 2 * len(EDGES) and len(a.history[0]["beta"]) == 2 * len(EDGES)
    b = PCDARTS(SPACE, seed=0, data=data, K=2, storage=tmp_path / "optuna.journal", **TINY)
    assert b.ask(1) == [cell] and b._model is None  # read from the checkpoint, not trained again
    assert len((tmp_path / "alpha.csv").read_text().splitlines()) == 1 + 2 * len(EDGES)


def test_gdas_runs_an_epoch_on_the_darts_space(data):
    (cell,) = GDAS(SPACE, seed=0, data=data, **{k: v for k, v in TINY.items() if k != "warmup_epochs"}).ask(1)
    assert isinstance(cell, DartsGenotype)


def test_nas_search_pcdarts_on_darts_end_to_end(data, tmp_path):
    out = tmp_path / "run"
    assert main(["search", "--space", "darts", "--strategy", "pcdarts", "--data", data, "--epochs", "1",
                 "--train-size", "100", "--space-option", "channels=4", "--space-option", "layers=3",
                 "--space-option", "input_shape=[3,16,16]", "--option", "K=2", "--option", "batch_size=25",
                 "--no-progress", "--out", str(out)]) == 0
    best = json.loads((out / "best.json").read_text())
    genotype = SPACE.from_string(best["arch"])  # the darts space's format, so `nas train` accepts it
    assert isinstance(genotype, DartsGenotype)
    assert {"supernet.pt", "alpha.csv", "alpha.png", "oneshot.csv"} <= {p.name for p in out.iterdir()}
