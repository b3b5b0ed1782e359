"""NAS-Bench-101 cell space, built exactly as the benchmark's reference network.

The network (Ying et al., 2019): a 3x3 conv-BN-ReLU stem with 128 channels, then 3 stacks of 3 cells;
between stacks a 2x2 max-pool halves the resolution and the cells double their width. Inside a cell the
output width is split over the vertices that feed the output (``compute_vertex_channels``); tensors
from the cell input are projected by 1x1 conv-BN-ReLU, tensors between interior vertices are truncated
to the receiving width and summed, and the output concatenates its interior inputs (plus a projection
of the cell input when that edge exists). Global average pooling and a dense layer close the network.
Parameter counts equal the dataset's ``trainable_parameters``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError, default_to_onnx, suggest_choices
from search_spaces.cell_oracle import OracleMixin
from search_spaces.nb101_graph import (
    INPUT,
    MAX_VERTICES,
    OPS,
    OUTPUT,
    NB101Cell,
    compute_vertex_channels,
    input_output_paths,
    make_cell,
    padded,
    reaches_output,
)
from search_spaces.nb101_graph import spec_hash as _spec_hash

NUM_UNIQUE_CELLS = 423_624
"""Distinct cells up to isomorphism (the size of the published dataset)."""
EDGE_SLOTS: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(MAX_VERTICES)
                                                for j in range(i + 1, MAX_VERTICES))
NUM_PATHS = sum(len(OPS) ** k for k in range(MAX_VERTICES - 1))
"""Distinct op sequences along an input-output path of at most 5 interior vertices (364)."""
BN_MOMENTUM = 1.0 - 0.997  # the reference's moving-average decay 0.997, in PyTorch's convention
BN_EPS = 1e-5


class ConvBnRelu(nn.Module):
    """Stride-1 'same' convolution without bias, batch norm, ReLU (the benchmark's only conv block)."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def make_vertex_op(name: str, channels: int) -> nn.Module:
    """The op of an interior vertex; its input already has ``channels`` channels."""
    if name == "conv3x3-bn-relu":
        return ConvBnRelu(channels, channels, 3)
    if name == "conv1x1-bn-relu":
        return ConvBnRelu(channels, channels, 1)
    if name == "maxpool3x3":
        return nn.MaxPool2d(3, stride=1, padding=1)
    raise ArchError(f"unknown NAS-Bench-101 op {name!r}; valid: {', '.join(OPS)}")


class Cell(nn.Module):
    """One NAS-Bench-101 module for a pruned cell, from ``c_in`` to ``c_out`` channels."""

    def __init__(self, cell: NB101Cell, c_in: int, c_out: int) -> None:
        super().__init__()
        m, n = cell.matrix, cell.num_vertices
        self.matrix = m
        self.channels = compute_vertex_channels(c_in, c_out, m)
        self.proj = nn.ModuleDict({str(t): ConvBnRelu(c_in, self.channels[t], 1)
                                   for t in range(1, n - 1) if m[0][t]})
        self.ops = nn.ModuleList([nn.Identity()] + [make_vertex_op(cell.ops[t], self.channels[t])
                                                   for t in range(1, n - 1)])
        feeds_output = any(m[t][n - 1] for t in range(1, n - 1))
        self.out_proj = ConvBnRelu(c_in, c_out, 1) if m[0][n - 1] or not feeds_output else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, n, ch = self.matrix, len(self.matrix), self.channels
        tensors = [x]
        concat = []
        for t in range(1, n - 1):
            # Interior tensors carry at most one extra channel (the split remainder): keep the first ones.
            terms = [tensors[s][:, :ch[t]] for s in range(1, t) if m[s][t]]
            if m[0][t]:
                terms.append(self.proj[str(t)](x))
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            tensors.append(self.ops[t](total))
            if m[t][n - 1]:
                concat.append(tensors[t])
        if not concat:
            return self.out_proj(x)  # type: ignore[misc]
        out = concat[0] if len(concat) == 1 else torch.cat(concat, dim=1)
        if self.out_proj is not None:
            out = out + self.out_proj(x)
        return out


class NB101Network(nn.Module):
    """Stem, ``num_stacks`` stacks of ``cells_per_stack`` cells with max-pool + width doubling between."""

    def __init__(self, cell: NB101Cell, num_classes: int = 10, channels: int = 128, num_stacks: int = 3,
                 cells_per_stack: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = ConvBnRelu(in_channels, channels, 3)
        layers: list[nn.Module] = []
        c_in = c = channels
        for stack in range(num_stacks):
            if stack:
                # The reference pools with 'same' padding, which for odd sizes is PyTorch's ceil mode.
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                c *= 2
            for _ in range(cells_per_stack):
                layers.append(Cell(cell, c_in, c))
                c_in = c
        self.cells = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, H, W) output of the last cell, right before global pooling."""
        return self.cells(self.stem(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the pre-pool feature map: global average pooling, then the classifier."""
        return self.classifier(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x``."""
        return self.forward_head(self.forward_features(x))


@register("nb101")
class NB101Space(OracleMixin):
    """NAS-Bench-101 cell space: 7-vertex DAGs, at most 9 edges, 3 ops; 423,624 distinct cells.

    Architectures are :class:`NB101Cell` values, pruned and in the canonical vertex order the
    benchmark's dataset itself stores, so isomorphic specs are one architecture with one string.

    Args:
        num_classes: classifier width (10 for CIFAR-10).
        channels: stem width (128 in the benchmark); smaller values make fast test networks.
        num_stacks: stacks of cells (3 in the benchmark).
        cells_per_stack: cells per stack (3 in the benchmark).
        input_shape: (C, H, W) of the input images.
        accuracy_table: optional ``arch,<dataset>`` CSV of true accuracies; enables :meth:`accuracy` (an
            oracle for benchmarks, never a search signal).
        dataset: the accuracy column to read.

    Example:
        >>> space = NB101Space(channels=16)
        >>> arch = space.from_string('{"matrix": [[0, 1, 1], [0, 0, 1], [0, 0, 0]], '
        ...                          '"ops": ["input", "conv3x3-bn-relu", "output"]}')
        >>> space.build(arch)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    name = "nb101"
    description = "NAS-Bench-101 cells: 7-vertex DAGs, <=9 edges, 3 ops; 423,624 networks, CIFAR 32x32"
    # ``nas search`` scores proxies at calibration batch 16 on these networks (tens of times NB201's): the
    # label-free ensemble costs about 2.0 CPU-s per cell there against 3.0 at 64 (200 uniform cells and the
    # 64-architecture reference, `nas score --n 200 --executor ray --workers 2`; see also
    # experiments/cell_spaces_proxies.py, which compares the ranks).
    search_defaults: dict[str, Any] = {"batch_size": 16}

    def __init__(self, num_classes: int = 10, channels: int = 128, num_stacks: int = 3,
                 cells_per_stack: int = 3, input_shape: tuple[int, int, int] = (3, 32, 32),
                 accuracy_table: str | os.PathLike[str] | None = None, dataset: str = "cifar10") -> None:
        self.num_classes = num_classes
        self.channels = channels
        self.num_stacks = num_stacks
        self.cells_per_stack = cells_per_stack
        self.input_shape = tuple(input_shape)
        self._attach_oracle(accuracy_table, dataset)

    @property
    def cardinality(self) -> int:
        """Cells distinct up to graph isomorphism: 423,624."""
        return NUM_UNIQUE_CELLS

    def make(self, matrix: Any, ops: Sequence[str]) -> NB101Cell:
        """Validate, prune and canonicalise a spec given as a matrix (lists or array) and op names."""
        if isinstance(matrix, np.ndarray):
            matrix = matrix.tolist()
        return make_cell(matrix, list(ops))

    def sample(self, rng: np.random.Generator) -> NB101Cell:
        """As the benchmark's authors sample: random 0/1 upper-triangular matrix and ops until valid."""
        while True:
            bits = np.triu(rng.integers(0, 2, size=(MAX_VERTICES, MAX_VERTICES)), 1)
            ops = [OPS[i] for i in rng.integers(len(OPS), size=MAX_VERTICES)]
            try:
                return make_cell(bits.tolist(), [INPUT, *ops[1:-1], OUTPUT])
            except ArchError:
                continue

    def mutate(self, arch: NB101Cell, rng: np.random.Generator) -> NB101Cell:
        """The authors' mutation: flip each edge w.p. 1/7 and resample each op w.p. 1/5, until valid."""
        rows, ops = padded(arch)
        base = [op if op is not None else OPS[int(rng.integers(len(OPS)))] for op in ops]
        for _ in range(10_000):
            new_rows = [list(r) for r in rows]
            for i, j in EDGE_SLOTS:
                if rng.random() < 1.0 / MAX_VERTICES:
                    new_rows[i][j] = 1 - new_rows[i][j]
            new_ops = list(base)
            for k in range(1, MAX_VERTICES - 1):
                if rng.random() < 1.0 / (MAX_VERTICES - 2):
                    others = [o for o in OPS if o != new_ops[k]]
                    new_ops[k] = others[int(rng.integers(len(others)))]
            try:
                child = make_cell(new_rows, new_ops)
            except ArchError:
                continue
            if child != arch:
                return child
        raise RuntimeError(f"no valid mutation of {self.to_string(arch)} found in 10,000 tries")

    def to_string(self, arch: NB101Cell) -> str:
        """ModelSpec JSON ``{"matrix": [[...]], "ops": ["input", ..., "output"]}`` of the canonical cell."""
        return json.dumps({"matrix": [list(r) for r in arch.matrix], "ops": list(arch.ops)})

    def from_string(self, text: str) -> NB101Cell:
        """Parse ModelSpec JSON (any vertex order, unpruned allowed); raise naming what is invalid."""
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchError(f"NAS-Bench-101 spec must be JSON like {{\"matrix\": [[...]], \"ops\": [...]}}: "
                            f"{err}") from None
        if not isinstance(spec, dict) or "matrix" not in spec or "ops" not in spec:
            raise ArchError("NAS-Bench-101 spec must be a JSON object with keys 'matrix' and 'ops'")
        return make_cell(spec["matrix"], spec["ops"])

    def spec_hash(self, arch: NB101Cell) -> str:
        """The benchmark's isomorphism-invariant MD5 hash (its dataset key) of ``arch``."""
        return _spec_hash(arch)

    def encode(self, arch: NB101Cell) -> np.ndarray:
        """Adjacency encoding: the 21 upper-triangle bits of the 7-vertex matrix + 5 x 3 op one-hots."""
        rows, ops = padded(arch)
        adj = [rows[i][j] for i, j in EDGE_SLOTS]
        onehot = np.zeros((MAX_VERTICES - 2, len(OPS)), dtype=np.float32)
        for k, op in enumerate(ops[1:-1]):
            if op is not None:
                onehot[k, OPS.index(op)] = 1.0
        return np.concatenate([np.asarray(adj, dtype=np.float32), onehot.ravel()])

    def path_encode(self, arch: NB101Cell) -> np.ndarray:
        """Path encoding (BANANAS): one bit per op sequence along some input-output path (364 values)."""
        out = np.zeros(NUM_PATHS, dtype=np.float32)
        for path in input_output_paths(arch):
            out[_path_index(path)] = 1.0
        return out

    def dag_ops(self) -> list[str]:
        """Node labels of :meth:`to_dag`'s graph: ``input``, the three vertex ops, ``output``."""
        return [INPUT, *OPS, OUTPUT]

    def to_dag(self, arch: NB101Cell) -> tuple[np.ndarray, np.ndarray]:
        """The cell on 7 nodes (arch2vec's padding: unused vertices, label -1 and no edges, before the output)."""
        rows, ops = padded(arch)
        labels = self.dag_ops()
        return (np.array(rows, dtype=np.int64),
                np.array([labels.index(op) if op is not None else -1 for op in ops], dtype=np.int64))

    def from_dag(self, adjacency: np.ndarray, ops: np.ndarray) -> NB101Cell:
        """The (pruned, canonical) cell of a 7-node DAG; ``ArchError`` when it is not a valid cell."""
        adjacency, ops = np.asarray(adjacency), np.asarray(ops).reshape(-1)
        if adjacency.shape != (MAX_VERTICES, MAX_VERTICES) or ops.shape != (MAX_VERTICES,):
            raise ArchError(f"an NB101 DAG has {MAX_VERTICES} nodes: adjacency {MAX_VERTICES}x{MAX_VERTICES} "
                            f"and {MAX_VERTICES} ops, got {adjacency.shape} and {ops.shape}")
        labels = self.dag_ops()
        keep = [i for i, op in enumerate(ops) if op != -1]
        dropped = [i for i in range(MAX_VERTICES) if i not in keep]
        if np.tril(adjacency).any():
            raise ArchError("an NB101 DAG's adjacency must be strictly upper-triangular (nodes in topological order)")
        if adjacency[dropped].any() or adjacency[:, dropped].any():
            raise ArchError("an NB101 DAG's padding nodes (label -1) must have no edges")
        if any(not 0 <= int(ops[i]) < len(labels) for i in keep):
            raise ArchError(f"NB101 DAG labels index {labels} (or -1 for padding); got {ops.tolist()}")
        names = [labels[int(ops[i])] for i in keep]
        if names[0] != INPUT or names[-1] != OUTPUT or INPUT in names[1:] or OUTPUT in names[:-1]:
            raise ArchError("an NB101 DAG has one 'input' node first and one 'output' node last")
        return make_cell((adjacency[np.ix_(keep, keep)] != 0).astype(int).tolist(), names)

    def decisions(self) -> list[tuple[str, Sequence[Any]]]:
        """21 edge bits and 5 vertex ops (choices that make no valid cell are repaired by ``from_choices``)."""
        return ([(f"edge_{i}_{j}", (0, 1)) for i, j in EDGE_SLOTS]
                + [(f"op_{k}", OPS) for k in range(1, MAX_VERTICES - 1)])

    def from_choices(self, choices: Sequence[int]) -> NB101Cell:
        """Cell from one option index per decision.

        Choice-driven strategies (REINFORCE, TPE) cannot reject a draw, so an invalid graph is repaired
        deterministically instead: with no input-output path the input-output edge is added, and while
        the pruned cell has more than 9 edges the last edge (in slot order) whose removal keeps a path is
        dropped. Valid choices are never changed; ``make``/``from_string`` stay strict.
        """
        if len(choices) != len(EDGE_SLOTS) + MAX_VERTICES - 2:
            raise ArchError(f"NAS-Bench-101 needs {len(EDGE_SLOTS) + MAX_VERTICES - 2} choices, "
                            f"got {len(choices)}")
        rows = [[0] * MAX_VERTICES for _ in range(MAX_VERTICES)]
        for (i, j), c in zip(EDGE_SLOTS, choices, strict=False):
            rows[i][j] = int(c)
        ops = [INPUT, *(OPS[int(c)] for c in choices[len(EDGE_SLOTS):]), OUTPUT]
        return _repaired(rows, ops)

    def to_choices(self, arch: NB101Cell) -> list[int]:
        """Option index per decision of ``arch`` (unused padded vertices get op index 0)."""
        rows, ops = padded(arch)
        return [rows[i][j] for i, j in EDGE_SLOTS] + [OPS.index(op) if op else 0 for op in ops[1:-1]]

    def suggest(self, trial: Any) -> NB101Cell:
        """Ask an Optuna trial for every decision (an invalid draw is repaired as in ``from_choices``)."""
        return self.from_choices(suggest_choices(self, trial))

    def build(self, arch: NB101Cell, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None) -> nn.Module:
        """The NAS-Bench-101 network for ``arch``."""
        if not isinstance(arch, NB101Cell):
            raise ArchError(f"expected an NB101Cell (use from_string or make), got {type(arch).__name__}")
        in_channels = (input_shape or self.input_shape)[0]
        return NB101Network(arch, num_classes or self.num_classes, self.channels, self.num_stacks,
                            self.cells_per_stack, in_channels)

    def to_onnx(self, arch: NB101Cell, path: str | os.PathLike[str]) -> str:
        """Export the network for ``arch`` to ONNX."""
        return default_to_onnx(self, arch, path)


def _repaired(rows: list[list[int]], ops: list[str]) -> NB101Cell:
    """``make_cell`` of a 7-vertex draw, made valid by the smallest deterministic edit (see from_choices)."""
    try:
        return make_cell(rows, ops)
    except ArchError:
        pass
    rows = [list(r) for r in rows]
    if not reaches_output(rows):
        rows[0][MAX_VERTICES - 1] = 1
    for i, j in reversed(EDGE_SLOTS):
        try:
            return make_cell(rows, ops)
        except ArchError:
            if rows[i][j]:
                rows[i][j] = 0
                if not reaches_output(rows):
                    rows[i][j] = 1
    return make_cell(rows, ops)


def _path_index(path: tuple[str, ...]) -> int:
    """Index of an op sequence: shorter paths first, then base-3 order of the op indices."""
    index = sum(len(OPS) ** k for k in range(len(path)))
    code = 0
    for op in path:
        code = code * len(OPS) + OPS.index(op)
    return index + code
