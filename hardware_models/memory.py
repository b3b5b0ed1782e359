"""Memory of a network on a microcontroller, read from its ONNX graph: flash (parameters) and SRAM (activations).

The graph is the one the latency model reads (``space.to_onnx``: eval mode, so BatchNorm after a convolution
is already folded into it). Every size is in kB = 1024 bytes (``sram_kb``, ``flash_kb`` and the ``model_kb``
proxy all use that unit).

* **Flash** holds the parameters: weight tensors (rank >= 2: convolution, linear, embedding weights) at
  ``weight_bits``, and biases and per-channel scales (rank <= 1) at 32 bits, as int8 deployments (TF-Lite
  Micro, TinyEngine) keep int32 biases. A BatchNorm that could not be folded counts its scale and shift
  (mean and variance fold into them); scalar constants of elementwise ops (hswish's 3 and 6) are code, not
  parameters.
* **SRAM** is the peak activation memory of the inference schedule given by the graph's topological node
  order, at batch 1 and ``activation_bits``: a tensor is alive from the node that produces it (or from the
  start, for the graph input) until its last consumer has run, so the input of a residual block stays alive
  until the block's ``Add``. At each node the live set holds its inputs and its output, except where the
  node can overwrite an input that dies there: elementwise activations, BatchNorm, ``Add``/``Mul``/... of
  equal shapes, and (``inplace_depthwise``) depthwise convolution as TinyEngine runs it (the output of one
  channel goes to a temporary buffer, so the node needs its input plus one output channel: "2N to N+1",
  Lin et al., *Tiny Machine Learning: Progress and Futures*, IEEE Circuits and Systems Magazine 2023, Fig.
  10). Shape-only ops (``Reshape``, ``Flatten``, ``Squeeze``, ``Identity``...) alias their input.
  ``inplace_depthwise`` defaults to True because the yardstick numbers this model is checked against (the
  MCUNet model zoo's SRAM column) were profiled with TinyEngine, which does it.
* **Patch-based inference** (MCUNetV2, Lin et al., NeurIPS 2021): with ``patches=n`` the leading stage runs
  ``n x n`` times on spatial tiles of its output, each tile computed from the input region its receptive
  field needs (the halo overlap included). The stage's peak becomes the largest per-patch working set plus
  the full buffer of the stage's output, which is filled patch by patch. MCUNetV2 runs MobileNetV2's first
  five blocks this way (its Fig. 1, 4x4 patches), the high-memory blocks at 1/2 to 1/8 of the input
  resolution; here the stage ends at the cheapest cut (the fewest live bytes crossing it) among the cuts
  before the first node that is not spatially local or whose output is smaller than 1/``patch_stride``
  (default 8) of the input resolution; ties go to the earliest cut (a shorter stage has a smaller halo), so for
  MobileNetV2 it is the end of its first block at 1/8 resolution: the stem and the first four blocks.

Example:
    >>> import search_spaces
    >>> space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
    >>> report = memory_of(space, space.from_string(
    ...     "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"))
    >>> report.sram_kb > 0 and report.flash_kb > 0
    True
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KB = 1024
"""Bytes in a kB, for every size this module reports."""

ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
"""Ops whose output is their first input's buffer (a view or a no-op at inference)."""
UNARY_INPLACE = frozenset({
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Softplus", "Softsign", "Gelu", "Erf", "Neg", "Abs", "Sqrt", "Exp", "Log", "BatchNormalization",
})
"""Elementwise ops that may overwrite their input when it dies at them."""
BINARY_INPLACE = frozenset({"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Pow"})
"""Elementwise ops that may overwrite an input of the output's shape when it dies at them."""
_WINDOW_OPS = frozenset({"Conv", "MaxPool", "AveragePool"})
_LOCAL_OPS = _WINDOW_OPS | UNARY_INPLACE | BINARY_INPLACE | {"Concat", "Pad", "Identity", "Dropout"}
_FLOAT_TYPES = {1: 4, 10: 2, 11: 8, 16: 2}  # ONNX elem type -> bytes: FLOAT, FLOAT16, DOUBLE, BFLOAT16
_PARAM_INPUTS = {"BatchNormalization": (1, 2), "LayerNormalization": (1, 2),
                 "InstanceNormalization": (1, 2), "PRelu": (1,)}
_WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_CONST_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Concat", "Gather", "Where"})  # embeddings, tokens


@dataclass(frozen=True)
class MemoryReport:
    """Flash and SRAM of one network (kB = 1024 bytes) and where its activation peak happens.

    With ``patches > 1`` the stage fields say what patches did; they stay ``None`` when no leading stage can
    run patch by patch (a ViT's first node already leaves 1/8 of the resolution). ``sram_kb`` is then the
    patched schedule's peak even where the halo makes it larger than ``layer_sram_kb``: it is what was asked.

    Example (MCUNet's MobileNetV2 baseline, int8):
        >>> r = memory_of(search_spaces.get("mcunet"), "mbv2-w0.35-r144", patches=4)  # doctest: +SKIP
        >>> [round(v, 1) for v in (r.layer_sram_kb, r.patch_stage_kb, r.rest_kb, r.flash_kb)]  # doctest: +SKIP
        [283.5, 44.9, 40.5, 747.8]
    """

    sram_kb: float  # the peak (with patches: the patch stage's or the rest's, whichever is larger)
    flash_kb: float
    params: int  # parameters counted in flash (after BatchNorm folding)
    peak_node: str  # the node during which the activation peak happens
    peak_op: str
    weight_bits: int
    activation_bits: int
    inplace_depthwise: bool
    patches: int = 1
    stage_end: str | None = None  # the patch stage's last node (patches > 1)
    stage_kb: float | None = None  # that stage's peak run layer by layer
    patch_stage_kb: float | None = None  # its peak run patch by patch (per-patch working set + output buffer)
    rest_kb: float | None = None  # the peak of the nodes after the stage
    layer_sram_kb: float = 0.0  # the whole network's peak run layer by layer (= sram_kb without patches)
    schedule: tuple[tuple[str, float], ...] = ()  # (node, live kB while it runs), layer by layer

    @property
    def patch_reduction(self) -> float | None:
        """How many times patches cut the stage's peak (``stage_kb / patch_stage_kb``)."""
        if self.stage_kb is None or not self.patch_stage_kb:
            return None
        return self.stage_kb / self.patch_stage_kb


@dataclass(frozen=True)
class _Op:
    name: str
    op: str
    inputs: tuple[str, ...]  # activation inputs (not parameters or constants)
    outputs: tuple[str, ...]  # floating-point outputs
    attrs: dict[str, Any]
    depthwise: bool = False


def onnx_memory(model_or_path: Any, weight_bits: int = 8, activation_bits: int = 8, *, patches: int = 1,
                patch_stride: int = 8, inplace_depthwise: bool = True) -> MemoryReport:
    """The :class:`MemoryReport` of an ONNX model (a path, the file's bytes or a loaded ``ModelProto``)."""
    import onnx

    _check_bits("weight_bits", weight_bits)
    _check_bits("activation_bits", activation_bits)
    if isinstance(patches, bool) or not isinstance(patches, (int, np.integer)) or patches < 1:
        raise ValueError(f"patches must be a whole number >= 1 (an n x n grid; 1: no patches), got {patches!r}")
    if isinstance(patch_stride, bool) or not isinstance(patch_stride, (int, np.integer)) or patch_stride < 1:
        raise ValueError(f"patch_stride must be a whole number >= 1, got {patch_stride!r}")
    if isinstance(model_or_path, (str, os.PathLike)):
        if not Path(model_or_path).is_file():
            raise FileNotFoundError(f"{os.fspath(model_or_path)}: no such ONNX file")
        model = onnx.load(os.fspath(model_or_path))
    elif isinstance(model_or_path, (bytes, bytearray)):
        model = onnx.ModelProto.FromString(bytes(model_or_path))
    elif isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        raise TypeError(f"onnx_memory takes an ONNX path, bytes or ModelProto, got {type(model_or_path).__name__}")
    graph = _Graph(model)
    flash_bytes, params = graph.flash(weight_bits)
    act = activation_bits / 8
    sizes = {t: n * act for t, n in graph.numel.items()}
    walk = _walk(graph.ops, sizes, graph.inputs, graph.outputs, inplace_depthwise)
    per_node = walk.mem
    if not per_node:
        raise ValueError("the ONNX graph has no nodes that compute activations")
    peak = int(np.argmax(per_node))
    layer_peak = per_node[peak] / KB
    schedule = tuple((op.name, m / KB) for op, m in zip(graph.ops, per_node, strict=True))
    report: dict[str, Any] = dict(
        sram_kb=layer_peak, flash_kb=flash_bytes / KB, params=params, peak_node=graph.ops[peak].name,
        peak_op=graph.ops[peak].op, weight_bits=weight_bits, activation_bits=activation_bits,
        inplace_depthwise=inplace_depthwise, patches=int(patches), layer_sram_kb=layer_peak, schedule=schedule)
    if patches > 1:
        cut = _stage_cut(graph, walk, patch_stride)
        if cut > 0:
            stage_peak = max(per_node[:cut])
            patch_peak, patch_node = _patch_stage(graph, walk, cut, int(patches), act, inplace_depthwise)
            rest = per_node[cut:]
            rest_peak = max(rest) if rest else 0.0
            report.update(stage_end=graph.ops[cut - 1].name, stage_kb=stage_peak / KB,
                          patch_stage_kb=patch_peak / KB, rest_kb=rest_peak / KB)
            if patch_peak >= rest_peak:
                report.update(sram_kb=patch_peak / KB, peak_node=graph.ops[patch_node].name,
                              peak_op=graph.ops[patch_node].op)
            else:
                at = cut + int(np.argmax(rest))
                report.update(sram_kb=rest_peak / KB, peak_node=graph.ops[at].name, peak_op=graph.ops[at].op)
    return MemoryReport(**report)


def memory_of(space: Any, arch: Any, weight_bits: int = 8, activation_bits: int = 8, *, patches: int = 1,
              patch_stride: int = 8, inplace_depthwise: bool = True) -> MemoryReport:
    """Export ``arch`` (an architecture or its string) of ``space`` at batch 1 and read its memory."""
    if isinstance(arch, str):
        arch = space.from_string(arch)  # an ArchError names the bad part
    from nas.rng import seeded_global_rng

    # The sizes do not depend on the weights; the lock keeps the build from drawing on (and racing for) the
    # caller's global torch generator, as every build in a search does.
    with tempfile.TemporaryDirectory(prefix="zcnas-mem-") as tmp, seeded_global_rng(0):
        path = space.to_onnx(arch, Path(tmp) / "net.onnx")
        return onnx_memory(path, weight_bits, activation_bits, patches=patches, patch_stride=patch_stride,
                           inplace_depthwise=inplace_depthwise)


def _check_bits(name: str, bits: Any) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 64:
        raise ValueError(f"{name} must be a whole number of bits from 1 to 64 (e.g. 8 for int8), got {bits!r}")


class _Graph:
    """The nodes, tensor shapes and parameters of an ONNX model at batch 1."""

    def __init__(self, model: Any) -> None:
        import onnx
        from onnx import numpy_helper

        from hardware_models.graph_features import _static_batch

        model = _infer_shapes(_static_batch(model))
        g = model.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
            elif n.op_type == "Identity" and n.input[0] in self.consts:
                # The exporter stores equal tensors once (e.g. the zero biases of freshly folded BatchNorms)
                # and hands each user its own name through an Identity: each is a parameter of its own.
                self.consts[n.output[0]] = self.consts[n.input[0]]
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.numel: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            self.shapes[vi.name] = dims
            if tt.elem_type in _FLOAT_TYPES and vi.name not in self.consts:
                if any(d < 0 for d in dims):
                    raise ValueError(f"the shape of tensor {vi.name!r} could not be inferred ({dims}); export "
                                     "the model with static input shapes (only the batch may be symbolic)")
                self.numel[vi.name] = int(np.prod(dims))  # activations only; shape arithmetic is free
        self.inputs = [i.name for i in g.input if i.name in self.numel]
        self.outputs = {o.name for o in g.output}
        self.nodes = [n for n in g.node if n.op_type != "Constant" and n.output[0] not in self.consts]
        typed = {vi.name for vi in list(g.input) + list(g.value_info) + list(g.output)}
        untyped = [o for n in self.nodes for o in n.output if o and o not in typed]
        if untyped:
            raise ValueError(f"the type of {untyped[0]!r} could not be inferred (ONNX and onnxruntime shape "
                             "inference); export the model with static input shapes")
        self.ops: list[_Op] = []
        for n in self.nodes:
            outs = tuple(o for o in n.output if o in self.numel)
            if not outs:
                continue  # shape arithmetic (Shape -> Gather -> Concat): compile-time on a microcontroller
            for o in outs:
                if o not in self.shapes:
                    raise ValueError(f"the shape of {o!r} (output of {n.op_type} node {n.name!r}) could not be "
                                     "inferred; export the model with static input shapes")
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            ins = tuple(i for i in n.input if i in self.numel)
            depthwise = False
            if n.op_type == "Conv" and ins:
                w = self.consts[n.input[1]].shape if n.input[1] in self.consts else self.shapes[n.input[1]]
                attrs.setdefault("kernel_shape", list(w[2:]))
                group = int(attrs.get("group", 1))
                depthwise = group > 1 and w[1] == 1 and w[0] == group == self.shapes[ins[0]][1]
            self.ops.append(_Op(n.name or f"{n.op_type}:{outs[0]}", n.op_type, ins, outs, attrs, depthwise))

    def flash(self, weight_bits: int) -> tuple[float, int]:
        """(bytes, count) of the parameters: weights at ``weight_bits``, biases and scales at 32 bits."""
        counted: dict[str, np.ndarray] = {}
        for n in self.nodes:
            if n.op_type in _WEIGHT_OPS:
                names = [i for i in n.input if i in self.consts]
            elif n.op_type in _PARAM_INPUTS:
                names = [n.input[k] for k in _PARAM_INPUTS[n.op_type] if k < len(n.input)]
            elif n.op_type in _CONST_OPS:  # an embedding table, a class token; not a scalar like hswish's 3
                names = [i for i in n.input if i in self.consts and self.consts[i].size > 1]
            else:
                continue
            for name in names:
                value = self.consts.get(name)
                if value is not None and np.issubdtype(value.dtype, np.floating):
                    counted[name] = value  # by name: a shared tensor is stored once
        total = 0.0
        for value in counted.values():
            bits = weight_bits if value.ndim >= 2 else 32
            total += value.size * bits / 8
        return total, int(sum(v.size for v in counted.values()))


def _infer_shapes(model: Any) -> Any:
    """``model`` with every tensor's type and shape: ONNX's inference, else onnxruntime's symbolic one, which
    also follows shapes computed in the graph (a ViT's ``Expand`` of the class token, a channel shuffle)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    if not _unknown(inferred):
        return inferred
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(model, auto_merge=True)


def _unknown(model: Any) -> list[str]:
    """Node outputs whose type or shape inference left open."""
    g = model.graph
    known = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        known[vi.name] = vi.type.tensor_type.elem_type != 0 and all(d.HasField("dim_value") for d in dims)
    consts = {t.name for t in g.initializer}
    return [o for n in g.node if n.op_type != "Constant" for o in n.output
            if o and o not in consts and not known.get(o, False)]


@dataclass
class _Walk:
    mem: list[float]  # live bytes while each op runs
    after: list[float]  # live bytes after each op
    live_after: list[set[str]]  # buffer roots alive after each op
    root: dict[str, str]  # tensor -> the tensor whose buffer it is (aliases)
    last: dict[str, float]  # root -> index of its last reader (inf: a graph output)


def _walk(ops: Sequence[_Op], sizes: dict[str, float], inputs: Sequence[str], keep: set[str],
          inplace_depthwise: bool, roots: dict[str, str] | None = None) -> _Walk:
    """Live bytes of the layer-by-layer schedule: before, during and after each op, in graph order."""
    root: dict[str, str] = dict(roots or {})
    for op in ops:
        if op.op in ALIAS_OPS and op.inputs:
            for o in op.outputs:
                root[o] = root.get(op.inputs[0], op.inputs[0])
    last: dict[str, float] = {}
    for i, op in enumerate(ops):
        for t in op.outputs:
            last.setdefault(root.get(t, t), i)  # an output nobody reads is freed at once
        for t in op.inputs:
            last[root.get(t, t)] = i
    for t in keep:
        last[root.get(t, t)] = math.inf
    live: dict[str, float] = {}
    for t in inputs:
        live[root.get(t, t)] = sizes.get(t, 0.0)
    mem, after, live_after = [], [], []
    for i, op in enumerate(ops):
        base = sum(live.values())
        if op.op in ALIAS_OPS:
            mem.append(base)
        else:
            out = sum(sizes.get(o, 0.0) for o in op.outputs)
            reuse = _inplace_input(op, sizes, root, last, i, live, inplace_depthwise)
            if reuse is None:
                mem.append(base + out)
            else:
                x = live[reuse]
                # depthwise in place: one output channel waits in a temporary buffer
                temp = out / max(1, int(op.attrs.get("group", 1))) if op.op == "Conv" else 0.0
                mem.append(base - x + max(x, out) + temp)
            for o in op.outputs:
                live[root.get(o, o)] = sizes.get(o, 0.0)
        for r in [r for r in live if last.get(r, -1) <= i]:
            del live[r]
        after.append(sum(live.values()))
        live_after.append(set(live))
    return _Walk(mem, after, live_after, root, last)


def _inplace_input(op: _Op, sizes: dict[str, float], root: dict[str, str], last: dict[str, float], i: int,
                   live: dict[str, float], inplace_depthwise: bool) -> str | None:
    """The buffer root ``op`` may overwrite: an input dying at it whose buffer is large enough."""
    if op.op in UNARY_INPLACE or op.op in BINARY_INPLACE:
        pass
    elif not (op.op == "Conv" and op.depthwise and inplace_depthwise):
        return None
    out = sum(sizes.get(o, 0.0) for o in op.outputs)
    for t in op.inputs:
        r = root.get(t, t)
        if r not in live or last.get(r) != i:
            continue
        if op.op == "Conv" or math.isclose(sizes.get(t, 0.0), out):
            return r
    return None


def _stage_cut(graph: _Graph, walk: _Walk, patch_stride: int) -> int:
    """How many leading ops form the patch stage (0: none can run patch by patch)."""
    first = next((graph.shapes[t] for t in graph.inputs if len(graph.shapes[t]) == 4), None)
    if first is None:
        return 0
    h0, w0 = first[2], first[3]
    limit = 0
    for i, op in enumerate(graph.ops):
        shapes = [graph.shapes[o] for o in op.outputs]
        if op.op not in _LOCAL_OPS or any(len(s) != 4 or s[2] * patch_stride < h0 or s[3] * patch_stride < w0
                                          for s in shapes):
            break
        if op.op == "Concat" and op.attrs.get("axis") != 1:
            break
        limit = i + 1
    if limit == 0:
        return 0
    # The cheapest cut (fewest bytes crossing it), the earliest on ties: a shorter stage has a smaller halo.
    return min(range(1, limit + 1), key=lambda k: (walk.after[k - 1], k))


def _patch_stage(graph: _Graph, walk: _Walk, cut: int, patches: int, act: float,
                 inplace_depthwise: bool) -> tuple[float, int]:
    """(peak bytes, op index) of the stage ``ops[:cut]`` run on ``patches x patches`` output tiles."""
    ops = graph.ops[:cut]
    crossing = walk.live_after[cut - 1]  # roots alive after the stage: its full-size output buffers
    root = walk.root
    tiles: dict[str, tuple[int, int]] = {}

    def grow(t: str, hw: tuple[int, int]) -> None:
        shape = graph.shapes[t]
        if len(shape) != 4:
            return
        old = tiles.get(t, (0, 0))
        tiles[t] = (min(shape[2], max(old[0], hw[0])), min(shape[3], max(old[1], hw[1])))

    for r in crossing:
        for t, s in graph.shapes.items():
            if (t == r or root.get(t) == r) and len(s) == 4:
                grow(t, (math.ceil(s[2] / patches), math.ceil(s[3] / patches)))
    for op in reversed(ops):
        known = [tiles[o] for o in op.outputs if o in tiles]
        if not known:
            continue  # dead code for the stage's outputs
        th, tw = max(k[0] for k in known), max(k[1] for k in known)
        if op.op in _WINDOW_OPS:
            k = op.attrs["kernel_shape"]
            s = op.attrs.get("strides", [1, 1])
            d = op.attrs.get("dilations", [1, 1])
            th, tw = (th - 1) * s[0] + d[0] * (k[0] - 1) + 1, (tw - 1) * s[1] + d[1] * (k[1] - 1) + 1
        for t in op.inputs:
            grow(t, (th, tw))
    fixed = sum(graph.numel[t] * act for t in graph.numel if t in crossing)
    sizes = {}
    for t, n in graph.numel.items():
        if root.get(t, t) in crossing:
            sizes[t] = 0.0  # counted once, at full size, in ``fixed``
        elif t in tiles:
            c = graph.shapes[t][1]
            sizes[t] = c * tiles[t][0] * tiles[t][1] * act
        else:
            sizes[t] = n * act if len(graph.shapes.get(t, ())) != 4 else 0.0
    inputs = [t for t in graph.inputs if any(t in op.inputs for op in ops)]
    keep = {t for t in graph.numel if root.get(t, t) in crossing}
    patch = _walk(ops, sizes, inputs, keep, inplace_depthwise, roots=root)
    at = int(np.argmax(patch.mem))
    return patch.mem[at] + fixed, at
