"""The memory model (hardware_models.memory) on hand-checkable graphs, and sram_kb/flash_kb in search and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import nas
import search_spaces
from hardware_models.memory import KB, memory_of, onnx_memory
from nas.cli import main
from nas.errors import ResumeConflict
from nas.objectives import Constraints, parse_objectives
from nas.run import Candidate
from nas.settings import check_memory_settings
from search_spaces import export_onnx

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NB201 = ["--space", "nb201", "--space-option", "channels=8", "--space-option", "cells_per_stage=1"]
TINY_SPACE = {"channels": 8, "cells_per_stage": 1}


def _onnx(tmp_path: Path, model: nn.Module, shape: tuple[int, ...]) -> Path:
    path = tmp_path / "net.onnx"
    export_onnx(model, torch.zeros(1, *shape), path)
    return path


def _node(report, op: str) -> list[float]:
    """Live kB of the schedule's nodes whose name ends in ``op`` (e.g. 'Relu'), in order."""
    return [kb for name, kb in report.schedule if name.endswith(op)]


# ---------------------------------------------------------------------------------------------- the model
def test_conv_chain_peak_and_flash_by_hand(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, stride=2, padding=1))
    r = onnx_memory(_onnx(tmp_path, net, (3, 8, 8)))
    # int8: input 3*8*8 = 192 B, first output 8*8*8 = 512 B, second 4*4*4 = 64 B.
    # First conv: input + output = 704 B; then the input is dead: 512 + 64 = 576 B.
    assert r.sram_kb == 704 / KB
    assert [kb * KB for _, kb in r.schedule] == [704, 576]
    assert r.peak_node.endswith("Conv") and r.peak_op == "Conv"
    # Weights at 8 bits, biases at 32: (8*3*9 + 4*8*9) * 1 B + (8 + 4) * 4 B.
    assert r.params == 8 * 3 * 9 + 8 + 4 * 8 * 9 + 4
    assert r.flash_kb == (216 + 288 + 4 * 12) / KB


def test_bits_scale_activations_and_weights_but_not_biases(tmp_path: Path) -> None:
    path = _onnx(tmp_path, nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, stride=2, padding=1)),
                 (3, 8, 8))
    r8, r16 = onnx_memory(path), onnx_memory(path, weight_bits=4, activation_bits=16)
    assert r16.sram_kb == 2 * r8.sram_kb
    assert r16.flash_kb == (216 / 2 + 288 / 2 + 4 * 12) / KB  # int32 biases whatever the weight bits
    assert onnx_memory(path.read_bytes()).sram_kb == r8.sram_kb  # bytes of the file read the same


class _Residual(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv1, self.relu, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


def test_residual_input_stays_alive_until_the_add(tmp_path: Path) -> None:
    r = onnx_memory(_onnx(tmp_path, _Residual(), (4, 8, 8)))
    t = 4 * 8 * 8  # every tensor is 256 B at int8
    # conv1: x + a; relu in place on a: x + a; conv2: x (kept for the Add) + a + b; add in place: x + b.
    assert [kb * KB for _, kb in r.schedule] == [2 * t, 2 * t, 3 * t, 2 * t]
    assert r.sram_kb == 3 * t / KB and r.peak_node.endswith("Conv")


def test_relu_runs_in_place_only_when_its_input_dies(tmp_path: Path) -> None:
    chain = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    r = onnx_memory(_onnx(tmp_path, chain, (4, 8, 8)))
    assert _node(r, "Relu") == [8 * 64 / KB]  # the conv's 512 B output overwritten, nothing else alive

    class PreAct(nn.Module):  # relu(x) while x waits for the residual Add: a new buffer
        def __init__(self) -> None:
            super().__init__()
            self.relu, self.conv = nn.ReLU(), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(self.relu(x))

    r = onnx_memory(_onnx(tmp_path, PreAct(), (4, 8, 8)))
    assert _node(r, "Relu") == [2 * 256 / KB]


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_in_place_needs_one_output_channel(tmp_path: Path, stride: int) -> None:
    net = nn.Sequential(nn.Conv2d(8, 8, 3, stride=stride, padding=1, groups=8), nn.Conv2d(8, 4, 1))
    path = _onnx(tmp_path, net, (8, 8, 8))
    x, side = 8 * 64, 8 // stride
    out, pw = 8 * side * side, 4 * side * side
    inplace, separate = onnx_memory(path), onnx_memory(path, inplace_depthwise=False)
    # TinyEngine: one output channel waits in a temporary buffer, the others overwrite the input ("N + 1").
    assert inplace.schedule[0][1] == (x + side * side) / KB
    assert separate.schedule[0][1] == (x + out) / KB
    assert inplace.sram_kb == max(x + side * side, out + pw) / KB
    assert separate.sram_kb == (x + out) / KB and separate.peak_node == separate.schedule[0][0]


def test_patches_cut_the_first_stage_peak_by_hand(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, 2, 1),
                        nn.Conv2d(16, 16, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    path = _onnx(tmp_path, net, (3, 32, 32))
    plain, r = onnx_memory(path), onnx_memory(path, patches=4)
    # Layer by layer the second conv peaks: its 32x32x16 input and 16x16x16 output.
    assert plain.sram_kb == (16 * 32 * 32 + 16 * 16 * 16) / KB and plain.stage_kb is None
    # The stage ends before the global pool (1/8 of 32 is 4 pixels); its 4x4x16 output (256 B) is the
    # cheapest cut. A 1x1 output tile needs input tiles 3, 7, 15 and 17 pixels wide back through the
    # convolutions (k3: s2, s2, s2, s1): the halo. Per patch the first conv holds 17*17*3 + 15*15*16 bytes.
    assert r.stage_end == plain.schedule[3][0]
    assert r.stage_kb == plain.sram_kb
    assert r.patch_stage_kb == (17 * 17 * 3 + 15 * 15 * 16 + 4 * 4 * 16) / KB
    assert r.rest_kb == (4 * 4 * 16 + 16) / KB  # the global pool: its input and output
    assert r.sram_kb == r.patch_stage_kb and r.patch_reduction >= 4
    assert onnx_memory(path, patches=4, activation_bits=16).patch_stage_kb == 2 * r.patch_stage_kb


def test_mcunet_mbv2_baseline_is_near_the_published_sram_and_patches_cut_its_stage() -> None:
    if "mcunet" not in search_spaces.list():
        pytest.skip("the mcunet space is not registered")
    r = memory_of(search_spaces.get("mcunet"), "mbv2-w0.35-r144", patches=4)
    # MCUNet's model zoo (TinyEngine on STM32F746): 308 kB SRAM, 862 kB flash (that one with the code).
    assert abs(r.layer_sram_kb - 308) / 308 <= 0.15
    assert r.params == pytest.approx(0.75e6, rel=0.05) and r.flash_kb < 862
    assert r.patch_reduction >= 4 and r.sram_kb < r.layer_sram_kb / 4


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    path = _onnx(tmp_path, nn.Conv2d(3, 4, 3), (3, 8, 8))
    with pytest.raises(ValueError, match="weight_bits must be a whole number"):
        onnx_memory(path, weight_bits=0)
    with pytest.raises(ValueError, match="patches must be"):
        onnx_memory(path, patches=0)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        onnx_memory(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="ONNX path, bytes or ModelProto"):
        onnx_memory(3)
    space = search_spaces.get("nb201", **TINY_SPACE)
    with pytest.raises(search_spaces.ArchError):
        memory_of(space, "|bad|")


# ---------------------------------------------------------------------------------------------- in search
def test_memory_names_are_minimised_and_limits_judge_feasibility() -> None:
    assert [o.maximize for o in parse_objectives("synflow,sram_kb,flash_kb,model_kb")] == [True, False, False, False]
    limits = Constraints(max_sram_kb=30.0, max_flash_kb=50.0)
    fits = Candidate("a", {}, {"sram_kb": 30.0, "flash_kb": 10.0})
    assert limits.feasible(fits) and limits.active
    assert not limits.feasible(Candidate("b", {}, {"sram_kb": 30.5, "flash_kb": 10.0}))
    assert not limits.feasible(Candidate("c", {}, {"sram_kb": 1.0, "flash_kb": 51.0}))
    assert not limits.feasible(Candidate("d", {}, {}))  # not measured: never feasible
    with pytest.raises(ValueError, match="--max-sram-kb must be a positive number"):
        check_memory_settings({"constraints": {"max_sram_kb": -1.0}, "objectives": ["synflow"]})


def _search(out: Path, **kw) -> nas.SearchResult:
    kw = {"objectives": ["synflow"], **kw}
    return nas.search("nb201", "random", budget=6, seed=0, out=out, batch_size=8, progress=False, plot=False,
                      cache=False, space_options=TINY_SPACE, **kw)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> nas.SearchResult:
    """A 6-candidate nb201 search under --max-sram-kb 30 (its candidates need 24 to 32 kB)."""
    return _search(tmp_path_factory.mktemp("run") / "limited", objectives=["synflow", "sram_kb"], max_sram_kb=30.0)


def test_evaluator_records_memory_only_when_asked(tmp_path: Path, limited: nas.SearchResult) -> None:
    assert all({"sram_kb", "flash_kb"} <= set(c.metrics) for c in limited.candidates)
    plain = _search(tmp_path / "plain")
    assert not any({"sram_kb", "flash_kb"} & set(c.metrics) for c in plain.candidates)
    space = search_spaces.get("nb201", **TINY_SPACE)
    for c in limited.candidates[:2]:  # the values are the memory model's
        report = memory_of(space, c.arch)
        assert (c.metrics["sram_kb"], c.metrics["flash_kb"]) == (report.sram_kb, report.flash_kb)


def test_a_memory_limit_keeps_infeasible_candidates_out_of_every_answer(limited: nas.SearchResult) -> None:
    over = [c for c in limited.candidates if c.metrics["sram_kb"] > 30]
    assert over and len(over) < len(limited.candidates)  # the limit bites, and something fits
    assert all(c.metrics["sram_kb"] <= 30 for c in limited.feasible())
    assert limited.best.metrics["sram_kb"] <= 30
    run = limited.run_dir
    best = json.loads((run / "best.json").read_text())
    assert best["metrics"]["sram_kb"] <= 30 and best["feasible"] == len(limited.candidates) - len(over)
    assert best["config"]["constraints"]["max_sram_kb"] == 30.0
    with open(run / "pareto.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["sram_kb"]) <= 30 for r in rows) and "flash_kb" in rows[0]
    assert {r["arch"] for r in rows} == {c.arch for c in limited.pareto}


def test_resume_checks_memory_limits(limited: nas.SearchResult) -> None:
    with pytest.raises(ResumeConflict, match="--max-sram-kb 20.0 contradicts"):
        _search(limited.run_dir, objectives=["synflow", "sram_kb"], max_sram_kb=20.0, resume=True)


def test_one_shot_strategies_refuse_memory_limits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="records no memory"):
        nas.create_study("nb201", ["synflow"], "darts", tmp_path / "run", constraints={"max_sram_kb": 10.0},
                         space_options=TINY_SPACE)


# ---------------------------------------------------------------------------------------------- the CLI
def test_nas_memory_csv_equals_what_a_search_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["search", *NB201, "--strategy", "random", "--objectives", "synflow", "--max-flash-kb", "40",
                 "--budget", "4", "--batch-size", "8", "--out", str(run), "--no-progress", "--no-onnx",
                 "--no-cache"]) == 0
    result = nas.SearchResult.from_store(nas.run.RunStore(run, readonly=True))
    archs = tmp_path / "archs.txt"
    archs.write_text("".join(c.arch + "\n" for c in reversed(result.candidates)))
    out = tmp_path / "m.csv"
    assert main(["memory", *NB201, "--arch-file", str(archs), "--out", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["arch", "sram_kb", "flash_kb"]
    recorded = [(c.arch, c.metrics["sram_kb"], c.metrics["flash_kb"]) for c in reversed(result.candidates)]
    assert [(r["arch"], float(r["sram_kb"]), float(r["flash_kb"])) for r in rows] == recorded  # input order
    assert all(float(r["flash_kb"]) <= 40 for r in csv.DictReader(open(run / "pareto.csv")))


def test_nas_memory_patches_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    out = tmp_path / "m.csv"
    assert main(["memory", *NB201, "--arch", arch, "--out", str(out), "--patches", "2"]) == 0
    row = next(csv.DictReader(open(out)))
    assert float(row["stage_kb"]) > 0 and float(row["patch_stage_kb"]) > 0 and row["stage_end"]
    capsys.readouterr()
    assert main(["memory", *NB201, "--arch", "|bad|", "--out", str(out)]) == 2
    assert "--arch '|bad|'" in capsys.readouterr().err
    assert main(["memory", "--space", "nope", "--arch", arch, "--out", str(out)]) == 2
    assert "unknown search space 'nope'" in capsys.readouterr().err
    assert main(["memory", *NB201, "--arch", arch, "--out", str(out), "--activation-bits", "0"]) == 2
    assert "activation_bits must be" in capsys.readouterr().err
