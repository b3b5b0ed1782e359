"""The search loop: durable runs (SIGKILL, Ctrl-C, resume), constraints, oracle step, defaults, outputs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nas
import search_spaces
from nas.cli import main
from nas.loop import resolve_settings
from nas.run import Candidate, RunStore
from tests.test_strategies import ParamCount


class Lookup:
    """Evaluates by reading a finished run's stored values: replays a run without building anything."""

    def __init__(self, run_dir: Path) -> None:
        self.stored = {c.arch: c for c in RunStore(run_dir).candidates()}

    def __call__(self, arch: str) -> Candidate:
        c = self.stored[arch]
        return Candidate(arch, c.scores, c.metrics, c.status, c.error)


class InterruptAfter(ParamCount):
    """Raises ``KeyboardInterrupt`` at its ``n``-th call, as a user's Ctrl-C would."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, arch: str) -> Candidate:
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return super().__call__(arch)


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return int(con.execute("SELECT COUNT(*) FROM candidates").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_sigkill_midway_then_resume_evaluates_nothing_twice(tmp_path):
    run_dir = tmp_path / "run"
    budget = 14
    args = ["search", "--space", "nb201", "--strategy", "evolution", "--option", "population_size=4",
            "--option", "sample_size=2", "--objectives", "params", "--budget", str(budget), "--batch-size",
            "8", "--seed", "5", "--no-progress", "--no-onnx"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "nas", *args, "--out", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _count(run_dir / "run.sqlite") < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _count(run_dir / "run.sqlite")
    assert 0 < killed_at < budget, "the run should have been killed midway"

    assert main(["search", "--resume", str(run_dir), "--no-progress", "--no-onnx"]) == 0
    store = RunStore(run_dir)
    archs = [c.arch for c in store.candidates()]
    assert len(archs) == budget == len(set(archs))
    assert store.get_meta("duplicate_evaluations", 0) == 0
    # The killed-and-resumed run proposed exactly what an uninterrupted run proposes.
    fresh = nas.search("nb201", "evolution", ["params"], budget=budget, seed=5, progress=False, plot=False,
                       strategy_options={"population_size": 4, "sample_size": 2}, evaluate=Lookup(run_dir))
    assert [c.arch for c in fresh.candidates] == archs


def test_ctrl_c_leaves_a_consistent_run_that_resumes(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        nas.search("nb201", "bayesian", ["size"], budget=12, seed=0, out=run_dir, progress=False, plot=False,
                   evaluate=InterruptAfter(6))
    interrupted = nas.load_run(run_dir)
    assert len(interrupted.candidates) == 5
    assert json.loads((run_dir / "best.json").read_text())["evaluated"] == 5
    resumed = nas.search(out=run_dir, resume=True, progress=False, plot=False, evaluate=ParamCount())
    fresh = nas.search("nb201", "bayesian", ["size"], budget=12, seed=0, progress=False, plot=False,
                       evaluate=ParamCount())
    assert [c.arch for c in resumed.candidates] == [c.arch for c in fresh.candidates]


def test_infeasible_never_best(tmp_path):
    result = nas.search("nb201", "evolution", ["size"], budget=25, seed=0, progress=False, plot=False,
                        max_params=0.4, evaluate=ParamCount())
    assert any(c.metrics["params"] > 0.4 for c in result.candidates)
    assert result.best.metrics["params"] <= 0.4
    assert all(c.metrics["params"] <= 0.4 for c in result.pareto)


def test_oracle_exploitation_queries_top_candidates(tmp_path, shared_data):
    table = str(shared_data / "nb201_accuracy.csv")
    result = nas.search("nb201", "random", ["size"], budget=15, seed=0, out=tmp_path / "r", progress=False,
                        plot=False, oracle_queries=4, space_options={"accuracy_table": table},
                        evaluate=ParamCount())
    assert len(result.oracle) == 4
    assert set(result.oracle) == {c.arch for c in result.ranked()[:4]}
    assert result.oracle[result.best.arch] == max(result.oracle.values())
    again = nas.load_run(tmp_path / "r")
    assert again.oracle == result.oracle and again.best.arch == result.best.arch
    assert json.loads((tmp_path / "r" / "best.json").read_text())["oracle"]["queries"] == 4


def test_oracle_needs_an_oracle():
    with pytest.raises(ValueError, match="accuracy-table"):
        nas.search("nb201", "random", ["size"], budget=2, oracle_queries=3, progress=False,
                   evaluate=ParamCount())


class FitScore(ParamCount):
    """Stands in for ``ensemble_fit`` (the loop only stores and validates the labels that would fit it)."""

    def __call__(self, arch: str) -> Candidate:
        c = super().__call__(arch)
        return Candidate(arch, {"ensemble_fit": c.scores["size"]}, c.metrics)


def test_label_queries_draw_distinct_labelled_archs_from_the_run_seed(tmp_path, shared_data):
    table = str(shared_data / "nb201_accuracy.csv")
    options = {"space_options": {"accuracy_table": table}, "progress": False, "plot": False,
               "evaluate": FitScore()}
    result = nas.search("nb201", "random", ["ensemble_fit"], budget=3, seed=4, out=tmp_path / "r",
                        label_queries=8, **options)
    labels = result.config["labels"]
    space = search_spaces.get("nb201", accuracy_table=table)
    assert len({a for a, _ in labels}) == 8 and result.config["label_queries"] == 8
    assert all(y == space.accuracy(space.from_string(a)) for a, y in labels)
    stored = json.loads((tmp_path / "r" / "best.json").read_text())["config"]["labels"]
    assert [tuple(x) for x in stored] == [tuple(x) for x in labels]
    again = nas.search("nb201", "random", ["ensemble_fit"], budget=3, seed=4, label_queries=8, **options)
    assert again.config["labels"] == labels
    other = nas.search("nb201", "random", ["ensemble_fit"], budget=3, seed=5, label_queries=8, **options)
    assert other.config["labels"] != labels
    resumed = nas.search(budget=5, out=tmp_path / "r", resume=True, **options)
    assert resumed.config["labels"] == stored


def test_labels_are_checked_before_the_search(shared_data):
    table = str(shared_data / "nb201_accuracy.csv")
    kw = {"budget": 2, "progress": False, "plot": False, "evaluate": FitScore()}
    with pytest.raises(ValueError, match="accuracy-table"):
        nas.search("nb201", "random", ["ensemble_fit"], label_queries=5, **kw)
    with pytest.raises(ValueError, match="not both"):
        nas.search("nb201", "random", ["ensemble_fit"], labels=[("x", 1.0)], label_queries=5,
                   space_options={"accuracy_table": table}, **kw)
    with pytest.raises(ValueError, match="add ensemble_fit"):
        nas.search("nb201", "random", ["size"], label_queries=5, space_options={"accuracy_table": table},
                   **{**kw, "evaluate": ParamCount()})


def test_space_defaults_fill_what_the_user_left_out():
    class Space:
        search_defaults = {"strategy": "random", "budget": 7, "objectives": ["synflow", "latency"]}

    given = {"strategy": None, "budget": None, "objectives": None, "proxies": None, "batch_size": None,
             "data": None, "strategy_options": None}
    out = resolve_settings(Space(), given, target=None)
    assert out["strategy"] == "random" and out["budget"] == 7 and out["objectives"] == ["max:synflow"]
    assert resolve_settings(Space(), given, target="rpi4")["objectives"] == ["synflow", "latency"]
    assert resolve_settings(Space(), {**given, "budget": 3})["budget"] == 3
    assert resolve_settings(object(), given)["strategy"] == nas.loop.DEFAULTS["strategy"]


def test_cli_two_objectives_writes_front_plot_onnx_and_exports(tmp_path, capsys):
    run_dir = tmp_path / "mo"
    assert main(["search", "--strategy", "nsga2", "--objectives", "params,max:flops", "--budget", "5",
                 "--batch-size", "8", "--no-progress", "--out", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out
    for name in ("run.sqlite", "best.json", "pareto.csv", "pareto.png", "best.onnx", "optuna.journal"):
        assert (run_dir / name).is_file(), name
    header = (run_dir / "pareto.csv").read_text().splitlines()[0]
    assert header.startswith("arch,params,flops")
    assert main(["runs", "show", str(run_dir)]) == 0
    assert "complete" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--format", "json", "--rank", "1", "--out", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["arch"] == nas.load_run(run_dir).best.arch
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").stat().st_size > 0
    assert main(["export", str(run_dir), "--rank", "99"]) == 2


def test_result_dataframe_and_plot(tmp_path):
    pytest.importorskip("pandas")
    result = nas.search("nb201", "random", ["size"], budget=6, seed=0, progress=False, plot=False,
                        evaluate=ParamCount())
    df = result.to_dataframe()
    assert list(df["arch"]) == [c.arch for c in result.candidates] and "size" in df
    fig = result.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0 and fig.axes
