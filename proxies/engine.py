"""The proxy registry and the engine that computes several proxies of one network."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from nas.registry import Registry
from proxies.data import Batch

log = logging.getLogger(__name__)

SENTINEL = -1e30
"""Finite score given to a proxy that fails or yields NaN/inf: it ranks the network last."""

ProxyFn = Callable[[nn.Module, Batch], float]


@dataclass(frozen=True)
class ProxySpec:
    """A registered proxy: its function, a one-line description and how it uses the network."""

    name: str
    fn: ProxyFn
    description: str
    needs_grad: bool = False  # whether the proxy back-propagates (the engine then keeps autograd on)
    higher_is_better: bool = True


registry: Registry[ProxySpec] = Registry("proxy")


def proxy(name: str, description: str, needs_grad: bool = False,
          higher_is_better: bool = True) -> Callable[[ProxyFn], ProxyFn]:
    """Register ``fn(model, batch) -> float`` as the proxy ``name``."""

    def wrap(fn: ProxyFn) -> ProxyFn:
        registry.register(name, ProxySpec(name, fn, description, needs_grad, higher_is_better))
        return fn

    return wrap


def get(name: str) -> ProxySpec:
    """The registered proxy ``name``."""
    return registry.get(name)


def list(pattern: str = "*") -> list[str]:  # noqa: A001
    """Registered proxy names matching ``pattern``."""
    return registry.list(pattern)


def score(model: nn.Module, batch: Batch, names: Iterable[str], seed: int = 0,
          device: torch.device | str | None = None) -> dict[str, float]:
    """Compute the proxies ``names`` of ``model`` on ``batch``; failures give ``SENTINEL``, never raise."""
    specs = [get(n) for n in names]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device)
    batch = batch.to(device)
    out: dict[str, float] = {}
    for spec in specs:
        torch.manual_seed(seed)
        try:
            value = float(spec.fn(model, batch))
        except (RuntimeError, ValueError, FloatingPointError, torch.linalg.LinAlgError) as err:
            log.warning("proxy %s failed (%s); ranking the network last", spec.name, err)
            value = math.nan
        if not math.isfinite(value):
            log.warning("proxy %s gave %s; ranking the network last", spec.name, value)
            value = SENTINEL
        out[spec.name] = value if spec.higher_is_better or value == SENTINEL else value
        model.zero_grad(set_to_none=True)
    return out
