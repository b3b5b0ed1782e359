"""EAS: the meta-controller's actions, its REINFORCE update, and a whole grow run with resume."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import proxies
from nas.eas import (
    KERNELS,
    MetaController,
    Step,
    _reinforce,
    apply_step,
    deepenable,
    grow,
    random_step,
    widenable,
)
from nas.run import RunStore
from search_spaces.chain import ChainSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPACE = ChainSpace()
START = "c3-8,p,c3-16"


def test_steps_keep_the_function_and_match_the_bare_arch() -> None:
    arch = SPACE.from_string("c3-8,p,c3-16,f-16")
    torch.manual_seed(0)
    net = SPACE.build(arch).eval()
    x = proxies.calibration_batch(8).inputs
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        step = random_step(arch, gen)
        bare, _ = apply_step(SPACE, arch, step)
        grown_arch, grown = apply_step(SPACE, arch, step, net)
        assert bare == grown_arch and len(grown_arch) == len(arch) + 1
        with torch.no_grad():
            assert (grown.eval()(x) - net(x)).abs().max().item() <= 1e-5
        arch, net = grown_arch, grown.eval()


def test_controller_step_probabilities_sum_to_one() -> None:
    arch = SPACE.from_string("c3-8,p,c3-16,f-16")
    torch.manual_seed(0)
    controller = MetaController(hidden=8)
    grow_units = widenable(arch)
    total = 0.0
    with torch.no_grad():
        for k in range(len(grow_units) + 1):
            for widen in itertools.combinations(grow_units, k):
                for after in deepenable(arch):
                    for kernel in KERNELS:
                        total += math.exp(float(controller.step_log_prob(arch, Step(widen, after, kernel))))
    assert total == pytest.approx(1.0, abs=1e-5)
    step = controller.sample(arch, torch.Generator().manual_seed(1))
    assert step.after in deepenable(arch) and set(step.widen) <= set(grow_units)


def test_reinforce_raises_the_probability_of_rewarded_steps() -> None:
    arch = SPACE.from_string(START)
    torch.manual_seed(0)
    controller = MetaController(hidden=8)
    optimizer = torch.optim.Adam(controller.parameters(), lr=0.05)
    good, bad = Step((), 0, 1), Step((), 2, 5)
    before = controller.step_log_prob(arch, good).item()
    baseline = None
    for _ in range(5):
        baseline = _reinforce(controller, optimizer, [[(arch, good)], [(arch, bad)]], [1.0, 0.0], baseline)
    assert controller.step_log_prob(arch, good).item() > before
    assert 0.0 < baseline < 1.0


@pytest.fixture(scope="module")
def tiny(images_npz) -> str:
    y = np.arange(160) % 4
    return images_npz(y, side=16, y_test=np.arange(40) % 4)


def test_grow_runs_resumes_and_records_every_network(tiny, tmp_path) -> None:
    kw = {"episodes": 1, "children": 2, "steps": 1, "epochs": 1, "start_epochs": 1, "batch_size": 32,
          "seed": 0, "progress": False}
    result = grow(START, tiny, tmp_path / "eas", **kw)
    assert (tmp_path / "eas" / "controller.pt").is_file()
    archs = [c.arch for c in result.candidates]
    assert archs[0] == START and 2 <= len(archs) <= 3  # the start network, then up to two new children
    assert all(c.status == "ok" and 0 <= c.scores["val_acc"] <= 100 for c in result.candidates)
    children = result.candidates[1:]
    assert all(c.metrics["total_epochs"] == 2 and len(c.arch.split(",")) == 4 for c in children)
    assert result.val_accuracy == max(c.scores["val_acc"] for c in result.candidates)
    more = grow(out=tmp_path / "eas", resume=True, episodes=2, progress=False)
    assert len(more.candidates) >= len(result.candidates)
    store = RunStore(tmp_path / "eas", readonly=True)
    assert store.get_meta("config")["episodes"] == 2
    store.close()
    with pytest.raises(ValueError, match="children"):
        grow(out=tmp_path / "eas", resume=True, children=5, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        grow(START, tiny, tmp_path / "eas", **kw)
    rnd = grow(START, tiny, tmp_path / "random", random=True, **kw)
    assert rnd.candidates[0].arch == START and len(rnd.candidates) >= 2


def test_grow_is_part_of_the_package_api() -> None:
    import nas
    import nas.eas

    assert nas.grow is nas.eas.grow and nas.GrowResult is nas.eas.GrowResult


def test_grow_rejects_bad_input(tiny, tmp_path) -> None:
    with pytest.raises(ValueError, match="unit 1"):
        grow("c3-8,zz", tiny, tmp_path / "a")
    with pytest.raises(ValueError, match="at least 1"):
        grow(START, tiny, tmp_path / "b", children=0)
    with pytest.raises(ValueError, match="--val-size 0"):
        grow(START, tiny, tmp_path / "c", val_size=0)
    assert not any((tmp_path / d).exists() for d in "abc")
