import csv
import json

import numpy as np
import pytest

import search_spaces
from nas.cli import main


def _arch_file(tmp_path, n, seed=0):
    space = search_spaces.get("nb201")
    rng = np.random.default_rng(seed)
    lines = [space.to_string(space.sample(rng)) for _ in range(n)]
    path = tmp_path / "archs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, lines


def test_listing_commands_run(capsys):
    for cmd in ("spaces", "proxies", "targets"):
        assert main([cmd]) == 0
    assert "nb201" in capsys.readouterr().out


def test_unknown_space_exits_2_listing_valid_ones(tmp_path, capsys):
    assert main(["search", "--space", "nope", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown search space 'nope'" in err and "nb201" in err and "Traceback" not in err


def test_unknown_proxy_lists_valid_ones(tmp_path, capsys):
    path, _ = _arch_file(tmp_path, 2)
    assert main(["score", "--arch-file", str(path), "--proxies", "bogus", "--out", str(tmp_path / "s.csv")]) == 2
    assert "synflow" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["score", "search"])
def test_label_queries_without_an_oracle_exit_2(tmp_path, command, capsys):
    path, _ = _arch_file(tmp_path, 2)
    extra = ["--arch-file", str(path), "--out", str(tmp_path / "s.csv")] if command == "score" else \
        ["--out", str(tmp_path / "r")]
    assert main([command, "--proxies", "ensemble_fit", "--label-queries", "5", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert "--label-queries needs an oracle" in err and "--accuracy-table" in err and "Traceback" not in err


def test_malformed_arch_names_the_line(tmp_path, capsys):
    path, lines = _arch_file(tmp_path, 3)
    lines[1] = lines[1].replace("~0", "~7", 1)
    path.write_text("\n".join(lines) + "\n")
    assert main(["score", "--arch-file", str(path), "--out", str(tmp_path / "s.csv"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "Traceback" not in err


def test_score_writes_csv_in_input_order(tmp_path):
    path, lines = _arch_file(tmp_path, 6)
    out = tmp_path / "scores.csv"
    assert main(["score", "--arch-file", str(path), "--proxies", "synflow,nwot,params", "--batch-size", "16",
                 "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["arch", "synflow", "nwot", "params"]
    assert [r[0] for r in rows[1:]] == lines
    assert all(np.isfinite(float(v)) for r in rows[1:] for v in r[1:])


def test_search_writes_run_and_is_reproducible(tmp_path):
    args = ["search", "--space", "nb201", "--budget", "6", "--seed", "3", "--batch-size", "16",
            "--objectives", "nwot", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    best_a = json.loads((tmp_path / "a" / "best.json").read_text())
    best_b = json.loads((tmp_path / "b" / "best.json").read_text())
    assert best_a["arch"] == best_b["arch"] and best_a["scores"] == best_b["scores"]
    assert best_a["evaluated"] == 6


def test_existing_run_dir_needs_resume(tmp_path, capsys):
    args = ["search", "--budget", "2", "--batch-size", "8", "--no-progress", "--objectives", "params"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 0
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume", str(tmp_path / "r"), "--budget", "4"]) == 0
    assert json.loads((tmp_path / "r" / "best.json").read_text())["evaluated"] == 4


@pytest.mark.parametrize("flag", [["--budget", "0"], ["--objectives", "latency"]])
def test_bad_search_arguments_exit_2(tmp_path, flag, capsys):
    assert main(["search", *flag, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "Traceback" not in capsys.readouterr().err
