"""AZ-NAS component proxies (Lee & Ham, CVPR 2024): expressivity, progressivity and trainability.

All three come from one forward pass over the network's blocks plus one backward step per pair of
consecutive blocks: the engine builds that once per ``score`` call as the shared artefact ``az``.
Definitions follow the paper and its reference code:

* blocks: the outputs of the network's top-level blocks in execution order. A proxy knows nothing of
  spaces, so blocks are found structurally: the model's children, with ``nn.Sequential``/``nn.ModuleList``
  containers of composite modules expanded, keeping modules that return a 4-D feature map; trailing
  modules without any convolution (head normalisation, activation, pooling) are dropped. On
  NAS-Bench-201 this gives exactly the reference code's stem + 17 cells.
* expressivity: sum over blocks of the entropy of the normalised eigenvalues of the channel covariance
  of the block's output (features pooled over batch and positions): isotropic features score high.
* progressivity: the smallest increase of that entropy from one block to the next.
* trainability: mean over block pairs of ``2 - s - 1/s``, where ``s`` is the largest singular value of
  the channel-wise Jacobian of the block's output w.r.t. its input (probed with Rademacher vectors,
  strided inputs folded with pixel-unshuffle); 0 at ``s = 1``. A block that is exactly the identity
  makes the score -inf (ranked last), as in the paper.

Deviations: the network is re-initialised Kaiming-normal (fan-in), as the reference code does, into new
tensors run through ``functional_call`` (no model copy), so the caller's weights are untouched; BN is in
training mode; the batch is the caller's real batch. Trainability is taken on the first
``TRAINABILITY_SAMPLES`` (16) samples of the batch, in a pass of its own: its forward and backward cost
a quarter of the full batch's, and on 150 NB201 development cells (seed 100) its values agree with the
full batch's at Spearman 0.97 (32 samples: 0.995, 8: 0.84), measured without accuracies
(``experiments/bench_proxies.py --az-samples``). The Rademacher probes come from NumPy's generator
(unpacked random bytes: a third of the cost of ``torch.randint``). Expressivity and progressivity need
no gradient and take the whole batch without autograd. On CPU the passes run channels-last (about
twice as fast for these convolutions; the values move at float rounding level).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from proxies.engine import Context, artefact, proxy
from proxies.passes import channels_last_input

_CONTAINERS = (nn.Sequential, nn.ModuleList)


def feature_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's top-level blocks in registration order (containers of composite modules expanded)."""
    out: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            composite = isinstance(child, _CONTAINERS) and any(
                any(True for _ in c.children()) for c in child.children())
            if composite:
                visit(child)
            else:
                out.append(child)

    visit(model)
    return out


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in module.modules())


def _kaiming_fan_in(model: nn.Module) -> dict[str, torch.Tensor]:
    """Re-initialised conv / linear / norm parameters by name, drawn as ``model.apply`` would visit them
    (children first), so the global RNG gives the same values as initialising a deep copy in place."""
    fresh: dict[int, torch.Tensor] = {}

    def visit(module: nn.Module) -> None:
        for child in module.children():
            visit(child)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = torch.empty_like(module.weight, requires_grad=False)
            nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
            fresh[id(module.weight)] = w
            if module.bias is not None:
                fresh[id(module.bias)] = torch.zeros_like(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.affine:
            fresh[id(module.weight)] = torch.ones_like(module.weight)
            fresh[id(module.bias)] = torch.zeros_like(module.bias)

    visit(model)
    state = {}
    # No parameter requires grad: the Jacobians are taken w.r.t. block features, so the graph is rooted at
    # the input instead (see ``_az``), which spares the forward saving tensors for weight gradients.
    for name, p in model.named_parameters(remove_duplicate=False):
        q = fresh.get(id(p))
        state[name] = p.detach().clone() if q is None else q
    for name, b in model.named_buffers(remove_duplicate=False):
        state[name] = b.clone()  # the train-mode forward updates running statistics: not the caller's
    return state


def _block_features(net: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """Input to the first block followed by every block's 4-D output, autograd kept."""
    blocks = feature_blocks(net)
    feats: list[tuple[int, torch.Tensor]] = []

    def hook(idx: int):  # noqa: ANN202
        def fn(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                feats.append((idx, out))
        return fn

    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    try:
        functional_call(net, state, (x,), tie_weights=False)
    finally:
        for h in handles:
            h.remove()
    last_conv = max((i for i, b in enumerate(blocks) if _has_conv(b)), default=-1)
    return [f for i, f in feats if i <= last_conv]


def _entropy(feat: torch.Tensor) -> float:
    """Entropy of the normalised eigenvalue spectrum of the channel covariance of ``feat`` (B, C, H, W)."""
    x = _channel_rows(feat.detach()).double()
    x = x - x.mean(dim=0, keepdim=True)
    eig = torch.linalg.eigvalsh(x.T @ x / x.shape[0]).clamp_min(0)
    p = eig / eig.sum()
    return float(-(p * torch.log(p + 1e-8)).sum())


def _rademacher(like: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A +-1 tensor shaped and laid out like ``like`` (channels-last or not), drawn from ``rng``."""
    n = like.numel()
    bits = np.unpackbits(np.frombuffer(rng.bytes((n + 7) // 8), dtype=np.uint8), count=n)
    flat = torch.from_numpy(_SIGNS[bits]).to(like.device)
    b, c, h, w = like.shape
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return flat.view(b, h, w, c).permute(0, 3, 1, 2)
    return flat.view(b, c, h, w)


_SIGNS = np.array([-1.0, 1.0], dtype=np.float32)


def _channel_rows(g: torch.Tensor) -> torch.Tensor:
    """(B*H*W, C) rows of a (B, C, H, W) map: a view when the map is channels-last."""
    return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])


def _jacobian_norm(f_in: torch.Tensor, f_out: torch.Tensor, rng: np.random.Generator) -> float | None:
    """Largest singular value of the channel Jacobian of ``f_out`` w.r.t. ``f_in``; nan for an identity
    block, None where the two are not comparable."""
    g_out = _rademacher(f_out, rng).to(f_out.dtype)
    if not (f_out.requires_grad and f_in.requires_grad):
        return 0.0  # the output does not depend on the input: no gradient flows at all
    (g_in,) = torch.autograd.grad(f_out, f_in, g_out, retain_graph=True, allow_unused=True)
    if g_in is None:
        return 0.0  # the output does not depend on the input: no gradient flows at all
    if g_in.shape == g_out.shape and torch.equal(g_in, g_out):
        return math.nan
    if g_in.shape[-1] != g_out.shape[-1]:
        g_in = nn.functional.pixel_unshuffle(g_in, g_in.shape[-1] // g_out.shape[-1])
    if g_in.shape[-2:] != g_out.shape[-2:]:
        return None
    go = _channel_rows(g_out)
    mat = (_channel_rows(g_in).T @ go / go.shape[0]).double()
    return float(torch.linalg.svdvals(mat).max())


@artefact("az")
def az_components(ctx: Context) -> dict[str, float]:
    """Expressivity, progressivity and trainability from one pass over the re-initialised net."""
    return _az(ctx, entropy=True)


@artefact("az_trainability")
def az_trainability_only(ctx: Context) -> dict[str, float]:
    """Trainability alone (no entropy spectra), or all three where ``az`` is built anyway."""
    return ctx.get("az") if "az" in ctx.needs else _az(ctx, entropy=False)


TRAINABILITY_SAMPLES = 16
"""Samples of the batch that trainability's Jacobians are taken on (see the module docstring)."""


def _az(ctx: Context, entropy: bool) -> dict[str, float]:
    net = ctx.model
    cuda = [ctx.device] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the same init whatever other proxies drew before
        torch.manual_seed(ctx.seed * 1_000_003 + 201)
        state = _kaiming_fan_in(net)
    net.train()
    x = channels_last_input(ctx.batch.inputs.detach())
    out = {}
    if entropy:
        with torch.no_grad():
            ent = [_entropy(f) for f in _block_features(net, state, x)]
        if len(ent) < 2:
            raise ValueError("AZ-NAS needs at least two feature blocks")
        out["az_expressivity"] = float(sum(ent))
        out["az_progressivity"] = float(min(b - a for a, b in zip(ent, ent[1:], strict=False)))
    rng = np.random.default_rng(ctx.seed * 1_000_003 + 201)
    with torch.enable_grad():
        # The graph is rooted at the input (no parameter requires grad): every feature that depends on it
        # carries a graph, the same block Jacobians as with weights requiring grad.
        feats = _block_features(net, state, x[:TRAINABILITY_SAMPLES].detach().requires_grad_(True))
        if len(feats) < 2:
            raise ValueError("AZ-NAS needs at least two feature blocks")
        scores = []
        for i in reversed(range(1, len(feats))):
            s = _jacobian_norm(feats[i - 1], feats[i], rng)
            if s is None:
                continue
            scores.append(2.0 - s - 1.0 / (s + 1e-6) if math.isfinite(s) else -math.inf)
    out["az_trainability"] = float(sum(scores) / len(scores)) if scores else -math.inf
    return out


@proxy("az_expressivity", "AZ-NAS expressivity: summed eigen-spectrum entropy of block features",
       needs={"az"})
def az_expressivity(ctx: Context) -> float:
    """AZ-NAS expressivity (see the module docstring)."""
    return ctx.get("az")["az_expressivity"]


@proxy("az_progressivity", "AZ-NAS progressivity: smallest entropy gain between consecutive blocks",
       needs={"az"})
def az_progressivity(ctx: Context) -> float:
    """AZ-NAS progressivity (see the module docstring)."""
    return ctx.get("az")["az_progressivity"]


@proxy("az_trainability", "AZ-NAS trainability: mean 2-s-1/s of block Jacobian spectral norms s",
       needs={"az_trainability"}, version=2)
def az_trainability(ctx: Context) -> float:
    """AZ-NAS trainability (see the module docstring)."""
    return ctx.get("az_trainability")["az_trainability"]
