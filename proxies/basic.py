"""Baseline proxies: parameter count, SynFlow and NASWOT."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from proxies.data import Batch
from proxies.engine import proxy


@proxy("params", "number of trainable parameters (millions)")
def params(model: nn.Module, batch: Batch) -> float:
    """Trainable parameters in millions."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6


@proxy("synflow", "SynFlow (Tanaka et al. 2020): log10 of sum |theta * dR/dtheta| with |theta|, all-ones input",
       needs_grad=True)
def synflow(model: nn.Module, batch: Batch) -> float:
    """SynFlow in float64 on |weights| with an all-ones input, BN in eval mode; reported as log10
    because raw values reach 1e60 and overflow float32 (the ranking is unchanged)."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    x = torch.ones((1, *batch.inputs.shape[1:]), dtype=torch.float64, device=batch.inputs.device)
    net.zero_grad()
    torch.sum(net(x)).backward()
    total = torch.zeros((), dtype=torch.float64)
    for p in net.parameters():
        if p.grad is not None:
            total += (p * p.grad).abs().sum().cpu()
    value = float(total)
    return math.log10(value) if value > 0 else float("nan")


@proxy("nwot", "NASWOT (Mellor et al. 2021): log|det K| of the ReLU activation-pattern kernel")
def nwot(model: nn.Module, batch: Batch) -> float:
    """log-determinant of K = C C^T + (1-C)(1-C)^T over the binary codes C of every ReLU's input."""
    n = batch.inputs.shape[0]
    kernel = torch.zeros((n, n), dtype=torch.float64, device=batch.inputs.device)

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        codes = (inputs[0].reshape(n, -1) > 0).double()
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        model.train()
        with torch.no_grad():
            model(batch.inputs)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else float("nan")
