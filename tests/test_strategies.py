"""Conformance suite every registered strategy passes, on the NAS-Bench-201 space with a cheap evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nas
import search_spaces
from nas import strategies
from nas.run import Candidate

STRATEGIES = [n for n in strategies.registry.list()  # one-shot methods train on data, not tables
              if not getattr(strategies.registry.get(n), "one_shot", False)]
SPACE = search_spaces.get("nb201")


class ParamCount:
    """A real, cheap evaluator: the built network's parameter count (millions) and a second cost."""

    def __call__(self, arch: str) -> Candidate:
        model = SPACE.build(SPACE.from_string(arch))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        convs = float(arch.count("conv"))
        return Candidate(arch, {"size": params, "convs": convs}, {"params": params})


def _search(strategy: str, budget: int, out=None, resume: bool = False, objectives=("size",), seed: int = 0,
            **kw):
    return nas.search("nb201", strategy, list(objectives), budget=budget, seed=seed, out=out, resume=resume,
                      progress=False, plot=False, evaluate=ParamCount(), **kw)


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_finishes_with_exactly_budget_distinct(name):
    result = _search(name, 12)
    archs = [c.arch for c in result.candidates]
    assert len(archs) == 12 == len(set(archs))
    assert result.best is not None and result.best.scores["size"] == max(c.scores["size"] for c in result.candidates)


@pytest.mark.parametrize("name", STRATEGIES)
def test_same_seed_same_sequence_other_seed_differs(name):
    a = [c.arch for c in _search(name, 10, seed=1).candidates]
    b = [c.arch for c in _search(name, 10, seed=1).candidates]
    c = [c.arch for c in _search(name, 10, seed=2).candidates]
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", STRATEGIES)
def test_resume_replays_to_the_uninterrupted_sequence(name, tmp_path):
    _search(name, 7, out=tmp_path / "r")
    resumed = _search(name, 14, out=tmp_path / "r", resume=True)
    fresh = _search(name, 14)
    assert [c.arch for c in resumed.candidates] == [c.arch for c in fresh.candidates]
    store = nas.run.RunStore(tmp_path / "r")
    assert store.get_meta("duplicate_evaluations", 0) == 0


@pytest.mark.parametrize("name", STRATEGIES)
def test_ask_tell_contract_and_infeasible_feedback(name):
    strategy = strategies.get(name, SPACE, seed=0, n_objectives=2)
    for round_ in range(4):
        archs = strategy.ask(3)
        assert len(archs) == 3
        for arch in archs:
            assert SPACE.from_string(SPACE.to_string(arch)) == arch
        values = [(-math.inf, -math.inf) if i == 0 else (float(i + round_), -float(i)) for i in range(3)]
        strategy.tell(archs, values)


@pytest.mark.parametrize("name", STRATEGIES)
def test_two_objectives_give_a_front(name):
    result = _search(name, 10, objectives=("size", "min:convs"))
    front = result.pareto
    assert front
    vals = np.array([result.values(c) for c in front])
    for i in range(len(vals)):  # no front member dominates another
        assert not np.any(np.all(vals >= vals[i], axis=1) & np.any(vals > vals[i], axis=1))


def test_missing_capability_is_named():
    class NoMutate:
        name = "toy"

    with pytest.raises(ValueError, match="mutate"):  # a user's choice of space and strategy, not a bug
        strategies.get("evolution", NoMutate())
    with pytest.raises(ValueError, match="decisions"):
        strategies.get("reinforce", NoMutate())
    with pytest.raises(ValueError, match="suggest"):
        strategies.get("bayesian", NoMutate())


def test_evolution_options_are_checked():
    with pytest.raises(ValueError, match="sample_size"):
        strategies.get("evolution", SPACE, population_size=4, sample_size=9)
