"""Per-block latency tables from a target's linear graph model, for differentiable latency losses.

A target's linear model prices a network as ``features @ coef + intercept`` where the features sum over
graph nodes (:mod:`hardware_models.graph_features`), so a network's linear latency splits into its
blocks: the fixed stem and head (with the intercept), plus, per searchable position, the cost of the
option that runs there. One term crosses block boundaries: a node's ``fanout`` (how many nodes read its
output) is priced by the category of the node that *produced* the tensor, i.e. by the previous block's
last node, and an identity option (FBNet's ``skip``, a skipped OFA block) passes the producer through. The
table therefore keeps, per option, how many of its nodes read its input (``reads``), the price of one more
reader of its output (``out_ms``) and whether it computes nothing (``passthrough``); the expected
latency carries the expected producer price along the chain, which is exact in expectation because the
choices of different positions are independent.

Depth (OFA): a group of positions runs its first ``d`` of them with ``d`` drawn from the group's own
distribution; the expected latency of a group mixes the chains cut after each allowed depth, so it is
exact for per-stage depth distributions (a stage never skips block 2 and runs block 3).

With one-hot choices :meth:`BlockLatencyTable.expected_ms` equals the target's linear model on the
network's recorded graph features (to float rounding). Against ``target.predict`` on 50 random archs it is
within 0.07% on rpi4 and 0.62% on 2080ti_1 (``experiments/proxyless_latency_check.py``): the remainder is
``predict``'s own, whose memoised meta-device recording miscounts one node's fanout on some archs once
earlier archs were recorded in the same process. A residual network applies only to the spaces the
reference devices measured (today nb201), not to fbnet or ofa: :func:`residual_ms` gives that correction
at one architecture for a caller to add as a constant (no gradient); it is 0 where no network applies.

Example:
    >>> import hardware_models, search_spaces
    >>> space = search_spaces.get("fbnet", num_classes=10)
    >>> table = fbnet_table(hardware_models.get("rpi4"), space)
    >>> arch = space.sample(np.random.default_rng(0))
    >>> ms = float(table.expected_ms(table.one_hot(space, arch)))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hardware_models.graph_features import FEATURE_NAMES, torch_module_features

__all__ = ["BlockLatencyTable", "Group", "Position", "fbnet_table", "ofa_table", "residual_ms", "space_choices",
           "table_for"]

_RELU_FANOUT = FEATURE_NAMES.index("relu_fanout")


@dataclass(frozen=True)
class Position:
    """One searchable position: its options' latency alone (ms) and what joins them to their neighbours."""

    name: str
    options: tuple[str, ...]
    ms: np.ndarray  # linear latency of each option run alone at the position's input
    reads: np.ndarray  # nodes of the option that read its input tensor
    out_ms: np.ndarray  # price (ms) of one more node reading the option's output (its last node's fanout)
    passthrough: np.ndarray  # True where the option computes nothing (identity)


@dataclass(frozen=True)
class Group:
    """Positions that run as a prefix: the first ``d`` of them for ``d`` in ``depths``."""

    positions: tuple[int, ...]
    depths: tuple[int, ...]


@dataclass
class BlockLatencyTable:
    """Expected latency (ms) of a network whose positions draw their options independently.

    ``fixed_ms`` is the intercept plus stem and head; ``stem_out_ms`` the price of a reader of the stem's
    output; ``tail_reads`` the head's readers of the last block's output.
    """

    target: str
    positions: list[Position]
    groups: list[Group]
    fixed_ms: float
    stem_out_ms: float
    tail_reads: float
    resolution: int | None = None  # ofa: the input side the table was built for

    def expected_ms(self, probs: Sequence[Any], depth_probs: Sequence[Any] | None = None) -> torch.Tensor:
        """E[latency] (ms) for per-position option probabilities and per-group depth probabilities."""
        if len(probs) != len(self.positions):
            raise ValueError(f"expected_ms needs one probability vector per position ({len(self.positions)}), "
                             f"got {len(probs)}")
        if depth_probs is not None and len(depth_probs) != len(self.groups):
            raise ValueError(f"expected_ms needs one depth distribution per group ({len(self.groups)}), "
                             f"got {len(depth_probs)}")
        p = [torch.as_tensor(x, dtype=torch.float64) for x in probs]
        total = torch.tensor(self.fixed_ms, dtype=torch.float64)
        producer = torch.tensor(self.stem_out_ms, dtype=torch.float64)  # expected price of one more reader
        for g, group in enumerate(self.groups):
            q = (torch.ones(1, dtype=torch.float64) if depth_probs is None or len(group.depths) == 1
                 else torch.as_tensor(depth_probs[g], dtype=torch.float64))
            cost, cum, after = torch.zeros((), dtype=torch.float64), {0: torch.zeros((), dtype=torch.float64)}, {0: producer}
            for j, i in enumerate(group.positions, start=1):
                pos, pi = self.positions[i], p[i]
                cost = cost + pi @ _t(pos.ms) + producer * (pi @ _t(pos.reads))
                producer = pi @ _t(pos.out_ms) + (pi @ _t(pos.passthrough)) * producer
                cum[j], after[j] = cost, producer
            if len(group.depths) == 1:
                total, producer = total + cum[group.depths[0]], after[group.depths[0]]
            else:
                total = total + sum(q[k] * cum[d] for k, d in enumerate(group.depths))
                producer = sum(q[k] * after[d] for k, d in enumerate(group.depths))
        return total + producer * self.tail_reads

    def one_hot(self, space: Any, arch: Any) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Per-position and per-group one-hot probabilities of ``arch`` (call as ``expected_ms(*...)``)."""
        if self.resolution is not None and getattr(arch, "r", self.resolution) != self.resolution:
            raise ValueError(f"this table is built at resolution {self.resolution}, the arch has r={arch.r}")
        choices, depths = space_choices(space, arch)
        probs = [np.eye(len(pos.options))[c] for pos, c in zip(self.positions, choices, strict=True)]
        if depths is None:
            return probs, None
        return probs, [np.eye(len(g.depths))[g.depths.index(d)] for g, d in zip(self.groups, depths, strict=True)]

    def arch_ms(self, space: Any, arch: Any) -> float:
        """The table's latency (ms) of one architecture."""
        return float(self.expected_ms(*self.one_hot(space, arch)))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=float), dtype=torch.float64)


def residual_ms(target: Any, space: Any, arch: Any) -> float:
    """The target's residual-network correction (ms) at ``arch``: 0 where no network applies to ``space``."""
    from hardware_models.residual import network_for

    head = getattr(target, "_head", None)
    if head is None or network_for(space) is None:  # checked first: features of a new arch cost ~0.1 s
        return 0.0
    X = target.cache.features(space, [arch])
    res = head.predict(space, X)
    return 0.0 if res is None else float(res[0])


# -- building ---------------------------------------------------------------------------------------------
class _Head(nn.Module):
    """The network's fixed end: ``neck`` (header / final expand), then the network's own pooling head."""

    def __init__(self, net: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.net, self.neck = net, neck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.neck(x))


def _ms(features: np.ndarray, coef: np.ndarray) -> float:
    return float(features @ coef)


def _out_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape (without batch) of ``module``."""
    device = next(iter(module.parameters()), torch.zeros(0)).device
    with torch.no_grad():
        return tuple(module.eval()(torch.zeros(1, *shape, device=device)).shape[1:])


def _position(name: str, options: Sequence[tuple[str, nn.Module]], shape: tuple[int, ...],
              coef: np.ndarray) -> tuple[Position, tuple[int, ...]]:
    """Price every option of a position at input ``shape``; returns the position and its output shape."""
    # Modules must hold real (CPU) tensors: on the meta device torch_module_features memoises sub-module
    # recordings process-wide, and the probes below would leave templates that corrupt later predictions.
    ms, reads, out_ms, passthrough, out = [], [], [], [], None
    for _, module in options:
        f = torch_module_features(module, shape)
        o = _out_shape(module, shape)
        if out is not None and o != out:
            raise ValueError(f"{name}: options give different output shapes ({out} and {o})")
        out = o
        # Probe the boundary with a ReLU: fanout appears as the ReLU's when it feeds the block, and as the
        # block's last node's when it reads the block's output.
        before = torch_module_features(nn.Sequential(nn.ReLU(), module), shape)
        relu_in = torch_module_features(nn.ReLU(), shape)
        after = torch_module_features(nn.Sequential(module, nn.ReLU()), shape)
        relu_out = torch_module_features(nn.ReLU(), o)
        ms.append(_ms(f, coef))
        reads.append(float((before - relu_in - f)[_RELU_FANOUT]))
        out_ms.append(_ms(after - f - relu_out, coef))
        passthrough.append(not f.any())
    assert out is not None
    return Position(name, tuple(n for n, _ in options), np.array(ms), np.array(reads), np.array(out_ms),
                    np.array(passthrough, dtype=float)), out


def _build(target: Any, stem: nn.Module, positions: Sequence[tuple[str, Sequence[tuple[str, nn.Module]]]],
           groups: list[Group], head: nn.Module, input_shape: tuple[int, ...],
           resolution: int | None = None) -> BlockLatencyTable:
    """A table from (CPU) modules: the stem, each position's options, the head."""
    model = getattr(target, "model", None)
    if model is None or not hasattr(model, "coef"):
        raise ValueError(f"target {getattr(target, 'name', target)!r} has no linear graph model (coef, intercept); "
                         "block latency tables need a GraphTarget")
    coef = np.asarray(model.coef, dtype=float)
    f_stem = torch_module_features(stem, input_shape)
    shape = _out_shape(stem, input_shape)
    stem_probe = torch_module_features(nn.Sequential(stem, nn.ReLU()), input_shape)
    stem_out = _ms(stem_probe - f_stem - torch_module_features(nn.ReLU(), shape), coef)
    built = []
    for name, options in positions:
        pos, shape = _position(name, options, shape, coef)
        built.append(pos)
    f_head = torch_module_features(head, shape)
    head_probe = torch_module_features(nn.Sequential(nn.ReLU(), head), shape)
    tail_reads = float((head_probe - torch_module_features(nn.ReLU(), shape) - f_head)[_RELU_FANOUT])
    fixed = float(model.intercept) + _ms(f_stem, coef) + _ms(f_head, coef)
    return BlockLatencyTable(getattr(target, "name", ""), built, groups, fixed, stem_out, tail_reads, resolution)


def fbnet_table(target: Any, space: Any) -> BlockLatencyTable:
    """The table of an FBNet space: 22 positions x 9 ops, each layer its own group."""
    from search_spaces.fbnet import N_LAYERS, OPS, layer_shapes, make_layer

    net = space.build((OPS[0],) * N_LAYERS)  # for its stem and head
    positions = [(f"layer_{i}", [(op, make_layer(op, *shape)) for op in OPS])  # real (CPU) modules: see _position
                 for i, shape in enumerate(layer_shapes(space.setting))]
    groups = [Group((i,), (1,)) for i in range(len(positions))]
    return _build(target, net.stem, positions, groups, _Head(net, net.header), tuple(space.input_shape))


OFA_OPTIONS: tuple[tuple[int, int], ...] = tuple((k, e) for k in (3, 5, 7) for e in (3, 4, 6))
"""The (kernel, expand) pairs of an OFA block, in the order of a position's options."""


def ofa_table(target: Any, space: Any, resolution: int | None = None) -> BlockLatencyTable:
    """The table of an OFA space at input ``resolution`` (default: the space's largest): 20 positions x
    9 (kernel, expand) pairs, each stage a group of depth 2, 3 or 4."""
    from search_spaces.mbv3_blocks import BlockSpec, MBConv, make_divisible
    from search_spaces.ofa import DEPTHS, MAX_DEPTH, N_STAGES, subnet_specs

    r = int(resolution or max(space.resolutions))
    if r not in space.resolutions:
        raise ValueError(f"resolution {r} is not one of the space's: {', '.join(map(str, space.resolutions))}")
    largest = space.largest(r)
    net = space.build(largest)  # real (CPU) modules: see _position
    specs = subnet_specs(largest, space.width_mult)[1:]  # the fixed first block is part of the stem
    positions = []
    for i, s in enumerate(specs):
        options = [(f"k{k}_e{e}", MBConv(BlockSpec(s.c_in, s.c_out, k, s.stride,
                                                   make_divisible(round(s.c_in * e)), s.act, s.se)))
                   for k, e in OFA_OPTIONS]
        positions.append((f"block_{i}", options))
    stem = nn.Sequential(net.stem, net.blocks[0])
    groups = [Group(tuple(range(MAX_DEPTH * s, MAX_DEPTH * (s + 1))), tuple(DEPTHS)) for s in range(N_STAGES)]
    return _build(target, stem, positions, groups, _Head(net, net.final_expand), (3, r, r), r)


_TABLES: dict[tuple[Any, ...], BlockLatencyTable] = {}
"""Tables built in this process, keyed by the target's model and the space's settings (a build costs seconds)."""


def table_for(target: Any, space: Any, resolution: int | None = None) -> BlockLatencyTable:
    """The block latency table of ``space`` (fbnet or ofa) for ``target`` (memoised per model and settings)."""
    from hardware_models.feature_cache import space_key

    model = getattr(target, "model", None)
    key = (getattr(target, "name", ""), space_key(space), resolution,
           None if model is None else (np.asarray(model.coef).tobytes(), float(model.intercept)))
    if key not in _TABLES:
        _TABLES[key] = _table_for(target, space, resolution)
    return _TABLES[key]


def _table_for(target: Any, space: Any, resolution: int | None) -> BlockLatencyTable:
    name = getattr(space, "name", None)
    if name == "fbnet":
        if resolution:
            raise ValueError("fbnet has a fixed input size; resolution applies to ofa only")
        return fbnet_table(target, space)
    if name == "ofa":
        return ofa_table(target, space, resolution)
    raise ValueError(f"block latency tables exist for the spaces fbnet and ofa, not {name!r}")


def space_choices(space: Any, arch: Any) -> tuple[list[int], list[int] | None]:
    """Option index per position (and depth per group for ofa) of ``arch``, in a table's order."""
    name = getattr(space, "name", None)
    if name == "fbnet":
        from search_spaces.fbnet import OPS

        return [OPS.index(op) for op in arch], None
    if name == "ofa":
        return [OFA_OPTIONS.index((k, e)) for k, e in zip(arch.ks, arch.e, strict=True)], list(arch.d)
    raise ValueError(f"block latency tables exist for the spaces fbnet and ofa, not {name!r}")
