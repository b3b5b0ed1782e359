"""The final pick of a search: one objective, a latency limit, the knee of a multi-objective front."""

import json

import pytest

import nas
from nas.objectives import Constraints, parse_objectives
from nas.result import SearchResult
from nas.run import Candidate


def front(points):
    """Candidates with a proxy score (max) and latency (min), in arrival order."""
    return [Candidate(f"a{i}", {"synflow": s}, {"latency_ms": lat}, index=i) for i, (s, lat) in enumerate(points)]


# A convex front: the end points are the best proxy (slowest) and the fastest; (8, 30) is the balanced one.
POINTS = [(10.0, 160.0), (9.0, 60.0), (8.0, 30.0), (4.0, 20.0), (0.0, 15.0), (5.0, 100.0)]


def test_two_objectives_pick_the_knee_not_the_end_of_the_front():
    result = SearchResult(front(POINTS), parse_objectives(["synflow", "latency"]))
    assert {c.arch for c in result.pareto} == {"a0", "a1", "a2", "a3", "a4"}
    assert result.best.arch == "a2" and result.knee.arch == "a2"
    assert "knee" in result.pick_rule
    assert result.ranked()[0].arch == "a2"  # rank 1 of `nas train RUN --rank` and `nas export` is the pick


def test_a_latency_limit_picks_the_best_proxy_within_it():
    result = SearchResult(front(POINTS), parse_objectives(["synflow", "latency"]), Constraints(latency_ms=70))
    assert result.best.arch == "a1" and "within --latency-ms 70" in result.pick_rule


def test_one_objective_picks_its_best():
    result = SearchResult(front(POINTS), parse_objectives(["synflow"]))
    assert result.best.arch == "a0" and result.pick_rule == "the best synflow"


def test_the_knee_does_not_depend_on_units():
    scaled = [(s * 1e6, lat / 1000) for s, lat in POINTS]
    result = SearchResult(front(scaled), parse_objectives(["synflow", "latency"]))
    assert result.best.arch == "a2"


@pytest.mark.parametrize("objectives", [["synflow"], ["synflow", "params"]])
def test_best_json_says_how_the_pick_was_chosen(tmp_path, objectives):
    nas.search("nb201", "random", objectives, budget=6, seed=0, out=tmp_path / "r", progress=False,
               space_options={"channels": 8, "cells_per_stage": 1}, batch_size=8)
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    result = nas.load_run(tmp_path / "r")
    assert best["arch"] == result.best.arch and best["pick"] == result.pick_rule
    assert ("knee" in best["pick"]) == (len(objectives) > 1)
