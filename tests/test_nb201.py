import csv

import numpy as np
import pytest
import torch

import search_spaces
from search_spaces import ArchError
from search_spaces.nb201 import OPS

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def space():
    return search_spaces.get("nb201")


def test_cardinality_and_all_archs_are_distinct(space):
    archs = space.all_archs()
    assert space.cardinality == 15625 == len(set(archs))


def test_round_trip_and_encoding(space):
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        assert space.from_string(space.to_string(arch)) == arch
        code = space.encode(arch)
        assert code.shape == (30,) and code.sum() == 6
        assert space.from_choices(space.to_choices(arch)) == arch


def test_mutate_changes_exactly_one_edge(space):
    rng = np.random.default_rng(1)
    arch = space.sample(rng)
    for _ in range(20):
        child = space.mutate(arch, rng)
        assert sum(a != b for a, b in zip(arch, child, strict=True)) == 1
        arch = child


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "3 node groups"),
        ("|conv~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", "conv"),
        ("|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|", "op~0"),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|none~2|", "needs 2 edge"),
    ],
)
def test_malformed_strings_say_what_is_wrong(space, text, fragment):
    with pytest.raises(ArchError, match=fragment):
        space.from_string(text)


def test_forward_and_onnx_parity(space, onnx_parity):
    ref = onnx_parity(space, space.from_string(BEST), torch.randn(2, 3, 32, 32))
    assert ref.shape == (2, 10)


def test_degenerate_detection(space):
    assert space.is_degenerate(space.from_string("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"))
    assert space.is_degenerate(space.from_string(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|nor_conv_3x3~1|none~2|")) is False
    assert space.is_degenerate(space.from_string(
        "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|nor_conv_3x3~2|"))


def test_params_match_naslib_for_all_reference_cells(space, shared_data):
    rows = [r for r in csv.DictReader(open(shared_data / "nb201_naslib_proxies.csv")) if r["dataset"] == "cifar10"]
    assert len(rows) == 491
    for row in rows:
        model = space.build(space.from_string(row["arch"]))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert params == pytest.approx(float(row["params"]), abs=1e-6), row["arch"]


def test_oracle_reports_published_best(shared_data):
    space = search_spaces.get("nb201", accuracy_table=shared_data / "nb201_accuracy.csv")
    best = max(space.all_archs(), key=space.accuracy)
    assert space.accuracy(best) == pytest.approx(94.37, abs=0.01)
    assert set(best) <= set(OPS)
