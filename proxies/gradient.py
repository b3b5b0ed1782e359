"""Saliency proxies from one cross-entropy backward of the shared forward (BatchNorm in train mode).

All sum over convolution and linear weights, as NASLib / zero-cost-proxies do.
"""

from __future__ import annotations

import math

import torch

from proxies.engine import Context, proxy


@proxy("snip", "SNIP (Lee et al. 2019): sum |w * dL/dw| of the cross-entropy loss", needs={"ce_grads"})
def snip(ctx: Context) -> float:
    """Connection sensitivity summed over every conv / linear weight."""
    g = ctx.get("ce_grads")
    return float(sum((m.weight.detach() * d).abs().sum() for m, d in zip(g.layers, g.grads, strict=True)))


@proxy("grad_norm", "sum over conv/linear layers of the L2 norm of dL/dw (cross-entropy)", needs={"ce_grads"})
def grad_norm(ctx: Context) -> float:
    """Sum of per-layer gradient norms, as NASLib defines it (not the norm of the whole gradient)."""
    return float(sum(d.norm() for d in ctx.get("ce_grads").grads))


@proxy("plain", "sum of w * dL/dw (signed, cross-entropy; NASLib's 'plain')", needs={"ce_grads"})
def plain(ctx: Context) -> float:
    """Signed first-order Taylor saliency summed over conv / linear weights."""
    g = ctx.get("ce_grads")
    return float(sum((m.weight.detach() * d).sum() for m, d in zip(g.layers, g.grads, strict=True)))


@proxy("fisher", "Fisher (Turner et al. 2020): sum over channels of 0.5 * E[(sum_hw a * dL/da)^2]",
       needs={"ce_grads", "layer_outputs"})
def fisher(ctx: Context) -> float:
    """Channel saliency of every conv / linear output a, averaged over the batch, as NASLib computes it."""
    acts = ctx.get("forward").layer_outputs
    grads = ctx.get("ce_grads").act_grads
    total = 0.0
    for a, d in zip(acts, grads, strict=True):
        g_nk = (a * d).sum(tuple(range(2, a.dim()))) if a.dim() > 2 else a * d
        total += float(g_nk.pow(2).mean(0).mul(0.5).sum())
    return total


@proxy("grasp", "GraSP (Wang et al. 2020): -sum w * (H g), Hessian-gradient product of the CE loss",
       needs={"ce_grads", "hvp"})
def grasp(ctx: Context) -> float:
    """-theta . (H g) with g the CE gradient, from a double backward of the shared graph (NASLib, T=1)."""
    g = ctx.get("ce_grads")
    return float(sum(-(m.weight.detach() * h).sum() for m, h in zip(g.layers, g.hvp, strict=True)))


@proxy("zico", "ZiCo (Li et al. 2023): sum over layers of log(sum mean|g| / std(g)) across two half-batches",
       needs={"ce_grads", "half_grads"})
def zico(ctx: Context) -> float:
    """Inverse coefficient of variation of each weight's gradient over two half-batches, log-summed per
    layer. Deviation: the official code runs two forwards (BatchNorm statistics per half); here both
    halves share the full batch's forward and BatchNorm statistics, at the cost of one extra backward."""
    halves = ctx.get("ce_grads").halves
    if halves is None:
        raise ValueError("zico needs a batch of at least 2 samples")
    total = 0.0
    for a, b in zip(*halves, strict=True):
        stacked = torch.stack([a.reshape(-1), b.reshape(-1)]).double()
        std = stacked.std(0, unbiased=False)
        keep = std > 0
        ratio = float((stacked.abs().mean(0)[keep] / std[keep]).sum())
        if ratio > 0:
            total += math.log(ratio)
    return total
