"""The DARTS search network: every op on every edge of a DARTS cell, for differentiable search.

The network is DARTS' CIFAR search network (Liu et al. 2019, sec. 3.1 and A.1.1): a 3x3 stem of 3C
channels, ``layers`` cells (8 in DARTS) with reduction cells at 1/3 and 2/3 of the depth, global pooling
and a linear head. A cell preprocesses its two inputs to C channels; each of its 4 intermediate nodes sums
mixed edges from both inputs and every earlier node (2 + 3 + 4 + 5 = 14 edges), and its output concatenates
the 4 nodes. The 8 search ops are ``none`` and the 7 of the darts space, built by
:func:`search_spaces.darts_ops.make_op`; architecture parameters ``alpha`` are (2, 14, 8): normal and
reduction cells share theirs across the network, as in DARTS.

* ``net(x)``: each edge is the ``softmax(alpha)``-weighted sum of its ops (DARTS).
* ``partial_k=K``: only the first ``C // K`` channels of an edge go through its ops; the rest bypass it
  (max-pooled on reduction edges), then both parts are concatenated and channel-shuffled. ``edge_norm``
  weights each edge by ``softmax(beta)`` over the edges entering its node (PC-DARTS, Xu et al. 2020).
* ``net(x, sample=gumbel_sample(net.alpha, tau, gen))``: one drawn op per edge, only it computed (GDAS).
* ``net(x, arch=genotype)``: the fixed path of a darts-space genotype: each node sums its two chosen ops
  with weight 1 (no edge weights), as the evaluated network does; used to score a derived cell.

As in DARTS' search network the cell BatchNorms have no affine parameters (their scale would absorb alpha),
and, as in :mod:`search_spaces.nb201_supernet`, no BatchNorm keeps running statistics: every mixture and path
the supernet is run as normalises with its own batch.

Example:
    >>> import search_spaces, torch
    >>> space = search_spaces.get("darts", channels=4, layers=3)
    >>> net = space.supernet(partial_k=2, edge_norm=True)
    >>> net(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 10])
    >>> space.build(net.genotype()) is not None
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.base import ArchError
from search_spaces.darts import CELL_TYPES, NODES, DartsGenotype
from search_spaces.darts import OPS as SPACE_OPS
from search_spaces.darts_ops import FactorizedReduce, make_op
from search_spaces.nb201 import ReLUConvBN
from search_spaces.nb201_supernet import DifferentiableSupernet, Sample, channel_shuffle

__all__ = ["DartsSuperNet", "OPS", "PARAM_FREE", "derive_cell", "supernet"]

OPS: tuple[str, ...] = ("none", *SPACE_OPS)
"""DARTS' 8 search ops (its PRIMITIVES, same order): ``none`` and the darts space's 7."""
PARAM_FREE: frozenset[str] = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"})
"""Ops without weights: a cell full of them (skip connections above all) is DARTS' collapse."""
EDGES: tuple[tuple[int, int], ...] = tuple((k + 2, i) for k in range(NODES) for i in range(k + 2))
"""The 14 (node, input) edges of a cell in DARTS' order: node 2 from 0, 1; node 3 from 0, 1, 2; ..."""


def _search_bns(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm of a darts-space op for one without affine parameters or running statistics.

    darts_ops builds its ops with affine BatchNorm, as the evaluated network has; the search network needs
    them without, and swapping after construction keeps one definition of every op.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.BatchNorm2d(child.num_features, affine=False, track_running_stats=False))
        else:
            _search_bns(child)
    return module


class Zero(nn.Module):
    """DARTS' ``none``: zeros at the edge's output resolution."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zeros shaped like the edge's output."""
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


def search_op(name: str, channels: int, stride: int) -> nn.Module:
    """One DARTS search op: the darts-space op with search BatchNorms; pools get a BN as in DARTS' MixedOp."""
    if name == "none":
        return Zero(stride)
    op = _search_bns(make_op(name, channels, stride))
    if "pool" in name:
        # DARTS follows a pool by a BN without affine parameters, so its output scale matches the conv ops'.
        op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False, track_running_stats=False))
    return op


class DartsMixedEdge(nn.Module):
    """The 8 ops of one edge, on ``channels // partial_k`` channels (all when ``partial_k=1``)."""

    def __init__(self, channels: int, stride: int, partial_k: int = 1) -> None:
        super().__init__()
        self.stride, self.partial_k = stride, partial_k
        self.op_channels = channels // partial_k
        self.ops = nn.ModuleList(search_op(name, self.op_channels, stride) for name in OPS)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None, index: int | None = None) -> torch.Tensor:
        """Weighted sum of the ops (``weights``: 8 values), or op ``index`` alone (times its weight if given)."""
        part = x if self.partial_k == 1 else x[:, :self.op_channels]
        if index is not None:
            out = self.ops[index](part)
            if weights is not None:
                out = out * weights[index]
        else:
            if weights is None:
                raise ValueError("a mixed edge needs op weights or an op index")
            # `none` adds zeros whatever its weight; its alpha still learns through the softmax.
            out = sum(w * op(part) for w, op, name in zip(weights, self.ops, OPS, strict=True) if name != "none")
        if self.partial_k == 1:
            return out
        rest = x[:, self.op_channels:]
        if self.stride == 2:
            rest = F.max_pool2d(rest, 2, 2)  # the bypassed channels must shrink with the edge (PC-DARTS)
        return channel_shuffle(torch.cat([out, rest], dim=1), self.partial_k)


class DartsSearchCell(nn.Module):
    """A normal or reduction search cell: 4 nodes, each a sum of mixed edges from all earlier states."""

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool,
                 partial_k: int) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (_search_bns(FactorizedReduce(c_prev_prev, c)) if reduction_prev
                            else ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False, track_running_stats=False))
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=False, track_running_stats=False)
        self.edges = nn.ModuleList(DartsMixedEdge(c, 2 if reduction and i < 2 else 1, partial_k)
                                   for _, i in EDGES)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None,
                index: Sequence[int] | None, edge_weights: torch.Tensor | None) -> torch.Tensor:
        """The cell output for op ``weights`` (14, 8) and/or op ``index`` (14; -1: edge left out), and
        ``edge_weights`` (14,) when edges are normalised."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        k = 0
        for node in range(NODES):
            total: torch.Tensor | None = None
            for i in range(node + 2):
                op = None if index is None else int(index[k])
                if op is None or op >= 0:
                    out = self.edges[k](states[i], None if weights is None else weights[k], op)
                    if edge_weights is not None:
                        out = out * edge_weights[k]
                    total = out if total is None else total + out
                k += 1
            assert total is not None, "every node takes at least one edge"
            states.append(total)
        return torch.cat(states[2:], dim=1)


class DartsSuperNet(DifferentiableSupernet):
    """DARTS' search network with architecture parameters ``alpha`` (2 cell types x 14 edges x 8 ops).

    Args:
        num_classes: classifier width.
        channels: initial channels C (16 in DARTS' search).
        layers: cells (8 in DARTS' search); reductions at ``layers // 3`` and ``2 * layers // 3``.
        in_channels: input image channels.
        partial_k: PC-DARTS' K: ``1 / K`` of each edge's channels go through its ops (1: all).
        edge_norm: PC-DARTS' edge normalisation with parameters ``beta`` (2 x 14).
        seed: seeds the initial weights and alpha (the global generator is left as it was).

    Example:
        >>> net = DartsSuperNet(channels=4, layers=3, partial_k=2, edge_norm=True)
        >>> [tuple(p.shape) for p in net.arch_parameters()]
        [(2, 14, 8), (2, 14)]
    """

    op_names: tuple[str, ...] = OPS
    edge_names: tuple[str, ...] = tuple(f"{t} {i}->{n}" for t in CELL_TYPES for n, i in EDGES)

    def __init__(self, num_classes: int = 10, channels: int = 16, layers: int = 8, in_channels: int = 3,
                 partial_k: int = 1, edge_norm: bool = False, seed: int = 0) -> None:
        super().__init__()
        if partial_k < 1 or channels % partial_k:
            raise ValueError(f"partial channels K={partial_k} must be at least 1 and divide channels={channels}")
        if layers < 3:
            raise ValueError(f"the DARTS search network needs at least 3 cells (two reductions), got {layers}")
        self.partial_k, self.edge_norm = partial_k, edge_norm
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            c_stem = 3 * channels
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(c_stem, track_running_stats=False))
            c_pp, c_p, c = c_stem, c_stem, channels
            cells: list[DartsSearchCell] = []
            reduction_prev = False
            for i in range(layers):
                reduction = i in (layers // 3, 2 * layers // 3)
                if reduction:
                    c *= 2
                cells.append(DartsSearchCell(c_pp, c_p, c, reduction, reduction_prev, partial_k))
                reduction_prev = reduction
                c_pp, c_p = c_p, NODES * c
            self.cells = nn.ModuleList(cells)
            self.classifier = nn.Linear(c_p, num_classes)
            # DARTS' initialisation, 1e-3 * N(0, 1): near-uniform mixtures that still break ties.
            self.alpha = nn.Parameter(1e-3 * torch.randn(len(CELL_TYPES), len(EDGES), len(OPS)))
            self.beta = nn.Parameter(1e-3 * torch.randn(len(CELL_TYPES), len(EDGES))) if edge_norm else None

    def edge_weights(self) -> torch.Tensor | None:
        """Per edge, ``softmax(beta)`` over the edges entering the same node: (2, 14), or None."""
        if self.beta is None:
            return None
        parts, start = [], 0
        for node in range(NODES):
            parts.append(F.softmax(self.beta[:, start:start + node + 2], dim=-1))
            start += node + 2
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor, arch: DartsGenotype | None = None, sample: Sample | None = None) -> torch.Tensor:
        """Logits of ``x`` for the softmax mixture, the fixed path of genotype ``arch``, or a Gumbel ``sample``."""
        if arch is not None and sample is not None:
            raise ValueError("give a fixed arch or a Gumbel sample, not both")
        weights: torch.Tensor | None = None
        index: list[list[int]] | None = None
        edge_weights = None
        if arch is not None:
            index = self._indices(arch)
        elif sample is not None:
            weights, index = sample[0], sample[1].tolist()
            edge_weights = self.edge_weights()
        else:
            weights, edge_weights = self.op_weights(), self.edge_weights()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            t = int(cell.reduction)
            s0, s1 = s1, cell(s0, s1, None if weights is None else weights[t], None if index is None else index[t],
                              None if edge_weights is None else edge_weights[t])
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(s1, 1), 1))

    @staticmethod
    def _indices(arch: DartsGenotype) -> list[list[int]]:
        """Per cell type, the op index of each of the 14 edges, -1 where the genotype has no edge."""
        if not isinstance(arch, DartsGenotype):
            raise ArchError(f"a fixed path needs a DartsGenotype, got {type(arch).__name__}")
        out = []
        for cell_type in CELL_TYPES:
            row = [-1] * len(EDGES)
            for pos, (op, src) in enumerate(getattr(arch, cell_type)):
                row[EDGES.index((pos // 2 + 2, src))] = OPS.index(op)
            out.append(row)
        return out

    @torch.no_grad()
    def genotype(self) -> DartsGenotype:
        """The derived genotype by DARTS' rule (op weights times edge weights under edge normalisation)."""
        w = self.op_weights()
        if self.beta is not None:
            w = w * self.edge_weights().unsqueeze(-1)  # type: ignore[union-attr]
        return DartsGenotype(*(derive_cell(w[t]) for t in range(len(CELL_TYPES))))

    @staticmethod
    def param_free_edges(arch: DartsGenotype) -> int:
        """How many of the genotype's 16 edges carry a parameter-free op (skip, pool)."""
        return sum(op in PARAM_FREE for t in CELL_TYPES for op, _ in getattr(arch, t))


def derive_cell(weights: torch.Tensor) -> tuple[tuple[str, int], ...]:
    """One cell from (14, 8) edge weights: per node the 2 inputs whose best non-none op is strongest, each
    with that op (DARTS' discretisation, sec. 2.4); entries sorted by input as the darts space keeps them."""
    none = OPS.index("none")
    masked = weights.detach().cpu().clone()
    masked[:, none] = -float("inf")
    strength, best = masked.max(dim=-1)
    cell: list[tuple[str, int]] = []
    start = 0
    for node in range(NODES):
        n = node + 2
        # Stable sort: of equally strong edges the earlier input wins, so a derivation is reproducible.
        inputs = sorted(range(n), key=lambda i: -float(strength[start + i]))[:2]
        cell += sorted(((OPS[int(best[start + i])], i) for i in inputs), key=lambda e: e[1])
        start += n
    return tuple(cell)


def supernet(space: Any, partial_k: int = 1, edge_norm: bool = False, seed: int = 0) -> DartsSuperNet:
    """The search network of a darts space object (its classes, channels C, cells and input)."""
    if getattr(space, "name", None) != "darts":
        raise ValueError(f"the DARTS search network needs the darts space, got {getattr(space, 'name', space)!r}")
    return DartsSuperNet(space.num_classes, space.channels, space.layers, space.input_shape[0],
                         partial_k=partial_k, edge_norm=edge_norm, seed=seed)
