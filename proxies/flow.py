"""Data-free proxies with their own passes: SynFlow, LogSynFlow and Zen-NAS."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from proxies.engine import Context, artefact, proxy
from proxies.passes import WEIGHT_LAYERS, log_sum

ZEN_MIXUP = 0.01
"""Zen-NAS perturbation scale (the paper's alpha)."""


@proxy("synflow", "SynFlow (Tanaka et al. 2020): ln of sum |w * dR/dw| with |w|, all-ones input, no BN",
       needs={"synflow"})
def synflow(ctx: Context) -> float:
    """Natural log of the SynFlow saliency summed over conv / linear weights; NASLib also reports the log
    (raw values reach 1e60 and overflow float32; the ranking is unchanged)."""
    return log_sum([(w * g).abs() for w, g in ctx.get("synflow")])


@proxy("logsynflow", "LogSynFlow (Cavagnero et al. 2023): sum |w| * log(1 + |dR/dw|), SynFlow's pass",
       needs={"synflow"})
def logsynflow(ctx: Context) -> float:
    """SynFlow with log-compressed gradients, which tames the gradient explosion of deep networks."""
    return float(sum(float((w.abs() * torch.log1p(g.abs())).sum()) for w, g in ctx.get("synflow")))


@proxy("zen", "Zen-NAS (Lin et al. 2021): log E|f(x) - f(x + 0.01 e)| of pre-pooling features + BN scales",
       needs={"zen"}, version=2)
def zen(ctx: Context) -> float:
    """Zen score with Gaussian weights and Gaussian inputs, BatchNorm in train mode."""
    return ctx.get("zen")


class _Features(nn.Module):
    """Runs ``net.forward_features`` as its ``forward``, so that ``functional_call`` can swap its weights."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped network's pre-pool feature map."""
        return self.net.forward_features(x)


@artefact("zen")
def _zen(ctx: Context) -> float:
    """Zen score as the official code computes it: weights redrawn N(0, 1) (BN affine 1/0, biases 0),
    fresh BatchNorm buffers updated by the two train-mode forwards, whose running variances give the BN
    term. All through ``functional_call``, so the model itself is untouched. Features are the pre-pool
    map that ``model.forward_features(x)`` returns (timm's convention, which every CNN space follows)."""
    model = ctx.model
    if not callable(getattr(model, "forward_features", None)):
        # Without the declared pre-pool map the only fallback would be the logits, which is not Zen.
        raise NotImplementedError(f"zen reads the pre-pool feature map from model.forward_features(x), "
                                  f"which {type(model).__name__} does not implement")
    model.train()
    gen = ctx.generator(salt=17)
    owners = {f"{prefix}.{n}" if prefix else n: m for prefix, m in model.named_modules()
              for n, _ in m.named_parameters(recurse=False)}
    state: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        owner = owners[name]
        if isinstance(owner, WEIGHT_LAYERS) and name.endswith("weight"):
            state[name] = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
        elif isinstance(owner, nn.modules.batchnorm._NormBase) and name.endswith("weight"):
            state[name] = torch.ones_like(p)
        else:
            state[name] = torch.zeros_like(p)
    running_vars = []
    for name, b in model.named_buffers():
        if name.endswith("running_var"):
            state[name] = torch.ones_like(b)
            running_vars.append(state[name])
        elif name.endswith("running_mean"):
            state[name] = torch.zeros_like(b)
        else:
            state[name] = b.clone()
    shape = ctx.batch.inputs.shape
    x = torch.randn(shape, generator=gen, device=ctx.device)
    mixed = x + ZEN_MIXUP * torch.randn(shape, generator=gen, device=ctx.device)
    features = _Features(model)
    wrapped = {f"net.{name}": t for name, t in state.items()}
    with torch.no_grad():
        a = functional_call(features, wrapped, (x,))
        b = functional_call(features, wrapped, (mixed,))
    delta = float((a - b).abs().sum(tuple(range(1, a.dim()))).mean())
    log_bn = sum(0.5 * math.log(float(v.mean())) for v in running_vars)
    return (math.log(delta) if delta > 0 else -math.inf) + log_bn
