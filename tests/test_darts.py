import json

import numpy as np
import pytest
import torch

import search_spaces
from search_spaces import ArchError
from search_spaces.darts import EDGE_SLOTS
from search_spaces.darts_ops import count_params

# DARTS (second order), as DARTS' genotypes.py prints it; the paper reports 3.3 M parameters at C=36,
# 20 cells (auxiliary head excluded), which its training log gives as 3.349342 MB.
DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
            "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
            "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
            "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
            "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))")

# NAS-Bench-301's repository ships one full training result (surrogate_models/test/results_fidelity_0):
# its configuration (edge index -> op, NB301's numbering) was trained at C=50, 20 cells with the
# auxiliary head, and it records model_parameters = 6,369,358.
NB301_RESULT_EDGES = {
    "normal": {0: "skip_connect", 1: "sep_conv_3x3", 2: "sep_conv_3x3", 3: "skip_connect", 5: "dil_conv_3x3",
               7: "dil_conv_5x5", 10: "sep_conv_3x3", 11: "skip_connect"},
    "reduce": {0: "max_pool_3x3", 1: "avg_pool_3x3", 2: "skip_connect", 3: "dil_conv_5x5", 6: "sep_conv_3x3",
               7: "sep_conv_5x5", 11: "sep_conv_3x3", 12: "dil_conv_3x3"},
}


@pytest.fixture(scope="module")
def space():
    return search_spaces.get("darts")


@pytest.fixture(scope="module")
def small():
    return search_spaces.get("darts", channels=8, layers=5, input_shape=(3, 16, 16))


def test_published_parameter_counts(space):
    v2 = space.from_string(DARTS_V2)
    darts_eval = search_spaces.get("darts", channels=36, layers=20)
    params = count_params(darts_eval.build(v2, auxiliary=True))
    assert params == 3_349_342 and round(params / 1e6, 1) == 3.3
    cells = {t: [(op, EDGE_SLOTS[e][1]) for e, op in sorted(edges.items())]
             for t, edges in NB301_RESULT_EDGES.items()}
    arch = space.make(cells["normal"], cells["reduce"])
    nb301_run = search_spaces.get("darts", channels=50, layers=20)
    assert count_params(nb301_run.build(arch, auxiliary=True), exclude=()) == 6_369_358
    # NB301's training setting is the default; the evaluated network carries no auxiliary head.
    assert (space.channels, space.layers) == (32, 8)
    assert not any("auxiliary" in n for n, _ in space.build(arch).named_parameters())


def test_cardinality_is_nb301s(space):
    per_cell = 1 * 49 * 3 * 49 * 6 * 49 * 10 * 49
    assert space.cardinality == per_cell ** 2 and 1e18 < space.cardinality < 2e18


def test_round_trips_genotype_json_and_choices(space):
    v2 = space.from_string(DARTS_V2)
    assert space.from_string(space.to_genotype_string(v2)) == v2
    assert space.from_string(space.to_string(v2)) == v2
    assert json.loads(space.to_string(v2))["normal"][0] == ["sep_conv_3x3", 0]
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        assert space.from_string(space.to_string(arch)) == arch
        assert space.from_string(space.to_genotype_string(arch)) == arch
        assert space.from_choices(space.to_choices(arch)) == arch
        code = space.encode(arch)
        assert code.shape == (196,) and code.sum() == 16


def test_swapped_node_inputs_are_one_candidate(space):
    v2 = space.from_string(DARTS_V2)
    normal = list(v2.normal)
    normal[0], normal[1] = normal[1], normal[0]
    assert space.make(normal, v2.reduce) == v2


def test_mutate_changes_one_entry_and_crossover_mixes_nodes(space):
    rng = np.random.default_rng(1)
    arch = space.sample(rng)
    for _ in range(30):
        child = space.mutate(arch, rng)
        diff = sum(a != b for t in ("normal", "reduce")
                   for a, b in zip(getattr(arch, t), getattr(child, t), strict=True))
        assert 1 <= diff <= 2  # one edit; re-sorting a node's pair can move both of its entries
        arch = child
    a, b = space.sample(rng), space.sample(rng)
    kid = space.crossover(a, b, rng)
    for k in range(4):
        node = kid.normal[2 * k: 2 * k + 2]
        assert node in (a.normal[2 * k: 2 * k + 2], b.normal[2 * k: 2 * k + 2])


@pytest.mark.parametrize(
    "text, fragment",
    [
        (DARTS_V2.replace("('max_pool_3x3', 1)], reduce_concat", "('none', 1)], reduce_concat"),
         "not in NAS-Bench-301"),
        (DARTS_V2.replace("('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0)",
                          "('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0)", 1), "input 0 twice"),
        (DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "earlier state 0..4"),
        (DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[4, 5]"), "range\\(2, 6\\)"),
        ("Genotype(normal=__import__('os').system('true'), normal_concat=[2], reduce=[], reduce_concat=[2])",
         "must be a literal"),
        ("Genotype(normal=[], normal_concat=range(2, 6))", "missing reduce"),
        ('{"normal": [["sep_conv_3x3", 0]], "reduce": []}', "needs 8"),
        ('{"normal": []}', "'normal' and 'reduce'"),
        ("Genotype(", "cannot parse"),
    ],
)
def test_invalid_genotypes_are_rejected_with_the_reason(space, text, fragment):
    with pytest.raises(ArchError, match=fragment):
        space.from_string(text)


def test_forward_and_onnx_parity(small, onnx_parity):
    ref = onnx_parity(small, small.from_string(DARTS_V2), torch.randn(2, 3, 16, 16))
    assert ref.shape == (2, 10) and np.isfinite(ref).all()


def test_every_op_in_both_cells_runs_on_odd_sizes(small):
    rng = np.random.default_rng(5)
    arch = small.sample(rng)
    out = small.build(arch, input_shape=(3, 15, 15))(torch.randn(2, 3, 15, 15))
    assert out.shape == (2, 10)
    ops = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
           "dil_conv_5x5", "sep_conv_3x3"]
    cell = [(op, i % 2) for i, op in enumerate(ops)]
    every = small.make(cell, cell)
    assert small.build(every)(torch.randn(1, 3, 16, 16)).shape == (1, 10)


@pytest.mark.parametrize("name", ["random", "evolution", "bayesian", "nsga2", "reinforce"])
def test_every_strategy_asks_and_tells(space, name):
    from nas import strategies

    if name not in strategies.registry:
        pytest.skip(f"strategy {name} not available")
    strategy = strategies.get(name, space, seed=0)
    for _ in range(3):
        archs = strategy.ask(4)
        assert all(space.from_string(space.to_string(a)) == a for a in archs)
        strategy.tell(archs, [(float(space.encode(a)[:14].sum()),) for a in archs])


def test_optional_accuracy_table_accepts_genotype_strings(tmp_path):
    import csv

    path = tmp_path / "acc.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["arch", "cifar10"], [DARTS_V2, "97.2"]])
    space = search_spaces.get("darts", accuracy_table=path)
    v2 = space.from_string(DARTS_V2)
    assert space.has_oracle and space.accuracy(space.from_string(space.to_string(v2))) == pytest.approx(97.2)
    with pytest.raises(ValueError, match="columns 'arch' and 'cifar100'"):
        search_spaces.get("darts", accuracy_table=path, dataset="cifar100")


@pytest.mark.parametrize("space_name", ["darts", "nb101"])
def test_benchmark_proxies_cli_runs_without_accuracies(space_name, tmp_path, capsys):
    from nas.cli import main

    values = tmp_path / "values.csv"
    argv = ["benchmark", "proxies", "--space", space_name, "--n", "2", "--proxies", "params,l2_norm",
            "--batch-size", "2", "--no-progress", "--cache-dir", str(tmp_path), "--values-csv", str(values)]
    assert main(argv) == 0
    assert f"no accuracies for {space_name}: 2 sampled cells" in " ".join(capsys.readouterr().out.split())
    assert len(values.read_text().splitlines()) == 3
