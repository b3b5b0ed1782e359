"""NAS-Bench-201 (NATS-Bench topology) cell space, built exactly as the published network."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError, default_to_onnx, suggest_choices

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# Edge k of the cell, in canonical string order: (to_node, from_node).
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))

NB201Arch = tuple[str, str, str, str, str, str]


def _dag_adjacency() -> np.ndarray:
    # Node 0 is the input, node k + 1 the op of edge k, the last node the output. The op of edge
    # (to, frm) reads node frm, so it follows the ops of the edges into frm (or the input when frm is 0),
    # and edges into node 3 feed the output.
    n = len(EDGES) + 2
    adj = np.zeros((n, n), dtype=np.int64)
    for k, (to, frm) in enumerate(EDGES):
        if frm == 0:
            adj[0, k + 1] = 1
        for j, (to_j, _) in enumerate(EDGES):
            if to_j == frm:
                adj[j + 1, k + 1] = 1
        if to == 3:
            adj[k + 1, n - 1] = 1
    return adj


DAG_ADJACENCY: np.ndarray = _dag_adjacency()
"""The one adjacency of every NB201 cell in arch2vec's node-labelled form (``NB201Space.to_dag``)."""


class ReLUConvBN(nn.Module):
    """ReLU -> Conv -> BN, the NAS-Bench-201 convolution op (a supernet's BN: no affine, no running stats)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Zero(nn.Module):
    """The ``none`` op: multiplies by zero so that gradients and graph structure stay as published."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, channels: int, affine: bool = True, track_running_stats: bool = True) -> nn.Module:
    """One NAS-Bench-201 edge operation on ``channels`` channels, stride 1 (BN options: a supernet's)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1, 0, affine, track_running_stats)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1, 1, affine, track_running_stats)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ArchError(f"unknown NAS-Bench-201 op {name!r}; valid: {', '.join(OPS)}")


class Cell(nn.Module):
    """A NAS-Bench-201 cell: node j sums the ops on its edges from every earlier node; node 3 is output."""

    def __init__(self, arch: NB201Arch, channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(make_op(op, channels) for op in arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        k = 0
        for to in range(1, 4):
            total = self.edges[k](nodes[0])
            for frm in range(1, to):
                total = total + self.edges[k + frm](nodes[frm])
            k += to
            nodes.append(total)
        return nodes[3]


class ResidualReduction(nn.Module):
    """The residual block joining stages: two 3x3 ReLU-Conv-BN (first strided) plus pooled 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(c_in, c_out, 1, stride=1, padding=0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    """Stem, three stages of ``cells_per_stage`` cells (C, 2C, 4C) joined by residual reductions, head."""

    def __init__(self, arch: NB201Arch, num_classes: int = 10, channels: int = 16,
                 cells_per_stage: int = 5, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage:
                layers.append(ResidualReduction(c, c * 2))
                c *= 2
            layers.extend(Cell(arch, c) for _ in range(cells_per_stage))
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, H, W) feature map right before global pooling (after the last BN + ReLU)."""
        return self.lastact(self.cells(self.stem(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the pre-pool feature map: global average pooling, then the classifier."""
        return self.classifier(torch.flatten(self.global_pooling(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x``."""
        return self.forward_head(self.forward_features(x))


@register("nb201")
class NB201Space:
    """NAS-Bench-201 cell space.

    Args:
        num_classes: classifier width (10 for CIFAR-10, 100 for CIFAR-100, 120 for ImageNet16-120).
        channels: stem / first-stage width C (16 in the benchmark).
        cells_per_stage: N (5 in the benchmark).
        accuracy_table: optional CSV like ``nb201_accuracy.csv``; enables :meth:`accuracy` (an oracle for
            benchmarks, never used as a search signal unless explicitly asked for).

    Example:
        >>> space = NB201Space()
        >>> arch = space.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|"
        ...                          "+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
        >>> space.build(arch)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    name = "nb201"
    description = "NAS-Bench-201 cells: 6 edges x 5 ops, 15,625 networks, CIFAR 32x32"
    same_shape_decisions = True
    """Every edge of a cell sees the same tensor shape and one cell is stacked everywhere, so an op costs the
    same on any edge (:func:`hardware_models.few_shot.option_counts` can count ops)."""

    def __init__(self, num_classes: int = 10, channels: int = 16, cells_per_stage: int = 5,
                 accuracy_table: str | os.PathLike[str] | None = None, dataset: str = "cifar10",
                 input_shape: tuple[int, int, int] = (3, 32, 32)) -> None:
        self.num_classes = num_classes
        self.channels = channels
        self.cells_per_stage = cells_per_stage
        self.input_shape = tuple(input_shape)
        self.dataset = dataset
        self._accuracy: dict[NB201Arch, float] | None = None
        if accuracy_table is not None:
            self._accuracy = load_accuracy_table(accuracy_table, dataset)

    @property
    def cardinality(self) -> int:
        """5 ** 6 cells."""
        return len(OPS) ** len(EDGES)

    def all_archs(self) -> list[NB201Arch]:
        """Every cell of the space, in a fixed order."""
        idx = np.indices((len(OPS),) * len(EDGES)).reshape(len(EDGES), -1).T
        return [tuple(OPS[i] for i in row) for row in idx]  # type: ignore[misc]

    def sample(self, rng: np.random.Generator) -> NB201Arch:
        """A uniformly random cell."""
        return tuple(OPS[i] for i in rng.integers(len(OPS), size=len(EDGES)))  # type: ignore[return-value]

    def mutate(self, arch: NB201Arch, rng: np.random.Generator) -> NB201Arch:
        """Change the op of one random edge to a different op."""
        edge = int(rng.integers(len(EDGES)))
        choices = [op for op in OPS if op != arch[edge]]
        new = list(arch)
        new[edge] = choices[int(rng.integers(len(choices)))]
        return tuple(new)  # type: ignore[return-value]

    def crossover(self, a: NB201Arch, b: NB201Arch, rng: np.random.Generator) -> NB201Arch:
        """Uniform crossover of the edge ops of two parents."""
        take = rng.random(len(EDGES)) < 0.5
        return tuple(x if t else y for x, y, t in zip(a, b, take, strict=True))  # type: ignore[return-value]

    def to_string(self, arch: NB201Arch) -> str:
        """The NAS-Bench-201 string, e.g. ``|nor_conv_3x3~0|+|...|+|...|``."""
        groups, k = [], 0
        for to in range(1, 4):
            groups.append("|" + "|".join(f"{arch[k + frm]}~{frm}" for frm in range(to)) + "|")
            k += to
        return "+".join(groups)

    def from_string(self, text: str) -> NB201Arch:
        """Parse a NAS-Bench-201 string, naming the group and edge that is malformed."""
        text = text.strip()
        groups = text.split("+")
        if len(groups) != 3:
            raise ArchError(f"NAS-Bench-201 string needs 3 node groups separated by '+', got {len(groups)}: "
                            f"{text!r}")
        ops: list[str] = []
        for j, group in enumerate(groups):
            if not (group.startswith("|") and group.endswith("|")):
                raise ArchError(f"node group {j + 1} ({group!r}) must start and end with '|'")
            edges = group[1:-1].split("|")
            if len(edges) != j + 1:
                raise ArchError(f"node group {j + 1} ({group!r}) needs {j + 1} edge(s), got {len(edges)}")
            for i, edge in enumerate(edges):
                op, sep, src = edge.partition("~")
                if not sep or src != str(i):
                    raise ArchError(f"edge {edge!r} in node group {j + 1} must be written 'op~{i}'")
                if op not in OPS:
                    raise ArchError(f"unknown op {op!r} in edge {edge!r}; valid ops: {', '.join(OPS)}")
                ops.append(op)
        return tuple(ops)  # type: ignore[return-value]

    def encode(self, arch: NB201Arch) -> np.ndarray:
        """One-hot of each edge's op (6 x 5 = 30 values)."""
        out = np.zeros((len(EDGES), len(OPS)), dtype=np.float32)
        out[np.arange(len(EDGES)), [OPS.index(op) for op in arch]] = 1.0
        return out.ravel()

    def decisions(self) -> list[tuple[str, Sequence[str]]]:
        """The categorical decisions of the space: one op per edge."""
        return [(f"edge_{frm}_{to}", OPS) for to, frm in EDGES]

    def from_choices(self, choices: Sequence[int]) -> NB201Arch:
        """Architecture from one option index per decision."""
        return tuple(OPS[int(c)] for c in choices)  # type: ignore[return-value]

    def to_choices(self, arch: NB201Arch) -> list[int]:
        """Option index per decision of ``arch``."""
        return [OPS.index(op) for op in arch]

    def suggest(self, trial: Any) -> NB201Arch:
        """Ask an Optuna trial for one op per edge."""
        return self.from_choices(suggest_choices(self, trial))

    def dag_ops(self) -> list[str]:
        """Node labels of :meth:`to_dag`'s graph: ``input``, the five edge ops, ``output``."""
        return ["input", *OPS, "output"]

    def to_dag(self, arch: NB201Arch) -> tuple[np.ndarray, np.ndarray]:
        """arch2vec's node-labelled form: 8 nodes (input, one per edge op in canonical order, output).

        The edge ops become nodes so that every cell shares one adjacency (:data:`DAG_ADJACENCY`) and
        differs only in the labels; ``ops`` indexes :meth:`dag_ops`.
        """
        labels = self.dag_ops()
        ops = np.array([0, *(labels.index(op) for op in arch), len(labels) - 1], dtype=np.int64)
        return DAG_ADJACENCY.copy(), ops

    def from_dag(self, adjacency: np.ndarray, ops: np.ndarray) -> NB201Arch:
        """The cell of a :meth:`to_dag` graph; ``ArchError`` when the graph is not one (wrong wiring or labels)."""
        adjacency, ops = np.asarray(adjacency), np.asarray(ops).reshape(-1)
        n = len(EDGES) + 2
        if adjacency.shape != (n, n) or ops.shape != (n,):
            raise ArchError(f"an NB201 DAG has {n} nodes: adjacency {n}x{n} and {n} ops, got "
                            f"{adjacency.shape} and {ops.shape}")
        if not np.array_equal(adjacency != 0, DAG_ADJACENCY != 0):
            raise ArchError("an NB201 DAG has one fixed wiring (search_spaces.nb201.DAG_ADJACENCY); "
                            "this adjacency differs")
        labels = self.dag_ops()
        if int(ops[0]) != 0 or int(ops[-1]) != len(labels) - 1:
            raise ArchError("an NB201 DAG starts with the 'input' node and ends with the 'output' node")
        inner = [int(o) for o in ops[1:-1]]
        if any(not 1 <= o <= len(OPS) for o in inner):
            raise ArchError(f"NB201 DAG edge nodes must be labelled with an edge op ({', '.join(OPS)}); got "
                            f"{[labels[o] if 0 <= o < len(labels) else o for o in inner]}")
        return tuple(OPS[o - 1] for o in inner)  # type: ignore[return-value]

    def supernet(self, partial_k: int = 1, edge_norm: bool = False, seed: int = 0) -> Any:
        """The weight-sharing supernet over this space's op set and skeleton (DARTS, PC-DARTS, GDAS)."""
        from search_spaces.nb201_supernet import supernet

        return supernet(self, partial_k=partial_k, edge_norm=edge_norm, seed=seed)

    def build(self, arch: NB201Arch, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None) -> nn.Module:
        """The NAS-Bench-201 network for ``arch``."""
        for op in arch:
            if op not in OPS:
                raise ArchError(f"unknown op {op!r}; valid ops: {', '.join(OPS)}")
        in_channels = (input_shape or self.input_shape)[0]
        return NB201Network(arch, num_classes or self.num_classes, self.channels, self.cells_per_stage,
                            in_channels)

    def to_onnx(self, arch: NB201Arch, path: str | os.PathLike[str]) -> str:
        """Export the network for ``arch`` to ONNX."""
        return default_to_onnx(self, arch, path)

    def is_degenerate(self, arch: NB201Arch) -> bool:
        """True when no path of non-``none`` edges joins the input to the output."""
        reach = {0}
        for (to, frm), op in zip(EDGES, arch, strict=True):
            if op != "none" and frm in reach:
                reach.add(to)
        return 3 not in reach

    def accuracy(self, arch: NB201Arch) -> float:
        """True test accuracy (%) from the attached table (an oracle, for benchmarks only)."""
        if self._accuracy is None:
            raise ValueError("no accuracy table attached; pass accuracy_table=PATH (nb201_accuracy.csv)")
        try:
            return self._accuracy[arch]
        except KeyError:  # a user's table with only some cells
            raise ValueError(f"architecture {self.to_string(arch)} is not in the attached accuracy table "
                             f"({len(self._accuracy)} cells)") from None

    @property
    def has_oracle(self) -> bool:
        """Whether an accuracy table is attached."""
        return self._accuracy is not None


def load_accuracy_table(path: str | os.PathLike[str], dataset: str = "cifar10") -> dict[NB201Arch, float]:
    """Read ``arch,<dataset>...`` CSV rows into a dict keyed by architecture."""
    parser = NB201Space()
    out: dict[NB201Arch, float] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or dataset not in reader.fieldnames or "arch" not in reader.fieldnames:
            raise ValueError(f"{path}: needs the columns 'arch' and {dataset!r}; columns: {reader.fieldnames}")
        for row in reader:
            out[parser.from_string(row["arch"])] = float(row[dataset])
    return out
