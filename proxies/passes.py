"""Shared artefacts: each pass over the network runs once per ``score`` call and serves every proxy.

* ``degenerate``: a 2-sample train-mode forward; True when the output does not depend on the input.
* ``forward``: one train-mode forward of the batch (BatchNorm uses batch statistics, as NASLib and
  the papers do), with every hook the requested proxies need registered once; it keeps an autograd
  graph only when a gradient artefact is needed, else it runs under ``torch.no_grad``.
* ``input_jacobian``: d(sum of logits)/d(input) per sample, a backward on the shared graph.
* ``ce_grads``: one cross-entropy backward on the shared graph giving the weight gradients of every
  convolution / linear layer, optionally the gradients of their outputs (``layer_outputs``), two
  half-batch gradients (``half_grads``) and the Hessian-gradient product (``hvp``).
* ``synflow``: SynFlow's own pass (all-ones input, |weights|, float32; float64 when that overflows).
* ``layer_macs``: multiply-accumulates of convolution / linear layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from proxies.engine import FORWARD_USERS, Context, artefact
from proxies.fastops import stock_ops

WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
RELUS = (nn.ReLU, nn.ReLU6)
PIXEL_REGION_SAMPLES = 8
"""Samples whose pixels are used by ``relu_pixel_regions`` (enough points, bounded cost)."""
CHANNELS_LAST_NEEDS = frozenset({"forward", "relu_kernel", "layer_macs", "feature_min_eig"})
"""Needs whose forward runs on a channels-last input on CPU (oneDNN convolutions and channels-last
BatchNorm/pooling: about 1.9x faster on NB201 cells at batch 64). It is not bit-identical to NCHW: a few
activations within float32 rounding of 0 flip their ReLU code, which moves NASWOT by at most 2e-7
relative, and MeCo's eigenvalues move at float rounding level (measured on NB201 cells;
``check_proxy_values.py`` allows 1e-5). Counts (swap, linear_regions), which one flip can move by a
whole unit, and every gradient pass stay NCHW and bit-identical."""
RELU_INPUTS_KEPT = 8
"""ReLU inputs remembered to reuse their terms (a cell's nodes and the previous cell's output)."""


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Convolution and linear layers with a trainable weight, in module order."""
    return [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS) and m.weight.requires_grad]


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Rows of a (N, L) boolean matrix as (N, ceil(L/63)) int64 keys; equal rows <=> equal keys.

    Bits are summed in 21-bit groups by a float32 matmul (exact: sums stay below 2**24), three groups
    per int64 key."""
    n = bits.shape[0]
    cols = []
    for start in range(0, bits.shape[1], 63):
        key = torch.zeros(n, dtype=torch.long, device=bits.device)
        for sub in range(start, min(start + 63, bits.shape[1]), 21):
            part = bits[:, sub:min(sub + 21, start + 63, bits.shape[1])].float()
            powers = torch.pow(2.0, torch.arange(part.shape[1], dtype=torch.float32, device=bits.device))
            key |= (part @ powers).long() << (sub - start)
        cols.append(key)
    return torch.stack(cols, 1)


def unique_rows(keys: torch.Tensor) -> torch.Tensor:
    """Distinct rows of an int64 key matrix from :func:`pack_bits` (1-D uniques only: fast)."""
    if keys.shape[1] == 1:
        return torch.unique(keys[:, 0])[:, None]
    _, ids = torch.unique(keys[:, 0], return_inverse=True)
    for j in range(1, keys.shape[1]):
        values, inv = torch.unique(keys[:, j], return_inverse=True)
        _, ids = torch.unique(ids * len(values) + inv, return_inverse=True)
    n = keys.shape[0]
    first = torch.full((int(ids.max()) + 1,), n, dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, ids, torch.arange(n, device=keys.device), "amin")
    return keys[first]


@artefact("degenerate")
def _degenerate(ctx: Context) -> bool:
    """Train-mode forward of 2 samples (BatchNorm keeps signals O(1), unlike eval mode at init where a
    deep network's input-dependent part can shrink below float precision next to the biases); outputs
    that do not differ at all mean the input is disconnected from the output."""
    x = ctx.batch.inputs[:2]
    if x.shape[0] < 2:
        x = torch.cat([x, x.flip(-1)])
    ctx.model.train()
    with torch.inference_mode(), stock_ops():
        y = ctx.model(x).double()
    spread = (y[0] - y[1]).abs().max()
    return bool(torch.isfinite(spread) and spread <= 1e-12 * y.abs().max())


@dataclass
class Forward:
    """What the shared train-mode forward recorded."""

    inputs: torch.Tensor
    logits: torch.Tensor | None = None
    relu_kernel: torch.Tensor | None = None  # NASWOT kernel, float64 (B, B)
    neuron_codes: list[torch.Tensor] = field(default_factory=list)  # distinct per-neuron patterns per ReLU
    pixel_regions: list[int] = field(default_factory=list)  # distinct per-pixel channel patterns per ReLU
    feature_min_eig: list[float] = field(default_factory=list)  # MeCo term per 4-D module output
    layer_outputs: list[torch.Tensor] = field(default_factory=list)  # conv/linear outputs (with graph)
    macs: float = 0.0


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` laid out channels-last where that speeds a pass up (a 4-D float batch on CPU), else ``x``."""
    if x.dim() == 4 and x.is_floating_point() and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


@artefact("forward")
def _forward(ctx: Context) -> Forward:
    model, needs = ctx.model, ctx.needs
    model.train()
    x = ctx.batch.inputs
    if "input_jacobian" in needs and x.is_floating_point():
        # Token ids cannot carry gradients; Jacobian proxies then fail alone and rank last.
        x = x.detach().clone().requires_grad_(True)
    rec = Forward(x)
    handles = []
    try:
        if needs & {"relu_kernel", "relu_neuron_codes", "relu_pixel_regions"}:
            hook = _relu_hook(rec, needs)
            handles += [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, RELUS)]
        meco = _MecoTerms() if "feature_min_eig" in needs else None
        if meco is not None:
            handles += [m.register_forward_hook(meco.hook) for m in model.modules()]
        if needs & {"layer_outputs", "layer_macs"}:
            hook = _layer_hook(rec, "layer_outputs" in needs)
            handles += [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
        # no_grad rather than inference_mode: the ReLU hook reads version counters, which inference
        # tensors lack (the two modes compute the same bits at the same speed).
        grad_mode = torch.enable_grad() if needs & {"input_jacobian", "ce_grads"} else torch.no_grad()
        if needs & FORWARD_USERS <= CHANNELS_LAST_NEEDS:
            x = channels_last_input(x)
        with grad_mode:
            rec.logits = model(x)
        if meco is not None:
            rec.feature_min_eig = meco.result()
    finally:
        for h in handles:
            h.remove()
    return rec


def _relu_hook(rec: Forward, needs: frozenset[str]):  # noqa: ANN202 - a torch hook
    # NB201/DARTS-style cells give each edge its own ReLU on the same node tensor: its codes, and so its
    # terms, are those already computed. Keyed by the input object and its version counter (an in-place
    # change between two ReLUs bumps it); the input is kept so that its id cannot be reused meanwhile,
    # only the last few so that the forward still frees its activations as it goes.
    seen: dict[int, tuple[torch.Tensor, int, tuple[Any, ...]]] = {}

    def terms(out: torch.Tensor) -> tuple[Any, ...]:
        b = out.shape[0]
        # Flatten in memory order (a view for NCHW and channels-last maps alike): the kernel and the
        # distinct-row counts do not depend on the order of the neurons.
        flat = out.permute(0, 2, 3, 1) if out.dim() == 4 and not out.is_contiguous() else out
        flat = flat.reshape(b, -1)
        k = codes = pixels = None
        if "relu_kernel" in needs:
            # K = C C^T + (1-C)(1-C)^T = 2 C C^T - s_i - s_j + n with s = diag(C C^T): one matmul instead
            # of two, and every entry an exact integer, so the kernel is the same whichever way it is made.
            g = _code_gram(flat)
            s = g.diagonal()
            k = 2 * g - s[:, None] - s[None, :] + flat.shape[1]
        if "relu_neuron_codes" in needs:
            codes = unique_rows(pack_bits((flat > 0).T))
        if "relu_pixel_regions" in needs and out.dim() == 4:
            m = min(b, PIXEL_REGION_SAMPLES)
            region = (out[:m] > 0).permute(0, 2, 3, 1).reshape(-1, out.shape[1])
            pixels = int(unique_rows(pack_bits(region)).shape[0])
        return k, codes, pixels

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        with torch.no_grad():
            src = inp[0] if inp and torch.is_tensor(inp[0]) else None
            if src is not None and src.is_inference():  # a caller's inference_mode: no version counter
                src = None
            hit = seen.get(id(src)) if src is not None else None
            if hit is not None and hit[0] is src and hit[1] == src._version:
                k, codes, pixels = hit[2]
            else:
                k, codes, pixels = terms(out)
                if src is not None:
                    seen[id(src)] = (src, src._version, (k, codes, pixels))
                    if len(seen) > RELU_INPUTS_KEPT:
                        del seen[next(iter(seen))]
            if k is not None:
                rec.relu_kernel = k if rec.relu_kernel is None else rec.relu_kernel + k
            if codes is not None:
                rec.neuron_codes.append(codes)
            if pixels is not None:
                rec.pixel_regions.append(pixels)

    return hook


def _code_gram(flat: torch.Tensor) -> torch.Tensor:
    """C C^T (float64) of the 0/1 codes C = flat > 0 of a (B, L) map: exact integers."""
    if flat.device.type == "cpu" and flat.shape[1] < 2**31:
        try:
            # int8 codes with int32 accumulation (oneDNN VNNI): about 1.7x the float32 matmul on CPU.
            c8 = flat.gt(0).view(torch.int8)
            return torch._int_mm(c8, c8.T).double()
        except (RuntimeError, AttributeError):  # a build without the int8 kernel: float32 below
            pass
    # float32 is exact here because every entry is an integer below 2**24; gt writes the 0/1 floats in one
    # pass (a bool tensor then .float() costs five times as much).
    c = torch.gt(flat, 0, out=torch.empty(flat.shape, dtype=torch.float32, device=flat.device))
    return (c @ c.T).double()


class _MecoTerms:
    """MeCo's terms from every module's 4-D output: the first sample's (C, H*W) map is copied in the hook
    and reduced later, maps of one shape together (a few batched ops instead of a dozen small ones per
    module), at most ``MECO_PENDING`` values held at a time."""

    def __init__(self) -> None:
        self.values: list[float] = []  # one per distinct map, in order
        self.terms: list[int] = []  # per module output: its index into ``values``
        self.pending: list[torch.Tensor] = []
        self.held = 0
        self.last: tuple[torch.Tensor, int] | None = None  # the previous output and its version counter

    def hook(self, _m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        """Forward hook on every module."""
        if not torch.is_tensor(out) or out.dim() != 4 or out.shape[2] * out.shape[3] < 2:
            return  # a 1x1 map has no spatial samples to correlate (MeCo's NaN -> 0 gives 0 anyway)
        try:
            version = out._version
        except RuntimeError:  # an inference tensor has no version counter: no reuse
            version = -1
        if self.last is not None and self.last[0] is out and version >= 0 and self.last[1] == version:
            # A container returns its last child's output object, unchanged: the same term, computed once.
            self.terms.append(self.terms[-1])
            return
        self.last = (out, version)
        with torch.no_grad():
            fea = out[0].clone(memory_format=torch.contiguous_format)  # the forward may change out in place
        self.terms.append(len(self.values) + len(self.pending))
        self.pending.append(fea.view(out.shape[1], -1))
        self.held += fea.numel()
        if self.held > MECO_PENDING:
            self.flush()

    def flush(self) -> None:
        """Reduce the pending maps to their terms: min eigenvalue of the channel correlation matrix."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, fea in enumerate(self.pending):
            groups.setdefault(tuple(fea.shape), []).append(i)
        mins = [0.0] * len(self.pending)
        for idx in groups.values():
            x = torch.stack([self.pending[i] for i in idx]).double()
            x -= x.mean(dim=2, keepdim=True)
            cov = x @ x.transpose(1, 2)
            d = cov.diagonal(dim1=1, dim2=2).sqrt()
            # torch.corrcoef's definition: NaN for a constant channel (MeCo sets it to 0), clipped to [-1, 1]
            corr = (cov / d[:, :, None] / d[:, None, :]).clamp_(-1, 1)
            corr = torch.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0)
            for i, v in zip(idx, torch.linalg.eigvalsh(corr)[:, 0].tolist(), strict=True):
                mins[i] = v
        self.values += mins
        self.pending, self.held = [], 0

    def result(self) -> list[float]:
        """Every module's term, in execution order."""
        self.flush()
        return [self.values[i] for i in self.terms]


MECO_PENDING = 1 << 22
"""Feature-map values (float32) that MeCo holds before reducing them (16 MB)."""


def _layer_hook(rec: Forward, keep_outputs: bool):  # noqa: ANN202 - a torch hook
    def hook(m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if keep_outputs:
            rec.layer_outputs.append(out)
        per_output = m.weight[0].numel() if isinstance(m, nn.modules.conv._ConvNd) else m.in_features
        rec.macs += out[0].numel() * per_output

    return hook


@artefact("layer_macs")
def _layer_macs(ctx: Context) -> float:
    if ctx.needs & FORWARD_USERS:
        return ctx.get("forward").macs
    rec = Forward(ctx.batch.inputs[:1])
    hook = _layer_hook(rec, False)
    handles = [m.register_forward_hook(hook) for m in ctx.model.modules() if isinstance(m, WEIGHT_LAYERS)]
    try:
        ctx.model.eval()
        with torch.inference_mode():
            ctx.model(rec.inputs)
    finally:
        for h in handles:
            h.remove()
    return rec.macs


@artefact("input_jacobian")
def _input_jacobian(ctx: Context) -> torch.Tensor:
    f = ctx.get("forward")
    (g,) = torch.autograd.grad(f.logits, f.inputs, torch.ones_like(f.logits), retain_graph=True)
    return g.detach()


@dataclass
class Grads:
    """Cross-entropy gradients of the convolution / linear weights (and more, when asked for)."""

    layers: list[nn.Module]
    grads: list[torch.Tensor]
    act_grads: list[torch.Tensor]  # d loss / d layer output, aligned with Forward.layer_outputs
    halves: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # per half of the batch
    hvp: list[torch.Tensor] | None = None  # Hessian times gradient (GraSP)


@artefact("ce_grads")
def _ce_grads(ctx: Context) -> Grads:
    f = ctx.get("forward")
    layers = weight_layers(ctx.model)
    weights = [m.weight for m in layers]
    wrt = weights + f.layer_outputs
    create = "hvp" in ctx.needs
    targets = ctx.batch.targets
    n = targets.shape[0]
    halves = None
    full_loss = F.cross_entropy(f.logits, targets, reduction="none")
    if "half_grads" in ctx.needs and n >= 2:
        # Mean CE over the batch is the weighted mean of the halves' mean CE, so the second half's
        # gradient follows from the full one: one extra plain backward, no second forward.
        h = n // 2
        ga = [g.detach() for g in _grad(full_loss[:h].mean(), weights, retain=True, create=False)]
        full = _grad(full_loss.mean(), wrt, retain=create, create=create)
        gb = [(n * g.detach() - h * a) / (n - h) for g, a in zip(full[: len(weights)], ga, strict=True)]
        halves = (ga, gb)
    else:
        full = _grad(full_loss.mean(), wrt, retain=create, create=create)
    hvp = None
    if create:
        gw = full[: len(weights)]
        z = sum((g.detach() * g).sum() for g in gw if g.requires_grad)
        hvp = [v.detach() for v in _grad(z, weights, retain=False, create=False)] if torch.is_tensor(z) \
            else [torch.zeros_like(w) for w in weights]
    f.logits = f.logits.detach()  # the graph is no longer needed
    f.layer_outputs = [o.detach() for o in f.layer_outputs]
    full = [g.detach() for g in full]
    return Grads(layers, full[: len(weights)], full[len(weights):], halves, hvp)


def _grad(loss: torch.Tensor, wrt: list[torch.Tensor], retain: bool, create: bool) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, wrt, retain_graph=retain, create_graph=create, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)]


@artefact("synflow")
def _synflow(ctx: Context) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(|w|, dR/dw) per convolution / linear layer for R = sum of the logits of an all-ones input.

    Runs on |parameters| with BatchNorm as identity (running mean 0, variance 1 in eval mode), which is
    NASLib's BN-free SynFlow copy without copying the model. The pass runs in float32 when the weights are
    float32 (|w| is then exact) and is redone in float64 when anything overflowed (zero-cost-nas #23: raw
    values reach 1e60 on deep networks). Every quantity is a sum of non-negative products, so nothing
    cancels and float32 rounding stays at its own level: measured on NB201 cells, synflow and logsynflow
    move by at most SYNFLOW_FLOAT32_RTOL relative from the float64 pass, for 30% less time. The pairs are
    returned in float64, so the proxies' products and sums do not overflow either.
    """
    model = ctx.model
    model.eval()
    low = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in model.parameters())
    for dtype in (torch.float32, torch.float64) if low else (torch.float64,):
        pairs = _synflow_pass(ctx, dtype)
        if dtype == torch.float64 or all(bool(torch.isfinite(g).all()) for _, g in pairs):
            return [(w.double(), g.double()) for w, g in pairs]
    raise AssertionError("unreachable: the float64 pass always returns")


SYNFLOW_FLOAT32_RTOL = 1e-6
"""Documented bound on the float32 SynFlow pass's relative difference from float64 (see _synflow)."""


def _synflow_pass(ctx: Context, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    model = ctx.model
    layer_weights = {id(m.weight) for m in weight_layers(model)}
    params, tracked = {}, []
    for name, p in model.named_parameters():
        q = p.detach().abs().to(dtype)
        if id(p) in layer_weights:
            q.requires_grad_(True)
            tracked.append(q)
        params[name] = q
    buffers = {}
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            buffers[name] = torch.zeros_like(b, dtype=dtype)
        elif name.endswith("running_var"):
            buffers[name] = torch.ones_like(b, dtype=dtype)
        else:
            buffers[name] = b.to(dtype) if b.is_floating_point() else b
    x = torch.ones((1, *ctx.batch.inputs.shape[1:]), dtype=dtype, device=ctx.device)
    with torch.enable_grad(), stock_ops():
        out = functional_call(model, {**params, **buffers}, (x,))
        if not bool(torch.isfinite(out).all()):
            # An overflowed output: report it through the gradients, which the caller checks.
            return [(w.detach(), torch.full_like(w, math.inf)) for w in tracked]
        grads = torch.autograd.grad(out.sum(), tracked, allow_unused=True)
    return [(w.detach(), torch.zeros_like(w) if g is None else g) for w, g in zip(tracked, grads, strict=True)]


def log_sum(values: list[torch.Tensor]) -> float:
    """log of the sum of non-negative tensors' elements, -inf when it is zero."""
    total = sum(float(v.sum()) for v in values)
    return math.log(total) if total > 0 else -math.inf
