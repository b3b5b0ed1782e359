"""Every run's Optuna copy (issue 25): one study per run, trials that match the run, safe on resume and
failure, a sweep's cells as studies of one storage, and ``nas runs export-optuna``."""

from __future__ import annotations

import json
import logging
import math

import optuna
import pytest

import nas
from nas import optuna_mirror
from nas.cli import main
from nas.optuna_mirror import INDEX_ATTR, STORAGE_NAME, export_run, load_optuna_study, open_storage
from nas.run import RunStore
from nas.sweep import SweepSpec, run_sweep

SMALL = {"channels": 8, "cells_per_stage": 1}


def _small_run(out, budget: int, **kwargs):
    options = {"space": "nb201", "strategy": "nsga2", "objectives": ["synflow", "params"], "seed": 0,
               "space_options": SMALL, "batch_size": 16, "progress": False,
               "strategy_options": {"population_size": 6}}
    return nas.search(budget=budget, out=out, **{**options, **kwargs})


def _arches(trials) -> list[str]:
    return sorted(t.user_attrs["arch"] for t in trials)


def test_two_objective_run_is_one_study_whose_best_trials_are_the_runs_pareto_set(tmp_path):
    out = tmp_path / "mo"
    result = _small_run(out, budget=16)
    study = optuna.load_study(study_name="mo", storage=open_storage(out / STORAGE_NAME))
    assert len(study.trials) == 16
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["synflow", "params"]
    assert _arches(study.best_trials) == _arches_of(nas.load_run(out).pareto) == _arches_of(result.pareto)
    by_arch = {c.arch: c for c in result.candidates}
    for t in study.trials:  # values in their units, decisions as categorical params, the rest as attributes
        cand = by_arch[t.user_attrs["arch"]]
        assert t.values == [cand.value("synflow"), cand.value("params")]
        assert list(t.params) == [name for name, _ in nas.settings.stored_space(result.config).decisions()]
        assert t.user_attrs[INDEX_ATTR] == cand.index and t.user_attrs["status"] == "ok"
        assert t.user_attrs["feasible"] is True and t.user_attrs["wall_s"] >= 0
    assert json.dumps(study.user_attrs["zcnas_config"])  # the run's settings travel with the study
    # the run's strategy keeps its own sampling journal, untouched
    assert optuna.get_all_study_names(open_storage(out / "optuna.journal")) == ["search"]


def _arches_of(cands) -> list[str]:
    return sorted(c.arch for c in cands)


def test_resume_mirrors_only_the_new_candidates_and_catches_up_a_missing_copy(tmp_path):
    out = tmp_path / "run"
    _small_run(out, budget=6)
    _small_run(out, budget=10, resume=True)
    study = load_optuna_study(out)
    indices = [t.user_attrs[INDEX_ATTR] for t in study.trials]
    assert sorted(indices) == list(range(1, 11))  # each candidate once

    (out / STORAGE_NAME).unlink()  # e.g. a run from before the mirror: resuming writes the whole copy
    _small_run(out, budget=12, resume=True)
    assert sorted(t.user_attrs[INDEX_ATTR] for t in load_optuna_study(out).trials) == list(range(1, 13))


def test_failed_is_a_fail_trial_and_infeasible_is_complete_with_optuna_constraints(tmp_path):
    study = nas.create_study("nb201", ["synflow", "params"], strategy="random", storage=tmp_path / "c",
                             constraints={"max_params": 0.05}, space_options=SMALL, batch_size=16)
    values = [(3.0, 0.04), (5.0, 0.06), (2.0, 0.01), (math.nan, 0.001)]
    for synflow, params in values:
        study.tell(study.ask(), {"synflow": synflow, "params": params})
    study.tell(study.ask(), state="failed", error="RuntimeError: out of memory")
    study.close()

    trials = sorted(load_optuna_study(tmp_path / "c").trials, key=lambda t: t.user_attrs[INDEX_ATTR])
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4 + ["FAIL"]
    failed = trials[-1]
    assert failed.values is None and failed.user_attrs["error"] == "RuntimeError: out of memory"
    assert failed.user_attrs["status"] == "failed"
    assert trials[1].constraints == {"0": pytest.approx(0.01)} and trials[1].user_attrs["feasible"] is False
    assert trials[0].constraints == {"0": pytest.approx(-0.01)}
    # a missing (NaN) proxy value is the worst of its direction, as the run ranks it; the raw value is kept
    assert trials[3].values == [-math.inf, 0.001] and trials[3].user_attrs["synflow"] == "nan"
    run = nas.load_run(tmp_path / "c")
    assert _arches(load_optuna_study(tmp_path / "c").best_trials) == _arches_of(run.pareto)
    assert trials[1].user_attrs["arch"] not in _arches_of(run.pareto)


def test_a_broken_mirror_warns_once_and_never_fails_the_search(tmp_path, monkeypatch, caplog):
    def broken(self, cand):
        raise OSError("disk full")

    monkeypatch.setattr(optuna_mirror.OptunaMirror, "trial", broken)
    with caplog.at_level(logging.WARNING, logger="nas.optuna_mirror"):
        result = _small_run(tmp_path / "r", budget=5)
    assert len(result.candidates) == 5
    warnings = [r for r in caplog.records if r.name == "nas.optuna_mirror"]
    assert len(warnings) == 1 and "disk full" in warnings[0].getMessage()

    monkeypatch.undo()  # the export rewrites the whole copy
    assert export_run(tmp_path / "r")[1:] == ("r", 5)
    assert len(load_optuna_study(tmp_path / "r").trials) == 5


def test_a_space_without_decisions_keeps_the_arch_string_only(tmp_path):
    study = nas.create_study("rnn", ["params"], strategy="random", storage=tmp_path / "rnn")
    trial = study.ask()
    study.tell(trial, {"params": 1.0})
    study.close()
    (t,) = load_optuna_study(tmp_path / "rnn").trials
    assert t.params == {} and t.user_attrs["arch"] == trial.string and t.values == [1.0]


def test_export_optuna_replaces_the_copy_and_refuses_a_live_run(tmp_path, capsys):
    out = tmp_path / "run"
    _small_run(out, budget=5)
    for _ in range(2):  # idempotent
        assert main(["runs", "export-optuna", str(out)]) == 0
        assert "run: 5 trials" in capsys.readouterr().out
        storage = open_storage(out / STORAGE_NAME)
        assert optuna.get_all_study_names(storage) == ["run"]
        assert len(optuna.load_study(study_name="run", storage=storage).trials) == 5

    live = RunStore(out)
    live.lock()
    try:
        assert main(["runs", "export-optuna", str(out)]) == 1
        assert "in use" in capsys.readouterr().err
    finally:
        live.close()
    assert main(["runs", "export-optuna", str(tmp_path / "nothing")]) == 2


def test_sweep_cells_are_studies_of_one_storage_serial_and_on_ray(ray_local, tmp_path, capsys):
    spec = SweepSpec.from_dict({"grid": {"strategy": ["random", "bayesian"], "seed": [0, 1], "budget": 4},
                                "options": {"objectives": ["synflow", "params"], "batch_size": 16,
                                            "space_options": SMALL}})
    out = tmp_path / "sweep"
    result = run_sweep(spec, out)  # bayesian is asynchronous: Ray tells each result as it arrives
    assert all(c.status == "ok" for c in result.cells)
    storage = open_storage(out / STORAGE_NAME)
    names = [c.name for c in spec.cells()]
    assert sorted(optuna.get_all_study_names(storage)) == sorted(names)
    for name in names:
        assert not (out / name / STORAGE_NAME).exists()  # one storage for the whole sweep
        study = optuna.load_study(study_name=name, storage=storage)
        assert len(study.trials) == 4
        assert _arches(study.best_trials) == _arches_of(nas.load_run(out / name).pareto)

    assert main(["runs", "export-optuna", str(out)]) == 0  # every cell, each replacing its own study
    assert capsys.readouterr().out.count("4 trials") == 4
    assert sorted(optuna.get_all_study_names(open_storage(out / STORAGE_NAME))) == sorted(names)
