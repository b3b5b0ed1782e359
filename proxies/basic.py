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


@proxy("model_kb", "weight storage in kB (1024 B) at each layer's bit-width: sum of numel x bits / 8")
def model_kb(ctx: Context) -> float:
    """Trainable parameters x bits / 8 / 1024: a quantised layer's weight at its ``q_bits``, all else at 32.

    Biases, norms and unquantised layers count 32 bits (integer inference keeps biases in int32), so an
    fp32 network weighs ``params x 4 / 1024`` kB. A tied weight (BERT's decoder) counts once.
    """
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    bits = 32 * sum(p.numel() for p in params)
    seen = {id(p) for p in params}
    for m in ctx.model.modules():
        q = getattr(m, "q_bits", 32)
        if q < 32 and id(m.weight) in seen:
            bits -= (32 - q) * m.weight.numel()
            seen.discard(id(m.weight))  # a weight shared by two quantised modules is stored once
    return bits / 8 / 1024
