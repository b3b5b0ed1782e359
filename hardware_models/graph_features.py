"""Per-node features of a network's ONNX graph, aggregated into one fixed-length vector per architecture.

The ONNX graph is the canonical source: :func:`onnx_features` reads an exported model. Exporting a big
network costs about a second, so :func:`torch_features` computes the same nodes from the torch module by
recording its operators on the ``meta`` device (no arithmetic is done); BatchNorm after a convolution is
folded as the ONNX exporter folds it, and shape-only operators are ignored as in the ONNX graph.

Every node falls in a category (``conv_k3``, ``dwconv_k5``, ``hswish``, ...) and contributes its
multiply-accumulates, activation bytes read and written, parameter bytes and a count. Nodes whose result
reaches the output only through a multiplication by the constant zero (NAS-Bench-201's ``none`` edge) are
dead code for an optimising runtime: they are aggregated separately (``dead_*``), because some runtimes
remove them and some do not.

Example:
    >>> import search_spaces
    >>> space = search_spaces.get("nb201")
    >>> arch = space.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|"
    ...                          "+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    >>> vec = torch_features(space, arch)
    >>> vec.shape == (len(FEATURE_NAMES),)
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

FEATURE_VERSION = 2
"""Bumped whenever the features change, so that on-disk caches of older versions are ignored."""

CATEGORIES: tuple[str, ...] = (
    "conv_k1", "conv_k3", "conv_k5", "conv_k7", "dwconv_k3", "dwconv_k5", "dwconv_k7", "gemm", "pool",
    "global_pool", "add", "mul", "relu", "hswish", "sigmoid", "norm", "memory",
)
STATS: tuple[str, ...] = ("mmacs", "act_mb", "param_mb", "count", "fanout")
FEATURE_NAMES: tuple[str, ...] = tuple(
    f"{prefix}{cat}_{stat}" for prefix in ("", "dead_") for cat in CATEGORIES for stat in STATS
)
_CAT_INDEX = {c: i for i, c in enumerate(CATEGORIES)}

# ONNX op type -> category (None: free, e.g. shape bookkeeping; conv / gemm are handled apart).
_ONNX_CATEGORY: dict[str, str | None] = {
    "AveragePool": "pool", "MaxPool": "pool", "GlobalAveragePool": "global_pool",
    "GlobalMaxPool": "global_pool", "ReduceMean": "global_pool", "Add": "add", "Sub": "add", "Sum": "add",
    "Mul": "mul", "Div": "mul", "Relu": "relu", "Clip": "relu", "LeakyRelu": "relu",
    "HardSwish": "hswish", "HardSigmoid": "hswish", "Sigmoid": "sigmoid", "Tanh": "sigmoid",
    "BatchNormalization": "norm", "InstanceNormalization": "norm", "LayerNormalization": "norm",
    "Concat": "memory", "Pad": "memory", "Resize": "memory", "Transpose": "memory",
}
_TORCH_CATEGORY: dict[str, str] = {
    "avg_pool2d": "pool", "max_pool2d": "pool", "max_pool2d_with_indices": "pool",
    "mean": "global_pool", "_adaptive_avg_pool2d": "global_pool", "adaptive_avg_pool2d": "global_pool",
    "add": "add", "sub": "add", "mul": "mul", "div": "mul", "relu": "relu", "hardtanh": "relu",
    "clamp": "relu", "leaky_relu": "relu", "hardswish": "hswish", "hardsigmoid": "hswish",
    "sigmoid": "sigmoid", "tanh": "sigmoid", "native_batch_norm": "norm", "batch_norm": "norm",
    "_native_batch_norm_legit_no_training": "norm", "native_layer_norm": "norm", "cat": "memory",
    "constant_pad_nd": "memory", "permute": "memory", "transpose": "memory",
}
_BN_OPS = {"native_batch_norm", "batch_norm", "_native_batch_norm_legit_no_training"}


@dataclass
class Node:
    """One operator of the graph with its cost statistics."""

    category: str | None  # None: costs nothing (reshape, identity, ...)
    inputs: list[Any]
    output: Any
    macs: float = 0.0
    act_bytes: float = 0.0
    param_bytes: float = 0.0
    zeroing: bool = False  # multiplies by the constant zero
    extra_outputs: list[Any] = field(default_factory=list)


def conv_category(kernel: int, groups: int, c_in: int) -> str:
    """Category of a convolution: depthwise when every input channel is its own group."""
    k = 1 if kernel <= 1 else 3 if kernel <= 3 else 5 if kernel <= 5 else 7
    depthwise = groups > 1 and groups == c_in
    if depthwise and k == 1:
        return "mul"  # a 1x1 depthwise conv is a per-channel scale
    return f"{'dw' if depthwise else ''}conv_k{k}"


def live_nodes(nodes: list[Node], outputs: list[Any]) -> list[bool]:
    """Liveness from the outputs (nodes in execution order): whether each node's result reaches an output
    other than through a zeroing node; a zeroing node and what only feeds it are dead."""
    live_tensors = set(outputs)
    live = [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        node = nodes[i]
        if node.output in live_tensors or any(o in live_tensors for o in node.extra_outputs):
            if node.zeroing:
                continue  # its result is the constant zero: a runtime folds it and what feeds it
            live[i] = True
            live_tensors.update(node.inputs)
    return live


def aggregate(nodes: list[Node], outputs: list[Any]) -> np.ndarray:
    """Liveness analysis from the outputs, then per-category sums (live and dead apart)."""
    dead = [not alive for alive in live_nodes(nodes, outputs)]
    # Fan-out keeps what merging identical nodes hides: a pooled or zeroed tensor read by three edges.
    readers: dict[Any, int] = {}
    for node in nodes:
        for i in node.inputs:
            readers[i] = readers.get(i, 0) + 1
    vec = np.zeros((2, len(CATEGORIES), len(STATS)))
    for node, is_dead in zip(nodes, dead, strict=True):
        if node.category is None:
            continue
        row = vec[int(is_dead), _CAT_INDEX[node.category]]
        row += (node.macs / 1e6, node.act_bytes / 1e6, node.param_bytes / 1e6, 1.0,
                readers.get(node.output, 0))
    return vec.ravel()


# --------------------------------------------------------------------------- ONNX (canonical)
def onnx_nodes(model: Any) -> tuple[list[Node], list[str]]:
    """Nodes of an ONNX ``ModelProto`` (shapes inferred here) and the graph's output names."""
    import onnx
    from onnx import numpy_helper

    model = _static_batch(model)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    g = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
    params = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consts: dict[str, np.ndarray] = {}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)

    def numel(name: str) -> int:
        if name in params:
            return int(params[name].size)
        if name in consts:
            return int(consts[name].size)
        return int(np.prod(shapes.get(name, (0,))))

    out_nodes = []
    for n in g.node:
        if n.op_type == "Constant":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        acts = [i for i in n.input if i and i not in params and i not in consts]
        pars = [i for i in n.input if i in params]
        node = Node(None, acts, n.output[0], extra_outputs=list(n.output[1:]))
        out_elems = numel(n.output[0])
        if len(shapes.get(n.output[0], (0, 0))) <= 1:
            node.inputs = []  # shape arithmetic (Shape -> Gather -> Concat -> Reshape): free, reads no data
        elif n.op_type == "Conv":
            w = params[n.input[1]].shape if n.input[1] in params else shapes[n.input[1]]
            groups = int(attrs.get("group", 1))
            c_in = shapes.get(n.input[0], (1, w[1] * groups))[1]
            node.category = conv_category(int(max(w[2:])), groups, c_in)
            node.macs = out_elems * int(np.prod(w[1:]))
        elif n.op_type in ("Gemm", "MatMul"):
            a_shape = shapes.get(n.input[0]) or (1,)
            node.category = "gemm"
            node.macs = out_elems * int(a_shape[-1] if n.op_type == "MatMul" or not attrs.get("transA")
                                        else a_shape[0])
        elif n.op_type in _ONNX_CATEGORY:
            node.category = _ONNX_CATEGORY[n.op_type]
            if node.category == "pool":
                node.macs = out_elems * int(np.prod(attrs.get("kernel_shape", [1])))
            elif node.category == "global_pool":
                node.macs = numel(n.input[0])
            else:
                node.macs = out_elems
            if n.op_type == "Mul":
                zero = [c for c in n.input if c in consts or c in params]
                node.zeroing = any(np.all((consts.get(c) if c in consts else params[c]) == 0) for c in zero)
        if node.category is not None:
            node.act_bytes = 4.0 * (sum(numel(i) for i in acts) + out_elems)
            node.param_bytes = 4.0 * sum(numel(i) for i in pars)
        out_nodes.append(node)
    return out_nodes, [o.name for o in g.output]


def _static_batch(model: Any) -> Any:
    """Copy of ``model`` whose symbolic input dimensions are 1, so that reshapes infer static shapes."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in list(model.graph.input) + list(model.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1
    return model


def onnx_features(path_or_model: str | os.PathLike[str] | Any) -> np.ndarray:
    """Feature vector of an ONNX file (or loaded ``ModelProto``)."""
    import onnx

    model = onnx.load(os.fspath(path_or_model)) if isinstance(path_or_model, (str, os.PathLike)) \
        else path_or_model
    nodes, outputs = onnx_nodes(model)
    return aggregate(nodes, outputs)


# --------------------------------------------------------------------------- torch (fast, same nodes)
@dataclass
class _Event:
    """One recorded operator before merging: tensors are referred to by id."""

    name: str
    static: str  # the non-tensor arguments and which argument slots hold activations or parameters
    refs: tuple[int, ...]  # ids of the tensor arguments, in order
    inputs: list[int]
    outputs: list[int]
    node: Node  # statistics; its inputs/outputs are filled when committed


class _Recorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records aten operators with their tensor inputs and outputs (by identity).

    Module calls seen before (same structure, same input shape) are replayed from a template instead of
    being dispatched again, which makes repeated cells and blocks nearly free.
    """

    def __init__(self, param_ids: set[int]) -> None:
        super().__init__()
        self.param_ids = param_ids
        self.nodes: list[Node] = []
        self.producer: dict[int, str] = {}
        self.keep: list[Any] = []  # holds tensors alive so that their ids stay unique
        self.alias: dict[int, int] = {}  # output of a repeated computation -> the first one's output
        self.seen: dict[tuple, list[int]] = {}
        self.captures: list[list[_Event]] = []
        self.fresh = 0

    def _static(self, a: Any) -> str:
        if isinstance(a, torch.Tensor):
            return "P" if id(a) in self.param_ids else "T"
        if isinstance(a, (list, tuple)):
            return "(" + ",".join(self._static(x) for x in a) + ")"
        return repr(a)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        out = _meta_shortcut(name, args) if not kwargs else None
        if out is None:
            out = func(*args, **(kwargs or {}))
        flat = [a for a in args if isinstance(a, torch.Tensor)]
        flat += [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
        outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)] \
            if isinstance(out, (list, tuple)) else []
        if not outs:
            return out
        self.keep.extend(flat + outs)
        acts = [t for t in flat if id(t) not in self.param_ids]
        if not acts and name not in ("convolution", "addmm", "mm", "matmul", "linear"):
            return out  # computed from parameters or nothing (allocation, detach): not a graph node
        pars = [t for t in flat if id(t) in self.param_ids]
        node = Node(None, [], 0)
        first = outs[0]
        if name == "convolution":
            w = args[1]
            node.category = conv_category(int(max(w.shape[2:])), int(args[8]), int(args[0].shape[1]))
            node.macs = first.numel() * int(np.prod(w.shape[1:]))
        elif name in ("addmm", "mm", "matmul", "linear", "bmm"):
            node.category = "gemm"
            mat = args[1] if name == "addmm" else args[0]
            node.macs = first.numel() * int(mat.shape[-1])
            pars = [t for t in flat if t is not mat]  # weights arrive transposed (a view), not as params
            acts = [mat]
        elif name in _TORCH_CATEGORY:
            node.category = _TORCH_CATEGORY[name]
            if node.category == "pool":
                node.macs = first.numel() * int(np.prod(args[1]))
            elif node.category == "global_pool":
                node.macs = acts[0].numel() if acts else 0
            else:
                node.macs = first.numel()
            if name == "mul" and len(args) > 1 and not isinstance(args[1], torch.Tensor) and args[1] == 0:
                node.zeroing = True
        if node.category is not None:
            node.act_bytes = 4.0 * (sum(t.numel() for t in acts) + first.numel())
            node.param_bytes = 4.0 * sum(t.numel() for t in pars)
            if node.category == "norm":
                node.param_bytes = 4.0 * 2 * first.shape[1]  # scale and shift (stats fold into them)
                node.act_bytes = 4.0 * (2 * first.numel() + 2 * first.shape[1])
        static = ",".join(self._static(a) for a in args) + repr(sorted((kwargs or {}).items()))
        event = _Event(name, static, tuple(id(t) for t in flat), [id(t) for t in acts], [id(o) for o in outs],
                       node)
        for cap in self.captures:
            cap.append(event)
        self.commit(event, None)
        return out

    def commit(self, ev: _Event, idmap: dict[int, int] | None) -> None:
        """Merge ``ev`` into the graph (common-subexpression merging and BN folding as in ONNX)."""
        def m(i: int) -> int:
            if idmap is None:
                return self.alias.get(i, i)
            if i not in idmap:
                self.fresh -= 1
                idmap[i] = self.fresh
            return self.alias.get(idmap[i], idmap[i])

        outs = [m(o) for o in ev.outputs]
        key = (ev.name, ev.static, tuple(m(i) for i in ev.refs))
        if key in self.seen and ev.name not in ("empty", "zeros"):
            for o, first_id in zip(outs, self.seen[key], strict=True):
                self.alias[o] = first_id
            return
        self.seen[key] = outs
        node = Node(ev.node.category, [m(i) for i in ev.inputs], outs[0], ev.node.macs, ev.node.act_bytes,
                    ev.node.param_bytes, ev.node.zeroing, outs[1:])
        if ev.name in _BN_OPS:
            if node.inputs and self.producer.get(node.inputs[0]) == "convolution":
                # The ONNX exporter folds BN into the convolution: its readers read the conv.
                self.alias[outs[0]] = node.inputs[0]
                return
            node.category = "norm"
        self.producer[outs[0]] = ev.name if node.category is not None or ev.name in _BN_OPS else \
            self.producer.get(node.inputs[0], ev.name) if node.inputs else ev.name
        self.nodes.append(node)


_TEMPLATES: dict[tuple, tuple[int, int, tuple[int, ...], list[_Event]]] = {}
_MAX_TEMPLATES = 20000


def _structure_keys(module: torch.nn.Module) -> dict[int, tuple]:
    """A hashable description of every sub-module's structure (type, settings, children), bottom up."""
    keys: dict[int, tuple] = {}

    def visit(mod: torch.nn.Module) -> tuple:
        children = tuple(visit(c) for c in mod.children())
        extra = ""
        try:
            extra = mod.extra_repr()
        except Exception:  # noqa: BLE001 - a module whose extra_repr fails is just not memoised
            extra = f"unique-{id(mod)}"
        # Settings kept as plain attributes (e.g. a shuffle's ``groups``) and tensor shapes count too.
        attrs = tuple(sorted((k, repr(v)) for k, v in vars(mod).items() if not k.startswith("_")
                             and isinstance(v, (int, float, str, bool, tuple, list, type(None)))))
        shapes = tuple((k, tuple(t.shape)) for k, t in list(mod._parameters.items())
                       + list(mod._buffers.items()) if t is not None)
        keys[id(mod)] = (type(mod).__module__, type(mod).__qualname__, extra, attrs, shapes, children)
        return keys[id(mod)]

    visit(module)
    return keys


def _memoise(module: torch.nn.Module, rec: _Recorder) -> None:
    """Let each sub-module replay a recorded template when called again with the same structure."""
    keys = _structure_keys(module)
    for mod in module.modules():
        if mod is module:
            continue
        mod.forward = _memo_forward(mod, mod.forward, keys[id(mod)], rec)  # type: ignore[method-assign]


def _memo_forward(mod: torch.nn.Module, forward: Any, skey: tuple, rec: _Recorder) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        x = args[0] if len(args) == 1 and not kwargs else None
        if not isinstance(x, torch.Tensor) or x.device.type != "meta":
            return forward(*args, **kwargs)
        xid = rec.alias.get(id(x), id(x))
        key = (skey, tuple(x.shape), rec.producer.get(xid))
        if key in _TEMPLATES:
            in_id, out_id, shape, events = _TEMPLATES[key]
            y = torch.empty(shape, device="meta")
            rec.keep.append(y)
            # The input's own id, not its alias: an alias may point outside this call (a node merged with
            # an identical one elsewhere), and an enclosing template must not capture that context.
            # ``commit`` resolves aliases itself.
            idmap = {in_id: id(x), out_id: id(y)}
            for ev in events:
                for cap in rec.captures:
                    cap.append(_remapped(ev, idmap, rec))
                rec.commit(ev, idmap)
            return y
        rec.captures.append([])
        try:
            y = forward(*args, **kwargs)
        finally:
            events = rec.captures.pop()
        if isinstance(y, torch.Tensor) and y.device.type == "meta" and id(y) != id(x):
            if len(_TEMPLATES) > _MAX_TEMPLATES:
                _TEMPLATES.clear()
            _TEMPLATES[key] = (id(x), id(y), tuple(y.shape), events)
            rec.keep.append(y)
        return y

    return call


def _remapped(ev: _Event, idmap: dict[int, int], rec: _Recorder) -> _Event:
    """``ev`` with its tensor ids translated for an enclosing capture (fresh ids for internal tensors)."""
    def m(i: int) -> int:
        if i not in idmap:
            rec.fresh -= 1
            idmap[i] = rec.fresh
        return idmap[i]

    return _Event(ev.name, ev.static, tuple(m(i) for i in ev.refs), [m(i) for i in ev.inputs],
                  [m(o) for o in ev.outputs], ev.node)


_UNARY = {"relu", "hardtanh", "clamp", "leaky_relu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "clone"}
_BINARY = {"add", "sub", "mul", "div"}


def _meta_shortcut(name: str, args: tuple) -> Any:
    """Output of common operators on meta tensors from shape rules alone (the meta kernels of torch are
    Python decompositions, ten times slower); None when the generic kernel must run."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.device.type != "meta":
        return None
    if name in _UNARY:
        return torch.empty(x.shape, device="meta")
    if name in _BINARY and len(args) > 1:
        other = args[1].shape if isinstance(args[1], torch.Tensor) else ()
        return torch.empty(torch.broadcast_shapes(x.shape, other), device="meta")
    if name in ("native_batch_norm", "_native_batch_norm_legit_no_training"):
        return (torch.empty(x.shape, device="meta"), torch.empty(0, device="meta"),
                torch.empty(0, device="meta"))
    if name == "convolution" and x.dim() == 4 and not args[6]:
        w, stride, pad, dil = args[1], args[3], args[4], args[5]
        hw = [(x.shape[2 + i] + 2 * pad[i] - dil[i] * (w.shape[2 + i] - 1) - 1) // stride[i] + 1
              for i in range(2)]
        return torch.empty(x.shape[0], w.shape[0], *hw, device="meta")
    if name == "avg_pool2d" and x.dim() == 4 and not (len(args) > 4 and args[4]):
        k = list(args[1]) * (2 // len(args[1]))
        st = list(args[2]) if len(args) > 2 and args[2] else k
        st = st * (2 // len(st))
        pad = list(args[3]) if len(args) > 3 else [0, 0]
        pad = pad * (2 // len(pad))
        hw = [(x.shape[2 + i] + 2 * pad[i] - k[i]) // st[i] + 1 for i in range(2)]
        return torch.empty(x.shape[0], x.shape[1], *hw, device="meta")
    return None


def torch_module_features(module: torch.nn.Module, input_shape: tuple[int, ...]) -> np.ndarray:
    """Feature vector of ``module`` (built on the ``meta`` device or any) for one input of ``input_shape``."""
    module = module.eval()
    device = next(iter(module.parameters()), torch.zeros(0)).device
    param_ids = {id(p) for p in module.parameters()} | {id(b) for b in module.buffers()}
    rec = _Recorder(param_ids)
    if device.type == "meta":
        _memoise(module, rec)
    x = torch.zeros(1, *input_shape, device=device)
    with torch.no_grad(), rec:
        y = module(x)
    outputs = [rec.alias.get(id(t), id(t)) for t in (y if isinstance(y, (list, tuple)) else [y])]
    return aggregate(rec.nodes, outputs)


def torch_features(space: Any, arch: Any) -> np.ndarray:
    """Feature vector of ``arch`` from its torch module, without arithmetic (``meta`` device)."""
    from search_spaces import arch_input_shape

    with torch.device("meta"):
        module = space.build(arch)
    return torch_module_features(module, arch_input_shape(space, arch))


def export_features(space: Any, arch: Any) -> np.ndarray:
    """Feature vector of ``arch`` through the canonical path: ``space.to_onnx`` then :func:`onnx_features`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return onnx_features(space.to_onnx(arch, os.path.join(tmp, "arch.onnx")))
