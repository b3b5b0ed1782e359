"""NAS-Bench-101 cell graphs: validation, pruning, the benchmark's isomorphism hash and canonical form.

Pure Python and numpy, no torch: the network itself lives in ``search_spaces.nb101``. Everything here
follows the benchmark's reference definitions (Ying et al., 2019, and its ``model_spec`` / ``graph_util``
code) so that a cell string, its hash and its parameter count agree with the published dataset.
"""

from __future__ import annotations

import hashlib
import itertools
import numbers
from dataclasses import dataclass

from search_spaces.base import ArchError

INPUT, OUTPUT = "input", "output"
OPS: tuple[str, ...] = ("conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3")
"""Vertex ops in the benchmark's canonical order (their index is the label the hash uses)."""
MAX_VERTICES = 7
MAX_EDGES = 9

Matrix = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class NB101Cell:
    """A pruned, canonical NAS-Bench-101 cell: upper-triangular 0/1 ``matrix`` and vertex ``ops``."""

    matrix: Matrix
    ops: tuple[str, ...]

    @property
    def num_vertices(self) -> int:
        """Vertices including input and output (2..7)."""
        return len(self.ops)

    @property
    def num_edges(self) -> int:
        """Number of edges (at most 9)."""
        return sum(map(sum, self.matrix))


def check_spec(matrix: object, ops: object) -> tuple[list[list[int]], list[str]]:
    """Validate the shape, entries and labels of a raw spec; return them as plain lists."""
    if not isinstance(matrix, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in matrix):
        raise ArchError("NAS-Bench-101 'matrix' must be a list of rows (a square 0/1 adjacency matrix)")
    if not isinstance(ops, (list, tuple)) or not all(isinstance(o, str) for o in ops):
        raise ArchError("NAS-Bench-101 'ops' must be a list of op names")
    n = len(matrix)
    if any(len(row) != n for row in matrix):
        raise ArchError(f"NAS-Bench-101 matrix must be square; got {n} rows of lengths "
                        f"{[len(r) for r in matrix]}")
    if len(ops) != n:
        raise ArchError(f"NAS-Bench-101 spec has {len(ops)} ops for a {n}x{n} matrix; they must match")
    if n < 2:
        raise ArchError("NAS-Bench-101 spec needs at least the input and output vertices")
    if n > MAX_VERTICES:
        raise ArchError(f"too many vertices: {n} > {MAX_VERTICES} (input and output included)")
    rows = [[_bit(v, i, j) for j, v in enumerate(row)] for i, row in enumerate(matrix)]
    for i in range(n):
        for j in range(i + 1):
            if rows[i][j]:
                raise ArchError(f"matrix is not upper-triangular: entry [{i}][{j}] is 1 (edges must go "
                                "from a lower to a higher vertex; the diagonal and below must be 0)")
    if ops[0] != INPUT or ops[-1] != OUTPUT:
        raise ArchError(f"the first op must be {INPUT!r} and the last {OUTPUT!r}; got {ops[0]!r} and "
                        f"{ops[-1]!r}")
    for k, op in enumerate(ops[1:-1], 1):
        if op not in OPS:
            raise ArchError(f"unknown op {op!r} at vertex {k}; valid: {', '.join(OPS)}")
    return rows, list(ops)


def _bit(value: object, i: int, j: int) -> int:
    if isinstance(value, numbers.Real) and value in (0, 1):
        return int(value)
    raise ArchError(f"matrix entry [{i}][{j}] is {value!r}; entries must be 0 or 1")


def prune(rows: list[list[int]], ops: list[str]) -> tuple[list[list[int]], list[str]]:
    """Drop vertices off every input-output path, as the benchmark does; raise if output is unreachable."""
    n = len(ops)
    forward = _reach(rows, 0, n, downstream=True)
    backward = _reach(rows, n - 1, n, downstream=False)
    keep = [v for v in range(n) if v in forward and v in backward]
    if n - 1 not in forward:
        raise ArchError("output not reachable from input: no path of edges joins vertex 0 to vertex "
                        f"{n - 1}")
    pruned = [[rows[i][j] for j in keep] for i in keep]
    return pruned, [ops[v] for v in keep]


def reaches_output(rows: list[list[int]]) -> bool:
    """Whether some path of edges joins the input (vertex 0) to the output (the last vertex)."""
    return len(rows) - 1 in _reach(rows, 0, len(rows), downstream=True)


def _reach(rows: list[list[int]], start: int, n: int, downstream: bool) -> set[int]:
    seen, frontier = {start}, [start]
    while frontier:
        v = frontier.pop()
        nxt = range(v + 1, n) if downstream else range(v)
        for w in nxt:
            edge = rows[v][w] if downstream else rows[w][v]
            if edge and w not in seen:
                seen.add(w)
                frontier.append(w)
    return seen


def make_cell(matrix: object, ops: object) -> NB101Cell:
    """Validate, prune, check the edge budget and canonicalise a raw spec."""
    rows, names = check_spec(matrix, ops)
    rows, names = prune(rows, names)
    edges = sum(map(sum, rows))
    if edges > MAX_EDGES:
        raise ArchError(f"too many edges: {edges} > {MAX_EDGES} (counted after pruning vertices off every "
                        "input-output path)")
    return canonical(rows, names)


def labels(ops: tuple[str, ...] | list[str]) -> list[int]:
    """The benchmark's integer labelling: -1 input, -2 output, else the op's index in ``OPS``."""
    return [-1] + [OPS.index(op) for op in ops[1:-1]] + [-2]


def spec_hash(cell: NB101Cell) -> str:
    """NAS-Bench-101's isomorphism-invariant MD5 graph hash (the dataset's key) of a pruned cell."""
    matrix, lab = cell.matrix, labels(cell.ops)
    n = len(lab)
    in_deg = [sum(matrix[w][v] for w in range(n)) for v in range(n)]
    out_deg = [sum(matrix[v]) for v in range(n)]
    hashes = [_md5(str((out_deg[v], in_deg[v], lab[v]))) for v in range(n)]
    # Iterated neighbourhood hashing (Weisfeiler-Lehman style), one round per vertex as the reference does.
    for _ in range(n):
        hashes = [
            _md5("".join(sorted(hashes[w] for w in range(n) if matrix[w][v])) + "|"
                 + "".join(sorted(hashes[w] for w in range(n) if matrix[v][w])) + "|" + hashes[v])
            for v in range(n)
        ]
    return _md5(str(sorted(hashes)))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def edge_bits(rows: list[list[int]] | Matrix) -> int:
    """The benchmark's bit-string index of a matrix: edge (i, j) is bit ``i + j * (j - 1) / 2``."""
    n = len(rows)
    return sum(1 << (i + j * (j - 1) // 2) for j in range(n) for i in range(j) if rows[i][j])


def canonical(rows: list[list[int]], ops: list[str]) -> NB101Cell:
    """The representative the benchmark stores for this isomorphism class.

    The dataset generator enumerates matrices by increasing bit string and labellings in lexicographic
    order and keeps the first graph of each hash; so among all relabellings of the interior vertices that
    keep the matrix upper-triangular, the smallest ``(bits, labels)`` is the dataset's own spec.
    """
    n = len(ops)
    lab = labels(ops)
    best: tuple[int, tuple[int, ...]] | None = None
    best_perm: tuple[int, ...] = tuple(range(n))
    for inner in itertools.permutations(range(1, n - 1)):
        perm = (0, *inner, n - 1)  # new vertex k is old vertex perm[k]
        if any(rows[perm[a]][perm[b]] for b in range(n) for a in range(b, n)):
            continue  # would put an edge on or below the diagonal
        new = [[rows[perm[a]][perm[b]] for b in range(n)] for a in range(n)]
        key = (edge_bits(new), tuple(lab[p] for p in perm))
        if best is None or key < best:
            best, best_perm = key, perm
    matrix = tuple(tuple(rows[best_perm[a]][best_perm[b]] for b in range(n)) for a in range(n))
    return NB101Cell(matrix, tuple(ops[p] for p in best_perm))


def padded(cell: NB101Cell) -> tuple[list[list[int]], list[str | None]]:
    """The cell on 7 vertices: missing interior vertices inserted, unconnected, just before the output."""
    n = cell.num_vertices
    extra = MAX_VERTICES - n
    index = list(range(n - 1)) + [MAX_VERTICES - 1]  # old vertex -> new vertex
    rows = [[0] * MAX_VERTICES for _ in range(MAX_VERTICES)]
    for i in range(n):
        for j in range(n):
            if cell.matrix[i][j]:
                rows[index[i]][index[j]] = 1
    ops: list[str | None] = [*cell.ops[:-1], *([None] * extra), OUTPUT]
    return rows, ops


def input_output_paths(cell: NB101Cell) -> list[tuple[str, ...]]:
    """Every input-to-output path as the tuple of ops along it (input and output left out)."""
    n = cell.num_vertices
    paths: list[tuple[str, ...]] = []

    def walk(v: int, ops: tuple[str, ...]) -> None:
        for w in range(v + 1, n):
            if cell.matrix[v][w]:
                if w == n - 1:
                    paths.append(ops)
                else:
                    walk(w, (*ops, cell.ops[w]))

    walk(0, ())
    return paths


def compute_vertex_channels(in_channels: int, out_channels: int, matrix: Matrix) -> list[int]:
    """Channels of every vertex as the benchmark computes them.

    The output width is split as evenly as possible over the vertices feeding the output (earlier
    vertices take the remainder, one channel each); every other interior vertex takes the largest width
    among the interior vertices it feeds.
    """
    n = len(matrix)
    channels = [0] * n
    channels[0], channels[n - 1] = in_channels, out_channels
    if n == 2:
        return channels
    fan_in = sum(matrix[v][n - 1] for v in range(1, n - 1))
    base, extra = divmod(out_channels, fan_in)
    for v in range(1, n - 1):
        if matrix[v][n - 1]:
            channels[v] = base + (1 if extra > 0 else 0)
            extra -= 1
    for v in range(n - 3, 0, -1):
        if not matrix[v][n - 1]:
            for w in range(v + 1, n - 1):
                if matrix[v][w]:
                    channels[v] = max(channels[v], channels[w])
    return channels
