"""``nas sweep``: TOML grids, validation, and a 2 x 2 grid run on the shared local Ray instance."""

from __future__ import annotations

import csv
import json

import pytest

from nas.cli import main
from nas.run import RunStore
from nas.sweep import SweepSpec, run_sweep

SWEEP = """\
[sweep]
workers_per_search = 1

[grid]
space = "nb201"
strategy = "random"
seed = [0, 1]
budget = [3, 5]

[options]
objectives = ["nwot"]
batch_size = 8
"""


def test_fixed_grid_settings_may_sit_in_options():
    spec = SweepSpec.from_dict({"grid": {"seed": [0, 1]}, "options": {"strategy": "random", "batch_size": 8}})
    assert [c.name for c in spec.cells()] == ["nb201-random-s0", "nb201-random-s1"]
    assert spec.options == {"batch_size": 8}


def test_grid_cells_and_names():
    spec = SweepSpec.from_dict({"grid": {"strategy": ["random", "evolution"], "seed": [0, 1],
                                         "target": ["none"]}})
    names = [c.name for c in spec.cells()]
    assert names == ["nb201-random-s0", "nb201-random-s1", "nb201-evolution-s0", "nb201-evolution-s1"]


@pytest.mark.parametrize("data, message", [
    ({"grid": {"sede": [0]}}, "unknown axis 'sede'; valid: space, target, strategy, seed, budget"),
    ({"grid": {"budget": [0]}}, "budget must be integers >= 1"),
    ({"grid": {"seed": []}}, "has no values"),
    ({"options": {"batchsize": 8}}, "unknown option 'batchsize'; valid: .*batch_size"),
    ({"options": {"out": "x"}}, "set by the sweep itself"),
    ({"grid": {"seed": [0, 1]}, "options": {"seed": 3}}, "both a \\[grid\\] axis and an \\[options\\] value"),
    ({"sweep": {"concurrent": 0}}, "concurrent must be a positive integer"),
    ({"extra": {}}, "unknown table"),
])
def test_bad_sweep_files_name_the_problem(data, message):
    with pytest.raises(ValueError, match=message):
        SweepSpec.from_dict(data)


def test_unknown_names_fail_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('[grid]\nstrategy = ["random", "annealing"]\n')
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'annealing'" in err and "random" in err
    path.write_text("[grid\n")
    assert main(["sweep", str(path)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_cli_sweep_2x2_grid_writes_summary_and_resumes(ray_local, tmp_path, capsys):
    path = tmp_path / "grid.toml"
    path.write_text(SWEEP)
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nb201-random-s1-b5" in printed and "summary.csv" in printed

    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["run_dir"] for r in rows] == ["nb201-random-s0-b3", "nb201-random-s0-b5",
                                            "nb201-random-s1-b3", "nb201-random-s1-b5"]
    assert all(r["status"] == "ok" and float(r["best_nwot"]) > 0 and float(r["wall_s"]) > 0 for r in rows)
    assert [int(r["evaluated"]) for r in rows] == [3, 5, 3, 5]
    for r in rows:
        stored = RunStore(out / r["run_dir"]).candidates()
        assert len({c.arch for c in stored}) == int(r["budget"])
        assert r["best_arch"] in {c.arch for c in stored}
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cells"]) == 4 and summary["wall_s"] > 0
    assert {(g["budget"], g["seeds"]) for g in summary["groups"]} == {(3, 2), (5, 2)}

    # a second run resumes every cell: nothing is evaluated again, the summary is the same
    before = {r["run_dir"]: r["best_arch"] for r in rows}
    result = run_sweep(SweepSpec.load(path), out)
    assert {c.run_dir: c.best_arch for c in result.cells} == before
    assert all(len(RunStore(out / c.run_dir)) == c.cell.budget for c in result.cells)


def test_failed_cell_is_recorded_and_the_sweep_goes_on(ray_local, tmp_path):
    spec = SweepSpec.from_dict({"grid": {"seed": [0, 1], "budget": 2},
                                "options": {"objectives": ["nwot"], "batch_size": 8}})
    out = tmp_path / "sweep"
    (out / "nb201-s1-b2").mkdir(parents=True)
    (out / "nb201-s1-b2" / "run.sqlite").write_text("not a database")
    result = run_sweep(spec, out)
    status = {c.run_dir: c.status for c in result.cells}
    assert status == {"nb201-s0-b2": "ok", "nb201-s1-b2": "failed"}
    assert result.cells[1].error
    assert len(list(csv.DictReader(open(out / "summary.csv")))) == 2
