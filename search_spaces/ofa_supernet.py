"""The once-for-all MobileNetV3 weight-sharing supernet: every subnet's weights are slices of one network.

Elastic depth keeps the first ``d`` blocks of a stage; elastic width keeps the first ``mid`` channels of
each block's expansion (OFA sorts channels by importance while training, so the first ones are the
important ones); elastic kernel takes the centre of the 7x7 depthwise kernel and passes it through OFA's
learned kernel transform matrices (7x7 centre 5x5 -> 25x25 matrix, 5x5 centre 3x3 -> 9x9 matrix).

``load_official`` maps an official OFA checkpoint (``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2``, a
state dict, read with ``torch.load(weights_only=True)``) onto this module; nothing is downloaded.

Example:
    >>> sup = OFASupernet()
    >>> arch = sup.space.smallest(128)
    >>> net = sup.subnet(arch)  # a standalone MobileNetV3 holding slices of the supernet's weights
    >>> net(torch.zeros(1, 3, 128, 128)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.mbv3_blocks import (
    BlockSpec,
    ConvBNAct,
    MBConv,
    MobileNetV3,
    SqueezeExcite,
    init_he_fout,
    make_divisible,
)
from search_spaces.ofa import (
    EXPANDS,
    KERNELS,
    MAX_DEPTH,
    N_STAGES,
    STAGE_ACTS,
    STAGE_SE,
    STAGE_STRIDES,
    OFAArch,
    OFASpace,
    build_subnet,
    stage_widths,
    subnet_specs,
)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Batch norm with the first ``x.size(1)`` channels of ``bn``'s statistics and affine parameters."""
    n = x.size(1)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    training = bn.training or bn.running_mean is None
    mean = bn.running_mean[:n] if bn.running_mean is not None else None
    var = bn.running_var[:n] if bn.running_var is not None else None
    return F.batch_norm(x, mean, var, bn.weight[:n], bn.bias[:n], training, momentum, bn.eps)


class DynamicMBConv(nn.Module):
    """An MBConv holding the largest kernel (7) and expansion (6); runs any (kernel, expand) by slicing."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: str, se: bool) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        max_mid = make_divisible(c_in * max(EXPANDS))
        self.expand = ConvBNAct(c_in, max_mid, 1, act=act)
        self.dw = ConvBNAct(max_mid, max_mid, max(KERNELS), stride, groups=max_mid, act=act)
        # Kernel transform matrices, identity at initialisation as in OFA.
        self.k7to5 = nn.Parameter(torch.eye(25))
        self.k5to3 = nn.Parameter(torch.eye(9))
        self.se = SqueezeExcite(max_mid) if se else None
        self.pw = ConvBNAct(max_mid, c_out, 1, act=None)

    def mid(self, e: int) -> int:
        """Expanded width at expand ratio ``e``."""
        return make_divisible(round(self.c_in * e))

    def kernel(self, mid: int, k: int) -> torch.Tensor:
        """Depthwise filters of the first ``mid`` channels at kernel size ``k`` (elastic kernel)."""
        w = self.dw.conv.weight[:mid]
        for big, small, matrix in ((7, 5, self.k7to5), (5, 3, self.k5to3)):
            if k >= big:
                break
            lo = (big - small) // 2
            centre = w[:, :, lo:lo + small, lo:lo + small].reshape(mid, small * small)
            w = F.linear(centre, matrix).reshape(mid, 1, small, small)
        return w

    def forward(self, x: torch.Tensor, k: int = 7, e: int = 6) -> torch.Tensor:
        """Run the block as kernel ``k`` and expand ratio ``e``."""
        mid = self.mid(e)
        y = self.expand.act(_bn(F.conv2d(x, self.expand.conv.weight[:mid, : x.size(1)]), self.expand.bn))
        y = F.conv2d(y, self.kernel(mid, k), None, self.stride, k // 2, 1, mid)
        y = self.dw.act(_bn(y, self.dw.bn))
        if self.se is not None:
            r, w = self._se_slices(mid)
            s = y.mean((2, 3), keepdim=True)
            s = self.se.relu(F.conv2d(s, r[0], r[1]))
            y = y * self.se.gate(F.conv2d(s, w[0], w[1]))
        y = _bn(F.conv2d(y, self.pw.conv.weight[:, :mid]), self.pw.bn)
        return x + y if self.stride == 1 and self.c_in == self.c_out else y

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder the expanded channels by importance (L1 norm of their projection weights), as OFA
        does before shrinking width, so that every ``mid`` slice keeps the most important channels."""
        order = self.pw.conv.weight.abs().sum(dim=(0, 2, 3)).argsort(descending=True)
        self.pw.conv.weight.copy_(self.pw.conv.weight[:, order])
        for conv, bn in ((self.expand.conv, self.expand.bn), (self.dw.conv, self.dw.bn)):
            conv.weight.copy_(conv.weight[order])
            _permute_bn(bn, order)
        if self.se is not None:
            self.se.expand.weight.copy_(self.se.expand.weight[order])
            self.se.expand.bias.copy_(self.se.expand.bias[order])
            self.se.reduce.weight.copy_(self.se.reduce.weight[:, order])
            inner = self.se.expand.weight.abs().sum(dim=(0, 2, 3)).argsort(descending=True)
            self.se.expand.weight.copy_(self.se.expand.weight[:, inner])
            self.se.reduce.weight.copy_(self.se.reduce.weight[inner])
            self.se.reduce.bias.copy_(self.se.reduce.bias[inner])

    def _se_slices(self, mid: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        assert self.se is not None
        n = make_divisible(mid // 4)
        return ((self.se.reduce.weight[:n, :mid], self.se.reduce.bias[:n]),
                (self.se.expand.weight[:mid, :n], self.se.expand.bias[:mid]))

    @torch.no_grad()
    def export(self, k: int, e: int) -> MBConv:
        """A static MBConv with copies of this block's weights at kernel ``k``, expand ratio ``e``."""
        mid = self.mid(e)
        block = MBConv(BlockSpec(self.c_in, self.c_out, k, self.stride, mid, _act_name(self.dw.act),
                                 self.se is not None))
        assert block.expand is not None
        block.expand.conv.weight.copy_(self.expand.conv.weight[:mid])
        _copy_bn(block.expand.bn, self.expand.bn)
        block.dw.conv.weight.copy_(self.kernel(mid, k))
        _copy_bn(block.dw.bn, self.dw.bn)
        if self.se is not None and block.se is not None:
            (rw, rb), (ew, eb) = self._se_slices(mid)
            block.se.reduce.weight.copy_(rw)
            block.se.reduce.bias.copy_(rb)
            block.se.expand.weight.copy_(ew)
            block.se.expand.bias.copy_(eb)
        block.pw.conv.weight.copy_(self.pw.conv.weight[:, :mid])
        _copy_bn(block.pw.bn, self.pw.bn)
        return block


def _act_name(module: nn.Module) -> str:
    return "h_swish" if isinstance(module, nn.Hardswish) else "relu"


def _permute_bn(bn: nn.BatchNorm2d | None, order: torch.Tensor) -> None:
    assert bn is not None
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        t.copy_(t[order])


def _copy_bn(dst: nn.BatchNorm2d | None, src: nn.BatchNorm2d | None) -> None:
    assert dst is not None and src is not None
    n = dst.num_features
    dst.weight.copy_(src.weight[:n])
    dst.bias.copy_(src.bias[:n])
    dst.running_mean.copy_(src.running_mean[:n])
    dst.running_var.copy_(src.running_var[:n])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


class OFASupernet(nn.Module):
    """The once-for-all MobileNetV3 supernet (``ofa_mbv3_d234_e346_k357``) at width 1.0 or 1.2.

    ``forward(x, arch)`` runs subnet ``arch`` on the shared weights (gradients reach the supernet);
    ``subnet(arch)`` returns the standalone network with copies of those slices, as OFA's
    ``get_active_subnet(preserve_weight=True)`` does.

    Example:
        >>> sup = OFASupernet(width_mult=1.0)
        >>> arch = sup.space.largest(160)
        >>> sup.eval()(torch.zeros(1, 3, 160, 160), arch).shape
        torch.Size([1, 1000])
    """

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.1) -> None:
        super().__init__()
        self.space = OFASpace(width_mult=width_mult, num_classes=num_classes, dropout=dropout)
        self.width_mult = width_mult
        w = stage_widths(width_mult)
        self.stem = ConvBNAct(3, w[0], 3, 2, act="h_swish")
        self.first_block = MBConv(BlockSpec(w[0], w[1], 3, 1, w[0], "relu", False))
        blocks, c = [], w[1]
        for s in range(N_STAGES):
            for j in range(MAX_DEPTH):
                blocks.append(DynamicMBConv(c, w[s + 2], STAGE_STRIDES[s] if j == 0 else 1, STAGE_ACTS[s],
                                            STAGE_SE[s]))
                c = w[s + 2]
        self.blocks = nn.ModuleList(blocks)
        self.final_expand = ConvBNAct(c, w[-2], 1, act="h_swish")
        self.feature_mix = ConvBNAct(w[-2], w[-1], 1, act="h_swish", bn=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(w[-1], num_classes)
        init_he_fout(self)

    def forward_features(self, x: torch.Tensor, arch: OFAArch | None = None) -> torch.Tensor:
        """The (N, C, H, W) pre-pool feature map of subnet ``arch`` (default: the largest)."""
        arch = arch or self.space.largest()
        x = self.first_block(self.stem(x))
        for i in arch.active_blocks():
            x = self.blocks[i](x, arch.ks[i], arch.e[i])
        return self.final_expand(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the pre-pool feature map: global pooling, the feature-mix 1x1, the classifier."""
        x = self.feature_mix(features.mean((2, 3), keepdim=True))
        return self.classifier(self.dropout(torch.flatten(x, 1)))

    def forward(self, x: torch.Tensor, arch: OFAArch | None = None) -> torch.Tensor:
        """Logits of subnet ``arch`` (default: the largest) on ``x``."""
        return self.forward_head(self.forward_features(x, arch))

    def sort_channels(self) -> OFASupernet:
        """Sort every block's expanded channels by importance (OFA's width re-organisation)."""
        for block in self.blocks:
            block.sort_channels()
        return self

    @torch.no_grad()
    def subnet(self, arch: OFAArch) -> MobileNetV3:
        """The standalone subnet ``arch`` with copies of the supernet's weight slices."""
        net = build_subnet(arch, self.width_mult, self.classifier.out_features,
                           getattr(self.dropout, "p", 0.0))
        net.stem.load_state_dict(self.stem.state_dict())
        net.blocks[0].load_state_dict(self.first_block.state_dict())
        for pos, i in enumerate(arch.active_blocks(), start=1):
            net.blocks[pos].load_state_dict(self.blocks[i].export(arch.ks[i], arch.e[i]).state_dict())
        net.final_expand.load_state_dict(self.final_expand.state_dict())
        net.feature_mix.load_state_dict(self.feature_mix.state_dict())
        net.classifier.load_state_dict(self.classifier.state_dict())
        assert len(net.blocks) == len(subnet_specs(arch, self.width_mult))
        return net.train(self.training)

    def load_official(self, source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> OFASupernet:
        """Load an official OFA MobileNetV3 checkpoint (path or state dict) into this supernet."""
        if isinstance(source, Mapping):
            state = source
        else:
            state = torch.load(os.fspath(source), map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
        own = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            ours = official_key_to_ours(key)
            if ours not in own:
                raise ValueError(f"checkpoint key {key!r} (ours: {ours!r}) has no place in OFASupernet"
                                 f"(width_mult={self.width_mult})")
            if tuple(own[ours].shape) != tuple(value.shape):
                raise ValueError(f"checkpoint key {key!r} has shape {tuple(value.shape)} but {ours!r} "
                                 f"needs {tuple(own[ours].shape)}; is it the width {self.width_mult} "
                                 "supernet?")
            mapped[ours] = value
        missing = sorted(set(own) - set(mapped))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensor(s) of OFASupernet, e.g. {missing[:3]}")
        self.load_state_dict(mapped)
        return self


# Official key (after dropping the block wrapper and OFA's dynamic-module nesting) -> ours.
_RULES: tuple[tuple[str, str], ...] = (
    (r"^first_conv\.", "stem."),
    (r"^blocks\.0\.depth_conv\.", "first_block.dw."),
    (r"^blocks\.0\.point_linear\.", "first_block.pw."),
    (r"^final_expand_layer\.", "final_expand."),
    (r"^feature_mix_layer\.", "feature_mix."),
    (r"^classifier\.linear\.", "classifier."),
)
_BLOCK_PARTS: tuple[tuple[str, str], ...] = (
    ("inverted_bottleneck.", "expand."),
    ("depth_conv.conv.7to5_matrix", "k7to5"),
    ("depth_conv.conv.5to3_matrix", "k5to3"),
    ("depth_conv.se.fc.", "se."),
    ("depth_conv.", "dw."),
    ("point_linear.", "pw."),
)


def official_key_to_ours(key: str) -> str:
    """Map a key of OFA's ``OFAMobileNetV3`` state dict (either of its naming generations) to ours."""
    k = re.sub(r"^blocks\.(\d+)\.(mobile_inverted_conv|conv)\.", r"blocks.\1.", key)
    k = k.replace(".conv.conv.", ".conv.").replace(".bn.bn.", ".bn.").replace("linear.linear.", "linear.")
    for pattern, repl in _RULES:
        if re.match(pattern, k):
            return re.sub(pattern, repl, k)
    m = re.match(r"^blocks\.(\d+)\.(.*)$", k)
    if m and int(m.group(1)) >= 1:
        rest = m.group(2)
        for old, new in _BLOCK_PARTS:
            if rest.startswith(old):
                return f"blocks.{int(m.group(1)) - 1}.{new}{rest[len(old):]}"
    raise ValueError(f"unrecognised OFA checkpoint key {key!r}")
