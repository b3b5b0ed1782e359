"""The Ray executor on a local 2-CPU instance: completion order, bounded in-flight work, fault tolerance."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

import nas
from nas import executors
from nas.cli import main
from nas.run import Candidate, RunStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray workers via /proc")

SEARCH = {"space": "nb201", "strategy": "random", "objectives": ["nwot"], "batch_size": 8, "progress": False}


def _descendants(root: int) -> list[int]:
    """Process ids below ``root`` (Ray's raylet and workers are children of the driver that started them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


class WorkerKiller(threading.Thread):
    """Kills ``times`` of our own Ray worker processes while they run an evaluation task."""

    def __init__(self, times: int = 1) -> None:
        super().__init__(daemon=True)
        self.times, self.killed, self.stop = times, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.killed) < self.times:
            for pid in _descendants(os.getpid()):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if title.startswith(b"ray::_run_task") and pid not in self.killed:
                    os.kill(pid, 9)
                    self.killed.append(pid)
                    break
            time.sleep(0.01)

    def __enter__(self) -> WorkerKiller:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()


def test_search_on_ray_matches_serial(ray_local, tmp_path):
    serial = nas.search(**SEARCH, budget=6, seed=1, out=tmp_path / "serial")
    on_ray = nas.search(**SEARCH, budget=6, seed=1, out=tmp_path / "ray", executor="ray",
                        executor_options={"workers": 2})
    assert ray_local.is_initialized()  # a session started by someone else is left running
    by_arch = {c.arch: c.scores for c in serial.candidates}
    assert {c.arch: c.scores for c in on_ray.candidates} == by_arch
    assert len(RunStore(tmp_path / "ray")) == 6


def test_killed_worker_is_retried_and_nothing_is_lost_or_repeated(ray_local, tmp_path):
    with WorkerKiller(times=1) as killer:
        result = nas.search(**SEARCH, budget=8, seed=2, out=tmp_path / "r", executor="ray",
                            executor_options={"workers": 2, "max_retries": 2})
    assert killer.killed, "no worker was killed"
    archs = [c.arch for c in result.candidates]
    assert len(archs) == 8 and len(set(archs)) == 8
    assert all(c.status == "ok" for c in result.candidates)
    stored = RunStore(tmp_path / "r").candidates()
    assert [c.arch for c in stored] == archs


def test_worker_death_without_retries_is_recorded_as_failed(ray_local, tmp_path):
    with WorkerKiller(times=1) as killer:
        result = nas.search(**SEARCH, budget=5, seed=3, out=tmp_path / "r", executor="ray",
                            executor_options={"workers": 1, "max_retries": 0})
    assert killer.killed
    assert len({c.arch for c in result.candidates}) == 5
    failed = [c for c in result.candidates if c.status == "failed"]
    assert len(failed) == 1 and "retries" in failed[0].error
    assert result.best is not None and result.best.status == "ok"


def test_task_that_raises_becomes_a_failed_candidate(ray_local):
    def evaluate(arch: str) -> Candidate:
        if arch == "bad":
            raise ValueError("no such op 'bad'")
        return Candidate(arch, {"len": float(len(arch))})

    with executors.get("ray", workers=2) as ex:
        out = {c.arch: c for c in ex.map(evaluate, ["a", "bad", "ccc"])}
    assert set(out) == {"a", "bad", "ccc"}
    assert out["bad"].status == "failed" and "ValueError: no such op 'bad'" in out["bad"].error
    assert out["ccc"].scores == {"len": 3.0}


def test_lazy_input_is_drawn_only_as_slots_free_up(ray_local):
    drawn: list[str] = []

    def archs():
        for i in range(7):
            drawn.append(str(i))
            yield str(i)

    def evaluate(arch: str) -> Candidate:
        time.sleep(0.05 * (int(arch) % 3))
        return Candidate(arch, {})

    ex = executors.get("ray", workers=2)
    ahead = []
    for n_done, _ in enumerate(ex.map(evaluate, archs()), 1):
        ahead.append(len(drawn) - n_done)
    ex.close()
    assert len(drawn) == 7 and max(ahead) <= ex.parallelism - 1


def test_evaluator_is_shipped_once_per_worker_not_per_task(ray_local, tmp_path):
    log = tmp_path / "unpickled.txt"

    class Evaluate:  # defined locally so that Ray ships the class by value
        def __init__(self, path):
            self.path = path

        def __setstate__(self, state):
            self.__dict__.update(state)
            with open(self.path, "a") as f:
                f.write(f"{os.getpid()}\n")

        def __call__(self, arch):
            return Candidate(arch, {"pid": float(os.getpid())})

    evaluate = Evaluate(str(log))
    with executors.get("ray", workers=2) as ex:
        done = list(ex.map(evaluate, "abcd")) + list(ex.map(evaluate, "efgh"))
    assert len(done) == 8 and all(c.scores["pid"] != os.getpid() for c in done)
    pids = log.read_text().split()
    assert len(pids) == len(set(pids)) <= 2  # once per worker process, not once per task


def test_stop_event_ends_map_promptly_keeping_finished_results(ray_local):
    stop = threading.Event()

    def evaluate(arch: str) -> Candidate:
        time.sleep(0.1 if arch == "quick" else 5.0)
        return Candidate(arch, {})

    got = []
    start = time.perf_counter()
    with pytest.raises(executors.Stopped), executors.get("ray", workers=2, stop=stop) as ex:
        for cand in ex.map(evaluate, ["quick", "slow", "slower"]):
            got.append(cand.arch)
            stop.set()
    assert got == ["quick"] and time.perf_counter() - start < 4.5


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="workers"):
        executors.get("ray", workers=0)
    with pytest.raises(ValueError, match="max_retries"):
        executors.get("ray", max_retries=-1)
    with pytest.raises(ValueError, match="valid: .*ray.*serial"):
        executors.get("dask")


def test_unreachable_cluster_address_fails_fast_and_clearly():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="no Ray cluster answers at '127.0.0.1:1'.*ray start --head"):
        executors.init_ray("127.0.0.1:1", None)
    assert time.perf_counter() - start < 30


def test_cli_search_with_ray_executor(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "--budget", "4", "--objectives", "nwot", "--batch-size", "8", "--no-progress",
                 "--executor", "ray", "--workers", "2", "--no-onnx", "--out", str(out)])
    assert code == 0 and len(RunStore(out)) == 4


@pytest.mark.slow
def test_private_local_instance_is_started_and_shut_down(tmp_path):
    import ray

    if ray.is_initialized():
        pytest.skip("a shared Ray session is running")
    nas.search(**SEARCH, budget=3, out=tmp_path / "r", executor="ray", executor_options={"workers": 1})
    assert not ray.is_initialized()
