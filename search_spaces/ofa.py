"""Once-for-all MobileNetV3 space (``ofa_mbv3_d234_e346_k357``, Cai et al., ICLR 2020), as published.

Five elastic stages (widths 24, 40, 80, 112, 160 at width 1.0; strides 2, 2, 2, 1, 2; ReLU in the first
two, h-swish after; SE in stages 2, 4 and 5) follow a fixed 3x3 stem (16, stride 2, h-swish) and a fixed
first block (MBConv1 3x3, 16, ReLU). Each stage keeps its first ``d`` in {2, 3, 4} blocks; each block has
a depthwise kernel ``ks`` in {3, 5, 7} and expand ratio ``e`` in {3, 4, 6}; the input resolution ``r`` is
128..224 in steps of 4. The head is 960 (final expand) and 1280 (feature mix) wide, scaled by the width
multiplier (1.0 or 1.2) with ``make_divisible(.., 8)``.

Architectures are written as OFA's own JSON, ``{"ks":[20 ints],"e":[20 ints],"d":[5 ints],"r":224}``;
block ``4*s + j`` is block ``j`` of stage ``s``. In the canonical form the entries of blocks beyond a
stage's depth are set to the smallest choices (``ks`` 3, ``e`` 3), so that equal networks have one
string; strings with any valid values there (as in OFA's and HELP's data) are accepted.

The weight-sharing supernet lives in :mod:`search_spaces.ofa_supernet` and is re-exported here as
``OFASupernet``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError, export_onnx
from search_spaces.mbv3_blocks import BlockSpec, MobileNetV3, make_divisible

KERNELS: tuple[int, ...] = (3, 5, 7)
EXPANDS: tuple[int, ...] = (3, 4, 6)
DEPTHS: tuple[int, ...] = (2, 3, 4)
RESOLUTIONS: tuple[int, ...] = tuple(range(128, 225, 4))
N_STAGES = 5
MAX_DEPTH = 4
N_BLOCKS = N_STAGES * MAX_DEPTH
WIDTH_MULTS: tuple[float, ...] = (1.0, 1.2)

# OFAMobileNetV3: stem, first block, five elastic stages, final expand, feature mix.
BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STAGE_STRIDES = (2, 2, 2, 1, 2)
STAGE_ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
STAGE_SE = (False, True, False, True, True)


@dataclass(frozen=True)
class OFAArch:
    """An OFA subnet: per-block kernel and expand ratio (20 each), per-stage depth (5), resolution."""

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int = 224

    def active_blocks(self) -> list[int]:
        """Indices (0..19) of the blocks the subnet runs."""
        return [MAX_DEPTH * s + j for s in range(N_STAGES) for j in range(self.d[s])]

    def normalised(self) -> OFAArch:
        """The canonical form: unused blocks get kernel 3 and expand ratio 3."""
        active = set(self.active_blocks())
        ks = tuple(k if i in active else KERNELS[0] for i, k in enumerate(self.ks))
        e = tuple(x if i in active else EXPANDS[0] for i, x in enumerate(self.e))
        return OFAArch(ks, e, tuple(self.d), int(self.r))

    def to_dict(self) -> dict[str, Any]:
        """OFA's dict form, ``{"ks": [...], "e": [...], "d": [...], "r": r}``."""
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": self.r}


def stage_widths(width_mult: float = 1.0) -> list[int]:
    """Widths of stem, first block, the five stages, final expand and feature mix."""
    return [make_divisible(w * width_mult) for w in BASE_WIDTHS]


def subnet_specs(arch: OFAArch, width_mult: float = 1.0) -> list[BlockSpec]:
    """Block specs of the subnet: the fixed first block, then the active blocks of each stage."""
    widths = stage_widths(width_mult)
    specs = [BlockSpec(widths[0], widths[1], 3, 1, widths[0], "relu", False)]
    c = widths[1]
    for s in range(N_STAGES):
        for j in range(arch.d[s]):
            i = MAX_DEPTH * s + j
            mid = make_divisible(round(c * arch.e[i]))
            specs.append(BlockSpec(c, widths[s + 2], arch.ks[i], STAGE_STRIDES[s] if j == 0 else 1, mid,
                                   STAGE_ACTS[s], STAGE_SE[s]))
            c = widths[s + 2]
    return specs


def build_subnet(arch: OFAArch, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.1,
                 in_channels: int = 3) -> MobileNetV3:
    """The standalone MobileNetV3 of ``arch`` (what OFA's ``get_active_subnet`` returns)."""
    widths = stage_widths(width_mult)
    return MobileNetV3(widths[0], subnet_specs(arch, width_mult), widths[-2], widths[-1], num_classes,
                       dropout, in_channels)


def _check_values(field: str, values: Any, length: int, allowed: Sequence[int]) -> tuple[int, ...]:
    if not isinstance(values, list) or len(values) != length:
        got = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise ArchError(f'"{field}" must be a list of {length} ints in {{{", ".join(map(str, allowed))}}}, '
                        f"got {got}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v not in allowed:
            raise ArchError(f'"{field}"[{i}] = {v!r}: {field} must be in '
                            f'{{{", ".join(map(str, allowed))}}}')
        out.append(v)
    return tuple(out)


def parse_arch(text: str | dict[str, Any], resolutions: Sequence[int] = RESOLUTIONS,
               default_r: int = 224) -> OFAArch:
    """Parse OFA's JSON (or dict); raise ``ArchError`` naming the field and its allowed values."""
    if isinstance(text, str):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchError(f'an OFA arch is JSON like {{"ks":[20 ints],"e":[20 ints],"d":[5 ints],"r":224}}; '
                            f"could not parse {text[:60]!r}: {err.msg}") from None
    else:
        data = text
    if not isinstance(data, dict):
        raise ArchError(f'an OFA arch is a JSON object with keys "ks", "e", "d", "r"; got {type(data).__name__}')
    unknown = sorted(set(data) - {"ks", "e", "d", "r"})
    if unknown:
        raise ArchError(f"unknown key(s) {unknown} in OFA arch; valid keys: ks, e, d, r")
    for key in ("ks", "e", "d"):
        if key not in data:
            raise ArchError(f'OFA arch lacks "{key}"; it needs "ks" (20), "e" (20), "d" (5) and "r"')
    ks = _check_values("ks", data["ks"], N_BLOCKS, KERNELS)
    e = _check_values("e", data["e"], N_BLOCKS, EXPANDS)
    d = _check_values("d", data["d"], N_STAGES, DEPTHS)
    r = data.get("r", default_r)
    if isinstance(r, float) and r.is_integer():
        r = int(r)
    if isinstance(r, bool) or not isinstance(r, int) or r not in resolutions:
        lo, hi = min(resolutions), max(resolutions)
        step = resolutions[1] - resolutions[0] if len(resolutions) > 1 else 0
        raise ArchError(f'"r" = {r!r}: r must be in {lo}..{hi} step {step}')
    return OFAArch(ks, e, d, r).normalised()


@register("ofa")
class OFASpace:
    """Once-for-all MobileNetV3 space (``ofa_mbv3_d234_e346_k357``), ImageNet classifier.

    Args:
        width_mult: 1.0 or 1.2 (the two published OFA MobileNetV3 supernets).
        num_classes: classifier width (1000 for ImageNet).
        resolutions: allowed input resolutions (OFA: 128..224 step 4).
        min_resolution, max_resolution: the resolutions ``min..max`` in steps of 4 instead (an unset end keeps
            OFA's 128 or 224); plain ints, so ``--space-option`` sets them and a run's stored options keep
            them, e.g. ``min_resolution=32 max_resolution=64`` for CIFAR-sized images (OFA's range scaled
            by 1/4 to 1/3.5). Not together with ``resolutions``.
        dropout: classifier dropout (OFA: 0.1).
        proxy_scale: the evaluator scores proxies at ``round(r * proxy_scale / 4) * 4`` pixels instead
            of ``r`` (1.0 keeps ``r``). The CPU search default 0.5 keeps the ranking: on 30 sampled
            subnets Spearman vs full resolution is 0.988 (synflow) and 0.989 (nwot) at 1.8x and 3.5x
            less CPU time (``experiments/ofa_proxy_resolution.py``). Build and export always use ``r``.

    Example:
        >>> space = OFASpace()
        >>> arch = space.sample(np.random.default_rng(0))
        >>> space.from_string(space.to_string(arch)) == arch
        True
    """

    name = "ofa"
    description = ("once-for-all MobileNetV3 (d234 e346 k357): 5 stages, depth 2-4, kernel 3/5/7, "
                   "expand 3/4/6, resolution 128-224, ImageNet")
    # ``nas search --space ofa --target rpi4``: regularised evolution on SynFlow (data-free, one image)
    # and predicted latency, proxies at half resolution: about 0.2 CPU-s of synflow + 0.1 of latency
    # features per candidate (experiments/ofa_proxy_resolution.py), so 400 fit well inside 10 minutes.
    search_defaults: dict[str, Any] = {
        "strategy": "evolution",
        "budget": 400,
        "objectives": ["synflow", "latency"],
        "proxies": [],
        "batch_size": 16,
        "space_options": {"proxy_scale": 0.5},
    }

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000,
                 resolutions: Sequence[int] = RESOLUTIONS, dropout: float = 0.1,
                 proxy_scale: float = 1.0, min_resolution: int | None = None,
                 max_resolution: int | None = None) -> None:
        if width_mult not in WIDTH_MULTS:
            raise ValueError(f"width_mult must be one of {WIDTH_MULTS} (the published OFA supernets), "
                             f"got {width_mult}")
        if not 0 < proxy_scale <= 1:
            raise ValueError(f"proxy_scale must be in (0, 1], got {proxy_scale}")
        self.width_mult = float(width_mult)
        self.num_classes = num_classes
        self.min_resolution, self.max_resolution = min_resolution, max_resolution
        if min_resolution is not None or max_resolution is not None:
            if tuple(resolutions) != RESOLUTIONS:
                raise ValueError("give resolutions or min_resolution/max_resolution, not both")
            lo = min(RESOLUTIONS) if min_resolution is None else int(min_resolution)
            hi = max(RESOLUTIONS) if max_resolution is None else int(max_resolution)
            if not 8 <= lo <= hi:
                raise ValueError(f"min_resolution {lo} and max_resolution {hi}: need 8 <= min <= max")
            resolutions = range(lo, hi + 1, 4)
        self.resolutions = tuple(sorted(int(r) for r in resolutions))
        self.dropout = dropout
        self.proxy_scale = float(proxy_scale)
        self.input_shape = (3, max(self.resolutions), max(self.resolutions))

    @property
    def cardinality(self) -> int:
        """Subnets x resolutions: (9^2 + 9^3 + 9^4)^5 x 25, about 5e20."""
        per_stage = sum((len(KERNELS) * len(EXPANDS)) ** d for d in DEPTHS)
        return per_stage ** N_STAGES * len(self.resolutions)

    def arch_input_shape(self, arch: OFAArch) -> tuple[int, int, int]:
        """The subnet's own input, ``(3, r, r)``."""
        return (3, arch.r, arch.r)

    def proxy_input_shape(self, arch: OFAArch) -> tuple[int, int, int]:
        """The input the evaluator scores proxies at: ``r`` scaled by ``proxy_scale``, a multiple of 4."""
        side = max(32, int(round(arch.r * self.proxy_scale / 4)) * 4)
        return (3, side, side)

    def sample(self, rng: np.random.Generator) -> OFAArch:
        """A random subnet as OFA samples them: each ks, e, d and r uniformly."""
        ks = tuple(KERNELS[i] for i in rng.integers(len(KERNELS), size=N_BLOCKS))
        e = tuple(EXPANDS[i] for i in rng.integers(len(EXPANDS), size=N_BLOCKS))
        d = tuple(DEPTHS[i] for i in rng.integers(len(DEPTHS), size=N_STAGES))
        r = self.resolutions[int(rng.integers(len(self.resolutions)))]
        return OFAArch(ks, e, d, r).normalised()

    def mutate(self, arch: OFAArch, rng: np.random.Generator) -> OFAArch:
        """Change one decision the subnet uses (a used block's ks or e, a depth, or r) to another value."""
        names = [("ks", i) for i in arch.active_blocks()] + [("e", i) for i in arch.active_blocks()]
        names += [("d", s) for s in range(N_STAGES)] + [("r", 0)]
        field, i = names[int(rng.integers(len(names)))]
        options = {"ks": KERNELS, "e": EXPANDS, "d": DEPTHS, "r": self.resolutions}[field]
        if field == "r":
            choices = [v for v in options if v != arch.r]
            return OFAArch(arch.ks, arch.e, arch.d, choices[int(rng.integers(len(choices)))])
        values = list(getattr(arch, field))
        choices = [v for v in options if v != values[i]]
        values[i] = choices[int(rng.integers(len(choices)))]
        fields = {"ks": arch.ks, "e": arch.e, "d": arch.d, field: tuple(values)}
        return OFAArch(fields["ks"], fields["e"], fields["d"], arch.r).normalised()

    def crossover(self, a: OFAArch, b: OFAArch, rng: np.random.Generator) -> OFAArch:
        """Uniform crossover of every decision (blocks, depths and resolution) of two parents."""
        pick = rng.random(2 * N_BLOCKS + N_STAGES + 1) < 0.5
        ks = tuple(x if t else y for x, y, t in zip(a.ks, b.ks, pick[:N_BLOCKS], strict=True))
        e = tuple(x if t else y for x, y, t in zip(a.e, b.e, pick[N_BLOCKS:2 * N_BLOCKS], strict=True))
        d = tuple(x if t else y for x, y, t in zip(a.d, b.d, pick[2 * N_BLOCKS:-1], strict=True))
        return OFAArch(ks, e, d, a.r if pick[-1] else b.r).normalised()

    def to_string(self, arch: OFAArch) -> str:
        """OFA's compact JSON, e.g. ``{"ks":[...],"e":[...],"d":[...],"r":224}`` (canonical form)."""
        return json.dumps(arch.normalised().to_dict(), separators=(",", ":"))

    def from_string(self, text: str) -> OFAArch:
        """Parse OFA's JSON (``r`` defaults to the largest resolution); errors name field and values."""
        return parse_arch(text, self.resolutions, max(self.resolutions))

    def encode(self, arch: OFAArch) -> np.ndarray:
        """One-hot ks and e of each used block (zeros for unused ones), one-hot depths, scaled r: 136."""
        code = np.zeros((N_BLOCKS, len(KERNELS) + len(EXPANDS)), dtype=np.float32)
        for i in arch.active_blocks():
            code[i, KERNELS.index(arch.ks[i])] = 1.0
            code[i, len(KERNELS) + EXPANDS.index(arch.e[i])] = 1.0
        depth = np.zeros((N_STAGES, len(DEPTHS)), dtype=np.float32)
        depth[np.arange(N_STAGES), [DEPTHS.index(d) for d in arch.d]] = 1.0
        lo, hi = min(self.resolutions), max(self.resolutions)
        r = np.array([(arch.r - lo) / max(1, hi - lo)], dtype=np.float32)
        return np.concatenate([code.ravel(), depth.ravel(), r])

    def decisions(self) -> list[tuple[str, Sequence[int]]]:
        """Categorical decisions: ks and e of each of the 20 blocks, 5 depths, the resolution."""
        out: list[tuple[str, Sequence[int]]] = [(f"ks_{i}", KERNELS) for i in range(N_BLOCKS)]
        out += [(f"e_{i}", EXPANDS) for i in range(N_BLOCKS)]
        out += [(f"d_{s}", DEPTHS) for s in range(N_STAGES)]
        out.append(("r", self.resolutions))
        return out

    def from_choices(self, choices: Sequence[int]) -> OFAArch:
        """Architecture from one option index per decision (unused blocks' choices are ignored)."""
        c = [int(x) for x in choices]
        ks = tuple(KERNELS[i] for i in c[:N_BLOCKS])
        e = tuple(EXPANDS[i] for i in c[N_BLOCKS:2 * N_BLOCKS])
        d = tuple(DEPTHS[i] for i in c[2 * N_BLOCKS:2 * N_BLOCKS + N_STAGES])
        return OFAArch(ks, e, d, self.resolutions[c[-1]]).normalised()

    def to_choices(self, arch: OFAArch) -> list[int]:
        """Option index per decision of ``arch``."""
        return ([KERNELS.index(k) for k in arch.ks] + [EXPANDS.index(x) for x in arch.e]
                + [DEPTHS.index(d) for d in arch.d] + [self.resolutions.index(arch.r)])

    def suggest(self, trial: Any) -> OFAArch:
        """Ask an Optuna trial for depths and resolution, then ks and e of the used blocks only."""
        d = tuple(trial.suggest_categorical(f"d_{s}", list(DEPTHS)) for s in range(N_STAGES))
        r = trial.suggest_categorical("r", list(self.resolutions))
        ks, e = [KERNELS[0]] * N_BLOCKS, [EXPANDS[0]] * N_BLOCKS
        for i in OFAArch(tuple(ks), tuple(e), d, r).active_blocks():
            ks[i] = trial.suggest_categorical(f"ks_{i}", list(KERNELS))
            e[i] = trial.suggest_categorical(f"e_{i}", list(EXPANDS))
        return OFAArch(tuple(ks), tuple(e), d, r)

    def build(self, arch: OFAArch, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None) -> nn.Module:
        """The standalone subnet (freshly initialised) for ``arch``."""
        if not isinstance(arch, OFAArch):
            raise ArchError(f"expected an OFAArch (see from_string), got {type(arch).__name__}")
        in_channels = (input_shape or self.input_shape)[0]
        return build_subnet(arch, self.width_mult, num_classes or self.num_classes, self.dropout,
                            in_channels)

    def to_onnx(self, arch: OFAArch, path: str | os.PathLike[str]) -> str:
        """Export the subnet to ONNX with a ``(1, 3, r, r)`` input."""
        return export_onnx(self.build(arch), torch.zeros(1, *self.arch_input_shape(arch)), path)

    def precision_groups(self) -> list[tuple[str, tuple[int, ...]]]:
        """Layer groups for ``precision=mixed``: the stem (with the fixed first block), each of the 20
        MBConv blocks, the head (final expand, feature mix, classifier)."""
        from search_spaces.precision import BITS, EDGE_BITS

        return [("stem", EDGE_BITS), *((f"b{i}", BITS) for i in range(N_BLOCKS)), ("head", EDGE_BITS)]

    def precision_layers(self, arch: OFAArch) -> dict[str, tuple[str, ...]]:
        """Module paths in ``build(arch)`` of each layer group the subnet uses (unused blocks have none)."""
        out: dict[str, tuple[str, ...]] = {"stem": ("stem", "blocks.0")}
        for k, i in enumerate(arch.active_blocks()):
            out[f"b{i}"] = (f"blocks.{k + 1}",)
        out["head"] = ("final_expand", "feature_mix", "classifier")
        return out

    def largest(self, r: int | None = None) -> OFAArch:
        """The largest subnet (d 4, k 7, e 6) at resolution ``r`` (default: the largest)."""
        return OFAArch((7,) * N_BLOCKS, (6,) * N_BLOCKS, (4,) * N_STAGES, r or max(self.resolutions))

    def smallest(self, r: int | None = None) -> OFAArch:
        """The smallest subnet (d 2, k 3, e 3) at resolution ``r`` (default: the smallest)."""
        return OFAArch((3,) * N_BLOCKS, (3,) * N_BLOCKS, (2,) * N_STAGES, r or min(self.resolutions))


def __getattr__(name: str) -> Any:
    """Re-export the supernet lazily (it imports this module)."""
    if name in ("OFASupernet", "load_official", "official_key_to_ours"):
        from search_spaces import ofa_supernet

        return getattr(ofa_supernet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
