"""Mixed precision as a search dimension: per-layer weight bit-widths searched with the architecture.

SimQ-NAS (Sridhar et al. 2023, arXiv:2312.13301) searches a quantization policy jointly with the
sub-network: one bit-width per quantisable layer (its code, IntelLabs/DyNAS-T, gives every layer of
OFA-ResNet50, and every encoder layer, the encoder LayerNorm and the head of its ViT, ``q_bits`` in
{8, 32}: INT8 or left in fp32). Here a space built with ``precision="mixed"``
(``--space-option precision=mixed``) wraps a base space that names its *layer groups*
(``precision_groups()``: name and allowed bits, and ``precision_layers(arch)``: the module paths of each
group the arch uses). Groups are the base's repeated blocks (an OFA MBConv block, an FBNet layer, a BERT
encoder layer, a ViT block) with bits in :data:`BITS` = {4, 8, 32} (4 added to SimQ-NAS's {8, 32}: the
size objective then has a range worth searching), and the edges (stem, head, embeddings) with
:data:`EDGE_BITS` = {8, 32}: first and last layers are the ones quantization hurts most (HAQ, APQ keep
them at 8 bits or more), and a 4-bit embedding table of a 30k-word vocabulary is not a standard format.

Within a group, every convolution, linear and embedding weight is fake-quantised: symmetric, per output
channel (per row of an embedding), to ``2^(b-1) - 1`` levels either side of zero, with a straight-through
gradient, so proxies, quantisation-aware training (``nas train``) and the exported ONNX (plain weights
equal to the quantised values, no custom ops) all see the same network. Biases, norms and free tensors
(ViT's class token and positions) stay in fp32, as integer inference keeps biases in int32; a group at
32 bits is left untouched. Each quantised module records its ``q_bits`` (the ``model_kb`` proxy reads it).

An architecture is :class:`QArch` (the base arch and one bit-width per group, 32 for groups the base arch
does not use, so that equal networks have one string), written as the base string, a space and ``q=``
with the bits in group order, e.g. ``["k3_e1",...] q=8,4,4,32,...,8``. A plain base string is accepted as
the all-32 architecture. The default ``precision="fp32"`` returns the base space itself: its strings,
cache keys and networks are unchanged.

Only weights are quantised (activations stay in fp32, as in weight-only QAT), so proxies that read
weights see the bits and ``model_kb`` counts them, while the latency models, which read the graph's
shapes, predict the same time for every bit-width. The wrapper offers no weight-sharing supernet.

Example:
    >>> import numpy as np, search_spaces
    >>> space = search_spaces.get("fbnet", num_classes=10, precision="mixed")
    >>> arch = space.sample(np.random.default_rng(0))
    >>> space.from_string(space.to_string(arch)) == arch
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.base import Arch, ArchError, SearchSpace, export_onnx

BITS: tuple[int, ...] = (4, 8, 32)
"""Bit-widths of a block's weights (32: left in fp32)."""
EDGE_BITS: tuple[int, ...] = (8, 32)
"""Bit-widths of stems, heads and embeddings."""
FULL = 32
PRECISIONS = ("fp32", "mixed")
_ARCH_METHODS = frozenset({"arch_input_shape", "proxy_input_shape"})
"""Optional base methods that take an arch: forwarded with the base arch (see ``__getattr__``)."""


def fake_quant(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` rounded to ``bits`` symmetric levels per output channel (dim 0); identity gradient."""
    if bits >= FULL:
        return weight
    qmax = 2 ** (bits - 1) - 1
    dims = tuple(range(1, weight.dim()))
    # the scale is a constant of the rounding, as in LSQ-free QAT: gradients pass straight through
    scale = weight.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / qmax
    q = torch.clamp(torch.round(weight.detach() / scale), -qmax, qmax) * scale
    return weight + (q - weight).detach()


def quantised_weight(module: nn.Module) -> torch.Tensor:
    """The weight ``module`` computes with: fake-quantised to its ``q_bits``, or as is without them.

    While exporting to ONNX the quantised values are written into the weight itself (a no-op for the
    network: quantisation is idempotent) outside the trace, so the graph holds plain quantised weights
    instead of the rounding ops; exports run on fresh or copied networks (``to_onnx``, ``nas train``).
    """
    bits = getattr(module, "q_bits", FULL)
    if bits >= FULL:
        return module.weight
    if torch.onnx.is_in_onnx_export():
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            with torch.no_grad():
                module.weight.copy_(fake_quant(module.weight, bits))
        finally:
            torch._C._set_tracing_state(state)
        return module.weight
    return fake_quant(module.weight, bits)


class QuantConv1d(nn.Conv1d):
    """``nn.Conv1d`` computing with its ``q_bits``-bit weight."""

    q_bits: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, quantised_weight(self), self.bias)


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` computing with its ``q_bits``-bit weight."""

    q_bits: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, quantised_weight(self), self.bias)


class QuantLinear(nn.Linear):
    """``nn.Linear`` computing with its ``q_bits``-bit weight."""

    q_bits: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, quantised_weight(self), self.bias)


class QuantEmbedding(nn.Embedding):
    """``nn.Embedding`` looking up its ``q_bits``-bit table (one scale per row)."""

    q_bits: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, quantised_weight(self), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


_QUANTISED: dict[type, type] = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear,
                                nn.Embedding: QuantEmbedding}


def quantise(module: nn.Module, bits: int) -> nn.Module:
    """Make every conv / linear / embedding in ``module`` compute with ``bits``-bit weights (in place).

    The layers change class to their quantised subclass rather than being replaced or parametrised, so
    parameters, state-dict keys and ``m.weight`` (a leaf whose ``.grad`` proxies read) stay as they were.
    """
    if bits >= FULL:
        return module
    for m in module.modules():
        cls = _QUANTISED.get(type(m))
        if cls is None and type(m) in _QUANTISED.values():
            cls = type(m)
        if cls is not None:
            m.__class__ = cls
            m.q_bits = int(bits)
    return module


def quantised_layers(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` whose weight is quantised (those with ``q_bits`` below 32)."""
    return [m for m in model.modules() if getattr(m, "q_bits", FULL) < FULL]


@dataclass(frozen=True)
class QArch:
    """A base architecture and the weight bit-width of each of the base space's layer groups."""

    base: Arch
    bits: tuple[int, ...]


class MixedPrecisionSpace:
    """A base space whose architectures also choose the weight bit-width of each layer group.

    Plain attributes (``input_shape``, ``search_defaults``, ...) are the base's; the base's methods that
    take an architecture are not reachable except through this class, so none ever sees a :class:`QArch`
    (a capability the wrapper lacks, such as a weight-sharing supernet, is simply absent).

    Example:
        >>> space = MixedPrecisionSpace(search_spaces.get("fbnet", num_classes=10))
        >>> arch = space.sample(np.random.default_rng(0))
        >>> space.to_string(arch).split(" q=")[1].count(",") + 1 == len(space.groups)
        True
    """

    def __init__(self, base: SearchSpace) -> None:
        for method in ("precision_groups", "precision_layers"):
            if not callable(getattr(base, method, None)):
                raise ValueError(f"space {base.name!r} names no layer groups ({method}); precision=mixed "
                                 "works with ofa, fbnet, bert and vit")
        self.base = base
        self.precision = "mixed"
        self.groups: tuple[tuple[str, tuple[int, ...]], ...] = tuple(
            (str(n), tuple(int(b) for b in bits)) for n, bits in base.precision_groups())
        self.name = base.name
        self.description = f"{base.description}; per-layer weight bits (mixed precision)"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "base":
            raise AttributeError(name)
        value = getattr(self.base, name)
        if name in _ARCH_METHODS:
            return lambda arch: value(self._check(arch).base)
        if callable(value):
            raise AttributeError(f"{type(self.base).__name__}.{name} takes the base space's architectures; "
                                 f"the mixed-precision {self.name} space does not provide {name!r}")
        return value

    def __repr__(self) -> str:
        return f"MixedPrecisionSpace({self.base!r})"

    @property
    def cardinality(self) -> int:
        """Base architectures times bit choices of every group (an upper bound where groups go unused)."""
        return int(self.base.cardinality) * math.prod(len(bits) for _, bits in self.groups)

    def _canonical(self, base: Arch, bits: Sequence[int]) -> QArch:
        """Bits of the groups ``base`` does not use set to 32, so that equal networks are equal values."""
        used = self.base.precision_layers(base)
        return QArch(base, tuple(int(b) if name in used else FULL
                                 for (name, _), b in zip(self.groups, bits, strict=True)))

    def _check(self, arch: Any) -> QArch:
        if not isinstance(arch, QArch):
            raise ArchError(f"the mixed-precision {self.name} space takes a QArch (see from_string), "
                            f"got {type(arch).__name__}")
        return arch

    def used_groups(self, arch: QArch) -> list[int]:
        """Indices of the groups ``arch``'s base network uses."""
        used = self.base.precision_layers(self._check(arch).base)
        return [i for i, (name, _) in enumerate(self.groups) if name in used]

    def sample(self, rng: np.random.Generator) -> QArch:
        """A base architecture as the base samples it, and a uniform bit-width per group."""
        base = self.base.sample(rng)
        bits = [opts[int(rng.integers(len(opts)))] for _, opts in self.groups]
        return self._canonical(base, bits)

    def mutate(self, arch: QArch, rng: np.random.Generator) -> QArch:
        """Change one decision: half the time one used group's bit-width, else one of the base's."""
        arch = self._check(arch)
        slots = [i for i in self.used_groups(arch) if len(self.groups[i][1]) > 1]
        if slots and rng.random() < 0.5:
            i = slots[int(rng.integers(len(slots)))]
            choices = [b for b in self.groups[i][1] if b != arch.bits[i]]
            bits = list(arch.bits)
            bits[i] = choices[int(rng.integers(len(choices)))]
            return QArch(arch.base, tuple(bits))
        return self._canonical(self.base.mutate(arch.base, rng), arch.bits)

    def crossover(self, a: QArch, b: QArch, rng: np.random.Generator) -> QArch:
        """The base's crossover of the base architectures, uniform crossover of the bit-widths."""
        if not callable(getattr(self.base, "crossover", None)):
            raise NotImplementedError(f"space {self.name!r} has no crossover")
        a, b = self._check(a), self._check(b)
        base = self.base.crossover(a.base, b.base, rng)
        take = rng.random(len(self.groups)) < 0.5
        return self._canonical(base, [x if t else y for x, y, t in zip(a.bits, b.bits, take, strict=True)])

    def to_string(self, arch: QArch) -> str:
        """The base string, a space and ``q=`` with one bit-width per group, e.g. ``[...] q=8,4,32``."""
        arch = self._check(arch)
        return f"{self.base.to_string(arch.base)} q={','.join(map(str, arch.bits))}"

    def from_string(self, text: str) -> QArch:
        """Parse ``BASE q=B1,B2,...``; errors name the group and its allowed bits (a plain base: all 32)."""
        if not isinstance(text, str):
            raise ArchError(f"a mixed-precision {self.name} arch is a string, got {type(text).__name__}")
        base_text, sep, bits_text = text.rpartition("q=")
        if not sep:  # a plain base string: the fp32 network
            base = self.base.from_string(text)
            return QArch(base, (FULL,) * len(self.groups))
        base = self.base.from_string(base_text.strip())
        names = [n for n, _ in self.groups]
        parts = [p.strip() for p in bits_text.split(",")]
        if len(parts) != len(self.groups):
            raise ArchError(f"q= needs {len(self.groups)} bit-widths, one per layer group "
                            f"({', '.join(names)}), got {len(parts)}: {bits_text.strip()!r}")
        used = self.base.precision_layers(base)
        bits = []
        for i, ((name, opts), part) in enumerate(zip(self.groups, parts, strict=True)):
            try:
                b = int(part)
            except ValueError:
                b = None
            # unused groups accept any listed width (canonically 32), as OFA accepts any ks of unused blocks
            if b not in opts:
                raise ArchError(f"q[{i}] (group {name}) = {part!r}: bits must be in "
                                f"{{{', '.join(map(str, opts))}}}")
            bits.append(b if name in used else FULL)
        return QArch(base, tuple(bits))

    def encode(self, arch: QArch) -> np.ndarray:
        """The base's encoding, then one-hot bits of each used group (zeros for unused groups)."""
        arch = self._check(arch)
        used = set(self.used_groups(arch))
        code = [np.asarray(self.base.encode(arch.base), dtype=np.float32)]
        for i, ((_, opts), b) in enumerate(zip(self.groups, arch.bits, strict=True)):
            one = np.zeros(len(opts), dtype=np.float32)
            if i in used:
                one[opts.index(b)] = 1.0
            code.append(one)
        return np.concatenate(code)

    def decisions(self) -> list[tuple[str, Sequence[Any]]]:
        """The base's decisions, then ``q_<group>`` per group (bits of unused groups are ignored)."""
        return [*self.base.decisions(), *((f"q_{name}", opts) for name, opts in self.groups)]

    def from_choices(self, choices: Sequence[int]) -> QArch:
        """Architecture from one option index per decision."""
        n = len(choices) - len(self.groups)
        base = self.base.from_choices(choices[:n])
        return self._canonical(base, [opts[int(c)] for (_, opts), c in zip(self.groups, choices[n:], strict=True)])

    def to_choices(self, arch: QArch) -> list[int]:
        """Option index per decision of ``arch``."""
        arch = self._check(arch)
        return [*self.base.to_choices(arch.base),
                *(opts.index(b) for (_, opts), b in zip(self.groups, arch.bits, strict=True))]

    def suggest(self, trial: Any) -> QArch:
        """The base's suggestion, then ``q_<group>`` for the groups it uses (define-by-run)."""
        base = self.base.suggest(trial)
        used = self.base.precision_layers(base)
        bits = [trial.suggest_categorical(f"q_{name}", list(opts)) if name in used else FULL
                for name, opts in self.groups]
        return QArch(base, tuple(int(b) for b in bits))

    def build(self, arch: QArch, num_classes: int | None = None,
              input_shape: tuple[int, ...] | None = None) -> nn.Module:
        """The base network with each group's weights fake-quantised to its bits."""
        arch = self._check(arch)
        model = self.base.build(arch.base, num_classes=num_classes, input_shape=input_shape)
        used = self.base.precision_layers(arch.base)
        for (name, _), bits in zip(self.groups, arch.bits, strict=True):
            for path in used.get(name, ()):
                quantise(model.get_submodule(path), bits)
        return model

    def to_onnx(self, arch: QArch, path: str | os.PathLike[str]) -> str:
        """Export the quantised network with the base's example input (image or int64 tokens)."""
        arch = self._check(arch)
        model = self.build(arch)
        if getattr(self.base, "input_kind", "image") == "tokens":
            from search_spaces.seq_common import export_tokens_onnx

            return export_tokens_onnx(model, self.base.seq_len, path)
        own = getattr(self.base, "arch_input_shape", None)
        shape = tuple(own(arch.base)) if own is not None else tuple(self.base.input_shape)
        return export_onnx(model, torch.zeros(1, *shape), path)


def with_precision(space: SearchSpace, precision: str = "fp32") -> SearchSpace:
    """``space`` itself for ``precision="fp32"``, its :class:`MixedPrecisionSpace` for ``"mixed"``."""
    if precision == "fp32":
        return space
    if precision != "mixed":
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return MixedPrecisionSpace(space)
