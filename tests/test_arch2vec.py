"""arch2vec: the DAG protocol, the graph VAE, and latent bayesian / reinforce search."""

from __future__ import annotations

import numpy as np
import pytest

import search_spaces
from nas import strategies
from predictors.arch2vec import Arch2Vec, pretrained, require_dag
from search_spaces import ArchError
from search_spaces.nb201 import NB201Space

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_OPS = ("none", "skip_connect", "nor_conv_3x3")


class SmallCells(NB201Space):
    """NB201 cells over three of the five ops (729 cells): small enough to pretrain in a test, and the
    decoder can still emit the two other labels, which ``from_dag`` rejects (the nearest-valid path)."""

    name = "nb201_small"

    @property
    def cardinality(self) -> int:
        """3 ** 6 cells."""
        return len(SMALL_OPS) ** 6

    def all_archs(self) -> list[tuple[str, ...]]:
        """Every cell over the three ops."""
        idx = np.indices((3,) * 6).reshape(6, -1).T
        return [tuple(SMALL_OPS[i] for i in row) for row in idx]

    def sample(self, rng: np.random.Generator) -> tuple[str, ...]:
        """A uniformly random cell over the three ops."""
        return tuple(SMALL_OPS[i] for i in rng.integers(3, size=6))

    def from_dag(self, adjacency: np.ndarray, ops: np.ndarray) -> tuple[str, ...]:
        """NB201's, restricted to the three ops."""
        arch = super().from_dag(adjacency, ops)
        if any(op not in SMALL_OPS for op in arch):
            raise ArchError(f"this space has only the ops {SMALL_OPS}")
        return arch


def test_nb201_dag_round_trip_every_cell() -> None:
    space = search_spaces.get("nb201")
    archs = space.all_archs()
    for arch in archs:
        adj, ops = space.to_dag(arch)
        assert adj.shape == (8, 8) and ops.shape == (8,)
        assert not np.tril(adj).any()  # upper triangular: node order is topological
        assert space.from_dag(adj, ops) == arch
    assert len({space.to_dag(a)[1].tobytes() for a in archs}) == len(archs)


def test_nb201_from_dag_rejects_other_graphs() -> None:
    space = search_spaces.get("nb201")
    adj, ops = space.to_dag(space.all_archs()[123])
    wrong = adj.copy()
    wrong[0, 7] = 1
    with pytest.raises(ArchError, match="wiring"):
        space.from_dag(wrong, ops)
    with pytest.raises(ArchError, match="edge op"):
        space.from_dag(adj, np.array([0, 6, 1, 1, 1, 1, 1, 6]))
    with pytest.raises(ArchError, match="input"):
        space.from_dag(adj, np.array([1, 1, 1, 1, 1, 1, 1, 6]))


@pytest.fixture(scope="module")
def small_vae() -> Arch2Vec:
    """The default model pretrained on SmallCells (the session's cache: the latent searches reuse it)."""
    return pretrained(SmallCells())


def test_vae_reconstructs_well_above_chance(small_vae: Arch2Vec, tmp_path) -> None:
    space = SmallCells()
    archs = space.all_archs()
    accuracy = small_vae.reconstruction_accuracy(space, archs)
    # decoding all six edge labels right by chance: 7 ** -6 = 8e-6; the default training reaches about 0.3
    assert accuracy > 0.1
    small_vae.save(tmp_path / "vae")
    again = Arch2Vec.load(tmp_path / "vae")
    np.testing.assert_array_equal(small_vae.embed(space, archs), again.embed(space, archs))
    assert again.reconstruction_accuracy(space, archs) == accuracy
    assert not list(tmp_path.rglob("*.pkl"))


def test_vae_training_is_deterministic() -> None:
    space = search_spaces.get("nb201")
    archs = space.all_archs()[::50]
    a, b = (Arch2Vec(epochs=2, hidden_dim=16, latent_dim=4).fit(space, archs) for _ in range(2))
    np.testing.assert_array_equal(a.embed(space, archs), b.embed(space, archs))
    c = Arch2Vec(epochs=2, hidden_dim=16, latent_dim=4, seed=1).fit(space, archs)
    assert not np.array_equal(a.embed(space, archs), c.embed(space, archs))


def test_pretrained_is_cached(tmp_path) -> None:
    space = SmallCells()
    first = pretrained(space, cache_dir=tmp_path, epochs=2)
    folders = list((tmp_path / "arch2vec").iterdir())
    assert len(folders) == 1 and (folders[0] / "weights.npz").is_file()
    again = pretrained(space, cache_dir=tmp_path, epochs=2)
    archs = space.all_archs()[:20]
    np.testing.assert_array_equal(first.embed(space, archs), again.embed(space, archs))
    pretrained(space, cache_dir=tmp_path, epochs=2, seed=1)
    assert len(list((tmp_path / "arch2vec").iterdir())) == 2


def _run(name: str, seed: int, n: int = 30) -> list[tuple[str, ...]]:
    space = SmallCells()
    strategy = strategies.get(name, space, seed=seed, latent=True)
    rng = np.random.default_rng(0)
    archs = []
    for _ in range(n):
        (arch,) = strategy.ask(1)
        archs.append(arch)
        strategy.tell([arch], [(float(rng.normal()),)])
    return archs


@pytest.mark.parametrize("name", ["bayesian", "reinforce"])
def test_latent_search_proposes_valid_distinct_reproducible(name: str, small_vae: Arch2Vec) -> None:
    space = SmallCells()
    archs = _run(name, seed=3)
    assert len(set(archs)) == len(archs)
    for arch in archs:
        assert all(op in SMALL_OPS for op in arch)
        assert space.from_dag(*space.to_dag(arch)) == arch
    assert _run(name, seed=3) == archs
    assert _run(name, seed=4) != archs


@pytest.mark.parametrize("name", ["bayesian", "reinforce"])
def test_latent_search_names_the_missing_dag_protocol(name: str) -> None:
    space = search_spaces.get("darts")
    with pytest.raises(ValueError, match=r"lacks dag_ops\(\), to_dag\(\), from_dag\(\)"):
        strategies.get(name, space, latent=True)
    with pytest.raises(ValueError, match="option 'latentt'"):
        strategies.get(name, SmallCells(), latentt=True)


def test_require_dag_names_only_what_is_missing() -> None:
    class Half:
        name = "half"

        def dag_ops(self) -> list[str]:
            return ["a"]

    with pytest.raises(ValueError, match=r"'half'.*lacks to_dag\(\), from_dag\(\)"):
        require_dag(Half(), "test")


def test_propose_falls_back_to_the_nearest_not_yet_proposed(small_vae: Arch2Vec) -> None:
    from nas.strategies.latent import LatentIndex

    index = LatentIndex(SmallCells())
    target = index.archs[100]
    others = set(index.archs) - {target}
    # wherever the point decodes (an excluded cell, or one with an op the space lacks), only one is left
    assert index.propose(index.point(index.archs[0]), others) == target
    assert index.propose(np.full(index.dim, 50.0), others) == target
    # a point at a cell's embedding decodes to the cell itself, when not excluded
    decoded = index.vae.decode_archs(index.space, index.point(target)[None])[0]
    assert index.propose(index.point(target), set()) == (decoded if decoded is not None else target)


def test_nb101_dag_round_trip_and_errors() -> None:
    space = search_spaces.get("nb101")
    rng = np.random.default_rng(0)
    for arch in [space.sample(rng) for _ in range(200)]:
        adj, ops = space.to_dag(arch)
        assert adj.shape == (7, 7) and ops.shape == (7,) and not np.tril(adj).any()
        assert space.from_dag(adj, ops) == arch
    adj, ops = space.to_dag(space.sample(rng))
    no_input = ops.copy()
    no_input[0] = 1
    with pytest.raises(ArchError, match="'input' node first"):
        space.from_dag(adj, no_input)
    empty = np.zeros((7, 7), dtype=int)
    with pytest.raises(ArchError):
        space.from_dag(empty, np.array([0, 1, 1, 1, 1, 1, 4]))  # no input-output path
