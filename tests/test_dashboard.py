"""``nas dashboard`` (issue 25): optuna-dashboard on 127.0.0.1 over a run's Optuna copy, stopped by SIGINT."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import nas
from nas.cli import main
from nas.optuna_mirror import STORAGE_NAME

ROOT = Path(__file__).resolve().parents[1]


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, json.load(r)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small two-objective run (12 candidates)."""
    out = tmp_path_factory.mktemp("dash") / "mo"
    nas.search(space="nb201", strategy="nsga2", objectives=["synflow", "params"], budget=12, seed=0, out=out,
               space_options={"channels": 8, "cells_per_stage": 1}, batch_size=16, progress=False,
               strategy_options={"population_size": 6})
    return out


def test_dashboard_serves_the_run_on_loopback_and_stops_on_sigint_within_5s(run_dir):
    pytest.importorskip("optuna_dashboard")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from nas.cli import main; sys.exit(main())",
                             "dashboard", str(run_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = _first_line(proc, timeout=120)  # the URL, once the socket listens (port 0: a free one)
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        base = line.split("http://", 1)[1].split("/", 1)[0]
        assert base.startswith("127.0.0.1:")
        status, studies = _get(f"http://{base}/api/studies")
        assert status == 200
        [summary] = studies["study_summaries"]
        assert summary["study_name"] == "mo" and summary["directions"] == ["maximize", "minimize"]
        status, detail = _get(f"http://{base}/api/studies/{summary['study_id']}")
        assert status == 200 and len(detail["trials"]) == 12
        pareto = sorted(c.arch for c in nas.load_run(run_dir).pareto)
        assert sorted(_attr(t, "arch") for t in detail["best_trials"]) == pareto

        start = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=5)
        elapsed = time.perf_counter() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc in (0, 130) and elapsed < 5
    assert "stopped" in proc.stderr.read()


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    """The process's first line of output, or "" when none comes within ``timeout`` seconds."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        return proc.stdout.readline() if sel.select(timeout) else ""


def _attr(trial: dict, key: str) -> str:
    return next(a["value"] for a in trial["user_attrs"] if a["key"] == key)


def test_dashboard_without_optuna_dashboard_says_how_to_install(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import now raises ImportError
    assert main(["dashboard", str(run_dir)]) == 2
    assert 'pip install "zcnas[dashboard]"' in capsys.readouterr().err


def test_dashboard_refuses_what_is_neither_a_run_nor_a_sweep(tmp_path, capsys):
    pytest.importorskip("optuna_dashboard")
    assert main(["dashboard", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert not (tmp_path / STORAGE_NAME).exists()
