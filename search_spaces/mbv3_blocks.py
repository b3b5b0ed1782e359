"""MobileNetV3 building blocks as once-for-all defines them: conv-BN-act, squeeze-excite, MBConv, the net.

Conventions follow the once-for-all reference (Cai et al., ICLR 2020) and MobileNetV3 (Howard et al.,
ICCV 2019): channels rounded by ``make_divisible(.., 8)``; the SE bottleneck is
``make_divisible(mid // 4, 8)`` with ReLU then hard-sigmoid; SE sits after the depthwise conv's activation;
the head is a 1x1 "final expand" conv (BN, h-swish), global average pooling, a 1x1 "feature mix" conv
(no BN, no bias, h-swish) and a linear classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

CHANNEL_DIVISOR = 8
SE_REDUCTION = 4


def make_divisible(value: float, divisor: int = CHANNEL_DIVISOR, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor`` without going down by more than 10% (TF-slim rule)."""
    min_value = divisor if min_value is None else min_value
    out = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return out


def init_he_fout(model: nn.Module) -> nn.Module:
    """OFA's ``he_fout`` initialisation: conv N(0, 2 / (k*k*out)), BN 1/0, linear U(+-1/sqrt(in)), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.size(1))
            m.weight.data.uniform_(-bound, bound)
            if m.bias is not None:
                m.bias.data.zero_()
    return model


def activation(name: str | None) -> nn.Module:
    """The activation module called ``name`` (``relu``, ``h_swish`` or ``None`` for identity)."""
    if name == "relu":
        return nn.ReLU()
    if name == "h_swish":
        return nn.Hardswish()  # x * relu6(x + 3) / 6, exactly OFA's Hswish
    if name is None:
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; valid: relu, h_swish, None")


class ConvBNAct(nn.Module):
    """Conv (same padding) -> optional BN -> optional activation."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: str | None = "relu", bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out) if bn else None
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class SqueezeExcite(nn.Module):
    """Channel attention: mean-pool, 1x1 reduce (bias) + ReLU, 1x1 expand (bias) + hard-sigmoid, rescale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = make_divisible(channels // SE_REDUCTION)
        self.reduce = nn.Conv2d(channels, mid, 1, bias=True)
        self.expand = nn.Conv2d(mid, channels, 1, bias=True)
        self.relu = nn.ReLU()
        self.gate = nn.Hardsigmoid()  # relu6(x + 3) / 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.relu(self.reduce(y))))


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block: channels, kernel, stride, middle width, activation and SE."""

    c_in: int
    c_out: int
    kernel: int
    stride: int
    mid: int
    act: str
    se: bool


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (skipped when mid == c_in), depthwise kxk, SE, 1x1 project;
    identity shortcut when the stride is 1 and the width does not change."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        self.expand = (ConvBNAct(spec.c_in, spec.mid, 1, act=spec.act) if spec.mid != spec.c_in else None)
        self.dw = ConvBNAct(spec.mid, spec.mid, spec.kernel, spec.stride, groups=spec.mid, act=spec.act)
        self.se = SqueezeExcite(spec.mid) if spec.se else None
        self.pw = ConvBNAct(spec.mid, spec.c_out, 1, act=None)
        self.residual = spec.stride == 1 and spec.c_in == spec.c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.pw(y)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """Stem conv, MBConv blocks, final expand 1x1, global pooling, feature mix 1x1, classifier."""

    def __init__(self, stem_width: int, blocks: list[BlockSpec], final_expand: int, feature_mix: int,
                 num_classes: int = 1000, dropout: float = 0.1, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, stem_width, 3, 2, act="h_swish")
        self.blocks = nn.Sequential(*(MBConv(b) for b in blocks))
        last = blocks[-1].c_out if blocks else stem_width
        self.final_expand = ConvBNAct(last, final_expand, 1, act="h_swish")
        self.feature_mix = ConvBNAct(final_expand, feature_mix, 1, act="h_swish", bn=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(feature_mix, num_classes)
        init_he_fout(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, H, W) output of the final expand 1x1, right before global pooling."""
        return self.final_expand(self.blocks(self.stem(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the pre-pool feature map: global pooling, the feature-mix 1x1, the classifier."""
        x = self.feature_mix(features.mean((2, 3), keepdim=True))
        return self.classifier(self.dropout(torch.flatten(x, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x``."""
        return self.forward_head(self.forward_features(x))


def mobilenetv3_large_specs() -> list[BlockSpec]:
    """The 15 bneck blocks of MobileNetV3-Large (Howard et al. 2019, Table 1), for reference checks."""
    rows = [  # kernel, mid, out, se, act, stride
        (3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
        (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
        (3, 240, 80, False, "h_swish", 2), (3, 200, 80, False, "h_swish", 1),
        (3, 184, 80, False, "h_swish", 1), (3, 184, 80, False, "h_swish", 1),
        (3, 480, 112, True, "h_swish", 1), (3, 672, 112, True, "h_swish", 1),
        (5, 672, 160, True, "h_swish", 2), (5, 960, 160, True, "h_swish", 1),
        (5, 960, 160, True, "h_swish", 1),
    ]
    specs, c = [], 16
    for k, mid, out, se, act, s in rows:
        specs.append(BlockSpec(c, out, k, s, mid, act, se))
        c = out
    return specs


def init_mobile_weights(net: nn.Module, linear_std: float) -> None:
    """MobileNet-family initialisation: Kaiming-normal (fan-out) convs, BN 1/0, linear N(0, linear_std^2)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
