"""MCUFormer-style tiny vision transformers (Liang et al., NeurIPS 2023): ViTs searched to fit a microcontroller.

MCUFormer widens AutoFormer-T's one-shot space with two memory knobs: the patch size (fewer, larger
patches mean fewer tokens to keep in SRAM) and a low-rank ratio: every linear layer of the blocks becomes
two factors through rank ``int(ratio * min(d_in, d_out))`` (for the MLP that is ``ratio * embed_dim``).
Its released configs (``supernet-T.yaml`` and ``supernet-T-new.yaml``) give the defaults here:
``embed_dim`` in {168, 192, 216}, depth 12-14, per layer ``num_heads`` in {3, 4} (64-wide heads) and
``mlp_ratio`` in {3.5, 4.0}, ``rank_ratio`` in {0.4, 0.45, .., 0.95}, and patch sizes from {16, 20, 24,
28, 32} at a 240x240 input. Only patch sizes that tile the input are allowed (MCUFormer's convolution
silently drops the remainder pixels; ours refuses), so at 240 the choices are 16, 20 and 24; pass
``input_shape=(3, 224, 224), patch_sizes=(16, 28, 32)`` for the others. A ``rank_ratio`` of 1.0 (if
given) keeps the layers unfactorised.

A factorised ``d_in x d_out`` layer holds ``r * (d_in + d_out) + d_out`` parameters, fewer than the dense
``d_in * d_out + d_out`` only while ``r < d_in * d_out / (d_in + d_out)``: for the square attention
projections that is a ratio below 0.5, for the 4x MLP below 0.8.

The network is the ``vit`` space's ViT (patch-embedding convolution, class token, learned positions,
pre-LayerNorm blocks, linear head) with its block linears factorised, so the proxies that score ``vit``
score it the same way. Canonical JSON::

    {"embed_dim":192,"patch_size":16,"rank_ratio":0.5,"layers":[{"num_heads":3,"mlp_ratio":4.0},...]}
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError, export_onnx
from search_spaces.seq_common import (
    Field,
    LayeredArch,
    LayeredSpace,
    LayeredSpec,
    dumps,
    parse_json_object,
    require,
)
from search_spaces.vit import ViT, ViTSpace

EMBED_DIMS: tuple[int, ...] = (168, 192, 216)
DEPTHS: tuple[int, ...] = (12, 13, 14)
HEADS: tuple[int, ...] = (3, 4)
MLP_RATIOS: tuple[float, ...] = (3.5, 4.0)
RANK_RATIOS: tuple[float, ...] = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
PATCH_SIZES: tuple[int, ...] = (16, 20, 24, 28, 32)
INPUT_SHAPE = (3, 240, 240)


def low_rank(in_features: int, out_features: int, ratio: float) -> int:
    """Rank of a factorised ``in x out`` layer: ``int(ratio * min(in, out))``, at least 1 (MCUFormer's rule)."""
    return max(1, int(ratio * min(in_features, out_features)))


class LowRankLinear(nn.Module):
    """``up(down(x))``: a linear layer factorised through ``rank`` (no bias in the first factor)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)
        # The ViT draws dense weights from N(0, 0.02); N(0, 0.02) then N(0, 1/rank) gives the product the
        # same output variance, so a factorised network starts at the scale of its dense counterpart.
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.trunc_normal_(self.up.weight, std=1.0 / math.sqrt(rank))
        if self.up.bias is not None:
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` through both factors."""
        return self.up(self.down(x))


def factorise_(module: nn.Module, ratio: float) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` by a :class:`LowRankLinear` of rank ratio ``ratio``, in place.

    A layer's proxy tag (``zc_role``) moves to its replacement, so tagged outputs are still recorded.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            new = LowRankLinear(child.in_features, child.out_features,
                                low_rank(child.in_features, child.out_features, ratio), child.bias is not None)
            if hasattr(child, "zc_role"):
                new.zc_role = child.zc_role  # type: ignore[assignment]
            setattr(module, name, new)
        else:
            factorise_(child, ratio)
    return module


@register("mcuvit")
class MCUViTSpace(LayeredSpace):
    """MCUFormer-style ViT space: embed dim, patch size, low-rank ratio, depth, per-layer heads and MLP ratio.

    Args:
        num_classes: classifier width (1000 for ImageNet).
        input_shape: image (C, H, W); every patch size must tile H and W.
        embed_dims, depths, heads, mlp_ratios, rank_ratios, patch_sizes: override the choices (e.g. tiny
            ones for tests). ``patch_sizes`` defaults to MCUFormer's sizes that tile the input.

    Example:
        >>> space = MCUViTSpace(num_classes=10, input_shape=(3, 32, 32), embed_dims=(32,), depths=(1,),
        ...                     heads=(1,), mlp_ratios=(2.0,), rank_ratios=(0.5,), patch_sizes=(8,))
        >>> arch = space.from_string('{"embed_dim":32,"patch_size":8,"rank_ratio":0.5,'
        ...                          '"layers":[{"num_heads":1,"mlp_ratio":2.0}]}')
        >>> space.build(arch)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    name = "mcuvit"
    description = ("MCUFormer-style tiny ViTs: embed dim, patch size, low-rank ratio, 12-14 layers, heads & MLP "
                   "ratio per layer, ImageNet 240x240")
    input_kind = "image"
    unavailable_proxies = ViTSpace.unavailable_proxies
    ensemble_components = ViTSpace.ensemble_components
    # Proxies on 240x240 ViTs of about 1 GMAC per image: a small calibration batch keeps a CPU search short.
    search_defaults: dict[str, Any] = {"objectives": ["synflow"], "batch_size": 8}

    def __init__(self, num_classes: int = 1000, input_shape: tuple[int, int, int] = INPUT_SHAPE,
                 embed_dims: Sequence[int] = EMBED_DIMS, depths: Sequence[int] = DEPTHS,
                 heads: Sequence[int] = HEADS, mlp_ratios: Sequence[float] = MLP_RATIOS,
                 rank_ratios: Sequence[float] = RANK_RATIOS, patch_sizes: Sequence[int] | None = None) -> None:
        self.num_classes = num_classes
        self.input_shape = tuple(int(v) for v in input_shape)
        _, h, w = self.input_shape
        tiles = [p for p in PATCH_SIZES if h % p == 0 and w % p == 0]
        if patch_sizes is None:
            if not tiles:
                raise ValueError(f"none of MCUFormer's patch sizes {PATCH_SIZES} tiles a {h}x{w} input; "
                                 f"give patch_sizes")
            patch_sizes = tiles
        bad = [p for p in patch_sizes if h % p or w % p]
        if bad:
            raise ValueError(f"patch sizes {bad} do not tile a {h}x{w} input; sizes that do from MCUFormer's "
                             f"{PATCH_SIZES}: {tiles or 'none'}")
        if any(not 0 < float(r) <= 1 for r in rank_ratios):
            raise ValueError(f"rank_ratios must lie in (0, 1] (1 keeps a layer dense), got {list(rank_ratios)}")
        self.spec = LayeredSpec(
            (Field("embed_dim", tuple(int(d) for d in embed_dims)), Field("patch_size", tuple(int(p) for p in patch_sizes)),
             Field("rank_ratio", tuple(float(r) for r in rank_ratios))),
            tuple(int(d) for d in depths),
            (Field("num_heads", tuple(int(n) for n in heads)), Field("mlp_ratio", tuple(float(r) for r in mlp_ratios))))

    def to_string(self, arch: LayeredArch) -> str:
        """``{"embed_dim":..,"patch_size":..,"rank_ratio":..,"layers":[{"num_heads":..,"mlp_ratio":..},..]}``."""
        dim, patch, ratio = arch.globals
        return dumps({"embed_dim": dim, "patch_size": patch, "rank_ratio": ratio,
                      "layers": [{"num_heads": h, "mlp_ratio": r} for h, r in arch.layers]})

    def from_string(self, text: str) -> LayeredArch:
        """Parse the canonical JSON; a missing or disallowed value names its field and the valid ones."""
        obj = parse_json_object(text)
        unknown = sorted(set(obj) - {"embed_dim", "patch_size", "rank_ratio", "layers"})
        if unknown:
            raise ArchError(f"unknown field(s) {unknown}; an mcuvit arch has embed_dim, patch_size, rank_ratio, "
                            f"layers")
        layers = require(obj, "layers")
        if not isinstance(layers, list) or not all(isinstance(d, dict) for d in layers):
            raise ArchError("layers must be a list of {num_heads, mlp_ratio} objects")
        arch = LayeredArch((require(obj, "embed_dim"), require(obj, "patch_size"), require(obj, "rank_ratio")),
                           tuple((require(d, "num_heads", f"layers[{i}]: "), require(d, "mlp_ratio", f"layers[{i}]: "))
                                 for i, d in enumerate(layers)))
        return self.spec.check(arch)

    def build(self, arch: LayeredArch, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None) -> nn.Module:
        """The ViT of ``arch`` with its block linears factorised at the arch's rank ratio."""
        arch = self.spec.check(arch)
        dim, patch, ratio = arch.globals
        net = ViT(LayeredArch((dim,), arch.layers), num_classes or self.num_classes,
                  tuple(input_shape or self.input_shape), patch)
        if ratio < 1:
            factorise_(net.blocks, ratio)  # the patch embedding and the classifier stay dense, as in MCUFormer
        return net

    def to_onnx(self, arch: LayeredArch, path: str | os.PathLike[str]) -> str:
        """Export with a float image input [batch, C, H, W]."""
        return export_onnx(self.build(arch), torch.zeros(1, *self.input_shape), path)
