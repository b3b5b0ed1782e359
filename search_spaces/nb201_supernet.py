"""The NAS-Bench-201 supernet for weight-sharing search: every op of every edge in one network.

The skeleton is the space's own (:mod:`search_spaces.nb201`): a 3x3 stem, three stages of
``cells_per_stage`` cells at C, 2C and 4C channels joined by residual reductions, then BN-ReLU, global
pooling and a linear head. Each cell edge is a :class:`MixedEdge` holding the five ops. One module serves
every weight-sharing method; how an edge mixes its ops is chosen per forward:

* ``net(x)``: the softmax-weighted sum of all ops, ``softmax(alpha)`` per edge (DARTS, Liu et al. 2019).
* built with ``partial_k=K``: only the first ``C // K`` channels go through the ops, the rest bypass the
  edge, and the two parts are concatenated and channel-shuffled (PC-DARTS, Xu et al. 2020). With
  ``edge_norm=True`` each node sums its incoming edges weighted by ``softmax(beta)`` over those edges
  (PC-DARTS' edge normalisation; node 1 has one edge, so its weight is always 1).
* ``net(x, sample=gumbel_sample(net.alpha, tau, gen))``: one op per edge drawn by Gumbel-max; forward
  computes only the drawn op, scaled by its straight-through weight, so the gradient reaches every
  entry of alpha through the softmax (GDAS, Dong & Yang 2019).
* ``net(x, arch=...)``: a fixed single path, one op per edge with weight 1 (SPOS / ENAS subnets, and
  inherited-weight accuracy of a derived cell).

As in the DARTS and NAS-Bench-201 searches, the cell ops' BatchNorms have no affine parameters (the
scale would otherwise absorb alpha). All BatchNorms use batch statistics (``track_running_stats=False``):
the supernet holds no running statistics that differ between the mixtures and paths it is run as, and a
subnet is evaluated on batches of its own statistics (the recalibration SPOS does, batch by batch).

Example:
    >>> import search_spaces, torch
    >>> space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
    >>> net = supernet(space)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> space.to_string(net.genotype()).count("~")
    6
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.base import ArchError
from search_spaces.nb201 import EDGES, OPS, NB201Arch, NB201Network, ReLUConvBN, make_op

__all__ = ["MixedEdge", "NB201SuperNet", "PARAM_FREE", "channel_shuffle", "derive_cell", "gumbel_sample", "supernet"]

PARAM_FREE: frozenset[str] = frozenset({"none", "skip_connect", "avg_pool_3x3"})
"""Ops without weights: a cell made mostly of them is DARTS's known failure (collapse)."""

Sample = tuple[torch.Tensor, torch.Tensor]
"""A Gumbel draw: straight-through op weights (6, 5) and the drawn op index per edge (6,)."""


def _bn(channels: int, affine: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=affine, track_running_stats=False)


def _relu_conv_bn(c_in: int, c_out: int, kernel: int, stride: int, affine: bool) -> ReLUConvBN:
    return ReLUConvBN(c_in, c_out, kernel, stride, kernel // 2, affine, track_running_stats=False)


def search_op(name: str, channels: int) -> nn.Module:
    """One NAS-Bench-201 op for the supernet (stride 1, BN without affine parameters or running stats)."""
    return make_op(name, channels, affine=False, track_running_stats=False)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet), so the next edge sees channels of both parts."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MixedEdge(nn.Module):
    """The five ops of one cell edge, on ``channels // partial_k`` channels (all of them when ``partial_k=1``)."""

    def __init__(self, channels: int, partial_k: int = 1) -> None:
        super().__init__()
        self.partial_k = partial_k
        self.op_channels = channels // partial_k
        self.ops = nn.ModuleList(search_op(name, self.op_channels) for name in OPS)
        self.active: tuple[bool, ...] = (True,) * len(OPS)  # ops left in the mixture (see set_op_mask)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None, index: int | None = None) -> torch.Tensor:
        """Weighted sum of all ops (``weights``: 5 values), or op ``index`` alone (scaled by its weight if given)."""
        part, rest = (x, None) if self.partial_k == 1 else (x[:, :self.op_channels], x[:, self.op_channels:])
        if index is not None:
            out = self.ops[index](part)
            if weights is not None:
                out = out * weights[index]
        else:
            if weights is None:
                raise ValueError("a mixed edge needs op weights or an op index")
            # `none` outputs zeros whatever its weight, so its term is left out; alpha of `none` still
            # gets its gradient through the softmax that couples it to the other ops.
            # Ops pruned out of the mixture (weight exactly 0) are not computed: they get no gradient.
            terms = [w * op(part) for w, op, name, on in zip(weights, self.ops, OPS, self.active, strict=True)
                     if on and name != "none"]
            out = sum(terms) if terms else torch.zeros_like(part)  # only `none` left: the edge outputs zeros
        if rest is None:
            return out
        return channel_shuffle(torch.cat([out, rest], dim=1), self.partial_k)


class SearchCell(nn.Module):
    """A NAS-Bench-201 cell of mixed edges: node j sums its edges from every earlier node; node 3 is output."""

    def __init__(self, channels: int, partial_k: int = 1) -> None:
        super().__init__()
        self.edges = nn.ModuleList(MixedEdge(channels, partial_k) for _ in EDGES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None, index: Sequence[int] | None,
                edge_weights: torch.Tensor | None) -> torch.Tensor:
        """The cell's output for per-edge op ``weights`` (6, 5) and/or op ``index`` (6,), and node-wise
        ``edge_weights`` (6,) when edges are normalised."""
        nodes = [x]
        for to in range(1, 4):
            total = None
            for k, (t, frm) in enumerate(EDGES):
                if t != to:
                    continue
                out = self.edges[k](nodes[frm], None if weights is None else weights[k],
                                    None if index is None else int(index[k]))
                if edge_weights is not None:
                    out = out * edge_weights[k]
                total = out if total is None else total + out
            nodes.append(total)
        return nodes[3]


class ResidualReduction(nn.Module):
    """The residual block joining stages, as in the space (3x3 stride 2, 3x3, pooled 1x1 shortcut)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = _relu_conv_bn(c_in, c_out, 3, 2, affine=True)
        self.conv_b = _relu_conv_bn(c_out, c_out, 3, 1, affine=True)
        self.downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                                        nn.Conv2d(c_in, c_out, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Half the resolution, twice the channels."""
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class DifferentiableSupernet(nn.Module):
    """What DARTS-style supernets share: architecture parameters ``alpha`` (op logits per edge, last axis)
    and optional ``beta`` (edge normalisation), apart from the network weights."""

    alpha: nn.Parameter
    beta: nn.Parameter | None

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters: alpha, and beta with edge normalisation."""
        return [self.alpha] + ([self.beta] if self.beta is not None else [])

    def weight_parameters(self) -> list[nn.Parameter]:
        """The network weights (everything but the architecture parameters)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def masked_alpha(self) -> torch.Tensor:
        """alpha, with the ops pruned out of the mixture (none here) at -inf."""
        return self.alpha

    def op_weights(self) -> torch.Tensor:
        """``softmax(alpha)`` over each edge's ops (same shape as alpha; pruned ops weigh 0)."""
        return F.softmax(self.masked_alpha(), dim=-1)


class NB201SuperNet(DifferentiableSupernet):
    """All NAS-Bench-201 cells in one network, with architecture parameters ``alpha`` (6 edges x 5 ops).

    Args:
        num_classes: classifier width.
        channels: first-stage width C (the stages have C, 2C, 4C).
        cells_per_stage: N cells per stage.
        in_channels: input image channels.
        partial_k: PC-DARTS' K: ``1 / K`` of each edge's channels go through its ops (1: all).
        edge_norm: PC-DARTS' edge normalisation with parameters ``beta`` (one per edge).
        seed: seeds the initial weights and alpha (the global generator is left as it was).
    """

    op_names: tuple[str, ...] = OPS
    edge_names: tuple[str, ...] = tuple(f"{frm}->{to}" for to, frm in EDGES)

    def __init__(self, num_classes: int = 10, channels: int = 16, cells_per_stage: int = 5, in_channels: int = 3,
                 partial_k: int = 1, edge_norm: bool = False, seed: int = 0) -> None:
        super().__init__()
        if partial_k < 1 or channels % partial_k:
            raise ValueError(f"partial channels K={partial_k} must be at least 1 and divide channels={channels}")
        self.partial_k, self.edge_norm = partial_k, edge_norm
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                      _bn(channels, affine=True))
            layers: list[nn.Module] = []
            c = channels
            for stage in range(3):
                if stage:
                    layers.append(ResidualReduction(c, c * 2))
                    c *= 2
                layers.extend(SearchCell(c, partial_k) for _ in range(cells_per_stage))
            self.cells = nn.ModuleList(layers)
            self.lastact = nn.Sequential(_bn(c, affine=True), nn.ReLU(inplace=False))
            self.classifier = nn.Linear(c, num_classes)
            # Small random alpha (DARTS' 1e-3 * N(0, 1)): near-uniform mixtures that still break ties.
            self.alpha = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(OPS)))
            self.beta = nn.Parameter(1e-3 * torch.randn(len(EDGES))) if edge_norm else None
        # Ops left in each edge's mixture (all until set_op_mask); not in the state dict: the strategy that
        # prunes keeps the mask in its own checkpoint entry, and older checkpoints load unchanged.
        self.register_buffer("op_mask", torch.ones(len(EDGES), len(OPS), dtype=torch.bool), persistent=False)

    def set_op_mask(self, mask: torch.Tensor) -> None:
        """Keep only the ops ``mask`` (6 x 5, bool) marks in each edge's mixture; the rest weigh 0 in
        :meth:`op_weights`, are never computed in the mixture, never drawn by a Gumbel sample of
        :meth:`masked_alpha` and never derived by :meth:`genotype`. Fixed paths (``arch=``) may still use them."""
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != self.alpha.shape or not mask.any(dim=-1).all():
            raise ValueError(f"an op mask is {tuple(self.alpha.shape)} with at least one op per edge, got "
                             f"{mask.tolist()}")
        self.op_mask = mask.to(self.alpha.device)
        for cell in self.cells:
            if isinstance(cell, SearchCell):
                for k, edge in enumerate(cell.edges):
                    edge.active = tuple(bool(v) for v in mask[k])

    def masked_alpha(self) -> torch.Tensor:
        """alpha with the pruned ops at -inf (their softmax weight is 0 and they get no gradient)."""
        if bool(self.op_mask.all()):
            return self.alpha
        return self.alpha.masked_fill(~self.op_mask, float("-inf"))

    def edge_weights(self) -> torch.Tensor | None:
        """Per edge, ``softmax(beta)`` over the edges entering the same node (None without edge normalisation)."""
        if self.beta is None:
            return None
        out = []
        for to in range(1, 4):
            idx = [k for k, (t, _) in enumerate(EDGES) if t == to]
            out.append(F.softmax(self.beta[idx], dim=0))
        return torch.cat(out)

    def forward(self, x: torch.Tensor, arch: Sequence[str | int] | None = None,
                sample: Sample | None = None) -> torch.Tensor:
        """Logits of ``x`` for the softmax mixture, a fixed path ``arch`` (one op per edge, names or
        indices) or a Gumbel ``sample`` (only the drawn op of each edge is computed)."""
        if arch is not None and sample is not None:
            raise ValueError("give a fixed arch or a Gumbel sample, not both")
        weights: torch.Tensor | None
        index: Sequence[int] | None
        if arch is not None:
            weights, index = None, self._indices(arch)
        elif sample is not None:
            weights, index = sample[0], sample[1].tolist()
        else:
            weights, index = self.op_weights(), None
        edge_weights = self.edge_weights()
        h = self.stem(x)
        for layer in self.cells:
            h = layer(h, weights, index, edge_weights) if isinstance(layer, SearchCell) else layer(h)
        h = self.lastact(h)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    @staticmethod
    def _indices(arch: Sequence[str | int]) -> list[int]:
        if len(arch) != len(EDGES):
            raise ArchError(f"a fixed path needs one op per edge ({len(EDGES)}), got {len(arch)}")
        out = []
        for op in arch:
            if isinstance(op, str):
                if op not in OPS:
                    raise ArchError(f"unknown op {op!r}; valid ops: {', '.join(OPS)}")
                out.append(OPS.index(op))
            else:
                out.append(int(op))
        return out

    @torch.no_grad()
    def subnet(self, arch: Sequence[str]) -> NB201Network:
        """The standalone network of ``arch`` with copies of the shared weights of that path.

        The cell ops' BatchNorms of the supernet have no affine parameters, so the subnet's are the
        identity (scale 1, shift 0); no BatchNorm here has running statistics, so the subnet's start at
        the defaults and are recalibrated on data before it is evaluated in eval mode. In training mode
        (batch statistics) its output equals ``self(x, arch=arch)``. Needs ``partial_k=1`` and no edge
        normalisation (the standalone cell has neither).
        """
        if self.partial_k != 1 or self.beta is not None:
            raise ValueError("subnet(arch) needs the plain supernet (partial_k=1, edge_norm=False)")
        index = self._indices(arch)
        ops = tuple(OPS[i] for i in index)
        net = NB201Network(ops, self.classifier.out_features, self.stem[0].out_channels,  # type: ignore[arg-type]
                           self._cells_per_stage(), self.stem[0].in_channels)
        shared = {k: v for k, v in self.state_dict().items() if k not in ("alpha", "beta")}
        ours: dict[str, torch.Tensor] = {}
        for key, value in shared.items():
            parts = key.split(".")
            if parts[0] == "cells" and isinstance(self.cells[int(parts[1])], SearchCell):
                # cells.<c>.edges.<k>.ops.<op>.<rest> -> cells.<c>.edges.<k>.<rest> for the path's op only
                if int(parts[5]) != index[int(parts[3])]:
                    continue
                key = ".".join(parts[:4] + parts[6:])
            ours[key] = value
        missing, unexpected = net.load_state_dict(ours, strict=False)
        stats_or_affine = ("running_mean", "running_var", "num_batches_tracked", "weight", "bias")
        assert not unexpected and all(k.rsplit(".", 1)[-1] in stats_or_affine for k in missing), (missing, unexpected)
        return net.train(self.training)

    def _cells_per_stage(self) -> int:
        return sum(isinstance(c, SearchCell) for c in self.cells) // 3

    @staticmethod
    def param_free_edges(arch: Sequence[str]) -> int:
        """How many of the cell's 6 edges carry a parameter-free op (none, skip, pool)."""
        return sum(op in PARAM_FREE for op in arch)

    def genotype(self, exclude_none: bool = False) -> NB201Arch:
        """The derived cell (:func:`derive_cell` of alpha); an op pruned out of an edge's mixture is never derived."""
        return derive_cell(self.masked_alpha().detach(), exclude_none)


def derive_cell(alpha: torch.Tensor, exclude_none: bool = False) -> NB201Arch:
    """The cell of (6, 5) op logits (``-inf``: pruned): per edge the op of largest alpha, ``none`` included
    (NAS-Bench-201's DARTS rule) or, with ``exclude_none``, the largest other than ``none`` (the rule of
    DARTS' and PC-DARTS' own code; an edge left with ``none`` alone still derives it)."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64).cpu()
    if exclude_none:
        others = alpha.clone()
        others[:, OPS.index("none")] = float("-inf")
        alpha = torch.where(torch.isfinite(others).any(dim=-1, keepdim=True), others, alpha)
    return tuple(OPS[i] for i in alpha.argmax(dim=-1).tolist())  # type: ignore[return-value]


def gumbel_sample(alpha: torch.Tensor, tau: float, generator: torch.Generator) -> Sample:
    """One op per edge by Gumbel-max on ``log_softmax(alpha)``, with straight-through weights (GDAS).

    The weights are one-hot in value; their gradient is that of ``softmax((log p + g) / tau)``. The noise
    is drawn on the CPU from ``generator`` so a run is the same on any device.
    """
    u = torch.rand(alpha.shape, generator=generator).clamp_(1e-10, 1.0 - 1e-7).to(alpha.device)
    gumbel = -torch.log(-torch.log(u))
    soft = F.softmax((F.log_softmax(alpha, dim=-1) + gumbel) / tau, dim=-1)
    index = soft.detach().argmax(dim=-1)
    hard = F.one_hot(index, alpha.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft, index


def supernet(space: Any, partial_k: int = 1, edge_norm: bool = False, seed: int = 0) -> NB201SuperNet:
    """The supernet of a NAS-Bench-201 space object (its classes, channels, cells per stage and input)."""
    if getattr(space, "name", None) != "nb201":
        raise ValueError(f"the NAS-Bench-201 supernet needs the nb201 space, got {getattr(space, 'name', space)!r}")
    return NB201SuperNet(space.num_classes, space.channels, space.cells_per_stage, space.input_shape[0],
                         partial_k=partial_k, edge_norm=edge_norm, seed=seed)
