"""NAS-Bench-NLP recurrent cells (Klyuchnikov et al. 2020) in the benchmark's recipe format and LM wrapper.

A recipe is a JSON object of nodes ``{"name": {"op": OP, "input": [names]}}``. Inputs are ``x`` (the
layer input), ``h_prev_<i>`` (the previous hidden tuple) or other nodes; the cell's new hidden tuple is
``h_new_0``, ``h_new_1``, ... (``h_new_0`` is the layer output). Ops: ``linear`` (sum of one weight matrix
per input plus a bias), ``blend`` (``a*b + (1-a)*c``), ``elementwise_prod``, ``elementwise_sum``,
``activation_tanh``, ``activation_sigm``, ``activation_leaky_relu``.

The network is the benchmark's AWD-RNN language model without dropout: an embedding (PTB vocabulary
10,000, width 400), three stacked cells (hidden 600, the last 400 wide so the decoder can be tied), and a
decoder tied to the embedding. Output: next-token logits ``[N * T, vocab]``.

Sampling follows the benchmark's generator: a hidden tuple of 1-3 states, 7, 14 or 21 intermediate
elements with random ops wired to earlier elements, the last elements renamed ``h_new_i``, and the sample
rejected unless it passes the sanity check (acyclic, every element used, ``h_new_0`` depends on ``x``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError
from search_spaces.seq_common import as_tokens, dumps, export_tokens_onnx, parse_json_object, tag

OPS: tuple[str, ...] = ("linear", "blend", "elementwise_prod", "elementwise_sum", "activation_tanh",
                        "activation_sigm", "activation_leaky_relu")
ARITY: dict[str, tuple[int, int]] = {"linear": (1, 3), "blend": (3, 3), "elementwise_prod": (2, 3),
                                     "elementwise_sum": (2, 3), "activation_tanh": (1, 1),
                                     "activation_sigm": (1, 1), "activation_leaky_relu": (1, 1)}
HIDDEN_TUPLE_SIZES = (1, 2, 3)
ELEMENT_COUNTS = (7, 14, 21)
MAX_NODES = max(ELEMENT_COUNTS) + max(HIDDEN_TUPLE_SIZES)
Recipe = tuple[tuple[str, str, tuple[str, ...]], ...]  # (name, op, inputs) sorted by name


def _is_prev(name: str) -> bool:
    return name.startswith("h_prev_") and name[7:].isdigit()


def _hidden_size(recipe: Recipe) -> int:
    return sum(1 for name, _, _ in recipe if name.startswith("h_new_"))


def topological_order(recipe: Recipe) -> list[str]:
    """Node names in evaluation order; a cycle raises ``ArchError`` naming a node on it."""
    nodes = {name: inputs for name, _, inputs in recipe}
    order: list[str] = []
    state: dict[str, int] = {}
    for start in sorted(nodes):
        stack = [(start, iter(nodes[start]))]
        if state.get(start) == 2:
            continue
        state[start] = 1
        while stack:
            name, it = stack[-1]
            nxt = next((i for i in it if i in nodes), None)
            if nxt is None:
                state[name] = 2
                order.append(name)
                stack.pop()
            elif state.get(nxt) == 1:
                raise ArchError(f"recipe has a cycle through node {nxt!r} (via {name!r}); cells must be acyclic")
            elif state.get(nxt) != 2:
                state[nxt] = 1
                stack.append((nxt, iter(nodes[nxt])))
    return order


def validate(recipe: Recipe) -> Recipe:
    """Check a recipe; ``ArchError`` names the offending node and what is allowed."""
    nodes = {name: (op, inputs) for name, op, inputs in recipe}
    if "h_new_0" not in nodes:
        raise ArchError(f"recipe has no output node 'h_new_0'; nodes: {', '.join(sorted(nodes)) or '(none)'}")
    n_hidden = _hidden_size(recipe)
    for i in range(n_hidden):
        if f"h_new_{i}" not in nodes:
            raise ArchError(f"output nodes must be h_new_0..h_new_{n_hidden - 1} without gaps; missing h_new_{i}")
    if n_hidden > max(HIDDEN_TUPLE_SIZES):
        raise ArchError(f"{n_hidden} hidden states; NAS-Bench-NLP allows at most {max(HIDDEN_TUPLE_SIZES)}")
    for name, (op, inputs) in nodes.items():
        if name == "x" or _is_prev(name):
            raise ArchError(f"node {name!r}: 'x' and 'h_prev_<i>' are cell inputs and cannot be defined")
        if op not in OPS:
            raise ArchError(f"node {name!r}: unknown op {op!r}; valid: {', '.join(OPS)}")
        lo, hi = ARITY[op]
        if not lo <= len(inputs) <= hi:
            raise ArchError(f"node {name!r}: op {op} takes {lo}..{hi} inputs, got {len(inputs)}")
        for src in inputs:
            if src == "x" and op != "linear":
                raise ArchError(f"node {name!r}: only linear nodes may read 'x' (it has the input width)")
            if _is_prev(src) and int(src[7:]) >= n_hidden:
                raise ArchError(f"node {name!r} reads {src!r} but the cell has {n_hidden} hidden state(s) "
                                f"(h_new_0..h_new_{n_hidden - 1})")
            if src != "x" and not _is_prev(src) and src not in nodes:
                raise ArchError(f"node {name!r} reads {src!r}, which is not 'x', 'h_prev_<i>' or a node")
    order = topological_order(recipe)
    used = {src for _, (_, inputs) in nodes.items() for src in inputs}
    for name in order:
        if name not in used and not name.startswith("h_new_"):
            raise ArchError(f"node {name!r} is dangling: no h_new_* output depends on it")
    if not _depends_on_x(nodes, "h_new_0"):
        raise ArchError("node 'h_new_0' does not depend on 'x': the cell would ignore its input")
    return recipe


def _depends_on_x(nodes: dict[str, tuple[str, tuple[str, ...]]], start: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n == "x":
            return True
        if n in nodes and n not in seen:
            seen.add(n)
            todo.extend(nodes[n][1])
    return False


def generate(rng: np.random.Generator, hidden_tuple_size: int, elements: int) -> Recipe | None:
    """One draw of the generator; None when it fails the sanity check (the caller draws again)."""
    prevs = [f"h_prev_{i}" for i in range(hidden_tuple_size)]
    nodes: list[tuple[str, str, tuple[str, ...]]] = []
    names: list[str] = []
    unused: list[str] = []
    total = elements + hidden_tuple_size
    for j in range(total):
        op = "linear" if j == 0 else OPS[int(rng.integers(len(OPS)))]
        lo, hi = ARITY[op]
        k = int(rng.integers(lo, hi + 1))
        pool = names + prevs + (["x"] if op == "linear" else [])
        if len(pool) < k:
            op, k, pool = "linear", 1, names + prevs + ["x"]
        # wire unused elements in (newest first) so that few samples are rejected as dangling
        first = unused[-int(rng.integers(1, k + 1)):] if unused else []
        first = [f for f in first if f in pool]
        rest = [p for p in pool if p not in first]
        picked = first + [rest[i] for i in rng.choice(len(rest), size=k - len(first), replace=False)]
        name = f"node_{j}" if j < elements else f"h_new_{total - 1 - j}"
        nodes.append((name, op, tuple(picked)))
        unused = [u for u in unused if u not in picked] + [name]
        names.append(name)
    recipe = tuple(sorted(nodes))
    try:
        return validate(recipe)
    except ArchError:
        return None


class MultiLinear(nn.Module):
    """``sum_k W_k x_k + b``: one weight per input, one bias (the benchmark's ``linear`` node); built from
    ``nn.Linear`` parts so that generic weight-layer proxies see the recurrent weights."""

    def __init__(self, in_sizes: list[int], out: int) -> None:
        super().__init__()
        self.parts = nn.ModuleList(nn.Linear(n, out, bias=i == 0) for i, n in enumerate(in_sizes))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = self.parts[0](xs[0])
        for part, x in zip(self.parts[1:], xs[1:], strict=True):
            y = y + part(x)
        return y


class RecipeCell(nn.Module):
    """One step of a recipe cell: (x, hidden tuple) -> new hidden tuple."""

    def __init__(self, recipe: Recipe, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.spec = {name: (op, inputs) for name, op, inputs in recipe}
        self.order = topological_order(recipe)
        self.n_hidden = _hidden_size(recipe)
        self.linears = nn.ModuleDict({
            name: MultiLinear([input_size if s == "x" else hidden_size for s in inputs], hidden_size)
            for name, (op, inputs) in self.spec.items() if op == "linear"})
        acts = {"activation_tanh": nn.Tanh, "activation_sigm": nn.Sigmoid, "activation_leaky_relu": nn.LeakyReLU}
        self.acts = nn.ModuleDict({name: tag(acts[op](), "ffn_act") for name, (op, _) in self.spec.items()
                                   if op in acts})

    def precompute(self, x_seq: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``x`` terms of every linear node for all steps at once ([B, T, hidden] each): one large
        matrix product instead of one per step, the same values."""
        out = {}
        for name, (op, inputs) in self.spec.items():
            if op == "linear" and "x" in inputs:
                parts = self.linears[name].parts
                out[name] = sum(parts[i](x_seq) for i, s in enumerate(inputs) if s == "x")
        return out

    def forward(self, x: torch.Tensor, hidden: list[torch.Tensor],
                pre: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        values: dict[str, torch.Tensor] = {"x": x}
        values.update({f"h_prev_{i}": h for i, h in enumerate(hidden)})
        for name in self.order:
            op, inputs = self.spec[name]
            if op == "linear" and pre is not None and name in pre:
                y = pre[name]
                for part, s in zip(self.linears[name].parts, inputs, strict=True):
                    if s != "x":
                        y = y + part(values[s])
                values[name] = y
                continue
            args = [values[s] for s in inputs]
            if op == "linear":
                values[name] = self.linears[name](*args)
            elif op == "blend":
                values[name] = args[0] * args[1] + (1 - args[0]) * args[2]
            elif op == "elementwise_prod":
                values[name] = math.prod(args[1:], start=args[0])
            elif op == "elementwise_sum":
                values[name] = sum(args[1:], start=args[0])
            else:
                values[name] = self.acts[name](args[0])
        return [values[f"h_new_{i}"] for i in range(self.n_hidden)]


class RecipeRNN(nn.Module):
    """A recipe cell unrolled over the sequence; returns the ``h_new_0`` sequence [B, T, hidden]."""

    def __init__(self, recipe: Recipe, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = RecipeCell(recipe, input_size, hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        tag(self, "hidden")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = [x.new_zeros(x.shape[0], self.hidden_size) for _ in range(self.cell.n_hidden)]
        pre = self.cell.precompute(x)
        outs = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h, {k: v[:, t] for k, v in pre.items()})
            outs.append(h[0])
        return torch.stack(outs, dim=1)


class RecipeLM(nn.Module):
    """Embedding, stacked recipe cells, decoder tied to the embedding (NAS-Bench-NLP's AWD-RNN)."""

    def __init__(self, recipe: Recipe, vocab_size: int, emb: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, emb)
        sizes = [emb] + [hidden] * (layers - 1) + [emb]
        self.rnns = nn.ModuleList(RecipeRNN(recipe, a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, T, emb]."""
        return self.encoder(as_tokens(tokens, self.encoder.num_embeddings))

    def from_embeddings(self, e: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B * T, vocab] from embeddings."""
        h = e
        for rnn in self.rnns:
            h = rnn(h)
        return (h @ self.encoder.weight.T + self.decoder_bias).reshape(-1, self.encoder.num_embeddings)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.from_embeddings(self.embed(tokens))


@register("rnn")
class RNNSpace:
    """NAS-Bench-NLP recurrent-cell space.

    Args:
        seq_len: calibration and export sequence length (the benchmark's BPTT is 70).
        vocab_size, emb_size, hidden_size, num_layers: the LM wrapper (PTB: 10,000, 400, 600, 3).

    Example:
        >>> space = RNNSpace(seq_len=4, vocab_size=300, emb_size=8, hidden_size=8)
        >>> arch = space.from_string('{"h_new_0": {"op": "activation_tanh", "input": ["l"]},'
        ...                          ' "l": {"op": "linear", "input": ["x", "h_prev_0"]}}')
        >>> space.build(arch)(torch.zeros(2, 4, dtype=torch.long)).shape
        torch.Size([8, 300])
    """

    name = "rnn"
    description = "NAS-Bench-NLP recurrent cells (recipe JSON) in a 3-layer tied AWD-RNN language model"
    input_kind = "tokens"
    search_defaults: dict[str, Any] = {"objectives": ["hidden_cov"], "batch_size": 16}
    """Paper-best proxy where one is published (BERT: head confidence, RNN: hidden covariance)."""
    ensemble_components = ("hidden_cov", "params")
    """Label-free ``ensemble`` here: hidden covariance, the metric Serianni & Kalita (ACL 2023) introduced
    for NAS-Bench-NLP cells (far above the others there), with the parameter count as the size axis that
    AZ-NAS's aggregation pairs with its quality terms; fixed, not fitted."""
    objective = "lm"

    def __init__(self, seq_len: int = 32, vocab_size: int = 10000, emb_size: int = 400,
                 hidden_size: int = 600, num_layers: int = 3) -> None:
        if seq_len < 2 or num_layers < 1:
            raise ValueError(f"need seq_len >= 2 and num_layers >= 1, got {seq_len} and {num_layers}")
        self.seq_len, self.vocab_size = seq_len, vocab_size
        self.emb_size, self.hidden_size, self.num_layers = emb_size, hidden_size, num_layers
        self.input_shape = (seq_len,)
        self.num_classes = vocab_size

    @property
    def cardinality(self) -> int:
        """A loose upper bound: recipes the generator can write (ops x input choices per element)."""
        total = 0
        for h in HIDDEN_TUPLE_SIZES:
            for n in ELEMENT_COUNTS:
                total += math.prod(len(OPS) * math.comb(j + h + 1, min(3, j + h + 1)) for j in range(n + h))
        return total

    def sample(self, rng: np.random.Generator) -> Recipe:
        """A recipe from the benchmark's generator rules (rejection-sampled until it is valid)."""
        while True:
            h = HIDDEN_TUPLE_SIZES[int(rng.integers(len(HIDDEN_TUPLE_SIZES)))]
            n = ELEMENT_COUNTS[int(rng.integers(len(ELEMENT_COUNTS)))]
            recipe = generate(rng, h, n)
            if recipe is not None:
                return recipe

    def mutate(self, arch: Recipe, rng: np.random.Generator) -> Recipe:
        """Change the op (same arity class) or one input of one node; keeps the recipe valid."""
        for _ in range(100):
            nodes = list(arch)
            i = int(rng.integers(len(nodes)))
            name, op, inputs = nodes[i]
            if rng.random() < 0.5:
                same = [o for o in OPS if o != op and ARITY[o][0] <= len(inputs) <= ARITY[o][1]]
                if not same:
                    continue
                nodes[i] = (name, same[int(rng.integers(len(same)))], inputs)
            else:
                pool = ["x"] + [f"h_prev_{k}" for k in range(_hidden_size(arch))] + [n for n, _, _ in arch]
                j = int(rng.integers(len(inputs)))
                new = list(inputs)
                new[j] = pool[int(rng.integers(len(pool)))]
                if new == list(inputs):
                    continue
                nodes[i] = (name, op, tuple(new))
            try:
                return validate(tuple(sorted(nodes)))
            except ArchError:
                continue
        return self.sample(rng)

    def to_string(self, arch: Recipe) -> str:
        """The recipe JSON, keys sorted, compact."""
        return dumps({name: {"op": op, "input": list(inputs)} for name, op, inputs in arch})

    def from_string(self, text: str) -> Recipe:
        """Parse and validate a NAS-Bench-NLP recipe (any key order or spacing)."""
        obj = parse_json_object(text)
        if "recepie" in obj and isinstance(obj["recepie"], str):  # a benchmark log record
            obj = parse_json_object(obj["recepie"])
        nodes = []
        for name, node in obj.items():
            if not isinstance(node, dict) or "op" not in node or "input" not in node:
                raise ArchError(f"node {name!r} must be an object {{\"op\": ..., \"input\": [...]}}, got "
                                f"{json.dumps(node)[:60]}")
            if not isinstance(node["input"], list) or not all(isinstance(s, str) for s in node["input"]):
                raise ArchError(f"node {name!r}: 'input' must be a list of node names")
            nodes.append((str(name), str(node["op"]), tuple(node["input"])))
        return validate(tuple(sorted(nodes)))

    def encode(self, arch: Recipe) -> np.ndarray:
        """Per node in evaluation order (padded to 24): op one-hot, reads of x / h_prev_0..2, node inputs;
        plus the hidden-tuple size one-hot."""
        spec = {name: (op, inputs) for name, op, inputs in arch}
        rows = np.zeros((MAX_NODES, len(OPS) + 5), dtype=np.float32)
        for r, name in enumerate(topological_order(arch)[:MAX_NODES]):
            op, inputs = spec[name]
            rows[r, OPS.index(op)] = 1.0
            for s in inputs:
                if s == "x":
                    rows[r, len(OPS)] = 1.0
                elif _is_prev(s):
                    rows[r, len(OPS) + 1 + int(s[7:])] = 1.0
                else:
                    rows[r, len(OPS) + 4] += 1.0
        hid = np.eye(len(HIDDEN_TUPLE_SIZES), dtype=np.float32)[_hidden_size(arch) - 1]
        return np.concatenate([rows.ravel(), hid])

    def suggest(self, trial: Any) -> Recipe:
        """Ask the trial for a generator seed and draw from the generator (graphs have no fixed decisions)."""
        return self.sample(np.random.default_rng(trial.suggest_int("recipe_seed", 0, 2**31 - 1)))

    def build(self, arch: Recipe, num_classes: int | None = None,
              input_shape: tuple[int, ...] | None = None) -> nn.Module:
        """The tied AWD-RNN language model with this cell in every layer."""
        validate(arch)
        return RecipeLM(arch, num_classes or self.vocab_size, self.emb_size, self.hidden_size, self.num_layers)

    def to_onnx(self, arch: Recipe, path: str | os.PathLike[str]) -> str:
        """Export (unrolled over ``seq_len`` steps) with an int64 token input."""
        return export_tokens_onnx(self.build(arch), self.seq_len, path)

    @staticmethod
    def example(name: str) -> str:
        """Recipe JSON of a classic cell: ``rnn``, ``lstm`` or ``gru``."""
        if name not in EXAMPLES:
            raise ValueError(f"unknown example {name!r}; valid: {', '.join(EXAMPLES)}")
        return EXAMPLES[name]


def _canonical(recipe: dict[str, Any]) -> str:
    """Recipe JSON with nodes in canonical (sorted) order."""
    return dumps(dict(sorted(recipe.items())))


EXAMPLES = {
    "rnn": _canonical({"h_new_0": {"op": "activation_tanh", "input": ["lin"]},
                  "lin": {"op": "linear", "input": ["x", "h_prev_0"]}}),
    "lstm": _canonical({
        "i": {"op": "linear", "input": ["x", "h_prev_0"]}, "i_act": {"op": "activation_sigm", "input": ["i"]},
        "f": {"op": "linear", "input": ["x", "h_prev_0"]}, "f_act": {"op": "activation_sigm", "input": ["f"]},
        "o": {"op": "linear", "input": ["x", "h_prev_0"]}, "o_act": {"op": "activation_sigm", "input": ["o"]},
        "g": {"op": "linear", "input": ["x", "h_prev_0"]}, "g_act": {"op": "activation_tanh", "input": ["g"]},
        "c_keep": {"op": "elementwise_prod", "input": ["f_act", "h_prev_1"]},
        "c_add": {"op": "elementwise_prod", "input": ["i_act", "g_act"]},
        "h_new_1": {"op": "elementwise_sum", "input": ["c_keep", "c_add"]},
        "c_act": {"op": "activation_tanh", "input": ["h_new_1"]},
        "h_new_0": {"op": "elementwise_prod", "input": ["o_act", "c_act"]}}),
    "gru": _canonical({
        "r": {"op": "linear", "input": ["x", "h_prev_0"]}, "r_act": {"op": "activation_sigm", "input": ["r"]},
        "z": {"op": "linear", "input": ["x", "h_prev_0"]}, "z_act": {"op": "activation_sigm", "input": ["z"]},
        "rh": {"op": "elementwise_prod", "input": ["r_act", "h_prev_0"]},
        "n": {"op": "linear", "input": ["x", "rh"]}, "n_act": {"op": "activation_tanh", "input": ["n"]},
        "h_new_0": {"op": "blend", "input": ["z_act", "h_prev_0", "n_act"]}}),
}
