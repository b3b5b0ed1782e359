"""The FBNet supernet: every layer holds all 9 candidate ops, and a subnet runs one op per layer.

FBNet (Wu et al., CVPR 2019) and ProxylessNAS (Cai et al., ICLR 2019) search this kind of over-parameterised
network: ops of a layer do not share weights with each other, but stem, header and classifier are shared by
all subnets, and a subnet's op in layer ``i`` is the same module whichever ops the other layers run.

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
from torch import nn

from search_spaces.base import ArchError
from search_spaces.fbnet import (
    LAYERS_PER_STAGE,
    N_LAYERS,
    OPS,
    SETTINGS,
    STAGE_WIDTHS,
    FBNetNetwork,
    make_layer,
)
from search_spaces.mbv3_blocks import init_mobile_weights


class FBNetSupernet(nn.Module):
    """All ops of all 22 layers of an FBNet space object (its setting, classes and input channels)."""

    def __init__(self, space: Any) -> None:
        super().__init__()
        self.space = space
        # The standalone network of any arch gives stem, header and classifier (and their initialisation).
        template = FBNetNetwork(tuple(OPS[0] for _ in range(N_LAYERS)), space.num_classes, space.setting,
                                space.input_shape[0])
        self.stem, self.header, self.classifier = template.stem, template.header, template.classifier
        strides = SETTINGS[space.setting]["strides"]
        layers, c = [], template.stem[0].out_channels
        for stage, n in enumerate(LAYERS_PER_STAGE):
            for j in range(n):
                stride = strides[stage] if j == 0 else 1
                layers.append(nn.ModuleList(make_layer(op, c, STAGE_WIDTHS[stage], stride) for op in OPS))
                c = STAGE_WIDTHS[stage]
        self.layers = nn.ModuleList(layers)
        init_mobile_weights(self, linear_std=0.001)  # the networks' (HW-NAS-Bench's) initialisation

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
            h = layer[i](h)
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
            net.layers[pos].load_state_dict(self.layers[pos][i].state_dict())
        net.header.load_state_dict(self.header.state_dict())
        net.classifier.load_state_dict(self.classifier.state_dict())
        return net.train(self.training)
