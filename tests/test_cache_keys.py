"""Proxy-cache keys: runs that differ in anything a value depends on never read each other's entries.

Each test scores one architecture under a setting A into an empty cache, then under a setting B that
differs in one input (the images, the labels, the batch size, the seed, a space option) and checks that
B's values were computed, not served from A's entries: the cache holds one entry per proxy and setting
(an evaluator stores only values it had to compute), and the values that depend on the changed input
differ. A cache hit under the same setting is checked too, so that a cache that never hits cannot pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

import proxies
import search_spaces
from nas.evaluate import Evaluator, space_key
from proxies import ProxyCache

SMALL = {"channels": 4, "cells_per_stage": 1, "input_shape": (3, 8, 8)}
ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|nor_conv_3x3~1|skip_connect~2|"
PROXIES = ("snip", "synflow", "nwot")
"""snip reads images, labels and weights; nwot images and weights; synflow only the weights and shape."""


def small_space(**options) -> search_spaces.SearchSpace:
    return search_spaces.get("nb201", **{**SMALL, **options})


def batch(n: int = 8, seed: int = 0, shape: tuple[int, int, int] = (3, 8, 8)) -> proxies.Batch:
    return proxies.calibration_batch(n, seed=seed, input_shape=shape)


def evaluate(cache: ProxyCache, space=None, data: proxies.Batch | None = None, seed: int = 0,
             names: tuple[str, ...] = PROXIES) -> dict[str, float]:
    """Scores of ARCH through an evaluator on ``cache``; the candidate must have succeeded."""
    data = data if data is not None else batch()
    ev = Evaluator(space or small_space(), names, data, seed=seed, cache=cache)
    cand = ev(ARCH)
    assert cand.status == "ok", cand.error
    return cand.scores


def assert_separate(cache: ProxyCache, a: dict[str, float], b: dict[str, float],
                    differ: tuple[str, ...]) -> None:
    assert len(cache) == 2 * len(PROXIES), "the second setting read (or overwrote) the first one's entries"
    for name in differ:
        assert not math.isclose(a[name], b[name], rel_tol=1e-3), f"{name}: {a[name]} under both settings"


def test_same_setting_is_served_from_the_cache(tmp_path):
    cache = ProxyCache(tmp_path)
    first = evaluate(cache)
    assert len(cache) == len(PROXIES)
    ev = Evaluator(small_space(), PROXIES, batch(), seed=0, cache=cache)
    assert ev.cached_scores(ARCH, SMALL["input_shape"]) == first
    assert evaluate(cache) == first and len(cache) == len(PROXIES)


def test_different_images_never_share_entries(tmp_path):
    cache = ProxyCache(tmp_path)
    a, b = evaluate(cache, data=batch(seed=0)), evaluate(cache, data=batch(seed=1))
    assert not torch.equal(batch(seed=0).inputs, batch(seed=1).inputs)
    assert_separate(cache, a, b, differ=("snip", "nwot"))
    assert a["synflow"] == pytest.approx(b["synflow"], rel=1e-6)  # data-free: same value, own entry


def test_different_labels_never_share_entries(tmp_path):
    cache = ProxyCache(tmp_path)
    data = batch()
    relabelled = proxies.Batch(data.inputs, (data.targets + 1) % 10, data.name)
    a, b = evaluate(cache, data=data), evaluate(cache, data=relabelled)
    assert_separate(cache, a, b, differ=("snip",))


def test_different_batch_sizes_never_share_entries(tmp_path):
    cache = ProxyCache(tmp_path)
    a, b = evaluate(cache, data=batch(8)), evaluate(cache, data=batch(16))
    assert_separate(cache, a, b, differ=("snip", "nwot"))


def test_a_batch_and_its_first_half_never_share_entries(tmp_path):
    cache = ProxyCache(tmp_path)
    full = batch(16)
    half = proxies.Batch(full.inputs[:8], full.targets[:8], full.name)
    a, b = evaluate(cache, data=full), evaluate(cache, data=half)
    assert_separate(cache, a, b, differ=("snip", "nwot"))


def test_different_seeds_never_share_entries(tmp_path):
    cache = ProxyCache(tmp_path)
    a, b = evaluate(cache, seed=0), evaluate(cache, seed=1)
    assert_separate(cache, a, b, differ=PROXIES)  # another initialisation changes every value


def test_default_space_and_narrower_space_never_share_entries(tmp_path):
    cache = ProxyCache(tmp_path)
    data = batch(8, shape=(3, 32, 32))
    default, narrow = search_spaces.get("nb201"), search_spaces.get("nb201", channels=8)
    assert space_key(default) != space_key(narrow)
    a, b = evaluate(cache, space=default, data=data), evaluate(cache, space=narrow, data=data)
    assert_separate(cache, a, b, differ=PROXIES)


@pytest.mark.parametrize("options", [{"channels": 8}, {"cells_per_stage": 2}, {"num_classes": 100},
                                     {"input_shape": (3, 16, 16)}])
def test_space_options_never_share_entries(tmp_path, options):
    cache = ProxyCache(tmp_path)
    a = evaluate(cache)
    b = evaluate(cache, space=small_space(**options))
    assert space_key(small_space()) != space_key(small_space(**options))
    assert_separate(cache, a, b, differ=("snip", "synflow"))


@pytest.mark.parametrize(("name", "options"), [
    ("nb201", {"channels": 8}), ("nb201", {"cells_per_stage": 1}), ("nb201", {"num_classes": 100}),
    ("nb201", {"input_shape": (3, 16, 16)}), ("nb101", {"channels": 16}), ("nb101", {"num_stacks": 2}),
    ("darts", {"layers": 5}), ("darts", {"channels": 16}), ("ofa", {"width_mult": 1.2}),
    ("ofa", {"proxy_scale": 0.5}), ("fbnet", {"num_classes": 10}), ("vit", {"patch_size": 8}),
    ("gpt", {"seq_len": 16}), ("rnn", {"hidden_size": 200}), ("bert", {"seq_len": 16}),
])
def test_space_key_names_every_option_that_changes_the_networks(name, options):
    assert space_key(search_spaces.get(name)) != space_key(search_spaces.get(name, **options))


def test_space_options_that_build_the_same_networks_share_the_key():
    # The oracle's dataset and accuracy table change no network: cached values stay valid across them.
    assert space_key(search_spaces.get("nb201")) == space_key(search_spaces.get("nb201", dataset="cifar100"))


def test_failed_proxies_are_never_cached(tmp_path):
    """One-channel images for a three-channel space: every data-reading proxy fails."""
    cache = ProxyCache(tmp_path)
    gray = proxies.Batch(batch().inputs[:, :1], batch().targets, "gray")
    ev = Evaluator(small_space(), PROXIES, gray, seed=0, cache=cache)
    cand = ev(ARCH)
    assert cand.status == "failed" or not all(math.isfinite(v) for v in cand.scores.values())
    cached = ev.cached_scores(ARCH, SMALL["input_shape"])
    assert not cached, f"failed values were cached: {cached}"
    assert len(cache) == 0


def test_non_finite_values_are_never_cached(tmp_path):
    """A cell with no path from input to output scores NaN (ranks last) without failing: not a value to
    serve later, so nothing is stored; and ProxyCache itself refuses non-finite values."""
    cache = ProxyCache(tmp_path)
    dead = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    space = small_space()
    assert space.is_degenerate(space.from_string(dead))
    cand = Evaluator(space, PROXIES, batch(), seed=0, cache=cache)(dead)
    real = {k: v for k, v in cand.scores.items() if math.isfinite(v) and v > -1e29}
    assert not real, cand.scores
    assert len(cache) == 0

    key = {"space": "s", "arch": "a", "data": "d", "batch_size": 8, "seed": 0}
    values = {"nan@1": math.nan, "inf@1": math.inf, "ninf@1": -math.inf, "ok@1": 1.5}
    cache.put(values=values, **key)
    assert cache.get(proxies=["nan@1", "inf@1", "ninf@1", "ok@1"], **key) == {"ok@1": 1.5}
    assert len(cache) == 1


def test_cache_values_round_trip_exactly(tmp_path):
    cache = ProxyCache(tmp_path)
    key = {"space": "s", "arch": "a", "data": "d", "batch_size": 8, "seed": 0}
    values = {f"p{i}@1": float(v) for i, v in enumerate(np.random.default_rng(0).normal(size=5) * 1e3)}
    cache.put(values=values, **key)
    assert cache.get(proxies=list(values), **key) == values


def run_threads(work: Callable[[int], None], n: int) -> list[BaseException]:
    """Run ``work(i)`` for ``i < n`` in ``n`` threads at once (released together); their exceptions."""
    import threading

    start, errors = threading.Barrier(n), []

    def guarded(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_one_cache_serves_several_threads(tmp_path):
    cache = ProxyCache(tmp_path)
    key = {"space": "s", "data": "d", "batch_size": 1, "seed": 0}

    def work(i: int) -> None:
        for k in range(20):
            cache.put(arch=f"a{i}-{k}", values={"p@1": float(k)}, **key)
            assert cache.get(arch=f"a{i}-{k}", proxies=["p@1"], **key) == {"p@1": float(k)}

    assert not run_threads(work, 3) and len(cache) == 60


def test_a_fully_cached_candidate_builds_no_network(tmp_path, monkeypatch):
    import nas.evaluate

    cache = ProxyCache(tmp_path)
    ev = Evaluator(small_space(), ("synflow", "params"), batch(), seed=0, cache=cache)
    full = ev(ARCH)
    builds = []
    real = nas.evaluate.build_seeded
    monkeypatch.setattr(nas.evaluate, "build_seeded", lambda *a, **k: builds.append(a) or real(*a, **k))
    # params was cached by the first evaluator: asking for synflow alone still reads the metric from there
    again = Evaluator(small_space(), ("synflow",), batch(), seed=0, cache=cache)(ARCH)
    assert again.status == "ok" and not builds
    assert again.scores["synflow"] == full.scores["synflow"]
    assert again.metrics["params"] == full.metrics["params"]


def test_threads_opening_a_fresh_cache_together_never_see_it_locked(tmp_path):
    # switching a new file to WAL used to fail at once with "database is locked" in about 1 of 150 runs
    for n in range(60):
        cache = ProxyCache(tmp_path / str(n))
        errors = run_threads(lambda i, cache=cache: cache.put(arch=f"a{i}", values={"p@1": 1.0}, space="s",
                                                                data="d", batch_size=1, seed=0), 6)
        assert not errors, errors
