"""Same inputs, same result, whatever other threads do at the same time (issue 20, defect 5).

Network initialisation and the proxies' seeded passes go through torch's process-global RNG; these tests
run them in several threads at once and compare with a single-threaded reference, bit for bit.
"""

import copy
import math
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import nas
import proxies
import search_spaces
from nas.evaluate import Evaluator, init_seed
from search_spaces import build_seeded

ROUNDS = 25


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest on one torch thread; the concurrency under test is Python threads, which
    switch every 10 us here (instead of 5 ms) so that short builds interleave as longer ones would."""
    before, interval = torch.get_num_threads(), sys.getswitchinterval()
    torch.set_num_threads(1)
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def space():
    """A full-depth NAS-Bench-201 network: enough layers that a build spans many thread switches."""
    return search_spaces.get("nb201", channels=8)


def _digest(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _together(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run every job in its own thread, all released at once; return their results (re-raise errors)."""
    start = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = jobs[i]()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_build_seeded_gives_the_weights_of_a_seeded_global_rng(space):
    # Cached proxy values and published numbers were computed from these weights: they must not change.
    arch = space.from_string("|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        legacy = _digest(space.build(arch))
    assert _same(_digest(build_seeded(space, arch, 1234)), legacy)


def test_build_seeded_leaves_the_global_rng_alone(space):
    arch = space.sample(np.random.default_rng(0))
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    build_seeded(space, arch, 99)
    assert torch.equal(torch.rand(4), expected)


def test_concurrent_builds_and_scores_equal_the_serial_ones(space):
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(3)]
    reference = [_digest(build_seeded(space, a, 7)) for a in archs]
    batch = proxies.calibration_batch(batch_size=4, input_shape=(3, 16, 16))
    scored = build_seeded(space, archs[0], 3)
    ref_scores = proxies.score(copy.deepcopy(scored), batch, ["az_trainability"], seed=3, device="cpu")

    def builder(i: int) -> Callable[[], list[bool]]:
        return lambda: [_same(_digest(build_seeded(space, archs[(i + k) % 3], 7)), reference[(i + k) % 3])
                        for k in range(ROUNDS)]

    def scorer() -> list[bool]:  # score() seeds the global RNG too (AZ-NAS re-initialises the net from it)
        model = copy.deepcopy(scored)
        return [proxies.score(model, batch, ["az_trainability"], seed=3, device="cpu") == ref_scores
                for _ in range(ROUNDS // 5)]

    results = _together([builder(0), builder(1), scorer])
    assert all(all(r) for r in results), [sum(not x for x in r) for r in results]


class _DropoutNet(nn.Module):
    """Convolutions with dropout in between: a train-mode forward draws from the global RNG many times."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1)]
        for _ in range(6):
            layers += [nn.ReLU(), nn.Dropout(0.3), nn.Conv2d(16, 16, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def test_concurrent_scores_with_dropout_equal_the_serial_ones():
    torch.manual_seed(0)
    net = _DropoutNet()
    batch = proxies.calibration_batch(batch_size=8, input_shape=(3, 16, 16))
    names = ["snip", "grad_norm", "jacov"]
    reference = proxies.score(copy.deepcopy(net), batch, names, seed=11, device="cpu")

    def scorer() -> list[bool]:
        model = copy.deepcopy(net)  # one model per thread: score() changes a model's state while it runs
        return [proxies.score(model, batch, names, seed=11, device="cpu") == reference for _ in range(ROUNDS)]

    results = _together([scorer, scorer])
    assert all(all(r) for r in results), [sum(not x for x in r) for r in results]


def test_concurrent_evaluators_equal_the_serial_one(space, monkeypatch):
    monkeypatch.delenv("ZCNAS_CACHE_DIR", raising=False)  # every value computed, none read from a cache
    rng = np.random.default_rng(2)
    archs = [space.to_string(space.sample(rng)) for _ in range(4)]
    batch = proxies.calibration_batch(batch_size=4, input_shape=(3, 16, 16))
    evaluate = Evaluator(space, ("synflow", "snip"), batch, seed=7, device="cpu")
    reference = [evaluate(a).scores for a in archs]
    assert all(math.isfinite(v) for r in reference for v in r.values())
    assert init_seed(7, archs[0]) != init_seed(7, archs[1])  # every arch its own initialisation

    def one(arch: str) -> str:
        cand = evaluate(arch)
        return repr(cand.scores) if cand.status == "ok" else f"failed: {cand.error}"

    def run() -> list[tuple[str, str]]:
        return [(one(archs[k % 4]), repr(reference[k % 4])) for k in range(ROUNDS // 2)]

    for pairs in _together([run, run]):
        wrong = [(got, want) for got, want in pairs if got != want]
        assert not wrong, (len(wrong), wrong[0])


def test_two_searches_in_threads_equal_a_serial_one(tmp_path, monkeypatch):
    monkeypatch.delenv("ZCNAS_CACHE_DIR", raising=False)
    def search(name: str) -> list[tuple[str, dict[str, float]]]:
        result = nas.search("nb201", "evolution", ["snip"], budget=12, seed=7, out=tmp_path / name,
                            progress=False, plot=False, batch_size=8, cache=False,  # compute every value
                            space_options={"channels": 8, "cells_per_stage": 2})
        return [(c.arch, c.scores) for c in result.candidates]

    serial = search("serial")
    assert len(serial) == 12
    first, second = _together([lambda: search("a"), lambda: search("b")])
    assert first == serial
    assert second == serial


def test_exports_carry_the_initial_weights_that_were_scored(tmp_path):
    from nas.cli import main

    options = {"channels": 8, "cells_per_stage": 1}
    result = nas.search("nb201", "random", ["synflow"], budget=3, seed=5, out=tmp_path / "run", progress=False,
                        plot=False, batch_size=8, space_options=options)
    space = search_spaces.get("nb201", **options)
    arch = result.best.arch
    scored = build_seeded(space, space.from_string(arch), init_seed(5, arch)).eval()
    assert main(["export", str(tmp_path / "run"), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert _same(_digest(torch.jit.load(str(tmp_path / "m.pt"))), _digest(scored))
    first, second = (result.export_best(tmp_path / f"{k}.onnx") for k in "ab")
    assert open(first, "rb").read() == open(second, "rb").read()
