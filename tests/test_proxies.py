import math

import numpy as np
import pytest
import torch

import proxies
import search_spaces
from nas.cli import main
from nas.evaluate import Evaluator
from proxies.cache import ProxyCache

SUITE = ["params", "flops", "synflow", "logsynflow", "snip", "grasp", "fisher", "grad_norm", "jacov", "nwot",
         "zen", "epe_nas", "l2_norm", "plain", "zico", "meco", "swap", "ntk", "linear_regions"]
DEGENERATE = ("none", "none", "skip_connect", "none", "nor_conv_3x3", "none")  # node 3 unreachable


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_space():
    """NAS-Bench-201 cells in a narrow, shallow network on 16x16 inputs: the real ops, cheap to run."""
    return search_spaces.get("nb201", channels=8, cells_per_stage=1, input_shape=(3, 16, 16))


@pytest.fixture(scope="module")
def batch():
    return proxies.calibration_batch(batch_size=10, seed=0, input_shape=(3, 16, 16))


def _build(space, arch, seed=0):
    torch.manual_seed(seed)
    return space.build(arch)


def test_every_proxy_is_registered_with_a_description():
    for name in SUITE:
        spec = proxies.get(name)
        assert spec.description and "\n" not in spec.description


def test_suite_on_20_random_cells_is_finite(small_space, batch):
    rng = np.random.default_rng(0)
    archs = [small_space.sample(rng) for _ in range(20)]
    for arch in archs:
        errors: dict[str, str] = {}
        values = proxies.score(_build(small_space, arch), batch, SUITE, seed=0, device="cpu", errors=errors)
        assert set(values) == set(SUITE) and not errors, errors
        if small_space.is_degenerate(arch):
            assert all(math.isnan(v) for v in values.values()), values  # ranks last: no value, no error
        else:
            assert all(math.isfinite(v) for v in values.values()), (arch, values)


def test_degenerate_cell_ranks_last(small_space, batch):
    from nas.objectives import Objective
    from nas.run import Candidate

    assert small_space.is_degenerate(DEGENERATE)
    errors: dict[str, str] = {}
    bad = proxies.score(_build(small_space, DEGENERATE), batch, SUITE, device="cpu", errors=errors)
    good = proxies.score(_build(small_space, ("nor_conv_3x3",) * 6), batch, SUITE, device="cpu", errors=errors)
    assert not errors, errors  # an expected outcome, not a failure
    for name in SUITE:
        assert math.isnan(bad[name]) and math.isfinite(good[name]), name
        for maximize in (True, False):  # last in either direction
            objective = Objective(name, maximize)
            assert objective.oriented(Candidate("bad", bad)) < objective.oriented(Candidate("good", good))


def test_same_seed_gives_identical_values_and_model_is_untouched(small_space, batch):
    model = _build(small_space, ("nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3",
                                 "nor_conv_3x3", "skip_connect"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = proxies.score(model, batch, SUITE, seed=3, device="cpu")
    b = proxies.score(model, batch, SUITE, seed=3, device="cpu")
    assert a == b
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shared_passes_give_the_values_of_single_proxies(small_space, batch):
    model = _build(small_space, ("nor_conv_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_3x3",
                                 "avg_pool_3x3", "nor_conv_1x1"))
    together = proxies.score(model, batch, SUITE, seed=1, device="cpu")
    for name in SUITE:
        alone = proxies.score(model, batch, [name], seed=1, device="cpu")[name]
        assert alone == pytest.approx(together[name], rel=1e-4, abs=1e-6), name


def test_az_trainability_reads_only_the_first_samples_and_expressivity_the_whole_batch(small_space):
    from proxies.aznas import TRAINABILITY_SAMPLES

    model = _build(small_space, ("nor_conv_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_3x3",
                                 "avg_pool_3x3", "nor_conv_1x1"))
    batch = proxies.calibration_batch(batch_size=TRAINABILITY_SAMPLES + 8, seed=0, input_shape=(3, 16, 16))
    tail, head = batch.inputs.clone(), batch.inputs.clone()
    tail[TRAINABILITY_SAMPLES:] = tail[TRAINABILITY_SAMPLES:].flip(-1)
    head[0] = head[0].flip(-1)
    names = ["az_trainability", "az_expressivity"]
    base = proxies.score(model, batch, names, seed=0, device="cpu")
    new_tail = proxies.score(model, proxies.Batch(tail, batch.targets), names, seed=0, device="cpu")
    new_head = proxies.score(model, proxies.Batch(head, batch.targets), names, seed=0, device="cpu")
    assert new_tail["az_trainability"] == base["az_trainability"]
    assert new_tail["az_expressivity"] != base["az_expressivity"]
    assert new_head["az_trainability"] != base["az_trainability"]
    # the same value whether or not the entropy pass runs in the same call
    assert proxies.score(model, batch, ["az_trainability"], seed=0, device="cpu") == {
        "az_trainability": base["az_trainability"]}


def test_meco_does_not_depend_on_how_many_feature_maps_are_held(small_space, batch, monkeypatch):
    from proxies import passes

    model = _build(small_space, ("nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3",
                                 "nor_conv_1x1", "nor_conv_3x3"))
    held = proxies.score(model, batch, ["meco"], device="cpu")["meco"]
    monkeypatch.setattr(passes, "MECO_PENDING", 1)  # reduce every map as soon as it is copied
    assert proxies.score(model, batch, ["meco"], device="cpu")["meco"] == pytest.approx(held, rel=1e-12)


def test_failing_proxy_gives_nan_and_its_error_and_never_raises(small_space):
    tiny = proxies.calibration_batch(batch_size=1, input_shape=(3, 16, 16))  # correlations need 2 samples
    model = _build(small_space, ("nor_conv_3x3",) * 6)
    errors: dict[str, str] = {}
    values = proxies.score(model, tiny, ["jacov", "params"], device="cpu", errors=errors)
    assert math.isnan(values["jacov"]) and values["params"] > 0
    assert list(errors) == ["jacov"] and errors["jacov"].split(":")[0].endswith("Error"), errors
    again = proxies.score(model, tiny, ["jacov", "params"], device="cpu")  # without errors: logged only
    assert math.isnan(again["jacov"]) and again["params"] == values["params"]


def test_raising_proxy_is_an_error_and_non_finite_value_is_not(small_space, batch, monkeypatch):
    def boom(ctx):
        raise ZeroDivisionError("boom")

    # registered for this test only (a global registration would show up in `--proxies all`)
    monkeypatch.setitem(proxies.registry._items, "test_boom", proxies.ProxySpec("test_boom", boom, "raises"))
    monkeypatch.setitem(proxies.registry._items, "test_inf",
                        proxies.ProxySpec("test_inf", lambda ctx: math.inf, "infinite"))
    errors: dict[str, str] = {}
    values = proxies.score(_build(small_space, ("nor_conv_3x3",) * 6), batch, ["test_boom", "test_inf", "params"],
                           device="cpu", errors=errors)
    assert math.isnan(values["test_boom"]) and math.isnan(values["test_inf"]) and values["params"] > 0
    assert errors == {"test_boom": "ZeroDivisionError: boom"}


def test_cache_never_stores_a_non_finite_value(tmp_path):
    cache = ProxyCache(tmp_path)
    key = dict(space="nb201", data="cifar10:abc", batch_size=8, seed=0)
    cache.put(arch="a", values={"snip@1": 2.5, "jacov@1": math.nan, "zen@1": -math.inf, "ntk@1": math.inf}, **key)
    assert len(cache) == 1
    assert cache.get(arch="a", proxies=["snip@1", "jacov@1", "zen@1", "ntk@1"], **key) == {"snip@1": 2.5}
    cache.put(arch="b", values={"jacov@1": math.nan}, **key)  # nothing to store
    assert len(cache) == 1


def test_cache_serves_an_old_failure_sentinel_as_missing(tmp_path):
    cache = ProxyCache(tmp_path)
    key = dict(space="nb201", data="cifar10:abc", batch_size=8, seed=0)
    cache.put(arch="a", values={"snip@1": -5.0}, **key)
    with cache._conn() as db:  # what versions before NaN failures wrote: a finite -1e30 "score"
        db.execute("INSERT INTO proxy_values VALUES (?, ?, ?, ?, ?, ?, ?)",
                   ("nb201", "a", "jacov@1", "cifar10:abc", 8, 0, -1e30))
    assert len(cache) == 2
    assert cache.get(arch="a", proxies=["snip@1", "jacov@1"], **key) == {"snip@1": -5.0}
    cache.put(arch="a", values={"jacov@1": -3.0}, **key)  # recomputed: the real value replaces it
    assert cache.get(arch="a", proxies=["jacov@1"], **key) == {"jacov@1": -3.0}


def test_evaluator_cache_hit_returns_identical_values(small_space, batch, tmp_path):
    cache = ProxyCache(tmp_path)
    names = ("synflow", "nwot", "snip", "params")
    arch = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_3x3~1|none~2|"
    first = Evaluator(small_space, names, batch, seed=0, cache=cache)(arch)
    assert len(cache) == len(names)
    second = Evaluator(small_space, names, batch, seed=0, cache=ProxyCache(tmp_path))(arch)
    assert first.status == second.status == "ok" and first.scores == second.scores
    fresh = Evaluator(small_space, names, batch, seed=0)(arch)  # seeded init: same values without a cache
    assert fresh.scores == first.scores
    other_seed = Evaluator(small_space, names, batch, seed=1, cache=cache)(arch)
    assert other_seed.scores != first.scores and len(cache) == 2 * len(names)


def test_nas_score_all_proxies(tmp_path):
    space = search_spaces.get("nb201")
    rng = np.random.default_rng(1)
    archs = [space.to_string(space.sample(rng)) for _ in range(2)]
    path = tmp_path / "archs.txt"
    path.write_text("\n".join(archs) + "\n")
    out = tmp_path / "s.csv"
    assert main(["score", "--arch-file", str(path), "--proxies", "all", "--batch-size", "4",
                 "--out", str(out), "--no-progress"]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()]
    expected = [n for n in proxies.list() if not n.startswith("ensemble") and n not in proxies.distill.TEACHER_PROXIES
                and not proxies.unavailable(space, [n])]  # e.g. the circuit proxies of the qcircuit space
    assert rows[0][1:] == expected and len(rows) == 3
    sequence_only = {"hidden_cov", "head_confidence", "head_importance", "synaptic_diversity",
                     "activation_distance", "embedding_jacov"}  # they need tagged layers: no value on cells
    for row in rows[1:]:
        values = dict(zip(rows[0][1:], map(float, row[1:]), strict=True))
        assert all(math.isfinite(v) for n, v in values.items() if n not in sequence_only), values
        assert all(math.isnan(values[n]) for n in sequence_only), values  # never a number


def test_benchmark_cli_prints_table_and_naslib_agreement(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    lines = (shared_data / "nb201_naslib_proxies.csv").read_text().splitlines()
    naslib = tmp_path / "naslib.csv"
    naslib.write_text("\n".join([lines[0], *[r for r in lines[1:] if ",cifar10," in r][:8]]) + "\n")
    argv = ["benchmark", "proxies", "--accuracy-table", str(shared_data / "nb201_accuracy.csv"), "--n", "6",
            "--proxies", "params,flops,nwot", "--naslib", str(naslib), "--naslib-proxies", "params",
            "--batch-size", "8", "--threads", "1", "--cache-dir", str(tmp_path), "--no-progress",
            "--values-csv", str(tmp_path / "v.csv")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Spearman" in out and "nwot" in out and "1.000" in out and "95% interval" in out
    assert len((tmp_path / "v.csv").read_text().splitlines()) == 7
    assert main([*argv, "--cached-only"]) == 0  # everything cached: recomputes nothing
    assert "nwot" in capsys.readouterr().out


def test_benchmark_reports_each_ensembles_gap_to_the_best_single_proxy():
    from nas import proxy_benchmark as pb
    from nas.cli.benchmark import _ensemble_gaps

    rng = np.random.default_rng(0)
    target = rng.normal(size=300)
    columns = {"params": target + rng.normal(size=300), "nwot": target + 2 * rng.normal(size=300),
               "ensemble": target + 0.2 * rng.normal(size=300), "ensemble_fit": np.full(300, np.nan)}
    rows = pb.rank_rows(columns, target)
    lines = _ensemble_gaps(columns, rows, target, resamples=200, seed=0)
    assert len(lines) == 1 and lines[0].startswith("ensemble - params (best single proxy): +")
    assert lines[0].endswith("above params")
    assert _ensemble_gaps(columns, rows, target, resamples=0, seed=0) == []


def test_calibration_batch_of_a_training_dataset_reads_its_train_split_only(tmp_path):
    """A `nas train` dataset (train/ and test/ class folders, or x_train/x_test arrays) calibrates on train."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 128, size=(20, 32, 32, 3), dtype=np.uint8)  # dark train images
    x_test = np.full((20, 32, 32, 3), 255, dtype=np.uint8)  # white test images: must never be read
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=y, x_test=x_test, y_test=y)
    from matplotlib import image as mpimg

    for split, images in (("train", x_train), ("test", x_test)):
        for i, (img, label) in enumerate(zip(images, y, strict=True)):
            folder = tmp_path / "d" / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            mpimg.imsave(folder / f"{i}.png", img)
    from proxies.data import _normalise

    darkest_test = _normalise(np.full((1, 3, 1, 1), 255, dtype=np.uint8)).min()
    for source in (tmp_path / "d.npz", tmp_path / "d"):
        batch = proxies.load_batch(str(source), batch_size=8, seed=0)
        assert batch.inputs.shape == (8, 3, 32, 32)
        assert sorted(batch.targets.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]  # four classes, not train/test
        assert batch.inputs.max() < darkest_test


def test_circuit_proxies_are_refused_on_image_spaces() -> None:
    space = search_spaces.get("nb201")
    with pytest.raises(ValueError, match="fidelity is not available on space nb201: it simulates a quantum circuit"):
        proxies.check_available(space, ["synflow", "fidelity"])
