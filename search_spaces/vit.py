"""AutoFormer-T vision transformers (Chen et al. 2021): embed dim, depth, heads and MLP ratio per layer.

Choices of AutoFormer-Tiny: ``embed_dim`` in {192, 216, 240}, depth 12-14, per layer ``num_heads`` in
{3, 4} (64-wide heads, as in AutoFormer) and ``mlp_ratio`` in {3.5, 4.0}. The network is a ViT with a
patch-embedding convolution, a class token, learned positions, pre-LayerNorm blocks and a linear head.
Inputs are images: 32x32 with 4x4 patches by default (CIFAR, 64 patches); ``input_shape=(3, 224, 224),
patch_size=16, num_classes=1000`` gives AutoFormer's ImageNet network.

Canonical JSON: ``{"embed_dim":240,"layers":[{"num_heads":4,"mlp_ratio":4.0},...]}``; AutoFormer's own
``{"embed_dim": [..], "layer_num": n, "num_heads": [..], "mlp_ratio": [..]}`` is accepted too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError, export_onnx
from search_spaces.gpt import Block
from search_spaces.seq_common import (
    Field,
    HeadsRatioJSON,
    LayeredArch,
    LayeredSpace,
    LayeredSpec,
    parse_json_object,
    require,
)


class ViT(nn.Module):
    """Patch embedding, class token, positions, elastic pre-LN blocks, LayerNorm, linear head."""

    def __init__(self, arch: LayeredArch, num_classes: int, input_shape: tuple[int, int, int],
                 patch_size: int) -> None:
        super().__init__()
        dim = arch.globals[0]
        c, h, w = input_shape
        if h % patch_size or w % patch_size:
            raise ValueError(f"image {h}x{w} is not divisible into {patch_size}x{patch_size} patches")
        self.patch_embed = nn.Conv2d(c, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (h // patch_size) * (w // patch_size) + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, ratio, causal=False, eps=1e-6) for heads, ratio in arch.layers)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)[:, 0])


@register("vit")
class ViTSpace(HeadsRatioJSON, LayeredSpace):
    """AutoFormer-T ViT space.

    Args:
        num_classes: classifier width (10 for CIFAR-10, 1000 for ImageNet).
        input_shape: image (C, H, W).
        patch_size: patch side (4 for 32x32 inputs, 16 for 224x224).
        embed_dims, depths, heads, mlp_ratios: override the choices (e.g. tiny ones for tests).

    Example:
        >>> space = ViTSpace(embed_dims=(32,), depths=(1, 2), heads=(1, 2), mlp_ratios=(2.0,))
        >>> arch = space.from_string('{"embed_dim":32,"layers":[{"num_heads":2,"mlp_ratio":2.0}]}')
        >>> space.build(arch)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    name = "vit"
    unavailable_proxies = {"zen": "Zen-NAS reads the feature map before global average pooling, and a ViT's "
                                  "head reads its class token instead of pooling one"}
    description = "AutoFormer-T vision transformers: embed dim, 12-14 layers, heads & MLP ratio per layer"
    input_kind = "image"
    ensemble_components = ("synaptic_diversity", "snip", "params")
    """Label-free ``ensemble`` here: TF-TAS's indicator terms for AutoFormer ViTs (Zhou et al. CVPR 2022:
    synaptic diversity of the attention weights, synaptic saliency) with the parameter count; fixed, not
    fitted (the image-classifier ensemble's ReLU terms do not apply to GELU transformers)."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 patch_size: int = 4, embed_dims: Sequence[int] = (192, 216, 240),
                 depths: Sequence[int] = (12, 13, 14), heads: Sequence[int] = (3, 4),
                 mlp_ratios: Sequence[float] = (3.5, 4.0)) -> None:
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.patch_size = patch_size
        self.spec = LayeredSpec((Field("embed_dim", tuple(embed_dims)),), tuple(depths),
                                (Field("num_heads", tuple(heads)), Field("mlp_ratio", tuple(float(r) for r in mlp_ratios))))

    def from_string(self, text: str) -> LayeredArch:
        """Parse the canonical JSON or AutoFormer's config dict; bad values name the field."""
        obj = parse_json_object(text)
        if "layer_num" in obj:
            n = int(obj["layer_num"])
            dims = obj.get("embed_dim")
            dim = dims[0] if isinstance(dims, list) else dims
            if isinstance(dims, list) and len(set(dims)) != 1:
                raise ArchError(f"embed_dim must be the same for every layer in AutoFormer, got {dims}")
            obj = {"embed_dim": dim, "layers": [{"num_heads": require(obj, "num_heads")[i],
                                                 "mlp_ratio": require(obj, "mlp_ratio")[i]} for i in range(n)]}
        return self.from_canonical(obj)

    def build(self, arch: LayeredArch, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None) -> nn.Module:
        """The ViT for ``arch``."""
        return ViT(self.spec.check(arch), num_classes or self.num_classes, tuple(input_shape or self.input_shape),
                   self.patch_size)

    def precision_groups(self) -> list[tuple[str, tuple[int, ...]]]:
        """Layer groups for ``precision=mixed``: the patch embedding, each block (up to the deepest), the
        head; as SimQ-NAS's ViT policy (per encoder layer, plus the head)."""
        from search_spaces.precision import BITS, EDGE_BITS

        return [("embed", EDGE_BITS), *((f"l{i}", BITS) for i in range(self.spec.max_depth)), ("head", EDGE_BITS)]

    def precision_layers(self, arch: LayeredArch) -> dict[str, tuple[str, ...]]:
        """Module paths in ``build(arch)`` of each layer group the arch uses."""
        return {"embed": ("patch_embed",), **{f"l{i}": (f"blocks.{i}",) for i in range(len(arch.layers))},
                "head": ("head",)}

    def to_onnx(self, arch: LayeredArch, path: str | os.PathLike[str]) -> str:
        """Export with a float image input [batch, C, H, W]."""
        return export_onnx(self.build(arch), torch.zeros(1, *self.input_shape), path)
