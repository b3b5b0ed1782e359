"""``nas predictor fit/predict`` and a fitted predictor as a search objective (``predictor:FOLDER``).

Real ``ensemble_fit`` predictors over cheap components on small NAS-Bench-201 networks.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import nas
import search_spaces
from nas.cli import main
from nas.evaluate import Evaluator
from predictors.base import load

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["--space-option", "channels=8", "--space-option", "cells_per_stage=1"]
KIND = ["--option", 'components=["params", "flops"]', "--option", "reference_size=6", "--option", "n_trials=5"]
DEAD = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"  # no path from input to output


def archs(n: int, seed: int = 0) -> list[str]:
    space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        text = space.to_string(space.sample(rng))
        if text not in out and text != DEAD:
            out.append(text)
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A predictor folder fitted by the CLI on 8 labelled cells."""
    tmp = tmp_path_factory.mktemp("pred")
    labels = tmp / "labels.csv"
    labels.write_text("arch,accuracy\n" + "".join(f"{a},{80 + 2 * i}\n" for i, a in enumerate(archs(8))))
    assert main(["predictor", "fit", "--space", "nb201", *SMALL, "--labels", str(labels), "--out", str(tmp / "p"),
                 *KIND, "--seed", "1"]) == 0
    return tmp / "p"


def test_fit_then_predict_writes_rows_in_input_order(fitted, tmp_path):
    assert (fitted / "predictor.json").is_file()
    assert json.loads((fitted / "predictor.json").read_text())["kind"] == "ensemble_fit"
    queries = archs(5, seed=7)
    order = [queries[3], queries[0], queries[4], queries[0], queries[1]]  # shuffled, with a repeat
    (tmp_path / "a.txt").write_text("# candidates\n" + "\n".join(order) + "\n")
    out = tmp_path / "o.csv"
    assert main(["predictor", "predict", "--predictor", str(fitted), "--space", "nb201", *SMALL,
                 "--arch-file", str(tmp_path / "a.txt"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out, newline="")))
    assert [r["arch"] for r in rows] == order
    space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
    direct = load(fitted).predict(space, [space.from_string(a) for a in order])
    assert np.allclose([float(r["prediction"]) for r in rows], direct)
    assert rows[1]["prediction"] == rows[3]["prediction"]


def test_a_predictor_predicts_for_another_space(fitted, tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(archs(3, seed=9)) + "\n")
    out = tmp_path / "o.csv"
    # another configuration of the space (16 channels, 2 cells per stage): its own reference is drawn there
    assert main(["predictor", "predict", "--predictor", str(fitted), "--space", "nb201", "--space-option",
                 "cells_per_stage=2", "--arch-file", str(tmp_path / "a.txt"), "--out", str(out)]) == 0
    values = [float(r["prediction"]) for r in csv.DictReader(open(out, newline=""))]
    assert len(values) == 3 and np.all(np.isfinite(values))


def test_clear_errors(fitted, tmp_path, capsys):
    labels = tmp_path / "l.csv"
    labels.write_text("arch,accuracy\n" + "".join(f"{a},90\n" for a in archs(6)))

    def fails(argv: list[str], *needles: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, err

    fit = ["predictor", "fit", "--space", "nb201", *SMALL, "--out", str(tmp_path / "p")]
    fails([*fit, "--labels", str(labels), "--kind", "no_such_kind"], "no_such_kind", "ensemble_fit")
    fails([*fit, "--labels", str(tmp_path / "missing.csv")], "missing.csv", "no such file")
    (tmp_path / "h.csv").write_text("architecture,acc\nx,1\n")
    fails([*fit, "--labels", str(tmp_path / "h.csv")], "arch,accuracy")
    rows = labels.read_text().splitlines()
    (tmp_path / "b.csv").write_text("\n".join([*rows[:3], "|bad|,90", *rows[3:]]) + "\n")
    fails([*fit, "--labels", str(tmp_path / "b.csv")], "line 4")
    (tmp_path / "n.csv").write_text("\n".join([*rows[:2], f"{archs(1)[0]},high"]) + "\n")
    fails([*fit, "--labels", str(tmp_path / "n.csv")], "line 3", "'high' is not a number")
    fails([*fit, "--labels", str(labels), "--option", "no_such_option=1"], "no_such_option")
    (tmp_path / "a.txt").write_text(f"{archs(1)[0]}\n\n|nor_conv_3x3~0|+|oops~0|\n")
    fails(["predictor", "predict", "--predictor", str(fitted), "--space", "nb201", "--arch-file",
           str(tmp_path / "a.txt"), "--out", str(tmp_path / "o.csv")], "line 3")
    fails(["predictor", "predict", "--predictor", str(tmp_path), "--space", "nb201", "--arch-file",
           str(tmp_path / "a.txt"), "--out", str(tmp_path / "o.csv")], "not a predictor folder")


def test_a_predictor_as_a_search_objective(fitted, tmp_path, capsys):
    name = f"predictor:{fitted}"
    run = tmp_path / "run"
    argv = ["search", "--space", "nb201", *SMALL, "--strategy", "random", "--objectives", name, "--budget", "4",
            "--out", str(run), "--no-progress", "--no-onnx"]
    assert main(argv) == 0
    result = nas.load_run(run)
    assert all(c.status == "ok" and np.isfinite(c.scores[name]) for c in result.candidates)
    assert result.best.scores[name] == max(c.scores[name] for c in result.candidates)  # maximised
    space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
    assert np.isclose(result.best.scores[name], load(fitted).predict(space, [space.from_string(result.best.arch)])[0])
    stored = result.config["predictors"][name]
    assert stored["path"] == str(fitted.resolve()) and stored["digest"]
    assert main(["search", "--resume", str(run), "--budget", "5", "--no-progress", "--no-onnx"]) == 0
    copy = tmp_path / "changed"
    copy.mkdir()
    for f in fitted.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    other = tmp_path / "run2"
    assert main([*argv[:10], f"predictor:{copy}", "--budget", "2", "--out", str(other), "--no-progress",
                 "--no-onnx"]) == 0
    meta = json.loads((copy / "predictor.json").read_text())
    meta["config"]["weights"] = [w + 0.5 for w in meta["config"]["weights"]]
    (copy / "predictor.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["search", "--resume", str(other), "--budget", "3", "--no-progress", "--no-onnx"]) == 2
    assert "changed since the run started" in capsys.readouterr().err


def test_a_failing_prediction_fails_the_candidate(fitted, tmp_path):
    import proxies

    space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
    batch = proxies.calibration_batch(8)
    gone = tmp_path / "gone"  # a predictor folder removed after the run started: every prediction fails
    broken = Evaluator(space, ("params",), batch, predictors={"predictor:gone": str(gone)})(archs(1)[0])
    assert broken.status == "failed" and "not a predictor folder" in broken.error
    assert "predictor:gone" not in broken.scores  # never a score
    fine = Evaluator(space, (), batch, predictors={"predictor:p": str(fitted)})(archs(1, seed=5)[0])
    assert fine.status == "ok" and np.isfinite(fine.scores["predictor:p"])
    with pytest.raises(FileNotFoundError, match="not a predictor folder"):  # checked before a run exists
        nas.search("nb201", "random", [f"predictor:{tmp_path}"], budget=2, progress=False,
                   space_options={"channels": 8, "cells_per_stage": 1})
