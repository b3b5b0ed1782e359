"""``--strategy predictor``: BANANAS-style search that spends a fixed number of oracle labels.

Real runs on small NAS-Bench-201 networks (8 channels, one cell per stage) scored by the ``params`` proxy;
the oracle is the shipped accuracy table (skipped when ``../shared/data`` is absent).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import nas
import search_spaces
from nas.strategies.predictor import PredictorSearch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"channels": 8, "cells_per_stage": 1}
ROUNDS = {"queries": 6, "init": 10, "init_queries": 2, "per_round": 2, "pool": 6}


def search(tmp_path, table, name="r", budget=200, seed=0, resume=False, **kw):
    """A predictor search on the small space with the oracle attached (or the resumed one)."""
    common = {"budget": budget, "out": tmp_path / name, "progress": False, "plot": False}
    if resume:
        return nas.search(resume=True, **common, **kw)
    options = {**ROUNDS, **kw.pop("strategy_options", {})}
    return nas.search("nb201", "predictor", ["params"], seed=seed, strategy_options=options,
                      space_options={**SMALL, "accuracy_table": table}, **common, **kw)


@pytest.fixture(scope="module")
def table(shared_data):
    return str(shared_data / "nb201_accuracy.csv")


def test_spends_exactly_its_queries_and_picks_the_best_queried(tmp_path, table):
    result = search(tmp_path, table)
    assert len(result.oracle) == ROUNDS["queries"]
    assert len(result.candidates) < 200  # the strategy ended the search once its labels were spent
    space = search_spaces.get("nb201", accuracy_table=table)
    assert all(acc == space.accuracy(space.from_string(a)) for a, acc in result.oracle.items())
    assert result.best.arch == max(result.oracle, key=result.oracle.get)
    assert result.pick_rule == "the best of the oracle's queries"
    summary = json.loads((tmp_path / "r" / "best.json").read_text())
    assert summary["oracle"]["queries"] == ROUNDS["queries"]
    assert summary["oracle"]["accuracy"] == max(result.oracle.values())
    assert nas.load_run(tmp_path / "r").oracle == result.oracle  # stored in the run


def test_resume_replays_the_queries_identically(tmp_path, table):
    fresh = search(tmp_path, table, "fresh")
    cut = search(tmp_path, table, "cut", budget=14)  # stops inside the second round
    assert 0 < len(cut.oracle) < ROUNDS["queries"]
    assert nas.load_run(tmp_path / "cut").oracle == cut.oracle  # answers stored as they came
    resumed = search(tmp_path, table, "cut", budget=200, resume=True)
    assert [c.arch for c in resumed.candidates] == [c.arch for c in fresh.candidates]
    assert list(resumed.oracle.items()) == list(fresh.oracle.items())
    assert resumed.best.arch == fresh.best.arch
    again = search(tmp_path, table, "cut", budget=300, resume=True)  # finished: nothing more is asked
    assert len(again.candidates) == len(fresh.candidates) and again.oracle == fresh.oracle


def test_thompson_sampling_and_more_labels_per_round(tmp_path, table):
    result = search(tmp_path, table, strategy_options={"acquisition": "its", "queries": 9, "per_round": 3,
                                                       "parents": 2, "local": False})
    assert len(result.oracle) == 9
    assert result.best.arch == max(result.oracle, key=result.oracle.get)


def test_with_greedy_oracle_queries_the_pick_is_the_best_of_both(tmp_path, table):
    result = search(tmp_path, table, oracle_queries=3)
    assert len(result.oracle) >= ROUNDS["queries"]  # the greedy step adds to the strategy's labels
    assert result.best.arch == max(result.oracle, key=result.oracle.get)


def test_known_labels_without_an_oracle(tmp_path):
    space = search_spaces.get("nb201", **SMALL)
    rng = np.random.default_rng(3)
    labels = [(space.to_string(space.sample(rng)), 80.0 + i) for i in range(4)]
    result = nas.search("nb201", "predictor", ["params"], budget=20, seed=0, out=tmp_path / "r", progress=False,
                        plot=False, labels=labels, space_options=SMALL,
                        strategy_options={"init": 8, "pool": 4})
    assert not result.oracle and len(result.candidates) == 20
    assert result.pick_rule == "the search method's own answer"
    assert {a for a, _ in labels} <= {c.arch for c in result.candidates}  # evaluated, so their values are told


def test_clear_errors(table):
    space = search_spaces.get("nb201", **SMALL)
    with pytest.raises(ValueError, match="accuracy-table"):
        PredictorSearch(space, queries=5)
    oracle = search_spaces.get("nb201", accuracy_table=table, **SMALL)
    with pytest.raises(ValueError, match="ucb, its"):
        PredictorSearch(oracle, acquisition="ei")
    with pytest.raises(ValueError, match="ensemble_fit"):  # an unknown kind lists the registered ones
        PredictorSearch(oracle, kind="no_such_kind")
    with pytest.raises(ValueError, match="per_round must be >= 1"):
        PredictorSearch(oracle, per_round=0)
    with pytest.raises(ValueError, match="accepted|valid"):
        nas.search("nb201", "predictor", ["params"], budget=2, progress=False,
                   space_options={"accuracy_table": table}, strategy_options={"rounds": 3})


def test_a_registered_kind_as_the_ensemble_waits_for_its_labels(tmp_path, table):
    # ensemble_fit refuses fewer than 5 labels; the told objectives choose until there are 5
    kind_options = {"components": ["params", "flops"], "reference_size": 6, "n_trials": 4, "bags": 2}
    strategy = PredictorSearch(search_spaces.get("nb201", accuracy_table=table), queries=8, kind="ensemble_fit",
                               kind_options=kind_options)
    assert strategy.min_labels == 5
    result = search(tmp_path, table, strategy_options={"kind": "ensemble_fit", "kind_options": kind_options,
                                                       "queries": 8})
    assert len(result.oracle) == 8
    assert result.best.arch == max(result.oracle, key=result.oracle.get)


def test_nas_train_as_the_labeller(tmp_path, learnable_npz):
    """Labels are validation accuracies of real ``nas train`` runs; a resumed search trains nothing again."""
    data = learnable_npz(n_train=60, n_test=20)
    train = {"data": str(data), "epochs": 1, "batch_size": 20, "train_size": 40, "val_size": 20,
             "space_options": {"channels": 4, "cells_per_stage": 1}, "out": str(tmp_path / "labels")}
    options = {"queries": 2, "init": 4, "init_queries": 2, "pool": 2, "train": train}
    common = {"budget": 50, "out": tmp_path / "run", "progress": False, "plot": False}
    result = nas.search("nb201", "predictor", ["params"], seed=0, strategy_options=options,
                        space_options={"channels": 4, "cells_per_stage": 1}, **common)
    folders = sorted((tmp_path / "labels").iterdir())
    assert len(result.oracle) == 2 and len(folders) == 2
    trained = [json.loads((f / "metrics.json").read_text()) for f in folders]
    assert {m["arch"]: m["val_accuracy"] for m in trained} == result.oracle  # validation, never test accuracy
    assert all(m["val_images"] == 20 and m["epochs"] == 1 for m in trained)
    stamps = [(f / "metrics.json").stat().st_mtime_ns for f in folders]
    resumed = nas.search(resume=True, **common)
    assert resumed.oracle == result.oracle
    assert [(f / "metrics.json").stat().st_mtime_ns for f in folders] == stamps
    longer = {**options, "train": {**train, "epochs": 2}}  # other settings never read the 1-epoch folders
    nas.search("nb201", "predictor", ["params"], seed=0, strategy_options=longer,
               space_options={"channels": 4, "cells_per_stage": 1}, **{**common, "out": tmp_path / "run2"})
    assert len(list((tmp_path / "labels").iterdir())) == 4


def test_the_training_labeller_names_bad_settings(tmp_path):
    space = search_spaces.get("nb201")
    with pytest.raises(ValueError, match="needs \"data\""):
        PredictorSearch(space, train={"epochs": 1})
    with pytest.raises(ValueError, match="unknown key.*epoch.*valid: data"):
        PredictorSearch(space, train={"data": "x.npz", "epoch": 1})
    with pytest.raises(ValueError, match="x.npz.*no such folder"):
        PredictorSearch(space, train={"data": "x.npz"})
    with pytest.raises(ValueError, match="val_size must be > 0"):
        PredictorSearch(space, train={"data": str(tmp_path), "val_size": 0})
