import json

import numpy as np
import pytest
import torch

import search_spaces
from search_spaces import ArchError
from search_spaces.nb101_graph import NB101Cell, compute_vertex_channels, labels, spec_hash

C3, C1, MP = "conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"

# Published reference points (the benchmark's own notebook and NNI's documented query of the dataset).
# The inception-like cell of the NAS-Bench-101 README, as queried...
INCEPTION_QUERY = ([[0, 1, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0, 0],
                    [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [0] * 7],
                   ["input", C1, C3, C3, C3, MP, "output"])
# ...and as the dataset stores it (module_adjacency / module_operations), with 2,694,282 parameters.
INCEPTION_STORED = ([[0, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1],
                     [0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1], [0] * 7],
                    ["input", C3, C1, MP, C3, C3, "output"])
# NNI's example record: hash 00005c142e6f48ac74fdcf73e3439874, 8.55553 M parameters.
NNI_CELL = ([[0, 1, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 1, 0],
             [0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1], [0] * 7],
            ["input", C3, MP, C3, C3, C1, "output"])


@pytest.fixture(scope="module")
def space():
    return search_spaces.get("nb101")


@pytest.fixture(scope="module")
def small():
    return search_spaces.get("nb101", channels=8, input_shape=(3, 16, 16))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_published_parameter_counts_hash_and_stored_spec(space):
    inception = space.make(*INCEPTION_QUERY)
    assert inception == NB101Cell(tuple(map(tuple, INCEPTION_STORED[0])), tuple(INCEPTION_STORED[1]))
    assert n_params(space.build(inception)) == 2_694_282
    nni = space.make(*NNI_CELL)
    assert (list(map(list, nni.matrix)), list(nni.ops)) == NNI_CELL  # already the stored representative
    assert space.spec_hash(nni) == "00005c142e6f48ac74fdcf73e3439874"
    assert n_params(space.build(nni)) == 8_555_530
    assert space.cardinality == 423_624


def test_vertex_channels_follow_the_reference_rules():
    diamond = ((0, 1, 1, 0), (0, 0, 0, 1), (0, 0, 0, 1), (0, 0, 0, 0))
    assert compute_vertex_channels(8, 15, diamond) == [8, 8, 7, 15]
    fan3 = ((0, 1, 1, 1, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 1), (0, 0, 0, 0, 1), (0, 0, 0, 0, 0))
    assert compute_vertex_channels(8, 8, fan3) == [8, 3, 3, 2, 8]
    chain = ((0, 1, 0, 0, 0), (0, 0, 1, 1, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 1), (0, 0, 0, 0, 0))
    assert compute_vertex_channels(8, 9, chain) == [8, 5, 5, 4, 9]
    assert compute_vertex_channels(5, 1, ((0, 1), (0, 0))) == [5, 1]


def _relabel(cell, rng):
    """A random isomorphic copy of ``cell`` whose matrix stays upper-triangular."""
    n = cell.num_vertices
    for _ in range(200):
        inner = list(rng.permutation(range(1, n - 1)))
        perm = [0, *inner, n - 1]  # new vertex k is old vertex perm[k]
        m = [[cell.matrix[perm[a]][perm[b]] for b in range(n)] for a in range(n)]
        if all(m[a][b] == 0 for a in range(n) for b in range(a + 1)):
            return m, [cell.ops[p] for p in perm]
    return [list(r) for r in cell.matrix], list(cell.ops)


def test_isomorphic_specs_hash_equal_and_share_one_string(space):
    rng = np.random.default_rng(3)
    for _ in range(40):
        cell = space.sample(rng)
        m, ops = _relabel(cell, rng)
        text = json.dumps({"matrix": m, "ops": ops})
        twin = space.from_string(text)
        assert twin == cell and space.to_string(twin) == space.to_string(cell)
        assert spec_hash(NB101Cell(tuple(map(tuple, m)), tuple(ops))) == space.spec_hash(cell)
    # A dangling vertex is pruned away: the spec is the same candidate as without it.
    with_dangling = space.make([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
                               ["input", C3, MP, "output"])
    assert with_dangling == space.make([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["input", C3, "output"])


def test_non_isomorphic_cells_hash_apart():
    chain = ((0, 1, 0, 0, 0), (0, 0, 1, 0, 0), (0, 0, 0, 1, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 0))
    a = NB101Cell(chain, ("input", C1, C3, C3, "output"))
    b = NB101Cell(chain, ("input", C3, C3, C1, "output"))
    assert spec_hash(a) != spec_hash(b)
    assert labels(a.ops) == [-1, 1, 0, 0, -2]


def test_round_trip_encodings_choices_and_mutation(space):
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        assert space.from_string(space.to_string(arch)) == arch
        assert space.from_choices(space.to_choices(arch)) == arch
        code = space.encode(arch)
        assert code.shape == (36,) and code[:21].sum() == arch.num_edges
        assert code[21:].sum() == arch.num_vertices - 2
        assert space.path_encode(arch).shape == (364,) and space.path_encode(arch).sum() >= 1
        child = space.mutate(arch, rng)
        assert child != arch and space.from_string(space.to_string(child)) == child
    assert [space.sample(np.random.default_rng(7)) for _ in range(3)] == \
        [space.sample(np.random.default_rng(7)) for _ in range(3)]


@pytest.mark.parametrize(
    "matrix, ops, fragment",
    [
        ([[0, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1],
          [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [0] * 7], ["input", C3, C3, C3, C3, C3, "output"],
         "too many edges: 15 > 9"),
        ([[0, 1, 0], [1, 0, 1], [0, 0, 0]], ["input", C3, "output"], r"not upper-triangular: entry \[1\]\[0\]"),
        ([[0] * 8 for _ in range(8)], ["input"] + [C3] * 6 + ["output"], "too many vertices: 8 > 7"),
        ([[0, 1, 0], [0, 0, 0], [0, 0, 0]], ["input", C3, "output"], "output not reachable"),
        ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], ["input", "conv5x5", "output"], "unknown op 'conv5x5'"),
        ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], [C3, C3, "output"], "first op must be 'input'"),
        ([[0, 2, 0], [0, 0, 1], [0, 0, 0]], ["input", C3, "output"], "must be 0 or 1"),
        ([[0, 1], [0, 0]], ["input", C3, "output"], "3 ops for a 2x2 matrix"),
    ],
)
def test_invalid_specs_are_rejected_with_the_reason(space, matrix, ops, fragment):
    with pytest.raises(ArchError, match=fragment):
        space.from_string(json.dumps({"matrix": matrix, "ops": ops}))


def test_malformed_strings_say_what_is_wrong(space):
    with pytest.raises(ArchError, match="must be JSON"):
        space.from_string("[[0, 1], [0, 0]]]")
    with pytest.raises(ArchError, match="keys 'matrix' and 'ops'"):
        space.from_string('{"matrix": [[0, 1], [0, 0]]}')
    with pytest.raises(ArchError, match="needs 26 choices"):
        space.from_choices([0] * 25)


def test_choice_driven_draws_are_repaired_into_valid_cells(space):
    # No edge at all: the input-output edge is added.
    assert space.to_string(space.from_choices([0] * 26)) == \
        '{"matrix": [[0, 1], [0, 0]], "ops": ["input", "output"]}'
    # Every edge (21 > 9): edges are dropped, last slot first, while a path remains.
    assert space.from_choices([1] * 21 + [0] * 5).num_edges <= 9
    rng = np.random.default_rng(2)
    for _ in range(300):
        arch = space.from_choices(list(rng.integers(0, 2, 21)) + list(rng.integers(0, 3, 5)))
        assert space.from_choices(space.to_choices(arch)) == arch


@pytest.mark.parametrize("cell", [INCEPTION_QUERY, NNI_CELL, ([[0, 1], [0, 0]], ["input", "output"])])
def test_forward_and_onnx_parity(small, cell, onnx_parity):
    ref = onnx_parity(small, small.make(*cell), torch.randn(2, 3, 16, 16))
    assert ref.shape == (2, 10) and np.isfinite(ref).all()


def test_uneven_channel_split_truncates_and_odd_sizes_pool(small):
    # 8 stem channels over 3 output vertices: widths 3, 3, 2; vertex 1 feeds vertex 3 and is truncated.
    arch = small.make([[0, 1, 1, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0] * 5],
                      ["input", C3, MP, C1, "output"])
    out = small.build(arch, input_shape=(3, 30, 30))(torch.randn(2, 3, 30, 30))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", ["random", "evolution", "bayesian", "nsga2", "reinforce"])
def test_every_strategy_asks_and_tells(space, name):
    from nas import strategies

    if name not in strategies.registry:
        pytest.skip(f"strategy {name} not available")
    strategy = strategies.get(name, space, seed=0)
    for _ in range(3):
        archs = strategy.ask(4)
        assert all(isinstance(a, NB101Cell) for a in archs)
        strategy.tell(archs, [(float(a.num_edges),) for a in archs])


def test_optional_accuracy_table_is_keyed_by_canonical_cell(tmp_path):
    import csv

    path = tmp_path / "acc.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "cifar10"])
        w.writerow([json.dumps({"matrix": INCEPTION_QUERY[0], "ops": INCEPTION_QUERY[1]}), "93.1"])
    space = search_spaces.get("nb101", accuracy_table=path)
    assert space.has_oracle and not search_spaces.get("nb101").has_oracle
    assert space.accuracy(space.make(*INCEPTION_STORED)) == pytest.approx(93.1)
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(['{"matrix": [[0, 0], [0, 0]], "ops": ["input", "output"]}', "10"])
    with pytest.raises(ValueError, match="line 3: output not reachable"):
        search_spaces.get("nb101", accuracy_table=path)
