"""Proxy ensembles: the reference CDF, the label-free and few-label ensembles, AZ-NAS components."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import proxies
import search_spaces
from proxies import ensemble as ens

AZ = ["az_expressivity", "az_progressivity", "az_trainability"]
CELLS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
]


@pytest.fixture(scope="module")
def space():
    return search_spaces.get("nb201")


@pytest.fixture(scope="module")
def batch():
    return proxies.calibration_batch(batch_size=8)


def test_cdf_is_continuous_increasing_and_in_unit_interval():
    ref = ens.Reference.from_values({"a": [3.0, 1.0, 2.0, 2.0, 5.0, math.nan, -math.inf]})
    assert ref.values["a"] == (1.0, 2.0, 2.0, 3.0, 5.0)
    xs = np.linspace(-10, 20, 601)
    f = ref.cdf("a", xs)
    assert np.all(np.diff(f) > 0) and np.all((f > 0) & (f < 1))
    for missing in (math.nan, -math.inf):  # no value ranks below any value
        assert float(ref.cdf("a", missing)) == pytest.approx(1e-12)
        assert float(ref.cdf("a", missing)) <= float(ref.cdf("a", -1e6))


def test_missing_components_rank_last_and_all_missing_gives_nan():
    ref = ens.Reference.from_values({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, 1.0, 2.0, 3.0]})
    model = ens.label_free(ref, ("a", "b"))
    worst_whole = model({"a": 0.0, "b": -1.0})  # below the reference on both components
    one_missing = [model({"a": math.nan, "b": b}) for b in (0.0, 3.0, 100.0)]
    assert all(math.isfinite(v) and v < worst_whole for v in one_missing)  # finite, below whole nets
    assert one_missing[0] >= model({"a": -1e6, "b": -1e6})  # as low as values far beyond the reference
    assert one_missing[0] < one_missing[1] < one_missing[2]  # the other component still orders them
    assert model({"b": 3.0}) == one_missing[1]  # an absent key is a missing component
    assert math.isnan(model({"a": math.nan, "b": math.nan})) and math.isnan(model({}))
    table = model.score_table({"a": [2.0, math.nan, math.nan, -math.inf], "b": [1.0, 1.0, math.nan, -math.inf]})
    assert math.isfinite(table[0]) and table[1] < table[0] and math.isnan(table[2])
    assert math.isfinite(table[3]) and table[3] <= table[1]  # -inf: a benchmark's "scored, ranks last"
    fitted = ens.EnsembleModel(("a", "b"), (1.0, 0.0), ref)  # a zero weight says nothing about a net
    assert math.isnan(fitted({"a": math.nan, "b": 2.0})) and math.isfinite(fitted({"a": 2.0, "b": math.nan}))


def test_reference_needs_two_finite_values():
    with pytest.raises(ValueError, match="'b'"):
        ens.Reference.from_values({"b": [1.0, math.inf]})


def test_label_free_is_log_rank_sum_against_population():
    rng = np.random.default_rng(0)
    table = {"a": rng.normal(size=50), "b": rng.normal(size=50)}
    model = ens.label_free(ens.Reference.from_values(table), ("a", "b"))
    got = model.score_table(table)
    ranks = sum(np.argsort(np.argsort(table[k])) + 1 for k in table)  # noqa: F841 - documents intent
    expected = sum(np.log((np.argsort(np.argsort(table[k])) + 1) / 51) for k in table)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_model_json_round_trip():
    ref = ens.Reference.from_values({"a": [1, 2, 3], "b": [4, 5, 6]})
    model = ens.EnsembleModel(("a", "b"), (0.5, 1.0), ref)
    again = ens.EnsembleModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    with pytest.raises(ValueError, match="weights"):
        ens.EnsembleModel(("a",), (1.0, 2.0), ref)
    with pytest.raises(ValueError, match="'c'"):
        ens.EnsembleModel(("c",), (1.0,), ref)


def test_fit_recovers_the_informative_component_and_is_seeded():
    rng = np.random.default_rng(1)
    n = 40
    table = {"good": rng.normal(size=n), "noise": rng.normal(size=n), "bad": rng.normal(size=n)}
    acc = table["good"] + 0.1 * rng.normal(size=n)
    ref = ens.Reference.from_values({k: rng.normal(size=200) for k in table})
    a = ens.fit(table, acc, ref, ("good", "noise", "bad"), n_trials=60, seed=3)
    b = ens.fit(table, acc, ref, ("good", "noise", "bad"), n_trials=60, seed=3)
    assert a == b
    fitted = ens.spearman(a.score_table(table), acc)
    equal = ens.spearman(ens.label_free(ref, ("good", "noise", "bad")).score_table(table), acc)
    assert fitted >= equal and fitted > 0.85
    with pytest.raises(ValueError, match="at least 5"):
        ens.fit({"good": [1, 2]}, [1, 2], ref, ("good",))


def test_read_labels(tmp_path):
    good = tmp_path / "labels.csv"
    good.write_text("arch,accuracy\nx,91.5\ny,80\n")
    assert ens.read_labels(good) == [("x", 91.5), ("y", 80.0)]
    bad = tmp_path / "bad.csv"
    bad.write_text("arch,accuracy\nx,high\n")
    with pytest.raises(ValueError, match="bad.csv, line 2"):
        ens.read_labels(bad)
    with pytest.raises(ValueError, match="arch,accuracy"):
        (tmp_path / "nohead.csv").write_text("x,1\n")
        ens.read_labels(tmp_path / "nohead.csv")


def test_az_components_finite_and_identity_cell_ranks_last(space, batch):
    for text in CELLS:
        errors: dict[str, str] = {}
        vals = proxies.score(space.build(space.from_string(text)), batch, AZ, errors=errors)
        assert all(math.isfinite(v) for v in vals.values()) and not errors, (vals, errors)
    identity = space.from_string("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    errors = {}
    value = proxies.score(space.build(identity), batch, ["az_trainability"], errors=errors)["az_trainability"]
    assert math.isnan(value) and not errors  # no gradient to condition: ranks last, not a failure


def test_ensemble_proxy_fails_with_its_component_instead_of_scoring_low(space):
    ref = ens.Reference.from_values({"jacov": [-3.0, -2.0, -1.0], "params": [0.1, 0.5, 1.0]})
    model = space.build(space.from_string(CELLS[0]))
    one = proxies.calibration_batch(batch_size=1)  # jacov correlates samples: it raises on one
    errors: dict[str, str] = {}
    with ens.using(ens.label_free(ref, ("jacov", "params"))):
        value = proxies.score(model, one, ["ensemble", "params"], errors=errors)
    assert math.isnan(value["ensemble"]) and value["params"] > 0
    assert set(errors) == {"ensemble"} and errors["ensemble"].startswith("RuntimeError: ensemble component(s) "
                                                                         "failed: jacov (")


def _fake_components(archs, names):
    """Component values that depend on the arch string only (for the pure-python parts)."""
    return {n: [float(len(a) * (i + 1) % 17) for a in archs] for i, n in enumerate(names)}


def test_prepare_expand_combine():
    archs = [f"a{i}" * (i + 1) for i in range(8)]
    models = ens.prepare(["ensemble", "nwot"], archs, _fake_components)
    assert list(models) == ["ensemble"]
    names = ens.expand(["nwot", "ensemble"], models)
    assert names[0] == "nwot" and set(names) == {"nwot", *ens.LABEL_FREE_COMPONENTS}
    values = {n: 3.0 for n in names}
    assert math.isfinite(ens.combine(models, values)["ensemble"])
    with pytest.raises(ValueError, match="--labels"):
        ens.prepare(["ensemble_fit"], archs, _fake_components)
    fitted = ens.prepare(["ensemble_fit"], archs, _fake_components, labels=[(a, i) for i, a in enumerate(archs)])
    assert fitted["ensemble_fit"].components == ens.FIT_POOL


def test_benchmark_rows_hold_out_the_labels():
    rng = np.random.default_rng(0)
    values = {c: rng.normal(size=80) for c in ens.FIT_POOL}
    target = values["jacov"] + rng.normal(size=80)
    values[ens.LABEL_FREE_COMPONENTS[0]][:5] = np.nan  # not computed for these cells
    lf = ens.benchmark_label_free(values)
    fl = ens.benchmark_few_label(values, target, n_labels=20)
    assert np.isnan(lf[:5]).all() and np.isfinite(lf[5:]).all()
    assert np.isnan(fl).sum() == 25 and np.isnan(fl[:5]).all()
    assert np.isnan(ens.benchmark_few_label(values)).all()
    assert np.isnan(ens.benchmark_label_free({"nwot": values["nwot"]})).all()


@pytest.fixture()
def small_reference(monkeypatch, tmp_path):
    monkeypatch.setattr(ens, "REFERENCE_SIZE", 3)
    monkeypatch.setenv("ZCNAS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.slow
def test_ensemble_through_evaluator_and_engine(space, batch, small_reference):
    from nas.evaluate import Evaluator

    evaluate = Evaluator(space, ("ensemble", "nwot"), batch)
    a, b = evaluate(CELLS[0]), evaluate(CELLS[0])
    assert a.status == "ok" and a.scores == b.scores and set(a.scores) == {"ensemble", "nwot"}
    assert all(math.isfinite(v) and v > -1e3 for v in a.scores.values())
    model = space.build(space.from_string(CELLS[0]))
    with ens.using(evaluate.ensembles):
        direct = proxies.score(model, batch, ["ensemble"])["ensemble"]
    assert math.isfinite(direct) and direct > -1e3
    with pytest.raises(ValueError, match="--labels"):
        Evaluator(space, ("ensemble_fit",), batch)


def test_score_cli_with_ensemble(tmp_path, small_reference):
    from nas.cli import main

    archs = tmp_path / "archs.txt"
    archs.write_text("\n".join(CELLS) + "\n")
    out = tmp_path / "s.csv"
    assert main(["score", "--arch-file", str(archs), "--proxies", "ensemble", "--batch-size", "8",
                 "--out", str(out), "--no-progress"]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "arch,ensemble" and len(rows) == 3
    assert all(math.isfinite(float(r.rsplit(",", 1)[1])) for r in rows[1:])


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_more_cells():
    from nas import proxy_benchmark as pb

    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1600):
        target = rng.normal(size=n)
        score = target + rng.normal(size=n)
        rows = pb.rank_rows({"noisy": score}, target, resamples=400)
        low, high = rows[0].spearman_ci
        assert low < rows[0].spearman < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 4x narrower in theory


def test_spearman_gap_separates_a_better_scorer_from_a_copy():
    from nas import proxy_benchmark as pb

    rng = np.random.default_rng(1)
    target = rng.normal(size=500)
    good, bad = target + 0.3 * rng.normal(size=500), target + 2.0 * rng.normal(size=500)
    diff, low, high, n = pb.spearman_gap(good, bad, target, resamples=300)
    assert n == 500 and 0 < low < diff < high
    same = pb.spearman_gap(good, good.copy(), target, resamples=300)
    assert same[:3] == (0.0, 0.0, 0.0)
    bad[:40] = np.nan  # e.g. the few-label row's labelled cells: compared on the cells both scored
    assert pb.spearman_gap(good, bad, target, resamples=50)[3] == 460


@pytest.mark.slow
def test_search_cli_fits_ensemble_fit_on_oracle_label_queries(tmp_path, small_reference, shared_data, capsys):
    from nas.cli import main

    out = tmp_path / "r"
    assert main(["search", "--space", "nb201", "--accuracy-table", str(shared_data / "nb201_accuracy.csv"),
                 "--strategy", "random", "--objectives", "ensemble_fit", "--label-queries", "6", "--budget", "3",
                 "--batch-size", "8", "--out", str(out), "--no-progress", "--no-onnx"]) == 0
    assert "labels: 6 oracle queries" in capsys.readouterr().out
    best = json.loads((out / "best.json").read_text())
    assert len(best["config"]["labels"]) == 6 and math.isfinite(best["scores"]["ensemble_fit"])
