"""Chains of layers that grow by function-preserving transformations (Net2Net, as used by EAS).

A chain is a sequence of units, written comma-separated:

- ``c{k}-{w}``: a k x k convolution with ``w`` filters, BatchNorm, ReLU (plain CNN, as EAS's start nets);
- ``p`` / ``a``: 2 x 2 max / average pooling;
- ``d{k}-{g1}.{g2}...``: a DenseNet block of pre-activation layers (BN, ReLU, k x k convolution with
  ``g_i`` filters), each layer reading the concatenation of the block's input and every earlier layer;
- ``r{k}-{w}``: a residual basic block (two k x k conv-BN, the second without ReLU, plus the input, or
  its 1x1 conv-BN projection when the width changes, then ReLU; He et al. 2016), for ResNet-like chains;
- ``f-{u}``: after global average pooling, a fully connected layer of ``u`` units with ReLU.

The classifier is a linear layer after the last unit. ``c3-16,c3-16,p,c3-32,c3-32,p,f-64`` is a plain
network; ``c3-24,d3-12.12.12,c1-30,a,d3-12.12.12`` a small DenseNet.

:func:`wider` (Net2WiderNet) and :func:`deeper` (Net2DeeperNet) return the transformed architecture with
a network that computes the same function as the given one: replicated units copy their incoming weights
and BatchNorm statistics and their consumers divide the outgoing weights by the replication count;
inserted layers start as the identity (a conv with a centred identity kernel and an identity BatchNorm,
after a ReLU output, so that the new ReLU changes nothing), and a layer added to a dense block starts
with zero outgoing weights. Exact in eval mode (BatchNorm from running statistics) up to float rounding.
Source: Chen, Goodfellow & Shlens, "Net2Net" (ICLR 2016); Cai et al., "Efficient Architecture Search by
Network Transformation" (AAAI 2018).

Example:
    >>> import torch, search_spaces
    >>> space = search_spaces.get("chain")
    >>> arch = space.from_string("c3-8,p,c3-16,f-32")
    >>> net = space.build(arch).eval()
    >>> arch2, net2 = wider(space, arch, net, unit=0, width=12)
    >>> space.to_string(arch2)
    'c3-12,p,c3-16,f-32'
    >>> x = torch.randn(2, 3, 32, 32)
    >>> bool((net(x) - net2.eval()(x)).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError, default_to_onnx, suggest_choices


@dataclass(frozen=True)
class Unit:
    """One unit of a chain: ``kind`` is ``conv``, ``res``, ``maxpool``, ``avgpool``, ``dense`` or ``fc``."""

    kind: str
    kernel: int = 0
    widths: tuple[int, ...] = ()  # conv/fc: (width,); dense: one growth per layer

    def __str__(self) -> str:
        if self.kind == "conv":
            return f"c{self.kernel}-{self.widths[0]}"
        if self.kind == "res":
            return f"r{self.kernel}-{self.widths[0]}"
        if self.kind == "dense":
            return f"d{self.kernel}-" + ".".join(str(g) for g in self.widths)
        if self.kind == "fc":
            return f"f-{self.widths[0]}"
        return "p" if self.kind == "maxpool" else "a"


ChainArch = tuple[Unit, ...]

_UNIT = re.compile(r"^(?:([cr])(\d+)-(\d+)|d(\d+)-(\d+(?:\.\d+)*)|f-(\d+)|(p)|(a))$")
MAX_UNITS = 32
"""Longest chain :meth:`ChainSpace.encode` represents (EAS grows nets to about 20 layers)."""


def parse_unit(token: str, position: int) -> Unit:
    """One unit from its token; the error names the position and the accepted forms."""
    m = _UNIT.match(token.strip())
    if not m:
        raise ArchError(f"unit {position} {token!r}: expected c<kernel>-<width>, r<kernel>-<width>, "
                        "d<kernel>-<g1>.<g2>..., f-<units>, p (max pool) or a (average pool)")
    conv, conv_k, conv_w, dense_k, growths, fc, maxpool, _ = m.groups()
    if conv is not None:
        unit = Unit("conv" if conv == "c" else "res", int(conv_k), (int(conv_w),))
    elif dense_k is not None:
        unit = Unit("dense", int(dense_k), tuple(int(g) for g in growths.split(".")))
    elif fc is not None:
        unit = Unit("fc", 0, (int(fc),))
    else:
        unit = Unit("maxpool" if maxpool else "avgpool")
    if unit.kernel and unit.kernel % 2 == 0:
        raise ArchError(f"unit {position} {token!r}: the kernel must be odd (1, 3, 5, 7) to keep the map size")
    if any(w < 1 for w in unit.widths):
        raise ArchError(f"unit {position} {token!r}: widths must be positive")
    return unit


def check_chain(units: Sequence[Unit]) -> ChainArch:
    """Validate the order of units: a conv or dense unit first, fully connected units only at the end."""
    units = tuple(units)
    if not units or units[0].kind not in ("conv", "res", "dense"):
        raise ArchError("a chain starts with a conv (c<k>-<w>), residual (r<k>-<w>) or dense (d<k>-<g>...) unit")
    if len(units) > MAX_UNITS:
        raise ArchError(f"a chain has at most {MAX_UNITS} units, got {len(units)}")
    first_fc = next((i for i, u in enumerate(units) if u.kind == "fc"), len(units))
    late = [i for i, u in enumerate(units[first_fc:], first_fc) if u.kind != "fc"]
    if late:
        raise ArchError(f"unit {late[0]} {units[late[0]]}: fully connected units (f-<units>) come after every "
                        "convolution, dense block and pooling")
    return units


class ConvUnit(nn.Module):
    """Convolution (no bias), BatchNorm, ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class ResidualUnit(nn.Module):
    """ResNet's basic block: conv-BN-ReLU, conv-BN, plus the input (or its 1x1 projection), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class DenseLayer(nn.Module):
    """DenseNet's pre-activation layer: BatchNorm, ReLU, convolution; its output is concatenated."""

    def __init__(self, c_in: int, growth: int, kernel: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.bn(x)))


class DenseBlock(nn.Module):
    """Layers that each read the concatenation of the block's input and every earlier layer's output."""

    def __init__(self, c_in: int, growths: Sequence[int], kernel: int) -> None:
        super().__init__()
        widths = [c_in + sum(growths[:i]) for i in range(len(growths))]
        self.layers = nn.ModuleList(DenseLayer(w, g, kernel) for w, g in zip(widths, growths, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


def unit_channels(arch: ChainArch, in_channels: int) -> list[int]:
    """Channels (or units) each unit of ``arch`` outputs, given the input's channels."""
    out, c = [], in_channels
    for u in arch:
        c = u.widths[0] if u.kind in ("conv", "res", "fc") else c + sum(u.widths) if u.kind == "dense" else c
        out.append(c)
    return out


class ChainNet(nn.Module):
    """The network of a chain: spatial units, global average pooling, fully connected units, classifier."""

    def __init__(self, arch: ChainArch, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.num_classes, self.input_shape = num_classes, tuple(input_shape)  # what a transformation rebuilds
        c, h, w = input_shape
        pools = sum(u.kind in ("maxpool", "avgpool") for u in arch)
        if min(h, w) >> pools == 0:
            raise ArchError(f"{pools} poolings halve a {h}x{w} input below one pixel; use at most "
                            f"{int(math.log2(min(h, w)))}")
        units: list[nn.Module] = []
        fcs: list[nn.Module] = []
        for u in arch:
            if u.kind == "conv":
                units.append(ConvUnit(c, u.widths[0], u.kernel))
            elif u.kind == "res":
                units.append(ResidualUnit(c, u.widths[0], u.kernel))
            elif u.kind == "dense":
                units.append(DenseBlock(c, u.widths, u.kernel))
            elif u.kind in ("maxpool", "avgpool"):
                units.append(nn.MaxPool2d(2) if u.kind == "maxpool" else nn.AvgPool2d(2))
            else:
                fcs.append(nn.Linear(c, u.widths[0]))
            c = unit_channels((u,), c)[0]
        self.units = nn.ModuleList(units)
        self.fcs = nn.ModuleList(fcs)
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global average pooling."""
        for unit in self.units:
            x = unit(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling, the fully connected units, the classifier."""
        h = features.mean(dim=(2, 3))
        for fc in self.fcs:
            h = torch.relu(fc(h))
        return self.classifier(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register("chain")
class ChainSpace:
    """Plain or DenseNet-style chains (EAS's start networks), grown by :func:`wider` and :func:`deeper`.

    Sampling and the Optuna decisions use a grid: ``style="plain"``: three stages separated by max
    pooling, 1-3 conv layers each with kernel {1, 3, 5} and width {16, 32, 48, 64}, then 0, 64 or 128
    fully connected units; ``style="dense"``: a 3x3 stem of twice the growth, three dense blocks of 2-4
    layers with growth {8, 12, 16}, and DenseNet-BC transitions (1x1 conv halving the channels, average
    pooling). Strings accept any widths and lengths (up to 32 units), so grown networks stay valid.

    Args:
        style: ``plain`` or ``dense``, the family that ``sample``/``mutate``/``suggest`` draw from.
        num_classes: classifier width.
        input_shape: image (C, H, W).
    """

    name = "chain"
    description = "plain or DenseNet-style chains of conv/dense/pool/fc units, grown by Net2Net (EAS)"
    input_kind = "image"
    KERNELS: tuple[int, ...] = (1, 3, 5)
    WIDTHS: tuple[int, ...] = (16, 32, 48, 64)
    FC_UNITS: tuple[int, ...] = (0, 64, 128)
    GROWTHS: tuple[int, ...] = (8, 12, 16)
    STAGES = 3
    MAX_DEPTH = 3
    DENSE_LAYERS: tuple[int, ...] = (2, 3, 4)

    def __init__(self, style: str = "plain", num_classes: int = 10,
                 input_shape: tuple[int, int, int] = (3, 32, 32)) -> None:
        if style not in ("plain", "dense"):
            raise ValueError(f"chain style {style!r}: valid styles are plain, dense")
        self.style = style
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)

    @property
    def cardinality(self) -> int:
        """Number of grid architectures of the style (strings may name many more)."""
        if self.style == "plain":
            layer = len(self.KERNELS) * len(self.WIDTHS)
            return sum(layer ** d for d in range(1, self.MAX_DEPTH + 1)) ** self.STAGES * len(self.FC_UNITS)
        return (len(self.DENSE_LAYERS) * len(self.GROWTHS)) ** self.STAGES

    def decisions(self) -> list[tuple[str, Sequence[Any]]]:
        """Per stage: depth, then kernel and width of each layer slot (plain); layers and growth (dense)."""
        out: list[tuple[str, Sequence[Any]]] = []
        for s in range(self.STAGES):
            if self.style == "plain":
                out.append((f"depth_{s}", tuple(range(1, self.MAX_DEPTH + 1))))
                for j in range(self.MAX_DEPTH):
                    out += [(f"kernel_{s}_{j}", self.KERNELS), (f"width_{s}_{j}", self.WIDTHS)]
            else:
                out += [(f"layers_{s}", self.DENSE_LAYERS), (f"growth_{s}", self.GROWTHS)]
        if self.style == "plain":
            out.append(("fc", self.FC_UNITS))
        return out

    def from_choices(self, choices: Sequence[int]) -> ChainArch:
        """The grid architecture of one option index per decision."""
        values = [options[int(c)] for (_, options), c in zip(self.decisions(), choices, strict=True)]
        units: list[Unit] = []
        if self.style == "plain":
            per_stage = 1 + 2 * self.MAX_DEPTH
            for s in range(self.STAGES):
                depth, *slots = values[s * per_stage:(s + 1) * per_stage]
                units += [Unit("conv", slots[2 * j], (slots[2 * j + 1],)) for j in range(depth)]
                if s < self.STAGES - 1:
                    units.append(Unit("maxpool"))
            if values[-1]:
                units.append(Unit("fc", 0, (values[-1],)))
            return tuple(units)
        c = 2 * values[1]
        units.append(Unit("conv", 3, (c,)))
        for s in range(self.STAGES):
            layers, growth = values[2 * s], values[2 * s + 1]
            units.append(Unit("dense", 3, (growth,) * layers))
            c += growth * layers
            if s < self.STAGES - 1:
                c //= 2
                units += [Unit("conv", 1, (c,)), Unit("avgpool")]
        return tuple(units)

    def to_choices(self, arch: ChainArch) -> list[int]:
        """Option indices of a grid architecture; a grown (off-grid) chain raises ``ArchError``."""
        choices = self._grid_choices(arch)
        if choices is None or self.from_choices(choices) != arch:
            raise ArchError(f"{self.to_string(arch)} is not on the {self.style} grid that Optuna strategies "
                            "search (grown chains are only reachable by wider/deeper)")
        return choices

    def _grid_choices(self, arch: ChainArch) -> list[int] | None:
        decisions = self.decisions()
        index = {name: list(options) for name, options in decisions}
        value: dict[str, Any] = {}
        try:
            if self.style == "plain":
                stages, current = [], []
                fc = 0
                for u in arch:
                    if u.kind == "conv":
                        current.append(u)
                    elif u.kind == "maxpool":
                        stages.append(current)
                        current = []
                    elif u.kind == "fc" and fc == 0:
                        fc = u.widths[0]
                    else:
                        return None
                stages.append(current)
                if len(stages) != self.STAGES:
                    return None
                for s, layers in enumerate(stages):
                    value[f"depth_{s}"] = len(layers)
                    for j in range(self.MAX_DEPTH):
                        u = layers[j] if j < len(layers) else Unit("conv", self.KERNELS[0], (self.WIDTHS[0],))
                        value[f"kernel_{s}_{j}"], value[f"width_{s}_{j}"] = u.kernel, u.widths[0]
                value["fc"] = fc
            else:
                blocks = [u for u in arch if u.kind == "dense"]
                if len(blocks) != self.STAGES or any(len(set(b.widths)) != 1 for b in blocks):
                    return None
                for s, b in enumerate(blocks):
                    value[f"layers_{s}"], value[f"growth_{s}"] = len(b.widths), b.widths[0]
            return [index[name].index(value[name]) for name, _ in decisions]
        except ValueError:
            return None

    def sample(self, rng: np.random.Generator) -> ChainArch:
        """A grid architecture of the style, every decision uniform."""
        return self.from_choices([int(rng.integers(len(options))) for _, options in self.decisions()])

    def mutate(self, arch: ChainArch, rng: np.random.Generator) -> ChainArch:
        """Change one decision of a grid architecture (a grown chain: widen one unit to a grid width)."""
        try:
            choices = self.to_choices(arch)
        except ArchError:
            units = list(arch)
            i = int(rng.choice([k for k, u in enumerate(units) if u.kind in ("conv", "fc")]))
            u = units[i]
            units[i] = Unit(u.kind, u.kernel, (u.widths[0] + int(rng.choice(self.WIDTHS)),))
            return tuple(units)
        decisions = self.decisions()
        while True:
            k = int(rng.integers(len(decisions)))
            if len(decisions[k][1]) < 2:
                continue
            options = [c for c in range(len(decisions[k][1])) if c != choices[k]]
            new = list(choices)
            new[k] = int(rng.choice(options))
            child = self.from_choices(new)
            if child != arch:  # an unused plain slot changes nothing: draw again
                return child

    def crossover(self, a: ChainArch, b: ChainArch, rng: np.random.Generator) -> ChainArch:
        """Uniform crossover of the grid decisions of two architectures."""
        ca, cb = self.to_choices(a), self.to_choices(b)
        return self.from_choices([x if rng.random() < 0.5 else y for x, y in zip(ca, cb, strict=True)])

    def to_string(self, arch: ChainArch) -> str:
        """Comma-separated unit tokens."""
        return ",".join(str(u) for u in arch)

    def from_string(self, text: str) -> ChainArch:
        """Parse ``c3-16,p,d3-12.12,f-64``; errors name the bad unit."""
        if not isinstance(text, str) or not text.strip():
            raise ArchError("a chain is a comma-separated list of units, e.g. c3-16,c3-16,p,c3-32,f-64")
        return check_chain(parse_unit(t, i) for i, t in enumerate(text.split(",")))

    def encode(self, arch: ChainArch) -> np.ndarray:
        """Per unit slot (32): one-hot kind, kernel / 7, log2 of the width (sum of growths) / 8, layers / 8."""
        kinds = ("conv", "maxpool", "avgpool", "dense", "fc", "res")
        out = np.zeros((MAX_UNITS, len(kinds) + 3), dtype=np.float32)
        for i, u in enumerate(arch):
            out[i, kinds.index(u.kind)] = 1.0
            if u.widths:
                out[i, len(kinds):] = (u.kernel / 7, math.log2(sum(u.widths)) / 8, len(u.widths) / 8)
        return out.ravel()

    def suggest(self, trial: Any) -> ChainArch:
        """Ask an Optuna trial for each grid decision."""
        return self.from_choices(suggest_choices(self, trial))

    def build(self, arch: ChainArch, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None) -> ChainNet:
        """The freshly initialised network of ``arch``."""
        return ChainNet(check_chain(arch), num_classes or self.num_classes, tuple(input_shape or self.input_shape))

    def to_onnx(self, arch: ChainArch, path: str | os.PathLike[str]) -> str:
        """Export at the space's input shape."""
        return default_to_onnx(self, arch, path)


# -- function-preserving transformations -------------------------------------------------------------------

Mapping = list[int | None]
"""New channel -> the old channel it copies, or None for a new channel whose consumers get zero weights."""

State = dict[str, torch.Tensor]
_BN_FRESH = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}


def _take_columns(weight: torch.Tensor, mapping: Mapping) -> torch.Tensor:
    """A consumer's weight with input dim 1 along ``mapping``: copied inputs split, new inputs zero."""
    counts = torch.zeros(weight.shape[1])
    for m in mapping:
        if m is not None:
            counts[m] += 1
    cols = [weight[:, m] / counts[m] if m is not None else torch.zeros_like(weight[:, 0]) for m in mapping]
    return torch.stack(cols, dim=1)


def _take_bn(state: State, prefix: str, mapping: Mapping) -> None:
    """Copy a BatchNorm's per-channel parameters along ``mapping`` (identity values for new channels)."""
    for key, fresh in _BN_FRESH.items():
        old = state[f"{prefix}.{key}"]
        state[f"{prefix}.{key}"] = torch.stack(
            [old[m] if m is not None else torch.tensor(fresh, dtype=old.dtype) for m in mapping])


def _through_dense(state: State, prefix: str, growths: Sequence[int], mapping: Mapping, old_in: int,
                   first: int = 0) -> Mapping:
    """Rewrite dense layers ``first``, ``first + 1``.. (of ``growths``) whose block input follows ``mapping``
    (``old_in`` old channels); returns the mapping of the block's output."""
    for j, growth in enumerate(growths, first):
        _take_bn(state, f"{prefix}.layers.{j}.bn", mapping)
        key = f"{prefix}.layers.{j}.conv.weight"
        state[key] = _take_columns(state[key], mapping)
        mapping = mapping + list(range(old_in, old_in + growth))
        old_in += growth
    return mapping


def _propagate(state: State, arch: ChainArch, start: int, mapping: Mapping) -> None:
    """Rewrite the consumers of spatial unit ``start - 1``, whose output channels now follow ``mapping``:
    dense blocks pass the mapping on through their concatenation; a conv unit or the head absorbs it."""
    spatial = [u for u in arch if u.kind != "fc"]
    for i in range(start, len(spatial)):
        u = spatial[i]
        if u.kind == "conv":
            state[f"units.{i}.conv.weight"] = _take_columns(state[f"units.{i}.conv.weight"], mapping)
            return
        if u.kind == "res":
            raise ValueError(f"unit {i} ({u}) is a residual block: widening what feeds it is not supported "
                             "(its shortcut would carry the copies on); widen a unit that feeds a conv or dense unit")
        if u.kind == "dense":
            old_in = len(state[f"units.{i}.layers.0.bn.weight"])
            mapping = _through_dense(state, f"units.{i}", u.widths, mapping, old_in)
    head = "fcs.0" if arch[-1].kind == "fc" else "classifier"
    state[f"{head}.weight"] = _take_columns(state[f"{head}.weight"], mapping)


def _like(space: ChainSpace, arch: ChainArch, like: ChainNet) -> ChainNet:
    """A fresh network of ``arch`` with ``like``'s classes and input shape."""
    return space.build(arch, num_classes=like.num_classes, input_shape=like.input_shape)


def _finish(space: ChainSpace, arch: ChainArch, state: State, like: ChainNet) -> ChainNet:
    """The network of ``arch`` holding ``state``, in ``like``'s mode and on its device."""
    net = _like(space, arch, like)
    net.load_state_dict(state)
    net.train(like.training)
    return net.to(next(like.parameters()).device)


def _count(arch: ChainArch, stop: int, fc: bool) -> int:
    """Index of unit ``stop`` among the network's fc units (``fc``) or its spatial units."""
    return sum((u.kind == "fc") == fc for u in arch[:stop])


def _state(net: ChainNet) -> State:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def wider(space: ChainSpace, arch: ChainArch, net: ChainNet, unit: int, width: int, layer: int | None = None,
          noise: float = 0.0, seed: int = 0) -> tuple[ChainArch, ChainNet]:
    """Net2WiderNet: ``unit`` (a conv or fc unit, or ``layer`` of a dense block) gets ``width`` outputs.

    The new outputs copy randomly drawn existing ones (incoming weights, bias, BatchNorm statistics) and
    every consumer divides its weights for a copied output by the number of copies, so the function is
    unchanged; ``noise`` (a fraction of the weights' standard deviation) perturbs the copies' incoming
    weights to break their symmetry, as Net2Net suggests, at the cost of exactness. ``net`` is not modified.
    """
    arch = check_chain(arch)
    growable = [i for i, u in enumerate(arch) if u.kind in ("conv", "fc", "dense")]
    if unit not in growable:
        raise ValueError(f"unit {unit} cannot be widened; widen one of "
                         + ", ".join(f"{i} ({arch[i]})" for i in growable))
    u = arch[unit]
    if (u.kind == "dense") != (layer is not None):
        raise ValueError("give layer= (which of its layers grows) for a dense block, and only for one")
    slot = layer if layer is not None else 0
    if not 0 <= slot < len(u.widths):
        raise ValueError(f"dense block {unit} has layers 0..{len(u.widths) - 1}, got layer={layer}")
    old = u.widths[slot]
    if width <= old:
        raise ValueError(f"wider needs a width above the current {old}, got {width}")
    rng = np.random.default_rng(seed)
    mapping: Mapping = list(range(old)) + [int(v) for v in rng.integers(0, old, width - old)]
    widths = list(u.widths)
    widths[slot] = width
    new_arch = arch[:unit] + (Unit(u.kind, u.kernel, tuple(widths)),) + arch[unit + 1:]
    state = _state(net)

    def grow(prefix: str) -> None:
        for key in ("weight", "bias"):
            if f"{prefix}.{key}" in state:
                state[f"{prefix}.{key}"] = state[f"{prefix}.{key}"][mapping]
        if noise:
            w = state[f"{prefix}.weight"]
            w[old:] += noise * w.std() * torch.from_numpy(rng.standard_normal(tuple(w[old:].shape))).to(w.dtype)

    if u.kind == "fc":
        i = _count(arch, unit, fc=True)
        grow(f"fcs.{i}")
        nxt = f"fcs.{i + 1}" if unit + 1 < len(arch) else "classifier"
        state[f"{nxt}.weight"] = _take_columns(state[f"{nxt}.weight"], mapping)
        return new_arch, _finish(space, new_arch, state, net)
    s = _count(arch, unit, fc=False)
    if u.kind == "conv":
        grow(f"units.{s}.conv")
        _take_bn(state, f"units.{s}.bn", mapping)
        _propagate(state, arch, s + 1, mapping)
        return new_arch, _finish(space, new_arch, state, net)
    prefix = f"units.{s}"
    grow(f"{prefix}.layers.{slot}.conv")
    start = len(state[f"{prefix}.layers.0.bn.weight"]) + sum(u.widths[:slot])  # old channel of its outputs
    inside: Mapping = list(range(start)) + [start + m for m in mapping]  # type: ignore[operator]
    out = _through_dense(state, prefix, u.widths[slot + 1:], inside, start + old, first=slot + 1)
    _propagate(state, arch, s + 1, out)
    return new_arch, _finish(space, new_arch, state, net)


def deeper(space: ChainSpace, arch: ChainArch, net: ChainNet, after: int, kind: str | None = None,
           kernel: int = 3, growth: int | None = None) -> tuple[ChainArch, ChainNet]:
    """Net2DeeperNet: insert an identity layer after unit ``after``, or grow a dense block by one layer.

    ``kind="conv"`` (the default after a conv, residual or pooling unit) inserts ``c<kernel>-<channels>``
    with a centred identity kernel and a BatchNorm that passes its input through in eval mode; the input
    is a ReLU output, so the new ReLU keeps it. ``kind="res"`` inserts a residual block whose branch ends
    in a zero BatchNorm scale, so that it adds nothing to its identity shortcut. ``kind="fc"`` (the default after an fc unit; also allowed after
    the last spatial unit) inserts an fc unit with the identity matrix. ``kind="dense"`` (the default after
    a dense block) gives the block one more layer (``growth`` filters, its last layer's by default) whose outputs its consumers weigh
    zero. The function is unchanged; ``net`` is not modified.
    """
    arch = check_chain(arch)
    if not 0 <= after < len(arch):
        raise ValueError(f"after={after}: the chain has units 0..{len(arch) - 1}")
    u = arch[after]
    state = _state(net)
    channels = unit_channels(arch, net.input_shape[0])[after]
    kind = kind or {"dense": "dense", "fc": "fc"}.get(u.kind, "conv")
    if (kind == "dense") != (u.kind == "dense"):
        raise ValueError(f"unit {after} is {u}: a dense block grows by a layer (kind='dense'), and only it")
    if kind == "dense":
        g = growth or u.widths[-1]
        new_arch = arch[:after] + (Unit("dense", u.kernel, u.widths + (g,)),) + arch[after + 1:]
        s = _count(arch, after, fc=False)
        new_layer = f"units.{s}.layers.{len(u.widths)}."
        state.update({k: v for k, v in _like(space, new_arch, net).state_dict().items() if k.startswith(new_layer)})
        _propagate(state, arch, s + 1, list(range(channels)) + [None] * g)
        return new_arch, _finish(space, new_arch, state, net)
    last_spatial = after + 1 == len(arch) or arch[after + 1].kind == "fc"
    if kind not in ("conv", "res", "fc") or (kind in ("conv", "res") and u.kind == "fc") or (
            kind == "fc" and u.kind != "fc" and not last_spatial):
        raise ValueError(f"cannot insert a {kind!r} unit after unit {after} ({u}): conv and res units go after "
                         "conv, res or pooling units, fc units after fc units or the last spatial unit")
    if not relu_output(arch, after):
        raise ValueError(f"unit {after} ({u}) may output negative values (a dense block's concatenation), so "
                         "an inserted ReLU layer would change the function; grow the dense block instead")
    if kind in ("conv", "res") and kernel % 2 == 0:
        raise ValueError(f"kernel {kernel}: an inserted conv needs an odd kernel")
    new_unit = Unit("fc", 0, (channels,)) if kind == "fc" else Unit(kind, kernel, (channels,))
    new_arch = arch[:after + 1] + (new_unit,) + arch[after + 1:]
    group = "fcs" if kind == "fc" else "units"
    index = _count(arch, after + 1, fc=kind == "fc")
    shifted: State = {}
    for key, value in state.items():  # units (or fcs) from ``index`` on move one place down
        head, _, rest = key.partition(".")
        position, _, tail = rest.partition(".")
        if head == group and int(position) >= index:
            key = f"{head}.{int(position) + 1}.{tail}"
        shifted[key] = value
    eye = torch.eye(channels)
    if kind == "fc":
        shifted.update({f"fcs.{index}.weight": eye, f"fcs.{index}.bias": torch.zeros(channels)})
    elif kind == "res":
        # a fresh block whose residual branch ends in a zero BatchNorm scale: ReLU(0 + x) = x for x >= 0
        fresh = _like(space, new_arch, net).state_dict()
        shifted.update({k: v for k, v in fresh.items() if k.startswith(f"units.{index}.")})
        shifted[f"units.{index}.bn2.weight"] = torch.zeros(channels)
    else:
        weight = torch.zeros(channels, channels, kernel, kernel)
        weight[:, :, kernel // 2, kernel // 2] = eye
        eps = 1e-5  # nn.BatchNorm2d's default, which ConvUnit uses
        # running_var + eps == 1 and mean 0: the eval-mode BatchNorm multiplies by 1 and adds 0
        shifted.update({f"units.{index}.conv.weight": weight, f"units.{index}.bn.weight": torch.ones(channels),
                        f"units.{index}.bn.bias": torch.zeros(channels),
                        f"units.{index}.bn.running_mean": torch.zeros(channels),
                        f"units.{index}.bn.running_var": torch.full((channels,), 1.0 - eps),
                        f"units.{index}.bn.num_batches_tracked": torch.tensor(0)})
    return new_arch, _finish(space, new_arch, shifted, net)


def relu_output(arch: ChainArch, unit: int) -> bool:
    """Whether unit ``unit``'s output is a ReLU output (pooling keeps the sign of its input)."""
    for u in reversed(arch[:unit + 1]):
        if u.kind in ("conv", "res", "fc"):
            return True
        if u.kind == "dense":
            return False
    return False
