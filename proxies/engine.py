"""The proxy registry and the engine that computes several proxies of one network from shared passes.

A proxy is a small function ``fn(ctx) -> float`` registered with the *artefacts* it reads (``needs``):
the engine takes the union of what the requested proxies need, runs each pass once (one train-mode
forward with every hook registered at once, one cross-entropy backward, one input-Jacobian backward on
the same graph, one SynFlow pass, ...) and hands every proxy the same :class:`Context`. Artefact
builders live in :mod:`proxies.passes`.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas.registry import Registry
from nas.rng import seeded_global_rng
from proxies.data import Batch
from proxies.fastops import fast_cpu_ops

log = logging.getLogger(__name__)

ENGINE_VERSION = 2
"""Part of every on-disk cache key beside each proxy's own version: bump it when a shared pass or the
degeneracy rule changes (2: the degeneracy check runs in train mode; eval mode flagged sound cells)."""

ProxyFn = Callable[..., float]
ArtefactFn = Callable[["Context"], Any]


@dataclass(frozen=True)
class ProxySpec:
    """A registered proxy: its function, a one-line description and the shared artefacts it reads.

    Every proxy is oriented so that higher is better (e.g. ``ntk`` returns minus the condition number).
    ``version`` is part of the on-disk cache key: bump it when a definition changes.
    """

    name: str
    fn: ProxyFn
    description: str
    needs: frozenset[str] = frozenset()
    version: int = 1
    legacy: bool = False  # fn(model, batch) instead of fn(ctx)

    @property
    def needs_grad(self) -> bool:
        """Whether the proxy back-propagates."""
        return bool(self.needs & GRAD_ARTEFACTS) or self.legacy


registry: Registry[ProxySpec] = Registry("proxy")
_ARTEFACTS: dict[str, ArtefactFn] = {}

ORDER: tuple[str, ...] = ("forward", "input_jacobian", "ce_grads")
"""Artefacts that share one autograd graph, in the order that lets the last one free it."""

GRAD_ARTEFACTS = frozenset({"input_jacobian", "ce_grads", "hvp", "half_grads", "layer_outputs"})
"""Needs that make the shared forward keep an autograd graph."""


def proxy(name: str, description: str, needs: Iterable[str] = (), version: int = 1,
          needs_grad: bool = False, higher_is_better: bool = True) -> Callable[[ProxyFn], ProxyFn]:
    """Register ``fn(ctx) -> float`` as the proxy ``name`` reading the artefacts ``needs``.

    A function taking ``(model, batch)`` is accepted too (it then runs on its own, after the others).
    """
    if not higher_is_better:
        raise ValueError(f"proxy {name!r}: register proxies oriented higher-is-better (negate the value)")

    def wrap(fn: ProxyFn) -> ProxyFn:
        legacy = len(inspect.signature(fn).parameters) == 2
        registry.register(name, ProxySpec(name, fn, description, frozenset(needs), version, legacy))
        return fn

    return wrap


def artefact(name: str) -> Callable[[ArtefactFn], ArtefactFn]:
    """Register the builder of a shared artefact (computed at most once per :func:`score` call)."""

    def wrap(fn: ArtefactFn) -> ArtefactFn:
        _ARTEFACTS[name] = fn
        return fn

    return wrap


def get(name: str) -> ProxySpec:
    """The registered proxy ``name``."""
    return registry.get(name)


def list(pattern: str = "*") -> builtins.list[str]:  # noqa: A001
    """Registered proxy names matching ``pattern``."""
    return registry.list(pattern)


class Context:
    """What proxies read: the model, the batch, the seed, and lazily built shared artefacts."""

    def __init__(self, model: nn.Module, batch: Batch, needs: frozenset[str], seed: int) -> None:
        self.model = model
        self.batch = batch
        self.needs = needs
        self.seed = seed
        self.device = batch.inputs.device
        self._built: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """The artefact ``name``, built on first use; a builder's failure is re-raised to every reader."""
        if name not in self._built:
            try:
                self._built[name] = _ARTEFACTS[name](self)
            except Exception as err:  # noqa: BLE001 - re-raised to each reader: it is that proxy's error
                self._built[name] = err
        value = self._built[name]
        if isinstance(value, Exception):
            raise value
        return value

    def generator(self, salt: int) -> torch.Generator:
        """A torch generator on the batch's device seeded from the engine seed and ``salt``."""
        return torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + salt)

    def release(self) -> None:
        """Drop every artefact (and with them any autograd graph)."""
        self._built.clear()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def score(model: nn.Module, batch: Batch, names: Iterable[str], seed: int = 0,
          device: torch.device | str | None = None, errors: dict[str, str] | None = None) -> dict[str, float]:
    """Compute the proxies ``names`` of ``model`` on ``batch`` sharing passes; a value is never a failure.

    A proxy that raises gives ``math.nan`` and, when ``errors`` is given, ``errors[name] = "ExcType:
    message"`` (the caller marks the candidate failed). A non-finite value, or a degenerate network (its
    output does not depend on its input), gives ``math.nan`` without an error: an expected outcome that
    ranks last, not a failure. The model's parameters are left unchanged and its buffers (BatchNorm
    running statistics) and train/eval mode are restored afterwards. Same model, batch and seed give
    identical values.
    """
    specs = [get(n) for n in dict.fromkeys(names)]
    device = torch.device(device) if device is not None else _default_device()
    model = model.to(device)
    batch = batch.to(device)
    needs = frozenset().union(*(s.needs for s in specs)) if specs else frozenset()
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()
             if not isinstance(v, nn.Parameter)}
    was_training = model.training
    out: dict[str, float] = {}
    # Dropout masks and re-initialisations (AZ-NAS) draw from the global RNG: seed it, holding the lock
    # that every seeded section shares, so that scores in other threads never reseed it mid-pass.
    with seeded_global_rng(seed, [device]), fast_cpu_ops(device.type == "cpu"):
        ctx = Context(model, batch, needs, seed)
        try:
            if _degenerate(ctx):
                _note_once("degenerate", "the network's output does not depend on its input; every proxy "
                           "gives NaN (it ranks last)")
                return {s.name: math.nan for s in specs}
            for name in ORDER:  # shared passes first, in the order that frees the graph last
                if name == "forward" and needs & FORWARD_USERS or name in needs:
                    try:
                        ctx.get(name)
                    except Exception:  # noqa: BLE001, S110 - reported by each proxy that reads it
                        pass
            for spec in specs:
                out[spec.name], error = _run_one(spec, ctx, model, batch, quiet=errors is not None)
                if error is not None and errors is not None:
                    errors[spec.name] = error
        finally:
            ctx.release()
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for k, v in model.state_dict(keep_vars=True).items():
                    if k in saved:
                        v.copy_(saved[k])
            model.train(was_training)
    return out


FORWARD_USERS = frozenset({
    "forward", "input_jacobian", "ce_grads", "hvp", "half_grads", "layer_outputs", "relu_kernel",
    "relu_neuron_codes", "relu_pixel_regions", "feature_min_eig",
})
"""Needs that are served by the shared train-mode forward of the whole batch."""


_noted: set[str] = set()


def _note_once(key: str, message: str) -> None:
    """Warn the first time an expected outcome (e.g. a cell with no input path) occurs, then log at debug."""
    if key in _noted:
        log.debug(message)
        return
    _noted.add(key)
    log.warning("%s (further cases are logged at debug level)", message)


def _degenerate(ctx: Context) -> bool:
    try:
        return bool(ctx.get("degenerate"))
    except Exception as err:  # noqa: BLE001 - each proxy then fails, with its error, on its own
        log.debug("degeneracy check failed: %s", err)
        return False


def _run_one(spec: ProxySpec, ctx: Context, model: nn.Module, batch: Batch,
             quiet: bool) -> tuple[float, str | None]:
    """The proxy's value and ``None``, or ``nan`` and ``"ExcType: message"`` when it raised."""
    try:
        if spec.legacy:
            value = float(spec.fn(model, batch))
        else:
            value = float(spec.fn(ctx))
    except Exception as err:  # noqa: BLE001 - reported to the caller, who decides what a failure means
        error = f"{type(err).__name__}: {err}"
        # A caller that collects errors reports them itself; without one, the log is the only trace.
        (log.debug if quiet else log.warning)("proxy %s failed (%s)", spec.name, error)
        return math.nan, error
    finally:
        if spec.legacy:
            model.zero_grad(set_to_none=True)
    if not math.isfinite(value):
        _note_once(f"nonfinite:{spec.name}", f"proxy {spec.name} gave {value}; the network ranks last")
        return math.nan, None
    return value, None
