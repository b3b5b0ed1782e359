"""The FBNet supernet: every layer holds all 9 candidate ops, and a subnet runs one op per layer.

Stem, header and classifier are shared by all subnets, and a subnet's op in layer ``i`` is the same weights
whichever ops the other layers run. How a layer's ops share weights is the space's ``weight_sharing`` option:

- ``separate`` (default): the ops of a layer share nothing, the over-parameterised network that FBNet (Wu et
  al., CVPR 2019) and ProxylessNAS (Cai et al., ICLR 2019) search. Each op trains only when sampled.
- ``nested``: the 8 inverted-residual ops of a layer are slices of its ``k5_e6`` block, as Single-Path NAS's
  superkernel (Stamoulis et al., 2019) and once-for-all's elastic kernel and width: a 3x3 depthwise kernel is
  the centre of the 5x5, expansion ``e`` uses the first ``e * C_in`` channels of every tensor (BN included),
  and a 2-group 1x1 conv uses the block-diagonal part of the dense one. Every step that runs an op of a layer
  trains the weights the others use, which a supernet trained for few steps needs (``experiments/
  supernet_rank.py``). ``skip`` keeps its own 1x1 conv where the shape changes.

Example:
    >>> import search_spaces
    >>> space = search_spaces.get("fbnet", num_classes=10)
    >>> sup = FBNetSupernet(space)
    >>> arch = space.sample(np.random.default_rng(0))
    >>> sup.subnet(arch)(torch.zeros(1, 3, 32, 32)).shape  # an FBNetNetwork with the supernet's weights
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np  # noqa: F401 - used by the docstring example
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.base import ArchError
from search_spaces.fbnet import (
    N_LAYERS,
    OPS,
    ChannelShuffle,
    FBNetNetwork,
    InvertedResidual,
    layer_shapes,
    make_layer,
    parse_op,
)
from search_spaces.mbv3_blocks import init_mobile_weights


def _block_diagonal(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The grouped-conv weight (O, I / groups, ...) made of the diagonal blocks of dense ``weight`` (O, I, ...)."""
    rows, cols = weight.shape[0] // groups, weight.shape[1] // groups
    return torch.cat([weight[g * rows:(g + 1) * rows, g * cols:(g + 1) * cols] for g in range(groups)])


class NestedLayer(nn.Module):
    """One FBNet layer whose inverted-residual ops are slices of one ``k5_e6`` block (``weight_sharing=nested``)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.block = InvertedResidual(c_in, c_out, 5, 6, 1, stride)  # the largest op holds every op's weights
        self.skip = make_layer("skip", c_in, c_out, stride)
        self.shuffle = ChannelShuffle(2)  # the grouped ops' (all FBNet groups are 2)

    def _weights(self, op: str) -> dict[str, torch.Tensor]:
        """Views of the shared tensors that op ``op`` uses, named as in its standalone :class:`InvertedResidual`."""
        k, e, g = parse_op(op)
        mid, cut = self.c_in * e, (5 - k) // 2
        b, out = self.block, {}
        out["conv1.weight"] = _block_diagonal(b.conv1.weight[:mid], g)
        out["conv2.weight"] = b.conv2.weight[:mid, :, cut:5 - cut, cut:5 - cut]
        out["conv3.weight"] = _block_diagonal(b.conv3.weight[:, :mid], g)
        for name, n in (("bn1", mid), ("bn2", mid), ("bn3", self.c_out)):
            bn = getattr(b, name)
            for key in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.{key}"] = getattr(bn, key)[:n]
        return out

    def _bn(self, x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        bn = getattr(self.block, name)
        # Running statistics are slices of the shared buffers, updated in place as OFA's dynamic BatchNorm
        return F.batch_norm(x, w[f"{name}.running_mean"], w[f"{name}.running_var"], w[f"{name}.weight"],
                            w[f"{name}.bias"], self.training or not bn.track_running_stats, bn.momentum, bn.eps)

    def forward(self, x: torch.Tensor, op: str) -> torch.Tensor:
        """Run op ``op`` of this layer on the shared weights."""
        if op == "skip":
            return self.skip(x)
        k, e, g = parse_op(op)
        w = self._weights(op)
        mid = self.c_in * e
        y = F.relu(self._bn(F.conv2d(x, w["conv1.weight"], groups=g), w, "bn1"))
        if g > 1:
            y = self.shuffle(y)
        y = F.relu(self._bn(F.conv2d(y, w["conv2.weight"], None, self.stride, k // 2, groups=mid), w, "bn2"))
        y = self._bn(F.conv2d(y, w["conv3.weight"], groups=g), w, "bn3")
        return x + y if self.block.residual else y

    def state_of(self, op: str) -> dict[str, torch.Tensor]:
        """The state dict of op ``op``'s standalone layer (``make_layer``) holding this layer's shared weights."""
        if op == "skip":
            return self.skip.state_dict()
        own = {k: v for k, v in self.block.state_dict().items() if k.endswith("num_batches_tracked")}
        return {**own, **self._weights(op)}


class FBNetSupernet(nn.Module):
    """All ops of all 22 layers of an FBNet space object (its setting, classes, input channels and
    ``weight_sharing``)."""

    def __init__(self, space: Any) -> None:
        super().__init__()
        self.space = space
        # The standalone network of any arch gives stem, header and classifier (and their initialisation).
        template = FBNetNetwork(tuple(OPS[0] for _ in range(N_LAYERS)), space.num_classes, space.setting,
                                space.input_shape[0])
        self.stem, self.header, self.classifier = template.stem, template.header, template.classifier
        self.nested = getattr(space, "weight_sharing", "separate") == "nested"
        self.shapes = layer_shapes(space.setting)
        self.layers = nn.ModuleList(NestedLayer(*shape) if self.nested
                                    else nn.ModuleList(make_layer(op, *shape) for op in OPS) for shape in self.shapes)
        init_mobile_weights(self, linear_std=0.001)  # the networks' (HW-NAS-Bench's) initialisation

    def _extreme(self, pick: Any) -> tuple[str, ...]:
        """The op of each layer whose standalone layer has the ``pick`` (max or min) number of weights."""
        def size(op: str, shape: tuple[int, int, int]) -> int:
            return sum(p.numel() for p in make_layer(op, *shape).parameters())

        return tuple(pick(OPS, key=lambda op, s=shape: size(op, s)) for shape in self.shapes)

    def largest(self) -> tuple[str, ...]:
        """The subnet with the most weights in every layer (``k5_e6``)."""
        return self._extreme(max)

    def smallest(self) -> tuple[str, ...]:
        """The subnet with the fewest weights in every layer (``skip``, or a grouped op where skip needs a conv)."""
        return self._extreme(min)

    @staticmethod
    def op_indices(arch: Sequence[str]) -> list[int]:
        """Index of each layer's op in :data:`OPS`, naming a bad layer."""
        if len(arch) != N_LAYERS:
            raise ArchError(f"an FBNet arch needs {N_LAYERS} ops, got {len(arch)}")
        out = []
        for i, op in enumerate(arch):
            if op not in OPS:
                raise ArchError(f"layer {i}: unknown op {op!r}; valid ops: {', '.join(OPS)}")
            out.append(OPS.index(op))
        return out

    def forward_features(self, x: torch.Tensor, arch: Sequence[str]) -> torch.Tensor:
        """The (N, C, H, W) header output of subnet ``arch``, before global pooling."""
        h = self.stem(x)
        for layer, i in zip(self.layers, self.op_indices(arch), strict=True):
            h = layer(h, OPS[i]) if self.nested else layer[i](h)
        return self.header(h)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the pre-pool feature map."""
        return self.classifier(torch.flatten(features.mean((2, 3)), 1))

    def forward(self, x: torch.Tensor, arch: Sequence[str]) -> torch.Tensor:
        """Logits of subnet ``arch`` on the shared weights."""
        return self.forward_head(self.forward_features(x, arch))

    @torch.no_grad()
    def subnet(self, arch: Sequence[str]) -> FBNetNetwork:
        """The standalone network of ``arch`` with copies of the supernet's weights."""
        net = self.space.build(tuple(arch))
        net.stem.load_state_dict(self.stem.state_dict())
        for pos, i in enumerate(self.op_indices(arch)):
            layer = self.layers[pos]
            net.layers[pos].load_state_dict(layer.state_of(OPS[i]) if self.nested else layer[i].state_dict())
        net.header.load_state_dict(self.header.state_dict())
        net.classifier.load_state_dict(self.classifier.state_dict())
        return net.train(self.training)
