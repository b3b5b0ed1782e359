"""ProxylessNAS (nas.strategies.proxyless) and the block latency tables (hardware_models.block_latency).

Tiny settings: fbnet at 16x16 inputs, ofa at resolution 32, 64 random 16x16 images in 10 classes (an .npz).
Checked: one-hot expected latency equals ``target.predict``; binary gates carry the CE gradient to the
logits; the weight pass runs only the sampled path; the latency loss alone drives every decision to cheap
options; a heavier latency weight never gives a slower answer; an interrupted and resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hardware_models
import search_spaces
from hardware_models.block_latency import table_for
from nas.strategies.proxyless import ProxylessNAS, SearchModel, latency_loss, two_path_grad

FBNET = search_spaces.get("fbnet", num_classes=10, input_shape=(3, 16, 16))
OFA = search_spaces.get("ofa", num_classes=10, resolutions=(32,))
NESTED = search_spaces.get("fbnet", num_classes=10, input_shape=(3, 16, 16), weight_sharing="nested")
TINY = {"train_size": 64, "batch_size": 16, "epochs": 2}


@pytest.fixture(scope="module")
def data(images_npz) -> str:
    return images_npz(np.arange(64) % 10)


@pytest.mark.parametrize("space", [FBNET, OFA, NESTED], ids=["fbnet", "ofa", "fbnet-nested"])
@pytest.mark.parametrize("target", ["rpi4", "2080ti_1"])
def test_one_hot_expected_latency_equals_predict(space, target):
    t = hardware_models.get(target)
    table = table_for(t, space)
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(4)]
    pred = t.predict(space, archs)
    mine = np.array([table.arch_ms(space, a) for a in archs])
    assert np.max(np.abs(mine / pred - 1)) <= 0.02


def test_expected_latency_mixes_depths_and_ops():
    """A 50/50 mixture of two archs that differ in one block costs the mean of the two (linearity)."""
    table = table_for(hardware_models.get("rpi4"), OFA)
    a = OFA.smallest(32)
    b = search_spaces.ofa.OFAArch(a.ks, a.e, (3, 2, 2, 2, 2), 32)
    pa, da = table.one_hot(OFA, a)
    pb, db = table.one_hot(OFA, b)
    mixed = table.expected_ms(pa, [(x + y) / 2 for x, y in zip(da, db, strict=True)])
    assert float(mixed) == pytest.approx((table.arch_ms(OFA, a) + table.arch_ms(OFA, b)) / 2, rel=1e-9)


@pytest.mark.parametrize("space", [FBNET, OFA], ids=["fbnet", "ofa"])
def test_binary_gates_carry_gradients_to_the_logits(space):
    torch.manual_seed(0)
    model = SearchModel(space, None)
    gen = torch.Generator().manual_seed(0)
    strat = ProxylessNAS.__new__(ProxylessNAS)  # only its pair sampler is used here
    pairs, depth_pairs = strat._draw_pairs(model.alpha, gen), strat._draw_pairs(model.beta, gen)
    side = 32 if space is OFA else 16
    x = torch.randn(4, 3, side, side, generator=gen)
    logits, gates = model.gated_forward(x, pairs, depth_pairs)
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    grads = torch.autograd.grad(loss, gates, allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0  # the first position is always on the path
    g = two_path_grad(model.alpha[0], pairs[0][:2], grads[0])
    assert g.abs().sum() > 0
    assert torch.count_nonzero(g) <= 2  # only the two sampled options move
    # The gated forward's value is the active path's.
    active = model.arch([act for _, _, act in pairs], [act for _, _, act in depth_pairs])
    with torch.no_grad():
        assert torch.allclose(logits, model(x, active), atol=1e-5)


def test_weight_pass_runs_only_the_sampled_path(data):
    s = ProxylessNAS(FBNET, target="rpi4", data=data, **TINY)
    s._setup()
    model = s._model
    calls: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(model.supernet.layers):
        for j, op in enumerate(layer):
            op.register_forward_hook(lambda *_, key=(i, j): calls.__setitem__(key, calls.get(key, 0) + 1))
    gen = torch.Generator().manual_seed(3)
    path = model.sample(torch.Generator().manual_seed(3))
    x, y = s._halves[0]
    from nas.datasets import normalise

    s._weight_step((normalise(x[:16]), y[:16]), 0, gen)
    ran = sorted(calls)
    assert ran == [(i, FBNET.to_choices(path)[i]) for i in range(len(path))]
    for i, layer in enumerate(model.supernet.layers):
        for j, op in enumerate(layer):
            if (i, j) not in calls:
                assert all(p.grad is None for p in op.parameters())


def test_latency_loss_forms():
    ce, e = torch.tensor(2.0), torch.tensor(40.0, dtype=torch.float64)
    assert float(latency_loss(ce, e, 20.0, 0.5, "add")) == pytest.approx(2.0 + 0.5 * 2)
    assert float(latency_loss(ce, e, 20.0, 0.5, "mul")) == pytest.approx(2.0 * (np.log(40) / np.log(20)) ** 0.5)
    with pytest.raises(ValueError, match="add, mul"):
        latency_loss(ce, e, 20.0, 0.5, "pow")


@pytest.mark.parametrize("space", [FBNET, OFA], ids=["fbnet", "ofa"])
def test_latency_loss_alone_collapses_to_fast_ops(space):
    table = table_for(hardware_models.get("rpi4"), space)
    model = SearchModel(space, None)
    opt = torch.optim.Adam(model.arch_parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        probs, depths = model.probs()
        table.expected_ms(probs, depths or None).backward()
        opt.step()
    derived = table.arch_ms(space, model.derived())
    rng = np.random.default_rng(0)
    assert derived <= min(table.arch_ms(space, space.sample(rng)) for _ in range(200))
    if space is OFA:
        assert model.derived().d == (2,) * 5


def test_heavier_latency_weight_is_not_slower(data):
    ms = []
    for w in (0.0, 5.0):
        s = ProxylessNAS(FBNET, target="rpi4", latency_weight=w, data=data, arch_lr=0.05, **TINY)
        s.ask(2)
        ms.append(s.history[-1]["latency_ms"])
    assert ms[1] <= ms[0]


def test_resume_equals_uninterrupted(data, tmp_path):
    opts = {"target": "rpi4", "latency_weight": 0.5, "data": data, **TINY}
    full = ProxylessNAS(OFA, storage=tmp_path / "a" / "optuna.journal", **opts)
    (tmp_path / "a").mkdir()
    full.ask(2)
    (tmp_path / "b").mkdir()
    first = ProxylessNAS(OFA, storage=tmp_path / "b" / "optuna.journal", **opts)
    first.ask(1)
    resumed = ProxylessNAS(OFA, storage=tmp_path / "b" / "optuna.journal", **opts)
    resumed.ask(2)  # epoch 1 from the checkpoint, epoch 2 trained live
    assert [r["arch"] for r in resumed.history] == [r["arch"] for r in full.history]
    assert resumed.history[-1]["alpha"] == full.history[-1]["alpha"]
    assert resumed.history[-1]["beta"] == full.history[-1]["beta"]
    a, b = full._model.state_dict(), resumed._model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b" / "alpha.csv").read_text() == (tmp_path / "a" / "alpha.csv").read_text()
    assert resumed.final == OFA.from_string(full.history[-1]["arch"])


def test_bad_options_name_valid_values(data):
    with pytest.raises(ValueError, match="fbnet and ofa"):
        ProxylessNAS(search_spaces.get("nb201"), target="rpi4", data=data)
    with pytest.raises(ValueError, match="add, mul"):
        ProxylessNAS(FBNET, target="rpi4", latency_loss="exp", data=data)
    with pytest.raises(ValueError, match="--target"):
        ProxylessNAS(FBNET, data=data)
    with pytest.raises(ValueError, match="resolution 64 is not one of the space's: 32"):
        ProxylessNAS(OFA, target="rpi4", resolution=64, data=data)
    with pytest.raises(ValueError, match="weight_sharing=nested"):
        ProxylessNAS(search_spaces.get("fbnet", weight_sharing="nested"), target="rpi4", data=data)
    with pytest.raises(ValueError, match="valid:.*latency_weight"):
        ProxylessNAS(FBNET, target="rpi4", data=data, lambda_=1)
