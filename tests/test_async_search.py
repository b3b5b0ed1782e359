"""Asynchronous search on a local 2-CPU Ray instance: results told one by one, exact budget, exact resume."""

from __future__ import annotations

import json
import logging
import math
import sys
import time

import pytest

import nas
import search_spaces
from nas import strategies
from nas.run import Candidate, RunStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Ray tests run on Linux")

RAY2 = {"executor": "ray", "executor_options": {"workers": 2, "max_retries": 0}}


def _evaluator(log_path: str | None = None, fail_every: int = 0):
    """A cheap evaluation whose run time varies with the arch, so that results come back out of order.

    Defined in a function so that Ray ships it by value. It appends each arch to ``log_path`` (one
    line per evaluation) and raises for every ``fail_every``-th checksum.
    """

    def evaluate(arch: str) -> Candidate:
        checksum = sum(map(ord, arch))
        if log_path:
            with open(log_path, "a") as f:
                f.write(arch + "\n")
        time.sleep(0.01 * (checksum % 4))
        if fail_every and checksum % fail_every == 0:
            raise ValueError(f"cannot evaluate {arch}")
        return Candidate(arch, {"size": float(checksum % 97)})

    return evaluate


def _spy_tells(monkeypatch, name: str) -> list[int]:
    """Record the size of every ``tell`` call of strategy ``name`` (the real method still runs)."""
    cls = strategies.registry.get(name)
    real, sizes = cls.tell, []

    def tell(self, archs, values):
        sizes.append(len(archs))
        return real(self, archs, values)

    monkeypatch.setattr(cls, "tell", tell)
    return sizes


OPTIONS = {"evolution": {"population_size": 4, "sample_size": 2}, "bayesian": {"n_startup_trials": 4}}


@pytest.mark.parametrize("name", ["random", "evolution", "bayesian", "reinforce"])
def test_async_strategy_is_told_each_result_alone(name, ray_local, tmp_path, monkeypatch):
    assert getattr(strategies.registry.get(name), "asynchronous", False)
    sizes = _spy_tells(monkeypatch, name)
    result = nas.search("nb201", name, ["size"], budget=10, seed=0, out=tmp_path / "r", progress=False,
                        plot=False, strategy_options=OPTIONS.get(name), evaluate=_evaluator(fail_every=9),
                        **RAY2)
    archs = [c.arch for c in result.candidates]
    assert len(archs) == 10 == len(set(archs))
    store = RunStore(tmp_path / "r")
    assert store.get_meta("ask_mode") == "async" and store.get_meta("duplicate_evaluations", 0) == 0
    kinds = [kind for _, kind, _ in store.events()]
    assert kinds.index("tell") >= 2  # both workers busy before the first result
    assert all(len(archs) == 1 for _, _, archs in store.events())  # one proposal per ask, one per tell
    assert sizes and set(sizes) == {1}
    assert len(sizes) == kinds.count("tell") == kinds.count("ask")  # every proposal was told, on its own
    failed = [c for c in result.candidates if c.status == "failed"]
    assert all("cannot evaluate" in c.error for c in failed)
    assert result.best is not None and result.best.status == "ok"


@pytest.mark.parametrize("name", [n for n in strategies.registry.list()
                                  if getattr(strategies.registry.get(n), "asynchronous", False)])
def test_async_strategy_takes_tells_out_of_order_with_asks_in_between(name):
    space = search_spaces.get("nb201")
    strategy = strategies.get(name, space, seed=0, **OPTIONS.get(name, {}))
    open_ = [strategy.ask(1)[0] for _ in range(3)]
    for step in range(12):  # tell the most recent open proposal, ask one more: the loop's steady state
        arch = open_.pop(-1 if step % 2 else 0)
        strategy.tell([arch], [(-math.inf,) if step == 3 else (float(step % 5),)])
        open_.append(strategy.ask(1)[0])
    for arch in reversed(open_):
        strategy.tell([arch], [(1.0,)])
    assert all(space.from_string(space.to_string(a)) == a for a in open_)


def test_generational_strategy_stays_batched(ray_local, tmp_path, monkeypatch):
    sizes = _spy_tells(monkeypatch, "nsga2")
    nas.search("nb201", "nsga2", ["size"], budget=6, seed=0, out=tmp_path / "r", progress=False, plot=False,
               strategy_options={"population_size": 4}, evaluate=_evaluator(), **RAY2)
    assert RunStore(tmp_path / "r").get_meta("ask_mode") == "batch"
    assert sizes[0] == 2  # a batch of one per worker, told together


def test_interrupted_async_run_resumes_by_replay_evaluating_nothing_twice(ray_local, tmp_path, monkeypatch,
                                                                          caplog):
    evaluations = tmp_path / "evaluated.txt"
    evaluate = _evaluator(str(evaluations))
    options = {"population_size": 4, "sample_size": 2}
    cls = strategies.registry.get("evolution")
    real = cls.tell

    def interrupt_at_fifth_tell(self, archs, values):
        self.tells = getattr(self, "tells", 0) + 1
        if self.tells == 5:  # a Ctrl-C with one result stored but not told and another in flight
            raise KeyboardInterrupt
        return real(self, archs, values)

    monkeypatch.setattr(cls, "tell", interrupt_at_fifth_tell)
    with pytest.raises(KeyboardInterrupt):
        nas.search("nb201", "evolution", ["size"], budget=12, seed=3, out=tmp_path / "r", progress=False,
                   plot=False, strategy_options=options, evaluate=evaluate, **RAY2)
    monkeypatch.setattr(cls, "tell", real)
    before = [c.arch for c in RunStore(tmp_path / "r").candidates()]
    assert 4 <= len(before) < 12

    with caplog.at_level(logging.WARNING):
        resumed = nas.search(out=tmp_path / "r", resume=True, progress=False, plot=False, evaluate=evaluate,
                             **RAY2)
        # a second resume replays the whole log, interruption included, and extends the run
        extended = nas.search(out=tmp_path / "r", resume=True, budget=16, progress=False, plot=False,
                              evaluate=evaluate, **RAY2)
    assert "proposed other architectures" not in caplog.text  # the replay matched the log exactly
    assert [c.arch for c in resumed.candidates][: len(before)] == before
    archs = [c.arch for c in extended.candidates]
    assert len(archs) == 16 == len(set(archs))
    assert RunStore(tmp_path / "r").get_meta("duplicate_evaluations", 0) == 0
    counts = evaluations.read_text().split()
    assert all(counts.count(a) == 1 for a in before)  # stored results were never evaluated again


def test_replay_that_diverges_goes_on_live_and_stays_replayable(ray_local, tmp_path, caplog):
    evaluate = _evaluator()
    nas.search("nb201", "random", ["size"], budget=6, seed=4, out=tmp_path / "r", progress=False, plot=False,
               evaluate=evaluate, **RAY2)
    store = RunStore(tmp_path / "r")
    stored = {c.arch for c in store.candidates()}
    other = next(a for a in nas.search("nb201", "random", ["size"], budget=8, seed=5, progress=False,
                                       plot=False, evaluate=evaluate).candidates if a.arch not in stored)
    third_ask = [seq for seq, kind, _ in store.events() if kind == "ask"][2]
    with store._db:  # as if the strategy had proposed something else then
        store._db.execute("UPDATE events SET archs = ? WHERE seq = ?", (json.dumps([other.arch]), third_ask))
    with caplog.at_level(logging.WARNING):
        diverged = nas.search(out=tmp_path / "r", resume=True, budget=9, progress=False, plot=False,
                              evaluate=evaluate, **RAY2)
    assert "proposed other architectures" in caplog.text
    assert len({c.arch for c in diverged.candidates}) == 9 and stored <= {c.arch for c in diverged.candidates}
    kinds = [kind for _, kind, _ in store.events()]
    assert kinds.count("tell") == kinds.count("ask") >= 9  # the rewritten log tells every proposal
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = nas.search(out=tmp_path / "r", resume=True, budget=11, progress=False, plot=False,
                           evaluate=evaluate, **RAY2)
    assert "proposed other architectures" not in caplog.text  # the rewritten log replays exactly
    assert len({c.arch for c in again.candidates}) == 11
    assert store.get_meta("duplicate_evaluations", 0) == 0
