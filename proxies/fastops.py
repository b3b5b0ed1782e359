"""Bit-exact faster CPU kernels for ops whose stock CPU kernel dominates proxy passes.

PyTorch's CPU ``avg_pool2d`` (and its backward) for NCHW tensors is a scalar loop: on NAS-Bench-201
cells a 3x3 stride-1 pooling costs about twice a 3x3 convolution of the same map, and on cells with
pooling edges it took up to a third of the whole proxy suite's CPU time. :func:`fast_cpu_ops` reroutes stride-1
``count_include_pad=False`` average pooling to vectorised code that adds the same numbers in the same
order as the stock kernel (forward: window positions row by row; backward: contributions in row-major
output order) and divides by the same integer counts, so results are bit-identical: proxy values, and
their cache keys, do not change. Large maps use shifted-window sums; small ones the stock
channels-last kernel. Double backward (GraSP) and ``vmap`` go through the same exact pair.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack, _pop_mode_temporarily

SMALL_MAP = 256
"""Below this many pixels the stock channels-last kernel (vectorised over channels, the same sums in the
same order) beats the shifted-window sums, whose rows are then too short."""
_CL = torch.channels_last
_COUNTS: dict[tuple[int, int, int, int, torch.dtype], torch.Tensor] = {}


def _window_sum(padded: torch.Tensor, k: int, out_h: int, out_w: int) -> torch.Tensor:
    """Sum of the k x k shifted views of ``padded``, added in row-major window order."""
    total = None
    for a in range(k):
        for b in range(k):
            part = padded[..., a:a + out_h, b:b + out_w]
            # 0 + x == x exactly, so starting from the first view equals the kernel's zero start.
            total = part.clone(memory_format=torch.contiguous_format) if total is None else total.add_(part)
    assert total is not None
    return total


def _counts(h: int, w: int, k: int, p: int, dtype: torch.dtype) -> torch.Tensor:
    """Number of non-padding inputs in each window (count_include_pad=False divisors)."""
    key = (h, w, k, p, dtype)
    if key not in _COUNTS:
        ones = F.pad(torch.ones(h, w, dtype=dtype), (p, p, p, p))
        _COUNTS[key] = _window_sum(ones, k, h + 2 * p - k + 1, w + 2 * p - k + 1)
    return _COUNTS[key]


def avg_pool_stride1(x: torch.Tensor, k: int, p: int) -> torch.Tensor:
    """``F.avg_pool2d(x, k, 1, p, count_include_pad=False)`` without autograd, bit-identical on CPU."""
    h, w = x.shape[-2:]
    if h * w < SMALL_MAP:
        try:
            return F.avg_pool2d(x.contiguous(memory_format=_CL), k, 1, p, False, False).contiguous()
        except RuntimeError:  # under vmap memory formats cannot be queried: the shifted sums work there
            pass
    return _window_sum(F.pad(x, (p, p, p, p)), k, h + 2 * p - k + 1, w + 2 * p - k + 1).div_(
        _counts(h, w, k, p, x.dtype))


def avg_pool_stride1_backward(grad: torch.Tensor, k: int, p: int, h: int, w: int) -> torch.Tensor:
    """The stock ``avg_pool2d_backward`` for the pooling above, bit-identical on CPU."""
    if h * w < SMALL_MAP:
        try:
            g = grad.contiguous(memory_format=_CL)
            like = torch.empty((*g.shape[:2], h, w), dtype=g.dtype, device=g.device, memory_format=_CL)
            return torch.ops.aten.avg_pool2d_backward(g, like, [k, k], [1, 1], [p, p], False, False, None).contiguous()
        except RuntimeError:
            pass
    q = k - 1 - p  # input (i, j) gathers outputs i-q .. i-q+k-1, in increasing order
    return _window_sum(F.pad(grad / _counts(h, w, k, p, grad.dtype), (q, q, q, q)), k, h, w)


class _ExactAvgPool(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, k: int, p: int) -> torch.Tensor:  # noqa: D102
        return avg_pool_stride1(x, k, p)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:  # noqa: D102
        x, ctx.k, ctx.p = inputs
        ctx.hw = tuple(x.shape[-2:])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: D102
        return _ExactAvgPoolGrad.apply(grad, ctx.k, ctx.p, *ctx.hw), None, None


class _ExactAvgPoolGrad(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(grad: torch.Tensor, k: int, p: int, h: int, w: int) -> torch.Tensor:  # noqa: D102
        return avg_pool_stride1_backward(grad, k, p, h, w)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:  # noqa: D102
        ctx.k, ctx.p = inputs[1], inputs[2]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:  # noqa: D102
        # avg_pool2d_backward is linear in its gradient input; its derivative is the pooling itself.
        return _ExactAvgPool.apply(grad, ctx.k, ctx.p), None, None, None, None


def _square(v: Any) -> int | None:
    """An int from an int or a pair of equal ints, else None."""
    if isinstance(v, int):
        return v
    if isinstance(v, (tuple, list)) and len(v) == 2 and v[0] == v[1] and isinstance(v[0], int):
        return v[0]
    return None


def _pool_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, int, int] | None:
    """(x, k, p) when an ``avg_pool2d`` call is one the exact fast path covers, else None."""
    names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    call = dict(zip(names, args, strict=False)) | kwargs
    x = call.get("input")
    if not (torch.is_tensor(x) and x.device.type == "cpu" and x.dim() == 4
            and x.dtype in (torch.float32, torch.float64)):
        return None
    try:
        if not x.is_contiguous():
            return None
    except RuntimeError:  # a vmapped tensor cannot say: leave it to the stock kernel
        return None
    k, p = _square(call.get("kernel_size")), _square(call.get("padding", 0))
    stride = call.get("stride")
    if k is None or p is None or _square(stride if stride not in (None, []) else k) != 1 or p > k // 2:
        return None
    if min(x.shape[-2:]) + 2 * p < k:
        return None  # an empty output: the stock kernel raises its own error
    if call.get("ceil_mode", False) or call.get("count_include_pad", True) or call.get("divisor_override"):
        return None
    return x, k, p


class _FastOps(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.avg_pool2d:
            pool = _pool_args(args, kwargs)
            if pool is not None:
                return _ExactAvgPool.apply(*pool)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fast_cpu_ops(enabled: bool = True) -> Iterator[None]:
    """Within the block, stride-1 ``count_include_pad=False`` average pooling on CPU uses the exact
    fast kernels above (forward, backward and double backward)."""
    if not enabled:
        yield
        return
    with _FastOps():
        yield


@contextlib.contextmanager
def stock_ops() -> Iterator[None]:
    """Within the block, the stock kernels again: for a pass over one or two samples (SynFlow, the
    degeneracy check) the fast path's shifted-window sums and the mode's Python dispatch on every torch
    call cost more than they save. Results are the same bits either way."""
    stack = _get_current_function_mode_stack()
    if not stack or not isinstance(stack[-1], _FastOps):
        yield
        return
    with _pop_mode_temporarily():
        yield
