"""Architecture statistics: parameter count, FLOPs and the weights' L2 norm."""

from __future__ import annotations

from proxies.engine import Context, proxy
from proxies.passes import weight_layers


@proxy("params", "number of trainable parameters (millions)")
def params(ctx: Context) -> float:
    """Trainable parameters in millions."""
    return sum(p.numel() for p in ctx.model.parameters() if p.requires_grad) / 1e6


@proxy("flops", "multiply-accumulates of convolution and linear layers for one input (millions)",
       needs={"layer_macs"})
def flops(ctx: Context) -> float:
    """MFLOPs counted as multiply-accumulates of conv / linear layers for one sample, as NASLib (thop)."""
    return ctx.get("layer_macs") / 1e6


@proxy("l2_norm", "sum over conv/linear layers of the L2 norm of the initial weights (NASLib)")
def l2_norm(ctx: Context) -> float:
    """Sum of per-layer weight L2 norms at initialisation, as NAS-Bench-Suite-Zero defines it."""
    return float(sum(m.weight.detach().norm() for m in weight_layers(ctx.model)))
