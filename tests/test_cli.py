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


def _score(tmp_path, path, *extra):
    out = tmp_path / "s.csv"
    code = main(["score", "--arch-file", str(path), "--proxies", "params", "--batch-size", "8", "--no-progress",
                 "--out", str(out), *extra])
    return code, [float(r[1]) for r in list(csv.reader(open(out)))[1:]] if code == 0 else None


def test_space_option_reaches_the_space(tmp_path):
    path, _ = _arch_file(tmp_path, 3)
    _, default = _score(tmp_path, path)
    code, small = _score(tmp_path, path, "--space-option", "channels=8", "--space-option", "cells_per_stage=1")
    assert code == 0 and all(s < d for s, d in zip(small, default, strict=True))


@pytest.mark.parametrize("command", ["score", "search"])
def test_unknown_space_option_exits_2_naming_the_valid_ones(tmp_path, command, capsys):
    path, _ = _arch_file(tmp_path, 2)
    extra = ["--arch-file", str(path), "--out", str(tmp_path / "s.csv")] if command == "score" else \
        ["--out", str(tmp_path / "r"), "--budget", "2"]
    assert main([command, "--space-option", "C=8", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert "'C'" in err and "channels=16" in err and "cells_per_stage=5" in err and "Traceback" not in err


@pytest.mark.parametrize("option, message", [("channels", "KEY=VALUE"), ("channels=8x", "expects int")])
def test_malformed_space_option_exits_2(tmp_path, option, message, capsys):
    path, _ = _arch_file(tmp_path, 1)
    assert _score(tmp_path, path, "--space-option", option)[0] == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_strategy_option_exits_2_naming_the_valid_ones(tmp_path, capsys):
    assert main(["search", "--strategy", "evolution", "--option", "pop=3", "--budget", "2", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'pop'" in err and "population_size" in err and "Traceback" not in err


def test_cache_flags_choose_where_score_caches(tmp_path, monkeypatch):
    path, _ = _arch_file(tmp_path, 2)
    env_dir, flag_dir = tmp_path / "env-cache", tmp_path / "flag-cache"
    monkeypatch.setenv("ZCNAS_CACHE_DIR", str(env_dir))
    assert _score(tmp_path, path, "--no-cache")[0] == 0
    assert not env_dir.exists()
    assert _score(tmp_path, path, "--cache-dir", str(flag_dir))[0] == 0
    assert not env_dir.exists() and (flag_dir / "proxies.sqlite").is_file()
    assert _score(tmp_path, path)[0] == 0  # the default: on, in $ZCNAS_CACHE_DIR
    assert (env_dir / "proxies.sqlite").is_file()


def test_no_cache_with_a_cache_dir_exits_2(tmp_path, capsys):
    path, _ = _arch_file(tmp_path, 1)
    assert _score(tmp_path, path, "--no-cache", "--cache-dir", str(tmp_path / "c"))[0] == 2
    assert "--no-cache" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["bogus", "cuda:63"])
def test_unusable_device_exits_2(tmp_path, device, capsys):
    path, _ = _arch_file(tmp_path, 1)
    assert _score(tmp_path, path, "--device", device)[0] == 2
    err = capsys.readouterr().err
    assert f"--device {device}" in err.replace("'", "") and "Traceback" not in err


def test_search_flags_left_out_are_none_and_ray_flags_reach_the_executor():
    from nas.cli import build_parser
    from nas.cli.search import _default_out, executor_options

    parser = build_parser()
    args = parser.parse_args(["search"])
    assert args.space is None and args.seed is None and args.cache is True and args.device is None
    assert _default_out(args) == "runs/nb201-auto-s0"
    args = parser.parse_args(["search", "--executor", "ray", "--threads-per-worker", "2", "--gpus-per-worker",
                              "0.25", "--device", "cuda"])
    assert executor_options(args) == {"threads_per_worker": 2, "gpus_per_worker": 0.25}
    with pytest.raises(ValueError, match="--threads-per-worker need --executor ray"):
        executor_options(parser.parse_args(["search", "--threads-per-worker", "2"]))


def _main_raising(monkeypatch, error: BaseException) -> int:
    """``main`` on a one-command parser whose command raises ``error``."""
    import argparse

    import nas.cli

    def raise_it(args: argparse.Namespace) -> int:
        raise error

    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog="nas")
        p.add_argument("-v", "--verbose", action="store_true")
        p.add_argument("-q", "--quiet", action="store_true")
        p.add_subparsers(dest="command").add_parser("boom").set_defaults(func=raise_it)
        return p

    monkeypatch.setattr(nas.cli, "build_parser", parser)
    return main(["boom"])


def _expected_errors():
    from nas.cli import UsageError
    from nas.errors import ResumeConflict, RunInUse, RunStoreError, SearchFailed
    from nas.registry import UnknownNameError

    usage = [UsageError("u"), ValueError("v"), ResumeConflict("r"), UnknownNameError("n"),
             FileNotFoundError("f"), FileExistsError("e"), NotADirectoryError("d")]
    return [(e, 2) for e in usage] + [(e, 1) for e in (SearchFailed("s"), RunStoreError("db"), RunInUse("l"))]


@pytest.mark.parametrize("error, code", _expected_errors(), ids=[type(e).__name__ for e, _ in _expected_errors()])
def test_expected_errors_map_to_exit_codes(monkeypatch, capsys, error, code):
    assert _main_raising(monkeypatch, error) == code
    err = capsys.readouterr().err
    assert err.strip() == f"nas: error: {error}"


@pytest.mark.parametrize("error", [TypeError("bug"), KeyError("bug"), RuntimeError("bug")], ids=repr)
def test_internal_errors_propagate_as_bugs(monkeypatch, error):
    with pytest.raises(type(error)):
        _main_raising(monkeypatch, error)


def test_interrupt_exits_130(monkeypatch, capsys):
    assert _main_raising(monkeypatch, KeyboardInterrupt()) == 130
    assert "--resume" in capsys.readouterr().err


def test_resolve_cache_reads_every_form_of_the_cache_argument(tmp_path, monkeypatch):
    from proxies.cache import ProxyCache, resolve_cache

    monkeypatch.setenv("ZCNAS_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache(False) is None and resolve_cache(None) is None
    assert resolve_cache(True).dir == tmp_path / "env"
    assert resolve_cache(str(tmp_path / "a")).dir == tmp_path / "a"
    assert resolve_cache(tmp_path / "b").dir == tmp_path / "b"
    cache = ProxyCache(tmp_path / "c")
    assert resolve_cache(cache) is cache


@pytest.mark.parametrize("setting, ok", [("threads_per_worker = 2\ngpus_per_worker = 0.5", True),
                                         ("threads_per_worker = 0", False), ("gpus_per_worker = -1", False)])
def test_sweep_file_takes_ray_worker_resources(tmp_path, setting, ok, capsys):
    sweep = tmp_path / "s.toml"
    sweep.write_text(f"[sweep]\n{setting}\n[grid]\nseed = [0, 1]\n")
    assert main(["sweep", str(sweep), "--dry-run", "--out", str(tmp_path / "out")]) == (0 if ok else 2)
    assert ok or "[sweep]" in capsys.readouterr().err
