"""DisWOT's distillation-aware proxies: the teacher's matrices, the proxies, ``nas score --teacher``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nas
import proxies
import search_spaces
from nas.cli import main
from proxies.distill import network_matrices, teacher_reference, with_teacher
from search_spaces.chain import ChainSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOP = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
TINY = {"channels": 4, "cells_per_stage": 1}


@pytest.fixture(scope="module")
def teacher_dir(images_npz, tmp_path_factory):
    data = images_npz(np.arange(120) % 10, side=16, y_test=np.arange(40) % 10)
    out = tmp_path_factory.mktemp("teacher") / "t"
    nas.train("nb201", TOP, data, epochs=1, batch_size=32, space_options=TINY, out=out, progress=False)
    return out


def test_matrices_are_normalised_and_symmetric() -> None:
    batch = proxies.calibration_batch(16)
    torch.manual_seed(0)
    net = ChainSpace().build(ChainSpace().from_string("c3-8,p,c3-16,f-32")).eval()
    semantic, relation = network_matrices(net, batch.inputs)
    assert semantic.shape == (10, 10) and relation.shape == (16, 16)
    for m in (semantic, relation):
        torch.testing.assert_close(m, m.T)
        assert float(m.norm()) == pytest.approx(1.0)
    # the relation of an image with itself is the largest in its row (cosine similarity)
    assert bool((relation.diagonal() >= relation.max(dim=1).values - 1e-12).all())


def test_proxies_compare_a_student_with_the_teacher() -> None:
    batch = proxies.calibration_batch(16)
    space = ChainSpace()
    torch.manual_seed(0)
    teacher = space.build(space.from_string("c3-16,p,c3-32,p,c3-64")).eval()
    taught = with_teacher(batch, teacher)
    assert taught.name.startswith("cifar10+teacher-") and taught.teacher is not None
    ref = teacher_reference(teacher, batch.inputs)
    assert ref.digest == taught.teacher.digest  # the same teacher on the same images: the same key
    torch.manual_seed(1)
    student = space.build(space.from_string("c3-8,p,c3-8"))
    values = proxies.score(student, taught, ["diswot", "diswot_relation"])
    assert all(math.isfinite(v) and v <= 0 for v in values.values())
    assert values["diswot"] <= values["diswot_relation"]  # the semantic distance adds to the relation one
    # a student identical to the teacher, scored in the teacher's (eval) mode, is at distance zero
    same = network_matrices(teacher, batch.inputs)
    torch.testing.assert_close(same[0], ref.semantic.double())
    errors: dict[str, str] = {}
    missing = proxies.score(student, batch, ["diswot"], errors=errors)
    assert math.isnan(missing["diswot"]) and "--teacher" in errors["diswot"]


def test_nas_score_with_a_teacher(teacher_dir, tmp_path, capsys) -> None:
    space = search_spaces.get("nb201", **TINY)
    rng = np.random.default_rng(0)
    archs = tmp_path / "archs.txt"
    archs.write_text("\n".join(space.to_string(space.sample(rng)) for _ in range(3)) + "\n")
    out = tmp_path / "s.csv"
    argv = ["score", "--space", "nb201", "--space-option", "channels=4", "--space-option", "cells_per_stage=1",
            "--arch-file", str(archs), "--batch-size", "8", "--no-cache", "--no-progress", "--out", str(out)]
    assert main([*argv, "--proxies", "diswot,diswot_relation,params", "--teacher", str(teacher_dir)]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert len(rows) == 3 and all(math.isfinite(float(v)) for row in rows for v in row[1:])
    assert main([*argv, "--proxies", "diswot"]) == 2
    assert "--teacher DIR" in capsys.readouterr().err
    assert main([*argv, "--proxies", "all"]) == 0  # without a teacher, 'all' leaves the teacher's proxies out
    assert "diswot" not in out.read_text().splitlines()[0]


def test_search_with_a_teacher_resumes_and_refuses_a_changed_one(teacher_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    kw = {"space": "nb201", "strategy": "random", "objectives": ["diswot", "params"], "seed": 0,
          "space_options": TINY, "batch_size": 8, "cache": False, "progress": False, "plot": False}
    result = nas.search(budget=3, out=out, teacher=teacher_dir, **kw)
    assert len(result.candidates) == 3 and all(c.status == "ok" for c in result.candidates)
    assert all(c.scores["diswot"] < 0 for c in result.candidates)
    again = nas.search(budget=5, out=out, resume=True, progress=False, plot=False)
    assert len(again.candidates) == 5
    with pytest.raises(ValueError, match="--teacher"):
        nas.search(budget=6, out=out, resume=True, teacher=tmp_path, progress=False)
    with pytest.raises(ValueError, match="give --teacher DIR"):
        nas.search(budget=2, out=tmp_path / "none", **kw)
    assert main(["search", "--space", "nb201", "--objectives", "synflow", "--teacher", str(teacher_dir),
                 "--budget", "2", "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    assert "add one to --objectives" in capsys.readouterr().err
