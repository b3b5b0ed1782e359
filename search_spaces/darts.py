"""The DARTS cell space as NAS-Bench-301 defines and trained it.

A genotype has a normal and a reduction cell; each cell has 4 intermediate nodes and each node sums two
ops applied to two *different* earlier states (the two cell inputs and the earlier nodes), with 7 ops
(NAS-Bench-301 has no ``none``). The output concatenates nodes 2..5. The network is DARTS' CIFAR network
at NAS-Bench-301's training settings: 32 initial channels and 8 cells; its auxiliary head and drop path
are training devices and are left out of the evaluated network (see ``search_spaces.darts_ops``).
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError, default_to_onnx, suggest_choices
from search_spaces.cell_oracle import OracleMixin
from search_spaces.darts_ops import Cell, DartsNetwork

OPS: tuple[str, ...] = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                        "dil_conv_3x3", "dil_conv_5x5")
"""NAS-Bench-301's operations, in its own order."""
NODES = 4
CONCAT = (2, 3, 4, 5)
CELL_TYPES = ("normal", "reduce")
# Every (node, input) edge a cell can have: 2 + 3 + 4 + 5 = 14, as NAS-Bench-301 numbers them.
EDGE_SLOTS: tuple[tuple[int, int], ...] = tuple((k, i) for k in range(NODES) for i in range(k + 2))


@dataclass(frozen=True)
class DartsGenotype:
    """A DARTS genotype; within each node the two ``(op, input)`` entries are sorted by input."""

    normal: Cell
    reduce: Cell


def _pairs(k: int) -> list[tuple[int, int]]:
    """Input pairs node ``k`` (0-based among intermediate nodes) may choose, as ``(low, high)``."""
    return list(itertools.combinations(range(k + 2), 2))


def make_cell(entries: Any, cell_type: str) -> Cell:
    """Validate one cell's 8 ``(op, input)`` entries and sort each node's pair by input."""
    if not isinstance(entries, (list, tuple)) or len(entries) != 2 * NODES:
        n = len(entries) if isinstance(entries, (list, tuple)) else type(entries).__name__
        raise ArchError(f"{cell_type} cell needs {2 * NODES} (op, input) entries, got {n}")
    out: list[tuple[str, int]] = []
    for pos, entry in enumerate(entries):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ArchError(f"{cell_type} entry {pos} must be an (op, input) pair, got {entry!r}")
        op, src = entry
        node = pos // 2 + 2
        if op not in OPS:
            extra = " ('none' is not in NAS-Bench-301's space)" if op == "none" else ""
            raise ArchError(f"unknown op {op!r} in {cell_type} entry {pos}{extra}; valid: {', '.join(OPS)}")
        if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < node:
            raise ArchError(f"{cell_type} entry {pos} feeds node {node} from input {src!r}; it must be an "
                            f"earlier state 0..{node - 1}")
        out.append((op, src))
    for k in range(NODES):
        a, b = out[2 * k], out[2 * k + 1]
        if a[1] == b[1]:
            raise ArchError(f"{cell_type} node {k + 2} takes input {a[1]} twice; NAS-Bench-301 nodes take "
                            "two different inputs")
        out[2 * k], out[2 * k + 1] = sorted((a, b), key=lambda e: e[1])
    return tuple(out)


def parse_genotype(text: str) -> dict[str, Any]:
    """Read DARTS' printed ``Genotype(normal=[...], normal_concat=..., reduce=[...], ...)`` without eval."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise ArchError(f"cannot parse the DARTS genotype: {err.msg}") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "Genotype"):
        raise ArchError("a DARTS genotype string must be 'Genotype(normal=[...], normal_concat=..., "
                        "reduce=[...], reduce_concat=...)'")
    names = ("normal", "normal_concat", "reduce", "reduce_concat")
    if len(tree.args) > len(names):
        raise ArchError(f"Genotype takes at most {len(names)} fields, got {len(tree.args)} positional ones")
    fields: dict[str, ast.expr] = dict(zip(names, tree.args, strict=False))
    for kw in tree.keywords:
        if kw.arg not in names:
            raise ArchError(f"unknown Genotype field {kw.arg!r}; valid: {', '.join(names)}")
        fields[kw.arg] = kw.value
    missing = [n for n in names if n not in fields]
    if missing:
        raise ArchError(f"Genotype is missing {', '.join(missing)}")
    out: dict[str, Any] = {}
    for name, node in fields.items():
        if name.endswith("concat") and isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id == "range" and not node.keywords):
                raise ArchError(f"{name} must be a list or range(...), got {ast.unparse(node)}")
            out[name] = list(range(*(_literal(a, name) for a in node.args)))
        else:
            out[name] = _literal(node, name)
    for cell_type in CELL_TYPES:
        concat = out[f"{cell_type}_concat"]
        if list(concat) != list(CONCAT):
            raise ArchError(f"{cell_type}_concat must be range(2, 6) (all four nodes), got {concat!r}")
    return out


def _literal(node: ast.expr, name: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ArchError(f"Genotype field {name} must be a literal, got {ast.unparse(node)}") from None


@register("darts")
class DartsSpace(OracleMixin):
    """DARTS / NAS-Bench-301 cell space: normal + reduction cell, 8 edges each, 7 ops; ~10^18 networks.

    Args:
        num_classes: classifier width (10 for CIFAR-10).
        channels: initial channels C (32 as NAS-Bench-301 trained; DARTS' final evaluation used 36).
        layers: cells in the network (8 in NAS-Bench-301; DARTS' final evaluation used 20).
        input_shape: (C, H, W) of the input images.
        accuracy_table: optional ``arch,<dataset>`` CSV of true accuracies; enables :meth:`accuracy` (an
            oracle for benchmarks, never a search signal).
        dataset: the accuracy column to read.

    Example:
        >>> space = DartsSpace(channels=8, layers=5)
        >>> arch = space.sample(np.random.default_rng(0))
        >>> space.from_string(space.to_string(arch)) == arch
        True
    """

    name = "darts"
    description = "DARTS / NAS-Bench-301 cells: normal + reduce, 8 edges x 7 ops each; ~1e18 networks, CIFAR"
    # ``nas search`` scores proxies at calibration batch 16 on these networks (tens of times NB201's): the
    # label-free ensemble costs about 1.2 CPU-s per cell there against 1.7 at 64 (200 uniform cells and the
    # 64-architecture reference, `nas score --n 200 --executor ray --workers 2`; see also
    # experiments/cell_spaces_proxies.py, which compares the ranks).
    search_defaults: dict[str, Any] = {"batch_size": 16}

    def __init__(self, num_classes: int = 10, channels: int = 32, layers: int = 8,
                 input_shape: tuple[int, int, int] = (3, 32, 32),
                 accuracy_table: str | os.PathLike[str] | None = None, dataset: str = "cifar10") -> None:
        self.num_classes = num_classes
        self.channels = channels
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self._attach_oracle(accuracy_table, dataset)

    @property
    def cardinality(self) -> int:
        """(prod over nodes of C(k+2, 2) * 7^2) squared: two independent cells."""
        per_cell = math.prod(math.comb(k + 2, 2) * len(OPS) ** 2 for k in range(NODES))
        return per_cell ** 2

    def make(self, normal: Any, reduce: Any) -> DartsGenotype:
        """Validate and normalise a genotype given as two lists of ``(op, input)`` pairs."""
        return DartsGenotype(make_cell(normal, "normal"), make_cell(reduce, "reduce"))

    def sample(self, rng: np.random.Generator) -> DartsGenotype:
        """Uniform over NAS-Bench-301's configuration space: per node an input pair, then two ops."""
        cells = []
        for _ in CELL_TYPES:
            entries: list[tuple[str, int]] = []
            for k in range(NODES):
                pairs = _pairs(k)
                lo, hi = pairs[int(rng.integers(len(pairs)))]
                ops = rng.integers(len(OPS), size=2)
                entries += [(OPS[ops[0]], lo), (OPS[ops[1]], hi)]
            cells.append(tuple(entries))
        return DartsGenotype(*cells)

    def mutate(self, arch: DartsGenotype, rng: np.random.Generator) -> DartsGenotype:
        """Change one op, or one input of one node (nodes 3..5), in one random cell."""
        which = int(rng.integers(2))
        cell = list(getattr(arch, CELL_TYPES[which]))
        pos = int(rng.integers(2 * NODES))
        k = pos // 2
        if k > 0 and rng.random() < 0.5:
            sibling = cell[pos ^ 1][1]
            choices = [i for i in range(k + 2) if i not in (cell[pos][1], sibling)]
            cell[pos] = (cell[pos][0], choices[int(rng.integers(len(choices)))])
        else:
            choices_op = [o for o in OPS if o != cell[pos][0]]
            cell[pos] = (choices_op[int(rng.integers(len(choices_op)))], cell[pos][1])
        new = make_cell(cell, CELL_TYPES[which])
        return DartsGenotype(new, arch.reduce) if which == 0 else DartsGenotype(arch.normal, new)

    def crossover(self, a: DartsGenotype, b: DartsGenotype, rng: np.random.Generator) -> DartsGenotype:
        """Uniform crossover of whole nodes (their input pair and both ops) of the two parents."""
        cells = []
        for cell_type in CELL_TYPES:
            ca, cb = getattr(a, cell_type), getattr(b, cell_type)
            take = rng.random(NODES) < 0.5
            cells.append(tuple(e for k in range(NODES) for e in (ca if take[k] else cb)[2 * k: 2 * k + 2]))
        return DartsGenotype(*cells)

    def to_string(self, arch: DartsGenotype) -> str:
        """``{"normal": [["sep_conv_3x3", 0], ...], "reduce": [...]}``; concat is always nodes 2..5."""
        return json.dumps({t: [list(e) for e in getattr(arch, t)] for t in CELL_TYPES})

    def from_string(self, text: str) -> DartsGenotype:
        """Parse the JSON form or DARTS' printed ``Genotype(...)``; raise naming the bad part."""
        text = text.strip()
        if text.startswith("Genotype"):
            spec = parse_genotype(text)
        else:
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as err:
                raise ArchError("DARTS architecture must be JSON {\"normal\": [[op, input], ...], "
                                f"\"reduce\": [...]}} or a printed Genotype(...): {err}") from None
            if not isinstance(spec, dict) or not all(t in spec for t in CELL_TYPES):
                raise ArchError("DARTS JSON needs the keys 'normal' and 'reduce'")
        return self.make(spec["normal"], spec["reduce"])

    def to_genotype_string(self, arch: DartsGenotype) -> str:
        """The genotype as DARTS prints it (``Genotype(normal=[...], normal_concat=range(2, 6), ...)``)."""
        cells = {t: "[" + ", ".join(f"({op!r}, {i})" for op, i in getattr(arch, t)) + "]" for t in CELL_TYPES}
        return (f"Genotype(normal={cells['normal']}, normal_concat=range(2, 6), "
                f"reduce={cells['reduce']}, reduce_concat=range(2, 6))")

    def encode(self, arch: DartsGenotype) -> np.ndarray:
        """Adjacency + one-hot: per cell, per possible edge (14), the one-hot of its op or zeros (196)."""
        out = np.zeros((len(CELL_TYPES), len(EDGE_SLOTS), len(OPS)), dtype=np.float32)
        for c, cell_type in enumerate(CELL_TYPES):
            for pos, (op, src) in enumerate(getattr(arch, cell_type)):
                out[c, EDGE_SLOTS.index((pos // 2, src)), OPS.index(op)] = 1.0
        return out.ravel()

    def decisions(self) -> list[tuple[str, Sequence[Any]]]:
        """Per cell and node: the input pair (fixed for the first node), the op on each of its two edges."""
        out: list[tuple[str, Sequence[Any]]] = []
        for cell_type in CELL_TYPES:
            for k in range(NODES):
                if k:
                    out.append((f"{cell_type}_node{k + 2}_inputs", tuple(f"{a}_{b}" for a, b in _pairs(k))))
                out.append((f"{cell_type}_node{k + 2}_op_a", OPS))
                out.append((f"{cell_type}_node{k + 2}_op_b", OPS))
        return out

    def from_choices(self, choices: Sequence[int]) -> DartsGenotype:
        """Genotype from one option index per decision."""
        expected = len(self.decisions())
        if len(choices) != expected:
            raise ArchError(f"DARTS needs {expected} choices, got {len(choices)}")
        it = iter(int(c) for c in choices)
        cells = []
        for _ in CELL_TYPES:
            entries: list[tuple[str, int]] = []
            for k in range(NODES):
                lo, hi = _pairs(k)[next(it)] if k else (0, 1)
                entries += [(OPS[next(it)], lo), (OPS[next(it)], hi)]
            cells.append(tuple(entries))
        return DartsGenotype(*cells)

    def to_choices(self, arch: DartsGenotype) -> list[int]:
        """Option index per decision of ``arch``."""
        out: list[int] = []
        for cell_type in CELL_TYPES:
            cell = getattr(arch, cell_type)
            for k in range(NODES):
                (op_a, lo), (op_b, hi) = cell[2 * k], cell[2 * k + 1]
                if k:
                    out.append(_pairs(k).index((lo, hi)))
                out += [OPS.index(op_a), OPS.index(op_b)]
        return out

    def suggest(self, trial: Any) -> DartsGenotype:
        """Ask an Optuna trial for every decision."""
        return self.from_choices(suggest_choices(self, trial))

    def supernet(self, partial_k: int = 1, edge_norm: bool = False, seed: int = 0) -> Any:
        """DARTS' search network over this space's skeleton (channels, cells) with ``none`` added to the ops."""
        from search_spaces.darts_supernet import supernet

        return supernet(self, partial_k=partial_k, edge_norm=edge_norm, seed=seed)

    def build(self, arch: DartsGenotype, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None, auxiliary: bool = False) -> nn.Module:
        """The evaluated DARTS network for ``arch`` (``auxiliary=True`` adds the training-only head)."""
        if not isinstance(arch, DartsGenotype):
            raise ArchError(f"expected a DartsGenotype (use from_string or make), got {type(arch).__name__}")
        in_channels = (input_shape or self.input_shape)[0]
        return DartsNetwork(arch.normal, arch.reduce, num_classes or self.num_classes, self.channels,
                            self.layers, in_channels, auxiliary)

    def to_onnx(self, arch: DartsGenotype, path: str | os.PathLike[str]) -> str:
        """Export the network for ``arch`` to ONNX."""
        return default_to_onnx(self, arch, path)
