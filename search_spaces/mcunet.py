"""MCUNet / TinyNAS MobileNetV2-style space for microcontrollers (Lin et al., NeurIPS 2020).

TinyNAS first picks a width multiplier ``w`` and an input resolution ``r`` that fit the device, then
searches blocks inside that space. Here both are decisions of the architecture: ``w`` in {0.2, 0.3, 0.4,
.., 1.0} (TinyNAS's grid, plus 0.35 for the scaled MobileNetV2 baseline MCUNet compares with) and ``r``
in {48, 64, .., 224} (step 16, TinyNAS's grid). The backbone is the inverted-residual chain of
MobileNetV2 and of MCUNet's once-for-all supernet (``ofa_proxyless``): a 3x3 stride-2 stem, a fixed first
block (expand 1, 3x3), six stages with strides 2, 2, 2, 1, 2, 1, ReLU6 and BatchNorm throughout. Each of
the first five stages runs ``d`` in {2, 3, 4} blocks, the last stage one; every block picks a depthwise
kernel ``k`` in {3, 5, 7} and an expand ratio ``e`` in {3, 4, 5, 6} (MCUNet's released models use 5 too).
Channels are ``make_divisible(base * w, 8)``.

Two backbones (the space option ``backbone``):

* ``mbv2`` (default): MobileNetV2's widths 32, 16 | 24, 32, 64, 96, 160, 320 and its head, a 1x1 conv to
  ``make_divisible(1280 * w, 8)`` channels before pooling. MCUNet's baseline ``mbv2-w0.35-r144`` scales
  that head with the width too (its classifier reads 448 = 1280 x 0.35 features), which is what brings
  the parameters down to the published 0.75 M (an unscaled 1280-wide head, as torchvision keeps below
  width 1, would give 1.68 M).
* ``tinynas``: the ProxylessNAS widths 32, 16 | 24, 40, 80, 96, 192, 320 of MCUNet's supernet and no
  1x1 head (``no_mix_layer``): the classifier reads the last stage, as in MCUNet's released models.

Architecture string, six stages separated by ``/`` (a stage's depth is its number of blocks)::

    w0.35-r144:k3e6,k3e6/k3e6,k3e6,k3e6/k3e6,k3e6,k3e6,k3e6/k3e6,k3e6,k3e6/k3e6,k3e6,k3e6/k3e6

Model-zoo names are accepted as aliases (``from_string("mbv2-w0.35-r144")``, :meth:`MCUNetSpace.reference`);
all six rebuild to their published parameters and MACs within 0.7% (``experiments/mcunet_reference.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError, export_onnx
from search_spaces.mbv3_blocks import init_mobile_weights, make_divisible

WIDTH_MULTS: tuple[float, ...] = (0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RESOLUTIONS: tuple[int, ...] = tuple(range(48, 225, 16))
KERNELS: tuple[int, ...] = (3, 5, 7)
EXPANDS: tuple[int, ...] = (3, 4, 5, 6)
DEPTHS: tuple[int, ...] = (2, 3, 4)
N_STAGES = 6
STAGE_STRIDES = (2, 2, 2, 1, 2, 1)
STAGE_SLOTS = (4, 4, 4, 4, 4, 1)
"""Blocks each stage can hold: the first five take a depth in DEPTHS, the last always one block."""
N_SLOTS = sum(STAGE_SLOTS)
HEAD_WIDTH = 1280

# Stem, first block, then the six stages.
BACKBONES: dict[str, tuple[int, ...]] = {
    "mbv2": (32, 16, 24, 32, 64, 96, 160, 320),
    "tinynas": (32, 16, 24, 40, 80, 96, 192, 320),
}
HAS_HEAD_CONV = {"mbv2": True, "tinynas": False}

Block = tuple[int, int]
"""(kernel, expand ratio) of one block."""


@dataclass(frozen=True)
class MCUArch:
    """Width multiplier, resolution and the (kernel, expand) blocks of each of the six stages."""

    w: float
    r: int
    stages: tuple[tuple[Block, ...], ...]

    @property
    def depths(self) -> tuple[int, ...]:
        """Number of blocks of each stage."""
        return tuple(len(s) for s in self.stages)


def _uniform(k: int = 3, e: int = 6, depths: Sequence[int] = (2, 3, 4, 3, 3, 1)) -> tuple[tuple[Block, ...], ...]:
    return tuple(((k, e),) * d for d in depths)


def _stages(rows: str) -> tuple[tuple[Block, ...], ...]:
    """Stages from a compact ``e,k e,k/..`` listing of a released model (expand first, as MCUNet's configs)."""
    return tuple(tuple((int(b.split(",")[1]), int(b.split(",")[0])) for b in stage.split()) for stage in rows.split("/"))


# MCUNet's model zoo (github.com/mit-han-lab/mcunet, ImageNet): backbone, w, r, blocks. The MobileNetV2
# baselines are MobileNetV2's own layout (depths 2,3,4,3,3,1, kernel 3, expand 6); the MCUNet models are
# read from the released configs (expand ratio, kernel per block). Published: mbv2-w0.35-r144 23.5 M MACs,
# 0.75 M params; mbv2-w0.3-r80 7.3 M, 0.63 M; mcunet-5fps 12.8 M, 0.64 M; mcunet-256kB 67.3 M, 0.73 M;
# mcunet-320kB 81.8 M, 0.74 M; mcunet-512kB 125.9 M, 1.73 M.
REFERENCES: dict[str, tuple[str, float, int, tuple[tuple[Block, ...], ...]]] = {
    "mbv2-w0.35-r144": ("mbv2", 0.35, 144, _uniform()),
    "mbv2-w0.3-r80": ("mbv2", 0.3, 80, _uniform()),
    "mcunet-5fps": ("tinynas", 0.5, 96, _stages("4,3 3,3/3,7 5,3/5,3 4,7/4,5 3,3 4,3/5,7 4,5 4,5/6,3")),
    "mcunet-256kB": ("tinynas", 0.5, 160,
                     _stages("3,5 6,7 5,3 5,5/5,3 6,7 6,5/4,7 5,5/5,3 5,5 4,3/6,5 4,5 3,5 4,3/5,5")),
    "mcunet-320kB": ("tinynas", 0.5, 176,
                     _stages("3,7 5,3 5,7 4,5/5,5 5,5 5,5/5,3 6,7 4,5/5,5 5,7 5,3/6,3 5,7 4,3/5,7")),
    "mcunet-512kB": ("tinynas", 1.0, 160,
                     _stages("3,7 5,3 4,5/5,7 4,3 4,7/3,7 3,3 3,7/4,3 3,5 3,5/4,7 3,7 3,5/4,5")),
}
FORMAT = "w0.35-r144:k3e6,k3e6/k3e6,k3e6,k3e6/k3e6,k3e6,k3e6,k3e6/k3e6,k3e6,k3e6/k3e6,k3e6,k3e6/k3e6"


class ConvBNReLU6(nn.Sequential):
    """Conv (same padding, no bias) -> BatchNorm -> optional ReLU6, MobileNetV2's unit."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(c_out)]
        if act:
            layers.append(nn.ReLU6())
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (absent at expand 1), kxk depthwise, linear 1x1 project, and an
    identity shortcut when the stride is 1 and the width is kept."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = make_divisible(round(c_in * expand)) if expand != 1 else c_in
        self.expand = ConvBNReLU6(c_in, mid) if expand != 1 else None
        self.dw = ConvBNReLU6(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBNReLU6(mid, c_out, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output; the input is added back where the shapes agree."""
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return x + y if self.residual else y


class MCUNet(nn.Module):
    """Stem, first block, the six stages, optional 1x1 head conv, global pooling, dropout, classifier."""

    def __init__(self, arch: MCUArch, backbone: str = "mbv2", num_classes: int = 1000, dropout: float = 0.2,
                 in_channels: int = 3) -> None:
        super().__init__()
        widths = [make_divisible(c * arch.w) for c in BACKBONES[backbone]]
        self.stem = ConvBNReLU6(in_channels, widths[0], 3, 2)
        blocks: list[nn.Module] = [InvertedResidual(widths[0], widths[1], 3, 1, 1)]
        c = widths[1]
        for s, stage in enumerate(arch.stages):
            for j, (k, e) in enumerate(stage):
                blocks.append(InvertedResidual(c, widths[s + 2], k, STAGE_STRIDES[s] if j == 0 else 1, e))
                c = widths[s + 2]
        self.blocks = nn.Sequential(*blocks)
        if HAS_HEAD_CONV[backbone]:
            head = make_divisible(HEAD_WIDTH * arch.w)
            self.head_conv: nn.Module = ConvBNReLU6(c, head)
            c = head
        else:
            self.head_conv = nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(c, num_classes)
        init_mobile_weights(self, linear_std=0.01)  # MobileNetV2's


    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, H, W) map right before global pooling (after the 1x1 head conv, where there is one)."""
        return self.head_conv(self.blocks(self.stem(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the pre-pool feature map: global average pooling, dropout, classifier."""
        return self.classifier(self.dropout(torch.flatten(features.mean((2, 3)), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x``."""
        return self.forward_head(self.forward_features(x))


def _fmt_w(w: float) -> str:
    return f"{w:g}"


def _choices(values: Sequence[Any]) -> str:
    return ", ".join(_fmt_w(v) if isinstance(v, float) else str(v) for v in values)


@register("mcunet")
class MCUNetSpace:
    """MCUNet (TinyNAS) MobileNetV2-style space: width, resolution, per-stage depth, per-block kernel/expand.

    Args:
        backbone: ``mbv2`` (MobileNetV2 widths and 1x1 head, default) or ``tinynas`` (MCUNet's
            ProxylessNAS widths, no 1x1 head).
        num_classes: classifier width (1000 for ImageNet).
        width_mults: allowed width multipliers (default TinyNAS's 0.2..1.0 plus 0.35).
        resolutions: allowed input resolutions (default 48..224 step 16).
        dropout: classifier dropout.

    Example:
        >>> space = MCUNetSpace()
        >>> arch = space.reference("mbv2-w0.35-r144")
        >>> space.to_string(arch)
        'w0.35-r144:k3e6,k3e6/k3e6,k3e6,k3e6/k3e6,k3e6,k3e6,k3e6/k3e6,k3e6,k3e6/k3e6,k3e6,k3e6/k3e6'
        >>> space.build(arch)(torch.zeros(1, 3, 144, 144)).shape
        torch.Size([1, 1000])
    """

    name = "mcunet"
    description = ("MCUNet/TinyNAS MobileNetV2 space for microcontrollers: width 0.2-1.0, resolution 48-224, "
                   "depth 2-4 per stage, kernel 3/5/7, expand 3-6, ImageNet")

    def __init__(self, backbone: str = "mbv2", num_classes: int = 1000,
                 width_mults: Sequence[float] = WIDTH_MULTS, resolutions: Sequence[int] = RESOLUTIONS,
                 dropout: float = 0.2) -> None:
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        if not width_mults or any(not 0 < float(w) <= 2 for w in width_mults):
            raise ValueError(f"width_mults must be non-empty multipliers in (0, 2], got {list(width_mults)}")
        if not resolutions or any(int(r) < 32 for r in resolutions):
            raise ValueError(f"resolutions must be non-empty and at least 32 pixels, got {list(resolutions)}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.width_mults = tuple(sorted(float(w) for w in width_mults))
        self.resolutions = tuple(sorted(int(r) for r in resolutions))
        self.dropout = dropout
        self.input_shape = (3, max(self.resolutions), max(self.resolutions))

    # -- sizes and shapes -------------------------------------------------------------------------------

    @property
    def cardinality(self) -> int:
        """Widths x resolutions x (sum over depths of 12^d)^5 x 12 (the last stage's one block)."""
        per_block = len(KERNELS) * len(EXPANDS)
        per_stage = sum(per_block ** d for d in DEPTHS)
        return len(self.width_mults) * len(self.resolutions) * per_stage ** (N_STAGES - 1) * per_block

    def arch_input_shape(self, arch: MCUArch) -> tuple[int, int, int]:
        """The network's own input, ``(3, r, r)``."""
        return (3, arch.r, arch.r)

    # -- sampling and variation -------------------------------------------------------------------------

    def _block(self, rng: np.random.Generator) -> Block:
        return (KERNELS[int(rng.integers(len(KERNELS)))], EXPANDS[int(rng.integers(len(EXPANDS)))])

    def sample(self, rng: np.random.Generator) -> MCUArch:
        """Uniform width, resolution, depths and blocks."""
        w = self.width_mults[int(rng.integers(len(self.width_mults)))]
        r = self.resolutions[int(rng.integers(len(self.resolutions)))]
        depths = [DEPTHS[int(rng.integers(len(DEPTHS)))] for _ in range(N_STAGES - 1)] + [1]
        return MCUArch(w, r, tuple(tuple(self._block(rng) for _ in range(d)) for d in depths))

    def mutate(self, arch: MCUArch, rng: np.random.Generator) -> MCUArch:
        """Change one decision in use: w, r, one stage's depth (new blocks sampled), or one block's k or e."""
        slots: list[tuple[str, int, int]] = []
        if len(self.width_mults) > 1:
            slots.append(("w", 0, 0))
        if len(self.resolutions) > 1:
            slots.append(("r", 0, 0))
        slots += [("d", s, 0) for s in range(N_STAGES - 1)]
        slots += [(f, s, j) for s, stage in enumerate(arch.stages) for j in range(len(stage)) for f in ("k", "e")]
        kind, s, j = slots[int(rng.integers(len(slots)))]
        if kind in ("w", "r"):
            options = self.width_mults if kind == "w" else self.resolutions
            current = arch.w if kind == "w" else arch.r
            choices = [v for v in options if v != current]
            value = choices[int(rng.integers(len(choices)))]
            return MCUArch(value, arch.r, arch.stages) if kind == "w" else MCUArch(arch.w, value, arch.stages)
        stages = list(arch.stages)
        if kind == "d":
            depth = [d for d in DEPTHS if d != len(stages[s])][int(rng.integers(len(DEPTHS) - 1))]
            stages[s] = stages[s][:depth] + tuple(self._block(rng) for _ in range(depth - len(stages[s])))
        else:
            k, e = stages[s][j]
            if kind == "k":
                k = [v for v in KERNELS if v != k][int(rng.integers(len(KERNELS) - 1))]
            else:
                e = [v for v in EXPANDS if v != e][int(rng.integers(len(EXPANDS) - 1))]
            stages[s] = stages[s][:j] + ((k, e),) + stages[s][j + 1:]
        return MCUArch(arch.w, arch.r, tuple(stages))

    def crossover(self, a: MCUArch, b: MCUArch, rng: np.random.Generator) -> MCUArch:
        """Uniform crossover of w, r, each stage's depth and each block position both parents could hold."""
        w = a.w if rng.random() < 0.5 else b.w
        r = a.r if rng.random() < 0.5 else b.r
        stages = []
        for sa, sb in zip(a.stages, b.stages, strict=True):
            depth = len(sa) if rng.random() < 0.5 else len(sb)
            blocks = []
            for j in range(depth):
                pool = [s[j] for s in (sa, sb) if j < len(s)]
                blocks.append(pool[int(rng.integers(len(pool)))])
            stages.append(tuple(blocks))
        return MCUArch(w, r, tuple(stages))

    # -- strings ----------------------------------------------------------------------------------------

    def to_string(self, arch: MCUArch) -> str:
        """``w<mult>-r<res>:`` then the six stages' ``k<k>e<e>`` blocks, ``,`` within and ``/`` between."""
        body = "/".join(",".join(f"k{k}e{e}" for k, e in stage) for stage in arch.stages)
        return f"w{_fmt_w(arch.w)}-r{arch.r}:{body}"

    def from_string(self, text: str) -> MCUArch:
        """Parse the canonical string or a model-zoo name; errors name the bad part and what is allowed."""
        text = text.strip()
        if text in REFERENCES or text.lower() in {n.lower() for n in REFERENCES}:
            return self.reference(text)
        if ":" not in text:
            raise ArchError(f"an mcunet arch is 'w<mult>-r<res>:' and six '/'-separated stages of "
                            f"'k<kernel>e<expand>' blocks, e.g. {FORMAT!r}, or a model-zoo name "
                            f"({', '.join(REFERENCES)}); got {text[:80]!r}")
        head, body = text.split(":", 1)
        match = re.fullmatch(r"w([0-9.]+)-r([0-9]+)", head.strip())
        if not match:
            raise ArchError(f"header {head!r} must read 'w<mult>-r<res>', e.g. 'w0.35-r144'")
        try:
            w = float(match.group(1))
        except ValueError:
            raise ArchError(f"header {head!r}: width multiplier {match.group(1)!r} is not a number") from None
        stage_texts = body.split("/")
        if len(stage_texts) != N_STAGES:
            raise ArchError(f"got {len(stage_texts)} stages after the header; an mcunet arch has {N_STAGES}, "
                            f"separated by '/'")
        stages = []
        for s, stage_text in enumerate(stage_texts):
            tokens = [t.strip() for t in stage_text.split(",")] if stage_text.strip() else []
            blocks = []
            for j, token in enumerate(tokens):
                m = re.fullmatch(r"k([0-9]+)e([0-9]+)", token)
                if not m:
                    raise ArchError(f"stage {s + 1} block {j + 1}: {token!r} must read 'k<kernel>e<expand>', "
                                    f"e.g. 'k3e6'")
                blocks.append((int(m.group(1)), int(m.group(2))))
            stages.append(tuple(blocks))
        return self.check(MCUArch(w, int(match.group(2)), tuple(stages)))

    def check(self, arch: MCUArch) -> MCUArch:
        """``arch`` with w snapped to its allowed value, or an ``ArchError`` naming what is out of range."""
        if not isinstance(arch, MCUArch):
            raise ArchError(f"expected an MCUArch (see from_string), got {type(arch).__name__}")
        near = [v for v in self.width_mults if abs(v - float(arch.w)) < 1e-9]
        if not near:
            raise ArchError(f"width multiplier {_fmt_w(float(arch.w))} is not allowed; valid: "
                            f"{_choices(self.width_mults)}")
        if arch.r not in self.resolutions:
            raise ArchError(f"resolution {arch.r} is not allowed; valid: {_choices(self.resolutions)}")
        if len(arch.stages) != N_STAGES:
            raise ArchError(f"an mcunet arch has {N_STAGES} stages, got {len(arch.stages)}")
        for s, stage in enumerate(arch.stages):
            allowed = DEPTHS if s < N_STAGES - 1 else (1,)
            if len(stage) not in allowed:
                raise ArchError(f"stage {s + 1} has {len(stage)} blocks; allowed: {_choices(allowed)}")
            for j, (k, e) in enumerate(stage):
                if k not in KERNELS:
                    raise ArchError(f"stage {s + 1} block {j + 1}: kernel {k} is not allowed; valid: "
                                    f"{_choices(KERNELS)}")
                if e not in EXPANDS:
                    raise ArchError(f"stage {s + 1} block {j + 1}: expand ratio {e} is not allowed; valid: "
                                    f"{_choices(EXPANDS)}")
        return MCUArch(near[0], int(arch.r), tuple(tuple(stage) for stage in arch.stages))

    def reference(self, name: str) -> MCUArch:
        """A model-zoo network of MCUNet by name (``mbv2-w0.35-r144``, ``mcunet-320kB``, ...)."""
        key = {n.lower(): n for n in REFERENCES}.get(name.strip().lower())
        if key is None:
            raise ArchError(f"unknown reference {name!r}; known: {', '.join(REFERENCES)}")
        backbone, w, r, stages = REFERENCES[key]
        if backbone != self.backbone:
            raise ArchError(f"{key} is built on the {backbone!r} backbone, this space uses {self.backbone!r}: "
                            f"create it with backbone={backbone!r} (CLI: --space-option backbone={backbone})")
        return self.check(MCUArch(w, r, stages))

    # -- vectors and define-by-run ----------------------------------------------------------------------

    def encode(self, arch: MCUArch) -> np.ndarray:
        """Scaled w and r, one-hot depths of stages 1-5, one-hot k and e per block slot (zeros if unused)."""
        lo_w, hi_w = min(self.width_mults), max(self.width_mults)
        lo_r, hi_r = min(self.resolutions), max(self.resolutions)
        scalars = np.array([(arch.w - lo_w) / max(hi_w - lo_w, 1e-9), (arch.r - lo_r) / max(hi_r - lo_r, 1)],
                           dtype=np.float32)
        depth = np.zeros((N_STAGES - 1, len(DEPTHS)), dtype=np.float32)
        for s in range(N_STAGES - 1):
            depth[s, DEPTHS.index(len(arch.stages[s]))] = 1.0
        blocks = np.zeros((N_SLOTS, len(KERNELS) + len(EXPANDS)), dtype=np.float32)
        for i, (s, j) in enumerate(_slot_positions()):
            if j < len(arch.stages[s]):
                k, e = arch.stages[s][j]
                blocks[i, KERNELS.index(k)] = 1.0
                blocks[i, len(KERNELS) + EXPANDS.index(e)] = 1.0
        return np.concatenate([scalars, depth.ravel(), blocks.ravel()])

    def decisions(self) -> list[tuple[str, Sequence[Any]]]:
        """w, r, the depths of stages 1-5, then k and e of all 21 block slots (unused slots are ignored)."""
        out: list[tuple[str, Sequence[Any]]] = [("w", self.width_mults), ("r", self.resolutions)]
        out += [(f"d_{s + 1}", DEPTHS) for s in range(N_STAGES - 1)]
        for s, j in _slot_positions():
            out += [(f"k_{s + 1}_{j + 1}", KERNELS), (f"e_{s + 1}_{j + 1}", EXPANDS)]
        return out

    def from_choices(self, choices: Sequence[int]) -> MCUArch:
        """Architecture from one option index per decision."""
        c = [int(x) for x in choices]
        w, r = self.width_mults[c[0]], self.resolutions[c[1]]
        depths = [DEPTHS[i] for i in c[2:2 + N_STAGES - 1]] + [1]
        slot = {pos: (KERNELS[c[7 + 2 * i]], EXPANDS[c[8 + 2 * i]]) for i, pos in enumerate(_slot_positions())}
        return MCUArch(w, r, tuple(tuple(slot[(s, j)] for j in range(d)) for s, d in enumerate(depths)))

    def to_choices(self, arch: MCUArch) -> list[int]:
        """Option index per decision (0 for block slots past a stage's depth)."""
        out = [self.width_mults.index(arch.w), self.resolutions.index(arch.r)]
        out += [DEPTHS.index(len(arch.stages[s])) for s in range(N_STAGES - 1)]
        for s, j in _slot_positions():
            k, e = arch.stages[s][j] if j < len(arch.stages[s]) else (KERNELS[0], EXPANDS[0])
            out += [KERNELS.index(k), EXPANDS.index(e)]
        return out

    def suggest(self, trial: Any) -> MCUArch:
        """Ask an Optuna trial for w, r and depths, then k and e of the blocks in use only."""
        w = trial.suggest_categorical("w", list(self.width_mults))
        r = trial.suggest_categorical("r", list(self.resolutions))
        depths = [trial.suggest_categorical(f"d_{s + 1}", list(DEPTHS)) for s in range(N_STAGES - 1)] + [1]
        stages = tuple(tuple((trial.suggest_categorical(f"k_{s + 1}_{j + 1}", list(KERNELS)),
                              trial.suggest_categorical(f"e_{s + 1}_{j + 1}", list(EXPANDS))) for j in range(d))
                       for s, d in enumerate(depths))
        return MCUArch(w, r, stages)

    # -- networks ---------------------------------------------------------------------------------------

    def build(self, arch: MCUArch, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None) -> nn.Module:
        """The network of ``arch``, freshly initialised (input ``(C, r, r)``; C from ``input_shape``)."""
        arch = self.check(arch)
        in_channels = (input_shape or self.input_shape)[0]
        return MCUNet(arch, self.backbone, num_classes or self.num_classes, self.dropout, in_channels)

    def to_onnx(self, arch: MCUArch, path: str | os.PathLike[str]) -> str:
        """Export with a ``(1, 3, r, r)`` input at the arch's own resolution."""
        return export_onnx(self.build(arch), torch.zeros(1, *self.arch_input_shape(arch)), path)

    def largest(self) -> MCUArch:
        """Widest, highest-resolution, deepest network with k7 e6 everywhere."""
        return MCUArch(max(self.width_mults), max(self.resolutions), _uniform(7, 6, (4, 4, 4, 4, 4, 1)))

    def smallest(self) -> MCUArch:
        """Narrowest, lowest-resolution, shallowest network with k3 e3 everywhere."""
        return MCUArch(min(self.width_mults), min(self.resolutions), _uniform(3, 3, (2, 2, 2, 2, 2, 1)))


def _slot_positions() -> list[tuple[int, int]]:
    """(stage, block) of every block slot, stage-major."""
    return [(s, j) for s in range(N_STAGES) for j in range(STAGE_SLOTS[s])]
