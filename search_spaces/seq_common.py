"""What the layered transformer spaces (bert, gpt, vit) share: per-layer choice specs, JSON, token ONNX.

An architecture is an immutable ``LayeredArch``: the global choices (e.g. hidden size) and one tuple of
choices per layer; the depth is the number of layers. Each space maps it to and from its own JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from search_spaces.base import ArchError


class LayeredArch(NamedTuple):
    """Global choices (in spec order) and per-layer choices (one tuple per layer, in spec order)."""

    globals: tuple[Any, ...]
    layers: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Field:
    """One categorical decision: its JSON name and its allowed values."""

    name: str
    options: tuple[Any, ...]

    def check(self, value: Any, where: str) -> Any:
        """``value`` if allowed (numbers compare by value), else an ``ArchError`` naming the field."""
        for opt in self.options:
            if value == opt and type(value) is not bool and not (isinstance(opt, str) != isinstance(value, str)):
                return opt
        allowed = ", ".join(json.dumps(o) for o in self.options)
        raise ArchError(f"{where}{self.name} = {json.dumps(value)} is not allowed; valid: {allowed}")


@dataclass(frozen=True)
class LayeredSpec:
    """The decisions of a layered space: global fields, allowed depths, per-layer fields."""

    global_fields: tuple[Field, ...]
    depths: tuple[int, ...]
    layer_fields: tuple[Field, ...]

    @property
    def max_depth(self) -> int:
        """Deepest allowed network."""
        return max(self.depths)

    def cardinality(self) -> int:
        """Distinct architectures: globals x sum over depths of (per-layer options) ** depth."""
        g = int(np.prod([len(f.options) for f in self.global_fields]))
        per_layer = int(np.prod([len(f.options) for f in self.layer_fields]))
        return g * sum(per_layer ** d for d in self.depths)

    def sample(self, rng: np.random.Generator) -> LayeredArch:
        """Uniform global choices, uniform depth, uniform per-layer choices."""
        g = tuple(f.options[int(rng.integers(len(f.options)))] for f in self.global_fields)
        depth = self.depths[int(rng.integers(len(self.depths)))]
        return LayeredArch(g, tuple(self._sample_layer(rng) for _ in range(depth)))

    def _sample_layer(self, rng: np.random.Generator) -> tuple[Any, ...]:
        return tuple(f.options[int(rng.integers(len(f.options)))] for f in self.layer_fields)

    def mutate(self, arch: LayeredArch, rng: np.random.Generator) -> LayeredArch:
        """Change one decision: a global field, the depth (new layers sampled) or one layer's field."""
        slots: list[tuple[str, int, int]] = [("g", i, 0) for i, f in enumerate(self.global_fields)
                                             if len(f.options) > 1]
        if len(self.depths) > 1:
            slots.append(("d", 0, 0))
        slots += [("l", li, fi) for li in range(len(arch.layers))
                  for fi, f in enumerate(self.layer_fields) if len(f.options) > 1]
        kind, a, b = slots[int(rng.integers(len(slots)))]
        if kind == "g":
            opts = [o for o in self.global_fields[a].options if o != arch.globals[a]]
            g = list(arch.globals)
            g[a] = opts[int(rng.integers(len(opts)))]
            return LayeredArch(tuple(g), arch.layers)
        if kind == "d":
            depth = [d for d in self.depths if d != len(arch.layers)][int(rng.integers(len(self.depths) - 1))]
            layers = arch.layers[:depth] + tuple(self._sample_layer(rng)
                                                 for _ in range(depth - len(arch.layers)))
            return LayeredArch(arch.globals, layers)
        opts = [o for o in self.layer_fields[b].options if o != arch.layers[a][b]]
        layer = list(arch.layers[a])
        layer[b] = opts[int(rng.integers(len(opts)))]
        layers = list(arch.layers)
        layers[a] = tuple(layer)
        return LayeredArch(arch.globals, tuple(layers))

    def crossover(self, a: LayeredArch, b: LayeredArch, rng: np.random.Generator) -> LayeredArch:
        """Uniform crossover of globals, depth and the layers both parents have."""
        g = tuple(x if rng.random() < 0.5 else y for x, y in zip(a.globals, b.globals, strict=True))
        depth = len(a.layers) if rng.random() < 0.5 else len(b.layers)
        longer = a.layers if len(a.layers) >= len(b.layers) else b.layers
        layers = []
        for i in range(depth):
            pool = [p.layers[i] for p in (a, b) if i < len(p.layers)] or [longer[i]]
            layers.append(pool[int(rng.integers(len(pool)))])
        return LayeredArch(g, tuple(layers))

    def decisions(self) -> list[tuple[str, Sequence[Any]]]:
        """Fixed-length decisions: globals, depth, and every field of every layer up to the maximum depth
        (fields of layers past the chosen depth are ignored)."""
        out: list[tuple[str, Sequence[Any]]] = [(f.name, f.options) for f in self.global_fields]
        out.append(("depth", self.depths))
        out += [(f"layer{i}_{f.name}", f.options) for i in range(self.max_depth) for f in self.layer_fields]
        return out

    def from_choices(self, choices: Sequence[int]) -> LayeredArch:
        """Architecture from one option index per decision."""
        c = [int(x) for x in choices]
        ng, nl = len(self.global_fields), len(self.layer_fields)
        g = tuple(f.options[c[i]] for i, f in enumerate(self.global_fields))
        depth = self.depths[c[ng]]
        layers = tuple(tuple(f.options[c[ng + 1 + i * nl + j]] for j, f in enumerate(self.layer_fields))
                       for i in range(depth))
        return LayeredArch(g, layers)

    def to_choices(self, arch: LayeredArch) -> list[int]:
        """Option index per decision (layers past the depth get index 0)."""
        out = [f.options.index(v) for f, v in zip(self.global_fields, arch.globals, strict=True)]
        out.append(self.depths.index(len(arch.layers)))
        for i in range(self.max_depth):
            for j, f in enumerate(self.layer_fields):
                out.append(f.options.index(arch.layers[i][j]) if i < len(arch.layers) else 0)
        return out

    def encode(self, arch: LayeredArch) -> np.ndarray:
        """One-hot of every decision; layers past the depth are all zeros."""
        parts: list[np.ndarray] = []
        for f, v in zip(self.global_fields, arch.globals, strict=True):
            parts.append(np.eye(len(f.options), dtype=np.float32)[f.options.index(v)])
        parts.append(np.eye(len(self.depths), dtype=np.float32)[self.depths.index(len(arch.layers))])
        for i in range(self.max_depth):
            for j, f in enumerate(self.layer_fields):
                row = np.zeros(len(f.options), dtype=np.float32)
                if i < len(arch.layers):
                    row[f.options.index(arch.layers[i][j])] = 1.0
                parts.append(row)
        return np.concatenate(parts)

    def suggest(self, trial: Any) -> LayeredArch:
        """Define-by-run: globals, depth, then the fields of each layer that exists."""
        g = tuple(trial.suggest_categorical(f.name, list(f.options)) for f in self.global_fields)
        depth = trial.suggest_categorical("depth", list(self.depths))
        layers = tuple(tuple(trial.suggest_categorical(f"layer{i}_{f.name}", list(f.options))
                             for f in self.layer_fields) for i in range(depth))
        return LayeredArch(g, layers)

    def check(self, arch: LayeredArch) -> LayeredArch:
        """``arch`` with every value validated (``ArchError`` naming the field otherwise)."""
        if len(arch.layers) not in self.depths:
            raise ArchError(f"{len(arch.layers)} layers is not allowed; valid depths: "
                            f"{', '.join(map(str, self.depths))}")
        g = tuple(f.check(v, "") for f, v in zip(self.global_fields, arch.globals, strict=True))
        layers = tuple(tuple(f.check(v, f"layer {i}: ") for f, v in zip(self.layer_fields, layer, strict=True))
                       for i, layer in enumerate(arch.layers))
        return LayeredArch(g, layers)


class LayeredSpace:
    """The protocol methods every layered space delegates to its ``spec`` (a :class:`LayeredSpec`)."""

    spec: LayeredSpec

    @property
    def cardinality(self) -> int:
        """Globals x sum over depths of (per-layer options) ** depth."""
        return self.spec.cardinality()

    def sample(self, rng: np.random.Generator) -> LayeredArch:
        """Uniform global choices, depth and per-layer choices."""
        return self.spec.sample(rng)

    def mutate(self, arch: LayeredArch, rng: np.random.Generator) -> LayeredArch:
        """Change one decision (a global, the depth, or one field of one layer)."""
        return self.spec.mutate(arch, rng)

    def crossover(self, a: LayeredArch, b: LayeredArch, rng: np.random.Generator) -> LayeredArch:
        """Uniform crossover of two parents."""
        return self.spec.crossover(a, b, rng)

    def encode(self, arch: LayeredArch) -> np.ndarray:
        """One-hot of every decision, layers past the depth zero."""
        return self.spec.encode(arch)

    def decisions(self) -> list[tuple[str, Sequence[Any]]]:
        """Globals, depth, and every field of every layer up to the maximum depth."""
        return self.spec.decisions()

    def from_choices(self, choices: Sequence[int]) -> LayeredArch:
        """Architecture from one option index per decision."""
        return self.spec.from_choices(choices)

    def to_choices(self, arch: LayeredArch) -> list[int]:
        """Option index per decision."""
        return self.spec.to_choices(arch)

    def suggest(self, trial: Any) -> LayeredArch:
        """Define-by-run through an Optuna trial."""
        return self.spec.suggest(trial)


class HeadsRatioJSON:
    """Canonical JSON of width + per-layer (heads, MLP ratio) spaces (gpt, vit)."""

    spec: LayeredSpec

    def to_string(self, arch: LayeredArch) -> str:
        """``{"embed_dim":..,"layers":[{"num_heads":..,"mlp_ratio":..},...]}``."""
        return dumps({"embed_dim": arch.globals[0],
                      "layers": [{"num_heads": h, "mlp_ratio": r} for h, r in arch.layers]})

    def from_canonical(self, obj: dict[str, Any]) -> LayeredArch:
        """Validated architecture of a canonical JSON object; bad values name the field."""
        layers = require(obj, "layers")
        if not isinstance(layers, list) or not all(isinstance(d, dict) for d in layers):
            raise ArchError("layers must be a list of {num_heads, mlp_ratio} objects")
        arch = LayeredArch((require(obj, "embed_dim"),),
                           tuple((require(d, "num_heads", f"layers[{i}]: "), require(d, "mlp_ratio", f"layers[{i}]: "))
                                 for i, d in enumerate(layers)))
        return self.spec.check(arch)


def parse_json_object(text: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or an ``ArchError`` that says what is wrong."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArchError(f"architecture is not valid JSON ({err.msg} at char {err.pos}): {text[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ArchError(f"architecture JSON must be an object, got {type(obj).__name__}")
    return obj


def require(obj: dict[str, Any], key: str, where: str = "") -> Any:
    """``obj[key]`` or an ``ArchError`` naming the missing key and the keys present."""
    if key not in obj:
        raise ArchError(f"{where}missing field {key!r}; got fields: {', '.join(map(repr, obj)) or '(none)'}")
    return obj[key]


def dumps(obj: Any) -> str:
    """Compact canonical JSON (no spaces, keys in the order given)."""
    return json.dumps(obj, separators=(",", ":"))


def as_tokens(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Integer token ids. Float inputs (SynFlow's all-ones probe, noise probes) are rounded and clipped
    into the vocabulary; integer ids outside it raise a ``ValueError`` naming the range."""
    if x.is_floating_point():
        return x.round().clamp(0, vocab_size - 1).long()
    if not torch.jit.is_tracing() and x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in 0..{vocab_size - 1}, got {int(x.min())}..{int(x.max())}")
    return x.long()


def export_tokens_onnx(model: nn.Module, seq_len: int, path: str | os.PathLike[str], batch_size: int = 1) -> str:
    """Export a token model with an int64 ``input`` [batch, seq] (dynamic batch) to ONNX opset 17."""
    path = os.fspath(path)
    model = model.eval()
    example = torch.full((batch_size, seq_len), 5, dtype=torch.long)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), path, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "rows"}}, opset_version=17,
                          dynamo=False)
    return path


def tag(module: nn.Module, role: str) -> nn.Module:
    """Mark ``module`` for the sequence proxies (``hidden``, ``operation``, ``head_proj``, ``attn_probs``,
    ``ffn_act``); a plain attribute, so models stay ordinary ``nn.Module`` s."""
    module.zc_role = role  # type: ignore[assignment]
    return module
