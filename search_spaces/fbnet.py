"""FBNet space as HW-NAS-Bench defines it (Li et al., ICLR 2021; after Wu et al., CVPR 2019).

A 3x3 stem (16 channels) is followed by 22 searchable layers in 7 stages of 1, 4, 4, 4, 4, 4, 1 layers
with 16, 24, 32, 64, 112, 184, 352 channels, a 1x1 header (1504 channels on CIFAR, 1984 on ImageNet),
global pooling and a linear classifier. On CIFAR-100 (32x32) the stem has stride 1 and the stages' first
layers strides 1, 1, 2, 2, 1, 2, 1; on ImageNet the stem has stride 2 and the stages 1, 2, 2, 2, 1, 2, 1.

Each layer is one of 9 ops: ``kK_eE`` is an inverted residual (1x1 conv to ``E`` x the input width,
ReLU, KxK depthwise, ReLU, 1x1 conv, all with BN, identity shortcut when the shape is kept); ``_g2`` uses
2 groups in both 1x1 convs with a channel shuffle after the first; ``skip`` is the identity, or a 1x1
conv-BN-ReLU where the width or resolution changes.

An architecture is the tuple of 22 op names; its canonical string is their JSON list, e.g.
``["k3_e1","skip",...]``, the ``arch`` format of ``fbnet_latency_ms.csv``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError, export_onnx, suggest_choices
from search_spaces.mbv3_blocks import init_mobile_weights

OPS: tuple[str, ...] = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
N_LAYERS = 22
LAYERS_PER_STAGE = (1, 4, 4, 4, 4, 4, 1)
STAGE_WIDTHS = (16, 24, 32, 64, 112, 184, 352)
STEM_WIDTH = 16
SETTINGS: dict[str, dict[str, Any]] = {
    "cifar": {"stem_stride": 1, "strides": (1, 1, 2, 2, 1, 2, 1), "header": 1504},
    "imagenet": {"stem_stride": 2, "strides": (1, 2, 2, 2, 1, 2, 1), "header": 1984},
}

FBNetArch = tuple[str, ...]


def parse_op(name: str) -> tuple[int, int, int]:
    """Kernel, expansion and groups of an inverted-residual op name such as ``k5_e1_g2``."""
    parts = name.split("_")
    return int(parts[0][1:]), int(parts[1][1:]), int(parts[2][1:]) if len(parts) > 2 else 1


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups (ShuffleNet)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class InvertedResidual(nn.Module):
    """FBNet block: 1x1 (groups) BN ReLU [shuffle], KxK depthwise BN ReLU, 1x1 (groups) BN, shortcut."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, groups: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expansion
        self.conv1 = nn.Conv2d(c_in, mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.conv2 = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.residual = c_in == c_out and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(self.relu(self.bn1(self.conv1(x))))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return x + y if self.residual else y


def layer_shapes(setting: str) -> list[tuple[int, int, int]]:
    """Input channels, output channels and stride of each of the 22 layers in ``setting`` (cifar, imagenet)."""
    strides, shapes, c = SETTINGS[setting]["strides"], [], STEM_WIDTH
    for stage, n in enumerate(LAYERS_PER_STAGE):
        for j in range(n):
            shapes.append((c, STAGE_WIDTHS[stage], strides[stage] if j == 0 else 1))
            c = STAGE_WIDTHS[stage]
    return shapes


def make_layer(op: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """One FBNet layer ``op`` from ``c_in`` to ``c_out`` channels."""
    if op == "skip":
        if stride == 1 and c_in == c_out:
            return nn.Identity()
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
    if op not in OPS:
        raise ArchError(f"unknown FBNet op {op!r}; valid ops: {', '.join(OPS)}")
    k, e, g = parse_op(op)
    return InvertedResidual(c_in, c_out, k, e, g, stride)


class FBNetNetwork(nn.Module):
    """Stem, the 22 chosen layers, 1x1 header, global average pooling and classifier."""

    def __init__(self, arch: FBNetArch, num_classes: int = 100, setting: str = "cifar",
                 in_channels: int = 3) -> None:
        super().__init__()
        cfg = SETTINGS[setting]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, STEM_WIDTH, 3, cfg["stem_stride"], 1, bias=False),
                                  nn.BatchNorm2d(STEM_WIDTH), nn.ReLU())
        self.layers = nn.Sequential(*(make_layer(op, *shape) for op, shape in zip(arch, layer_shapes(setting),
                                                                                    strict=True)))
        self.header = nn.Sequential(nn.Conv2d(STAGE_WIDTHS[-1], cfg["header"], 1, bias=False), nn.BatchNorm2d(cfg["header"]),
                                    nn.ReLU())
        self.classifier = nn.Linear(cfg["header"], num_classes)
        init_mobile_weights(self, linear_std=0.001)  # HW-NAS-Bench's


    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, H, W) output of the 1x1 header, right before global pooling."""
        return self.header(self.layers(self.stem(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the pre-pool feature map: global average pooling, then the classifier."""
        return self.classifier(torch.flatten(features.mean((2, 3)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x``."""
        return self.forward_head(self.forward_features(x))


@register("fbnet")
class FBNetSpace:
    """FBNet space of HW-NAS-Bench: 22 layers x 9 ops, CIFAR-100 32x32 by default.

    Args:
        num_classes: classifier width (100 for CIFAR-100).
        dataset: ``cifar100`` (or ``cifar10``) for the CIFAR network, ``imagenet`` for the ImageNet one.
        input_shape: input (C, H, W); 32x32 for CIFAR, 224x224 for ImageNet by default.
        weight_sharing: how the ops of a layer share weights in this space's supernet (``nas supernet
            train``): ``separate`` (FBNet's and ProxylessNAS's, default) or ``nested`` (slices of the layer's
            ``k5_e6`` block); see :mod:`search_spaces.fbnet_supernet`. The networks themselves are the same.

    Example:
        >>> space = FBNetSpace()
        >>> arch = space.sample(np.random.default_rng(0))
        >>> space.build(arch)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    name = "fbnet"
    description = "FBNet space of HW-NAS-Bench: 22 layers x 9 ops (9^22 networks), CIFAR-100 32x32"

    def __init__(self, num_classes: int = 100, dataset: str = "cifar100",
                 input_shape: tuple[int, int, int] | None = None, weight_sharing: str = "separate") -> None:
        if dataset not in ("cifar10", "cifar100", "imagenet"):
            raise ValueError(f"dataset must be cifar10, cifar100 or imagenet, got {dataset!r}")
        if weight_sharing not in ("separate", "nested"):
            raise ValueError(f"weight_sharing must be separate or nested, got {weight_sharing!r}")
        self.weight_sharing = weight_sharing
        self.dataset = dataset
        self.setting = "imagenet" if dataset == "imagenet" else "cifar"
        self.num_classes = num_classes
        side = 224 if self.setting == "imagenet" else 32
        self.input_shape = tuple(input_shape) if input_shape else (3, side, side)

    @property
    def cardinality(self) -> int:
        """9 ** 22."""
        return len(OPS) ** N_LAYERS

    def sample(self, rng: np.random.Generator) -> FBNetArch:
        """Uniformly random op per layer."""
        return tuple(OPS[i] for i in rng.integers(len(OPS), size=N_LAYERS))

    def mutate(self, arch: FBNetArch, rng: np.random.Generator) -> FBNetArch:
        """Change the op of one random layer to a different op."""
        i = int(rng.integers(N_LAYERS))
        choices = [op for op in OPS if op != arch[i]]
        new = list(arch)
        new[i] = choices[int(rng.integers(len(choices)))]
        return tuple(new)

    def crossover(self, a: FBNetArch, b: FBNetArch, rng: np.random.Generator) -> FBNetArch:
        """Uniform crossover of the layers' ops."""
        take = rng.random(N_LAYERS) < 0.5
        return tuple(x if t else y for x, y, t in zip(a, b, take, strict=True))

    def to_string(self, arch: FBNetArch) -> str:
        """Compact JSON list of the 22 op names."""
        return json.dumps(list(arch), separators=(",", ":"))

    def from_string(self, text: str) -> FBNetArch:
        """Parse a JSON list of 22 op names (or HW-NAS-Bench op indices 0..8), naming the bad layer."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchError(f'an FBNet arch is a JSON list of {N_LAYERS} op names like ["k3_e1","skip",...]; '
                            f"could not parse {text[:60]!r}: {err.msg}") from None
        if not isinstance(data, list) or len(data) != N_LAYERS:
            got = f"{len(data)} entries" if isinstance(data, list) else type(data).__name__
            raise ArchError(f"an FBNet arch needs {N_LAYERS} ops (one per layer), got {got}")
        return self._validate(data)

    def _validate(self, ops: Sequence[Any]) -> FBNetArch:
        out = []
        for i, op in enumerate(ops):
            if isinstance(op, int) and not isinstance(op, bool) and 0 <= op < len(OPS):
                op = OPS[op]
            if op not in OPS:
                raise ArchError(f"layer {i}: unknown op {op!r}; valid ops: {', '.join(OPS)}")
            out.append(op)
        return tuple(out)

    def encode(self, arch: FBNetArch) -> np.ndarray:
        """One-hot op of each layer (22 x 9 = 198 values)."""
        out = np.zeros((N_LAYERS, len(OPS)), dtype=np.float32)
        out[np.arange(N_LAYERS), [OPS.index(op) for op in arch]] = 1.0
        return out.ravel()

    def decisions(self) -> list[tuple[str, Sequence[str]]]:
        """One categorical decision per layer."""
        return [(f"layer_{i}", OPS) for i in range(N_LAYERS)]

    def from_choices(self, choices: Sequence[int]) -> FBNetArch:
        """Architecture from one op index per layer."""
        return tuple(OPS[int(c)] for c in choices)

    def to_choices(self, arch: FBNetArch) -> list[int]:
        """Op index per layer."""
        return [OPS.index(op) for op in arch]

    def suggest(self, trial: Any) -> FBNetArch:
        """Ask an Optuna trial for one op per layer."""
        return self.from_choices(suggest_choices(self, trial))

    def build(self, arch: FBNetArch, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None) -> nn.Module:
        """The HW-NAS-Bench FBNet network for ``arch``."""
        arch = self._validate(arch)
        if len(arch) != N_LAYERS:
            raise ArchError(f"an FBNet arch needs {N_LAYERS} ops, got {len(arch)}")
        in_channels = (input_shape or self.input_shape)[0]
        return FBNetNetwork(arch, num_classes or self.num_classes, self.setting, in_channels)

    def precision_groups(self) -> list[tuple[str, tuple[int, ...]]]:
        """Layer groups for ``precision=mixed``: the stem, each of the 22 layers, the head (header and
        classifier)."""
        from search_spaces.precision import BITS, EDGE_BITS

        return [("stem", EDGE_BITS), *((f"l{i}", BITS) for i in range(N_LAYERS)), ("head", EDGE_BITS)]

    def precision_layers(self, arch: FBNetArch) -> dict[str, tuple[str, ...]]:
        """Module paths in ``build(arch)`` of each layer group with weights (an identity ``skip`` has none)."""
        out: dict[str, tuple[str, ...]] = {"stem": ("stem",)}
        for i, (c_in, c_out, stride) in enumerate(layer_shapes(self.setting)):
            if not (arch[i] == "skip" and stride == 1 and c_in == c_out):
                out[f"l{i}"] = (f"layers.{i}",)
        out["head"] = ("header", "classifier")
        return out

    def to_onnx(self, arch: FBNetArch, path: str | os.PathLike[str]) -> str:
        """Export the network for ``arch`` to ONNX."""
        return export_onnx(self.build(arch), torch.zeros(1, *self.input_shape), path)
