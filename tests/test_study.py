"""The public ask/tell study and the defects of issue 20 it fixes: failures are never scores, resumes
check their flags and inputs, damaged or busy run directories give clear errors."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3

import numpy as np
import pytest
import torch

import nas
import proxies
import search_spaces
from nas import strategies
from nas.cli import main
from nas.errors import ResumeConflict, RunInUse, RunStoreError, SearchFailed
from nas.run import Candidate, RunStore
from tests.test_strategies import ParamCount

SMALL = {"channels": 8, "cells_per_stage": 1}


def out_channels_spread(model: torch.nn.Module, batch: proxies.Batch) -> float:
    """A custom proxy: the standard deviation of the logits over the batch."""
    with torch.no_grad():
        return float(model(batch.inputs).std())


def always_raises(model: torch.nn.Module, batch: proxies.Batch) -> float:
    """A custom proxy that cannot be computed."""
    raise RuntimeError("this proxy needs a GPU kernel that is missing")


def _gray_npz(path, n: int = 16):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 255, size=(n, 1, 32, 32), dtype=np.uint8), y=np.arange(n) % 10)
    return path


# -- a failure is never a score ------------------------------------------------------------------------------
def test_data_that_cannot_feed_the_space_stops_before_a_run_exists(tmp_path, capsys):
    gray = _gray_npz(tmp_path / "gray.npz")
    with pytest.raises(ValueError, match="1 channel.*3-channel"):
        nas.search("nb201", "random", ["synflow"], budget=3, data=str(gray), out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "run.sqlite").exists()
    code = main(["search", "--space", "nb201", "--data", str(gray), "--budget", "3", "--out",
                 str(tmp_path / "cli"), "--no-progress"])
    assert code == 2
    assert "1 channel" in capsys.readouterr().err
    assert not (tmp_path / "cli" / "best.json").exists()


def test_a_run_whose_candidates_all_fail_stops_with_the_first_error_and_no_best(tmp_path):
    with pytest.raises(SearchFailed, match="missing"):
        nas.search(search_spaces.get("nb201", **SMALL), "random", [always_raises], budget=20, seed=0,
                   out=tmp_path / "r", progress=False, plot=False, cache=tmp_path / "cache")
    stored = RunStore(tmp_path / "r").candidates()
    assert 0 < len(stored) <= 5  # stopped at once, not after the whole budget
    assert all(c.status == "failed" and "missing" in c.error for c in stored)
    assert all(math.isnan(c.scores["always_raises"]) for c in stored)  # never a number
    assert not (tmp_path / "r" / "best.json").exists()
    cached = proxies.ProxyCache(tmp_path / "cache")
    assert len(cached) == 0  # a failure is never cached, nor the other values of a failed candidate


def test_failed_candidates_rank_after_every_real_value(tmp_path):
    study = nas.create_study("nb201", ["size"], "random", tmp_path / "r", evaluator="custom")
    ok, bad, worse = study.ask(), study.ask(), study.ask()
    study.tell(ok, {"size": -1e300})  # a terrible but real value
    cand = study.tell(bad, state="failed", error="ValueError: out of memory")
    study.tell(worse, {"size": math.nan})  # a degenerate network's proxy: ranks last, not a failure
    assert cand.status == "failed" and cand.error == "ValueError: out of memory" and cand.scores == {}
    assert study.best.arch == ok.string
    assert [c.arch for c in study.result.ranked()][0] == ok.string
    assert study.result.oriented(cand) == (-math.inf,)
    study.close()


# -- resume -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "value", "shown"), [
    ("strategy", "evolution", "--strategy evolution contradicts the stored run's random"),
    ("objectives", ["convs"], "--objectives max:convs contradicts the stored run's max:size"),
    ("seed", 4, "--seed 4 contradicts the stored run's 0"),
    ("max_params", 0.5, "--max-params 0.5 contradicts the stored run's None"),
    ("space", "darts", "--space darts contradicts the stored run's nb201"),
])
def test_resume_refuses_flags_that_contradict_the_stored_run(tmp_path, flag, value, shown):
    nas.search("nb201", "random", ["size"], budget=3, seed=0, out=tmp_path / "r", progress=False, plot=False,
               evaluate=ParamCount())
    with pytest.raises(ResumeConflict) as err:
        nas.search(out=tmp_path / "r", resume=True, budget=5, progress=False, plot=False, evaluate=ParamCount(),
                   **{flag: value})
    assert shown in str(err.value)
    assert len(RunStore(tmp_path / "r").candidates()) == 3  # nothing ran
    # the same values as stored, and a new budget, are fine
    again = nas.search("nb201", "random", ["size"], budget=5, seed=0, out=tmp_path / "r", resume=True,
                       progress=False, plot=False, evaluate=ParamCount())
    assert len(again.candidates) == 5


def test_cli_resume_conflict_exits_2_naming_the_flag_and_both_values(tmp_path, capsys):
    args = ["search", "--space", "nb201", "--space-option", "channels=8", "--space-option", "cells_per_stage=1",
            "--strategy", "random", "--objectives", "params", "--budget", "2", "--batch-size", "8",
            "--no-progress", "--no-onnx", "--no-cache"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["search", "--resume", str(tmp_path / "r"), "--objectives", "synflow", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--objectives max:synflow" in err and "min:params" in err


def test_changed_data_file_is_an_error_on_resume(tmp_path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 255, size=(16, 3, 32, 32), dtype=np.uint8), y=np.arange(16) % 10)
    options = {"progress": False, "plot": False, "cache": False, "batch_size": 8}
    nas.search("nb201", "random", ["params"], budget=2, data=str(data), out=tmp_path / "r",
               space_options=SMALL, **options)
    np.savez(data, x=rng.integers(0, 255, size=(16, 3, 32, 32), dtype=np.uint8), y=np.arange(16) % 10)
    with pytest.raises(ResumeConflict, match="changed since the run started"):
        nas.search(out=tmp_path / "r", resume=True, budget=3, **options)
    with pytest.raises(ResumeConflict, match="changed since the run started"):
        nas.load_study(tmp_path / "r")  # the notebook path checks it too


def test_a_failed_executor_start_leaves_no_run_directory(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        nas.search("nb201", "random", ["params"], budget=2, out=tmp_path / "r", executor="ray",
                   executor_options={"workers": 0}, progress=False)
    assert not (tmp_path / "r").exists()


# -- damaged and busy run directories -----------------------------------------------------------------------
def test_corrupted_run_database_gives_exit_1_naming_the_file(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "run.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RunStoreError, match="run.sqlite"):
        nas.load_run(run_dir)
    assert main(["runs", "show", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "run.sqlite" in err and "Traceback" not in err


def test_runs_show_does_not_write_to_the_database(tmp_path):
    nas.search("nb201", "random", ["size"], budget=3, out=tmp_path / "r", progress=False, plot=False,
               evaluate=ParamCount())
    db = tmp_path / "r" / "run.sqlite"
    before = hashlib.sha1(db.read_bytes()).hexdigest()
    db.chmod(0o444)
    try:
        assert main(["runs", "show", str(tmp_path / "r")]) == 0
    finally:
        db.chmod(0o644)
    assert hashlib.sha1(db.read_bytes()).hexdigest() == before


def test_a_live_run_directory_cannot_be_taken_twice(tmp_path, capsys):
    study = nas.create_study("nb201", ["size"], "random", tmp_path / "r", evaluator="custom")
    with pytest.raises(RunInUse, match="in use by another live process"):
        nas.load_study(tmp_path / "r")
    with pytest.raises(RunInUse):
        nas.search(out=tmp_path / "r", resume=True, evaluate=ParamCount(), progress=False)
    assert main(["search", "--resume", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "in use" in capsys.readouterr().err
    study.close()
    nas.load_study(tmp_path / "r").close()  # free again once the first holder closed it


# -- the study API ------------------------------------------------------------------------------------------
def test_study_from_objects_resumes_by_replay_and_matches_an_uninterrupted_run(tmp_path):
    space = search_spaces.get("nb201", **SMALL)

    def make(storage):
        return nas.create_study(space, [out_channels_spread, "params"], strategies.Evolution(population_size=4,
                                sample_size=2), storage, seed=1, batch_size=8, cache=False)

    whole = make(tmp_path / "whole")
    whole.optimize(budget=10)
    first = make(tmp_path / "split")
    trial = first.ask()  # a manual ask/tell in between
    first.tell(trial, first.evaluator()(trial.string))
    first.optimize(budget=6)
    first.close()
    again = nas.load_study(tmp_path / "split", proxies=[out_channels_spread])
    again.optimize(budget=10)
    assert [c.arch for c in again.candidates] == [c.arch for c in whole.candidates]
    frame = again.to_dataframe()
    assert len(frame) == 10 and {"out_channels_spread", "params"} <= set(frame.columns)
    assert again.store.get_meta("duplicate_evaluations", 0) == 0
    for s in (whole, again):
        s.close()


def test_load_study_asks_for_custom_objects_again(tmp_path):
    nas.create_study(search_spaces.get("nb201", **SMALL), [out_channels_spread], "random", tmp_path / "r",
                     cache=False).close()
    proxies.registry._items.pop("out_channels_spread")  # as in a new process
    try:
        with pytest.raises(ValueError, match="custom proxies"):
            nas.load_study(tmp_path / "r")
    finally:
        proxies.proxy("out_channels_spread", "test")(out_channels_spread)

    class Mine(strategies.registry.get("random")):
        pass

    nas.create_study("nb201", ["size"], Mine(search_spaces.get("nb201")), tmp_path / "c", evaluator="custom").close()
    with pytest.raises(ValueError, match="custom strategy"):
        nas.load_study(tmp_path / "c")
    nas.load_study(tmp_path / "c", strategy=Mine(search_spaces.get("nb201"))).close()


def test_tell_checks_its_trial(tmp_path):
    study = nas.create_study("nb201", ["size", "convs"], "random", tmp_path / "r", evaluator="custom")
    trial = study.ask()
    with pytest.raises(ValueError, match="2 objectives"):
        study.tell(trial, [1.0])
    study.tell(trial, [1.0, 2.0])
    with pytest.raises(ValueError, match="not open"):
        study.tell(trial, [1.0, 2.0])
    assert study.candidates[0].scores == {"size": 1.0, "convs": 2.0}
    study.close()


def test_registering_the_same_proxy_twice_is_a_no_op_and_another_raises():
    def twice(model, batch):
        return 1.0

    proxies.proxy("test_twice", "x")(twice)

    def twice(model, batch):  # noqa: F811 - a notebook cell run again
        return 1.0

    proxies.proxy("test_twice", "x")(twice)

    def twice(model, batch):  # noqa: F811 - a different definition under a taken name
        return 2.0

    with pytest.raises(ValueError, match="another definition"):
        proxies.proxy("test_twice", "x")(twice)
    proxies.registry._items.pop("test_twice")


def test_event_log_is_json_and_ordered(tmp_path):
    nas.search("nb201", "evolution", ["size"], budget=6, out=tmp_path / "r", progress=False, plot=False,
               strategy_options={"population_size": 3, "sample_size": 2}, evaluate=ParamCount())
    with sqlite3.connect(tmp_path / "r" / "run.sqlite") as con:
        rows = con.execute("SELECT kind, archs FROM events ORDER BY seq").fetchall()
    assert [k for k, _ in rows] == ["ask", "tell"] * 6
    assert all(len(json.loads(a)) == 1 for _, a in rows)
    assert isinstance(nas.load_run(tmp_path / "r").best, Candidate)
