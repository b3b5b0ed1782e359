"""Engine speed-ups must not move a single bit: cached proxy values stay valid across them."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import proxies
import search_spaces
from proxies import aznas, jacobian, passes
from proxies.fastops import fast_cpu_ops, stock_ops

SHAPES = [(2, 3, 7, 9), (4, 16, 32, 32), (3, 8, 8, 8), (2, 5, 16, 16), (2, 3, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("k", "p"), [(3, 1), (3, 0), (5, 2), (2, 1), (2, 0)])
def test_fast_avg_pool_is_bit_identical_to_stock_kernel(shape, dtype, k, p):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=dtype).mul_(7).requires_grad_(True)
    if min(shape[-2:]) + 2 * p < k:
        pytest.skip("empty output")

    def run(fast: bool) -> list[torch.Tensor]:
        with fast_cpu_ops(fast):
            y = F.avg_pool2d(x, k, stride=1, padding=p, count_include_pad=False)
            w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
            (g,) = torch.autograd.grad((y * y * w).sum(), x, create_graph=True)
            (h,) = torch.autograd.grad((g * g).sum(), x)  # double backward goes through the pooling again
        return [y, g, h]

    for stock, fast in zip(run(False), run(True), strict=True):
        assert torch.equal(stock, fast)


def test_fast_avg_pool_under_vmap_and_batched_grads():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def run(fast: bool) -> list[torch.Tensor]:
        with fast_cpu_ops(fast):
            out = net(x).sum(1)
            grads = torch.autograd.grad(out, list(net.parameters()), torch.eye(5), is_grads_batched=True)
            pooled = torch.func.vmap(lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=False))(x[:, None])
        return [*grads, pooled]

    for stock, fast in zip(run(False), run(True), strict=True):
        assert torch.equal(stock, fast)


def test_only_covered_pooling_calls_are_rerouted():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with fast_cpu_ops():
        assert type(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False).grad_fn).__name__ == "_ExactAvgPoolBackward"
        for call in (lambda: F.avg_pool2d(x, 2), lambda: F.avg_pool2d(x, 3, 1, 1),  # stride 2 / pads counted
                     lambda: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False, ceil_mode=True),
                     lambda: F.avg_pool2d(x.double(), 3, 1, 1, count_include_pad=False, divisor_override=2)):
            assert type(call().grad_fn).__name__ == "AvgPool2DBackward0"
        with pytest.raises(RuntimeError, match="pad"):
            F.avg_pool2d(x, 3, 1, 2, count_include_pad=False)  # torch's own error message


def test_looped_ntk_rows_equal_batched_rows():
    space = search_spaces.get("nb201", channels=4, cells_per_stage=1, input_shape=(3, 8, 8))
    torch.manual_seed(0)
    model = space.build(("avg_pool_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3",
                         "nor_conv_3x3")).train()
    x = proxies.calibration_batch(6, 0, input_shape=(3, 8, 8)).inputs
    weights = [p for n, p in model.named_parameters() if "weight" in n]
    with fast_cpu_ops():
        out = model(x).sum(1)
        batched = jacobian._batched_rows(out, weights)
        looped = jacobian._looped_rows(out, weights)
    assert batched is not None and torch.equal(batched, looped)


def _old_kaiming(module: nn.Module) -> None:
    """The copy-and-initialise AZ-NAS init the functional one replaced."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def test_az_functional_init_draws_what_a_deep_copy_would():
    space = search_spaces.get("nb201", channels=4, cells_per_stage=1, input_shape=(3, 8, 8))
    torch.manual_seed(0)
    model = space.build(("nor_conv_3x3",) * 6)
    torch.manual_seed(7)
    net = copy.deepcopy(model)
    net.apply(_old_kaiming)
    torch.manual_seed(7)
    state = aznas._kaiming_fan_in(model)
    expected = dict(net.named_parameters()) | dict(net.named_buffers())
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in state)
    # The Jacobians are taken w.r.t. block features with the graph rooted at the input: no weight needs grad.
    assert not any(state[k].requires_grad for k in state)


def _plain_relu_kernel(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """NASWOT's kernel the textbook way: a hook on every ReLU adds C C^T + (1-C)(1-C)^T in float64."""
    n = x.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal kernel
        c = (inp[0].reshape(n, -1) > 0).double()
        kernel = kernel + c @ c.T + (1 - c) @ (1 - c).T

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    model.train()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return kernel


def _small_nb201() -> tuple[nn.Module, proxies.Batch]:
    space = search_spaces.get("nb201", channels=4, cells_per_stage=1, input_shape=(3, 8, 8))
    torch.manual_seed(0)
    # Three convolutions read node 0: their ReLUs see one tensor, whose terms the hook computes once.
    model = space.build(("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "nor_conv_3x3", "skip_connect",
                         "nor_conv_3x3"))
    return model, proxies.calibration_batch(10, 0, input_shape=(3, 8, 8))


def test_shared_forward_relu_kernel_equals_the_plain_kernel_bit_for_bit():
    model, batch = _small_nb201()
    expected = _plain_relu_kernel(model, batch.inputs)
    # With swap's codes the forward stays NCHW (see passes.CHANNELS_LAST_NEEDS): the same bits.
    ctx = proxies.Context(model, batch, frozenset({"relu_kernel", "relu_neuron_codes"}), 0)
    assert torch.equal(ctx.get("forward").relu_kernel, expected)
    with torch.inference_mode():  # inference tensors carry no version counter: the hook then recomputes
        ctx = proxies.Context(model, batch, frozenset({"relu_kernel", "relu_neuron_codes"}), 0)
        assert torch.equal(ctx.get("forward").relu_kernel, expected)


def test_nwot_alone_runs_channels_last_within_its_tolerance():
    model, batch = _small_nb201()
    alone = proxies.score(model, batch, ["nwot"], device="cpu")["nwot"]
    shared = proxies.score(model, batch, ["nwot", "swap"], device="cpu")["nwot"]
    assert alone == pytest.approx(shared, rel=1e-6)


def test_code_gram_is_exact():
    gen = torch.Generator().manual_seed(0)
    for shape in [(64, 16, 8, 8), (5, 7)]:
        x = torch.randn(shape, generator=gen)
        flat = x.reshape(shape[0], -1)
        c = (flat > 0).double()
        assert torch.equal(passes._code_gram(flat), c @ c.T)


def test_stock_ops_leaves_the_fast_path_for_the_block_only():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with fast_cpu_ops():
        with stock_ops():
            assert type(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False).grad_fn).__name__ == "AvgPool2DBackward0"
        assert type(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False).grad_fn).__name__ == "_ExactAvgPoolBackward"
    with stock_ops():  # no fast mode active: nothing to leave
        F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def test_float32_synflow_pass_is_within_its_documented_tolerance_of_float64():
    space = search_spaces.get("nb201", channels=8, cells_per_stage=2, input_shape=(3, 16, 16))
    batch = proxies.calibration_batch(4, 0, input_shape=(3, 16, 16))
    for seed in range(3):
        torch.manual_seed(seed)
        model = space.build(("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_1x1",
                             "nor_conv_3x3")).eval()
        ctx = proxies.Context(model, batch, frozenset({"synflow"}), 0)
        pairs = {d: passes._synflow_pass(ctx, d) for d in (torch.float32, torch.float64)}
        for f, d in ((lambda w, g: (w * g).sum(), "synflow"), (lambda w, g: (w * torch.log1p(g)).sum(), "log")):
            lo = sum(float(f(w.double(), g.double())) for w, g in pairs[torch.float32])
            hi = sum(float(f(w, g)) for w, g in pairs[torch.float64])
            assert lo == pytest.approx(hi, rel=passes.SYNFLOW_FLOAT32_RTOL), d


def test_synflow_falls_back_to_float64_when_float32_overflows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), *[nn.Linear(8, 8) for _ in range(6)])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.fill_(1e8)  # six layers of 8 * 1e8 reach 1e53: beyond float32, fine in float64
    batch = proxies.Batch(torch.ones(2, 2, 2, 2), torch.zeros(2, dtype=torch.long))
    ctx = proxies.Context(model, batch, frozenset({"synflow"}), 0)
    assert not all(bool(torch.isfinite(g).all()) for _, g in passes._synflow_pass(ctx, torch.float32))
    pairs = ctx.get("synflow")
    assert all(bool(torch.isfinite(g).all()) and g.dtype == torch.float64 for _, g in pairs)
    expected = sum(float((w * g).sum()) for w, g in passes._synflow_pass(ctx, torch.float64))
    assert sum(float((w * g).sum()) for w, g in pairs) == expected
