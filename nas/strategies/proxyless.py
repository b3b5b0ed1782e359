"""ProxylessNAS (Cai et al., ICLR 2019) on the fbnet and ofa spaces, with a latency loss for a hardware target.

Architecture parameters: per searchable position a logit vector over its options (fbnet: the 9 ops of a
layer; ofa: the 9 (kernel, expand) pairs of a block) and, for ofa, per stage a logit vector over the depths
2, 3, 4 (a block beyond the sampled depth is ProxylessNAS's "zero" op; only a stage's tail can be skipped,
so every derived arch is an OFA subnet). The supernet is :mod:`nas.supernets`' (``FBNetSupernet``: separate
weights per op; ``OFASupernet``: sliced kernels and widths).

Path-level binarisation (sec. 3.2 of the paper): each weight step samples one path from the multinomial
of softmax(alpha) per decision and runs only that path (``supernet(x, arch)``). Each architecture step
samples two distinct options per decision, renormalises their probabilities, runs the one drawn from
them through binary gates (one-hot, the gate of the other option 0) and evaluates the other only to get
its gate's gradient, ``dL/dg_j = <dL/dout, o_j(x)>``. The gradient of alpha restricted to the two options
is ``sum_j dL/dg_j p_j (delta_ij - p_i)`` (eq. 4); after the Adam step the two updated logits are shifted
so that the probabilities of the unsampled options are unchanged.

Latency loss: ``E[lat]`` (ms) is the expected latency of the current distributions from
:mod:`hardware_models.block_latency` (a per-block table built from ``--target``'s graph model at the
run's input size), differentiable in every logit. Where a target's residual network applies to the space
(today only nb201, so never here) its correction at the current argmax arch is added as a constant.
``latency_loss=add``: ``CE + latency_weight * E[lat] / ref_ms`` (the paper's eq. 5 with the latency
normalised); ``latency_loss=mul``: ``CE * (log E[lat] / log ref_ms) ** latency_weight`` (the
multiplicative form, MnasNet-style; needs latencies above 1 ms). ``ref_ms`` defaults to the expected
latency of the uniform distribution (the start).

Recipe: the oneshot module's (:class:`nas.strategies.oneshot.Recipe`): weights train on one class-balanced
half of ``train_size`` images with SGD (lr 0.025 cosine, momentum 0.9, weight decay 3e-4, clip 5), the
architecture on the other with Adam (the paper's ``arch_lr`` 1e-3, betas (0, 0.999), no weight decay),
one architecture step then one weight step per batch after ``warmup_epochs``. (The paper updates the
architecture every 5 weight steps after 40 warm-up epochs on ImageNet; small CPU runs need every step.)
ofa: images are resized to ``resolution`` (default the space's largest) and the supernet has no dropout.

Each epoch's argmax architecture is a trial scored by :meth:`ProxylessNAS.evaluate`: ``acc_ws`` (accuracy
% of that path on the architecture half, BN on batch statistics) and ``latency_ms`` (``target.predict``).
``final`` is the last epoch's argmax (the study writes it as ``best.json``). Run storage as the oneshot
strategies: ``supernet.pt`` (exact resume), ``alpha.csv`` (probabilities per epoch and decision) and
``oneshot.csv``.

Example:
    >>> import search_spaces
    >>> space = search_spaces.get("fbnet", num_classes=10)
    >>> s = ProxylessNAS(space, target="rpi4", data="cifar10_jpeg", epochs=5)  # doctest: +SKIP
    >>> (arch,) = s.ask(1)  # one epoch: weight and architecture steps, then the argmax arch  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.datasets import normalise
from nas.registry import check_options
from nas.rng import seeded_global_rng
from nas.strategies import register
from nas.strategies.oneshot import (
    CHECKPOINT,
    Recipe,
    _atomic,
    _derive,
    _Differentiable,
    write_history,
)
from search_spaces import Arch, SearchSpace

__all__ = ["LATENCY_LOSSES", "ProxylessNAS", "SearchModel", "latency_loss", "two_path_grad"]

log = logging.getLogger(__name__)

LATENCY_LOSSES = ("add", "mul")
Batch = tuple[torch.Tensor, torch.Tensor]


class SearchModel(nn.Module):
    """A supernet with ProxylessNAS's architecture logits: one vector per position and per depth group."""

    def __init__(self, space: SearchSpace, resolution: int | None) -> None:
        super().__init__()
        from nas.supernets import supernet_of

        self.space, self.kind = space, space.name
        self.supernet = supernet_of(space)
        if self.kind == "ofa":
            from hardware_models.block_latency import OFA_OPTIONS
            from search_spaces.ofa import DEPTHS, MAX_DEPTH, N_BLOCKS, N_STAGES

            self.supernet.dropout = nn.Identity()  # dropout would draw from torch's global RNG: no exact resume
            self.options: list[tuple[Any, ...]] = [OFA_OPTIONS] * N_BLOCKS
            self.depths: list[tuple[int, ...]] = [tuple(DEPTHS)] * N_STAGES
            self.stages = [list(range(MAX_DEPTH * s, MAX_DEPTH * (s + 1))) for s in range(N_STAGES)]
            self.resolution = int(resolution or max(space.resolutions))
        else:
            from search_spaces.fbnet import N_LAYERS, OPS

            self.options, self.depths, self.stages = [OPS] * N_LAYERS, [], [[i] for i in range(N_LAYERS)]
            self.resolution = None
        self.alpha = nn.ParameterList([nn.Parameter(torch.zeros(len(o))) for o in self.options])
        self.beta = nn.ParameterList([nn.Parameter(torch.zeros(len(d))) for d in self.depths])

    def arch_parameters(self) -> list[nn.Parameter]:
        """Option logits of every position, then depth logits of every group."""
        return [*self.alpha, *self.beta]

    def weight_parameters(self) -> list[nn.Parameter]:
        """The supernet's weights."""
        return list(self.supernet.parameters())

    def probs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """softmax of every option and depth logit vector (differentiable)."""
        return [a.softmax(0) for a in self.alpha], [b.softmax(0) for b in self.beta]

    def arch(self, choices: Sequence[int], depths: Sequence[int] = ()) -> Arch:
        """The space's architecture of option indices per position and depth indices per group."""
        if self.kind == "ofa":
            from search_spaces.ofa import OFAArch

            ks = tuple(self.options[i][c][0] for i, c in enumerate(choices))
            e = tuple(self.options[i][c][1] for i, c in enumerate(choices))
            d = tuple(self.depths[g][c] for g, c in enumerate(depths))
            return OFAArch(ks, e, d, self.resolution).normalised()
        return tuple(self.options[i][c] for i, c in enumerate(choices))

    def derived(self) -> Arch:
        """The argmax architecture (the method's answer)."""
        return self.arch([int(a.argmax()) for a in self.alpha], [int(b.argmax()) for b in self.beta])

    def sample(self, generator: torch.Generator) -> Arch:
        """One path drawn from the multinomial of every decision (the weight step's path)."""
        draw = [int(torch.multinomial(p.detach(), 1, generator=generator)) for p in self.probs()[0]]
        deep = [int(torch.multinomial(p.detach(), 1, generator=generator)) for p in self.probs()[1]]
        return self.arch(draw, deep)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        """Logits of the single path ``arch`` (only its modules run)."""
        return self.supernet(x, arch)

    # -- binary gates over two sampled paths -----------------------------------------------------------
    def _run(self, i: int, c: int, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "ofa":
            k, e = self.options[i][c]
            return self.supernet.blocks[i](h, k, e)
        return self.supernet.layers[i][c](h)

    def gated_forward(self, x: torch.Tensor, pairs: Sequence[tuple[int, int, int]],
                      depth_pairs: Sequence[tuple[int, int, int]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits through binary gates: per decision ``(a, b, active)``; returns the logits and the gates.

        The active option's output is the value; each gate contributes ``(g - g.detach()) * o(x).detach()``,
        zero in value, whose gradient is ``<dL/dout, o(x)>``; the other option runs without autograd.
        """
        sup = self.supernet
        gates = [torch.zeros(2, requires_grad=True) for _ in range(len(pairs) + len(depth_pairs))]
        with torch.no_grad():
            for g, (a, _b, act) in zip(gates, [*pairs, *depth_pairs], strict=True):
                g[0 if act == a else 1] = 1.0
        if self.kind == "ofa":
            h = sup.first_block(sup.stem(x))
        else:
            h = sup.stem(x)
        for s, stage in enumerate(self.stages):
            if self.depths:
                da, db, dact = depth_pairs[s]
                run_to = {self.depths[s][da], self.depths[s][db]}
                active_depth = self.depths[s][dact]
            else:
                run_to, active_depth = {len(stage)}, len(stage)
            outs: dict[int, torch.Tensor] = {}
            for j, i in enumerate(stage, start=1):
                if j > max(run_to):
                    break
                a, b, act = pairs[i]
                if j > active_depth:  # beyond the active depth: its output only feeds the other depth's gate
                    with torch.no_grad():
                        h = self._run(i, act, h)
                else:
                    out = self._run(i, act, h)
                    with torch.no_grad():
                        other = self._run(i, b if act == a else a, h)
                    g = gates[i]
                    pick = (out.detach(), other) if act == a else (other, out.detach())
                    h = out + (g[0] - g[0].detach()) * pick[0] + (g[1] - g[1].detach()) * pick[1]
                outs[j] = h
            if self.depths:
                g = gates[len(pairs) + s]
                main = outs[active_depth]
                h = main + sum((g[k] - g[k].detach()) * outs[self.depths[s][d]].detach()
                               for k, d in enumerate((da, db)))
            else:
                h = outs[len(stage)]
        if self.kind == "ofa":
            return sup.forward_head(sup.final_expand(h)), gates
        return sup.forward_head(sup.header(h)), gates


def two_path_grad(alpha: torch.Tensor, pair: tuple[int, int], gate_grad: torch.Tensor) -> torch.Tensor:
    """ProxylessNAS's gradient of ``alpha`` from the binary gates of two sampled options (eq. 4 on the pair)."""
    p = alpha.detach()[list(pair)].softmax(0)
    out = torch.zeros_like(alpha)
    for i in range(2):
        out[pair[i]] = sum(gate_grad[j] * p[j] * (float(i == j) - p[i]) for j in range(2))
    return out


def latency_loss(ce: torch.Tensor, expected_ms: torch.Tensor, ref_ms: float, weight: float, form: str) -> torch.Tensor:
    """``add``: CE + w * E[lat] / ref; ``mul``: CE * (log E[lat] / log ref) ** w."""
    if form == "add":
        return ce + weight * expected_ms.to(ce.dtype) / ref_ms
    if form == "mul":
        if weight == 0:
            return ce
        ratio = torch.log(expected_ms.clamp_min(1.0 + 1e-6)) / math.log(ref_ms)
        return ce * ratio.to(ce.dtype) ** weight
    raise ValueError(f"latency_loss must be one of {', '.join(LATENCY_LOSSES)}, got {form!r}")


@register("proxylessnas")
class ProxylessNAS(_Differentiable):
    """ProxylessNAS on fbnet or ofa: binary gates, two-path updates, a latency loss for ``target``.

    Example:
        >>> import search_spaces
        >>> space = search_spaces.get("fbnet", num_classes=10)
        >>> s = ProxylessNAS(space, target="rpi4", latency_weight=0.1, data="cifar10_jpeg")  # doctest: +SKIP
    """

    name = "proxylessnas"
    uses_target = True  # the study passes its --target
    default_objectives = ("acc_ws",)

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1,
                 storage: str | os.PathLike[str] | None = None, target: str | None = None,
                 latency_weight: float = 0.1, latency_loss: str = "add", ref_ms: float = 0.0,
                 resolution: int = 0, **options: Any) -> None:
        if getattr(space, "name", None) not in ("fbnet", "ofa"):
            raise ValueError(f"strategy 'proxylessnas' searches the spaces fbnet and ofa, not "
                             f"{getattr(space, 'name', space)!r}")
        if getattr(space, "weight_sharing", "separate") != "separate":
            raise ValueError("strategy 'proxylessnas' binarises paths of separate ops; drop --space-option "
                             "weight_sharing=nested")
        if latency_loss not in LATENCY_LOSSES:
            raise ValueError(f"latency_loss must be one of {', '.join(LATENCY_LOSSES)}, got {latency_loss!r}")
        if latency_weight < 0:
            raise ValueError(f"latency_weight must be >= 0, got {latency_weight}")
        if target is None and latency_weight > 0:
            raise ValueError("strategy 'proxylessnas' needs a target for its latency loss (--target T, e.g. rpi4; "
                             "see `nas targets`), or latency_weight=0")
        if resolution and space.name != "ofa":
            raise ValueError("option resolution applies to the ofa space only")
        if resolution and int(resolution) not in space.resolutions:
            raise ValueError(f"resolution {resolution} is not one of the space's: "
                             f"{', '.join(map(str, space.resolutions))}")
        options = {"arch_lr": 1e-3, "arch_weight_decay": 0.0, **options}  # the paper's Adam settings
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(Recipe)})
        if unknown:
            valid = ", ".join(["target", "latency_weight", "latency_loss", "ref_ms", "resolution"]
                              + [f.name for f in dataclasses.fields(Recipe)])
            raise ValueError(f"strategy 'proxylessnas' has no option {', '.join(map(repr, unknown))}; valid: {valid}")
        check_options("strategy 'proxylessnas'", Recipe, options)
        self.recipe = Recipe(**options)
        if self.recipe.prune:
            raise ValueError("strategy 'proxylessnas' has no op mixture to prune; prune= applies to darts, pcdarts "
                             "and gdas")
        if not self.recipe.data:
            raise ValueError("strategy 'proxylessnas' trains a supernet and needs data=DIR (a folder with train/ "
                             "class folders, e.g. ../shared/data/cifar10_jpeg) or data=FILE.npz")
        if self.recipe.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.recipe.epochs}")
        self.space, self.seed = space, int(seed)
        self.method = {"target": target, "latency_weight": float(latency_weight), "latency_loss": latency_loss,
                       "ref_ms": float(ref_ms), "resolution": int(resolution)}
        self.run_dir = Path(storage).parent if storage is not None else None
        self.device = torch.device(self.recipe.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.history: list[dict[str, Any]] = []
        self._asked = 0
        self._cache: dict[str, dict[str, float]] = {}
        self._model: SearchModel | None = None  # type: ignore[assignment]
        self._stored: dict[str, Any] | None = None
        self._target = None
        self._table = None
        self._residual = False
        if target is not None:
            import hardware_models
            from hardware_models.block_latency import table_for

            self._target = hardware_models.get(target)
            from hardware_models.residual import network_for

            self._table = table_for(self._target, space, int(resolution) or None)
            # fbnet and ofa have no residual network today (only nb201 does); kept for spaces that gain one.
            self._residual = getattr(self._target, "_head", None) is not None and network_for(space) is not None
        if self.run_dir is not None and (self.run_dir / CHECKPOINT).is_file():
            self._read_checkpoint()

    # ask, final and evaluate are the one-shot base's: one derived arch per epoch, scored on the supernet.

    def expected_ms(self) -> torch.Tensor:
        """E[latency] (ms) of the current distributions (differentiable in the logits)."""
        assert self._model is not None and self._table is not None
        probs, depths = self._model.probs()
        expected = self._table.expected_ms(probs, depths or None)
        if self._residual:  # a constant at the argmax arch: the residual network has no gradient in alpha
            from hardware_models.block_latency import residual_ms

            expected = expected + residual_ms(self._target, self.space, self._model.derived())
        return expected

    # -- training ------------------------------------------------------------------------------------
    def _check_data(self, x: torch.Tensor) -> None:
        """Any image size will do (batches are resized to the run's resolution), not any channel count."""
        if x.shape[1] != self.space.input_shape[0]:
            raise ValueError(f"data={self.recipe.data}: images with {x.shape[1]} channels, the space takes "
                             f"{self.space.input_shape[0]}")

    def _build(self) -> torch.nn.Module:
        # The supernet's initialisation draws from torch's global generator: seeded under the process-wide
        # lock, so that it neither disturbs nor is disturbed by another thread's seeded section.
        with seeded_global_rng(_derive(self.seed, 0, 1)):
            return SearchModel(self.space, self.method["resolution"] or None)

    def _arch_optimizer(self) -> torch.optim.Optimizer:
        """Adam with ProxylessNAS' betas (0, 0.999)."""
        r = self.recipe
        return torch.optim.Adam(self._arch, lr=r.arch_lr, betas=(0.0, 0.999), eps=1e-8,
                                weight_decay=r.arch_weight_decay)

    def _setup(self) -> None:
        if self._model is not None:
            return
        super()._setup()
        model = self._model
        if self._table is not None and not self.method["ref_ms"]:
            with torch.no_grad():  # the uniform start: every logit is zero until the first step
                uniform = self._table.expected_ms([torch.full((len(o),), 1 / len(o)) for o in model.options],
                                                  [torch.full((len(d),), 1 / len(d)) for d in model.depths] or None)
            self._ref = float(uniform)
        else:
            self._ref = self.method["ref_ms"] or 1.0
        if self.method["latency_loss"] == "mul" and self._target is not None and self._ref <= 1.0:
            raise ValueError(f"latency_loss=mul takes log(latency ms); the reference {self._ref:.3g} ms is not above "
                             "1 ms on this target: use latency_loss=add or give ref_ms")

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        """Resize a normalised batch to the run's resolution (ofa) when the data differ."""
        res = self._model.resolution if self._model is not None else None
        if res is not None and x.shape[-1] != res:
            return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
        return x

    def _epoch_record(self, epoch: int, losses: dict[str, float | None]) -> dict[str, Any]:
        """The argmax arch, its scores (``latency_ms`` None without a target), its expected latency, the
        epoch's ``losses`` and the choice probabilities."""
        model = self._model
        assert model is not None
        arch = model.derived()
        probs, depths = model.probs()
        return {
            "arch": self.space.to_string(arch), "latency_ms": None, **self._score(arch),
            "expected_ms": float(self.expected_ms().detach()) if self._table is not None else None,
            **losses, "alpha": [p.detach().cpu().tolist() for p in probs],
            "beta": [p.detach().cpu().tolist() for p in depths],
        }

    def _weight_step(self, batch: Batch, epoch: int, gen: torch.Generator) -> torch.Tensor:
        """One SGD step on one path drawn from the multinomial; only that path runs and moves."""
        assert self._model is not None
        path = self._model.sample(gen)
        self._w_opt.zero_grad(set_to_none=True)  # ops off the path keep grad None: SGD skips them
        logits = self._model(batch[0], path)
        loss = F.cross_entropy(logits, batch[1])
        loss.backward(inputs=self._weights)
        torch.nn.utils.clip_grad_norm_(self._weights, self.recipe.grad_clip)
        self._w_opt.step()
        return torch.stack([loss.detach() * len(batch[1]), (logits.argmax(1) == batch[1]).sum()])

    def _draw_pairs(self, logits: Sequence[torch.Tensor], gen: torch.Generator) -> list[tuple[int, int, int]]:
        """Two distinct options per decision from softmax(logits), and the active one drawn from the pair."""
        out = []
        for a in logits:
            a = a.detach().cpu()
            i, j = (int(v) for v in torch.multinomial(a.softmax(0), 2, replacement=False, generator=gen))
            pair = a[[i, j]].softmax(0)
            out.append((i, j, (i, j)[int(torch.multinomial(pair, 1, generator=gen))]))
        return out

    def _arch_step(self, batch: Batch, train_batch: Batch, lr: float, epoch: int,
                   gen: torch.Generator) -> torch.Tensor:
        """One Adam step of the logits: binary-gate CE gradient on two paths per decision, plus the latency
        loss's exact gradient through every logit; then the pairs' logits are re-centred."""
        assert self._model is not None
        model = self._model
        pairs, depth_pairs = self._draw_pairs(model.alpha, gen), self._draw_pairs(model.beta, gen)
        logits, gates = model.gated_forward(batch[0], pairs, depth_pairs)
        ce = F.cross_entropy(logits, batch[1])
        loss = ce
        if self._table is not None and self.method["latency_weight"] > 0:
            loss = latency_loss(ce, self.expected_ms(), self._ref, self.method["latency_weight"],
                                self.method["latency_loss"])
        grads = torch.autograd.grad(loss, [*self._arch, *gates], allow_unused=True)
        arch_grads, gate_grads = grads[:len(self._arch)], grads[len(self._arch):]
        old = [p.detach().clone() for p in self._arch]
        for p, g, gg, pair in zip(self._arch, arch_grads, gate_grads, [*pairs, *depth_pairs], strict=True):
            p.grad = (torch.zeros_like(p) if g is None else g.clone())
            if gg is not None:
                p.grad += two_path_grad(p, pair[:2], gg)
        self._a_opt.step()
        with torch.no_grad():  # keep the unsampled options' probabilities: shift the pair's logits back
            for p, before, pair in zip(self._arch, old, [*pairs, *depth_pairs], strict=True):
                idx = list(pair[:2])
                p[idx] -= torch.logsumexp(p[idx], 0) - torch.logsumexp(before[idx], 0)
        return torch.stack([ce.detach() * len(batch[1]), (logits.argmax(1) == batch[1]).sum()])

    @torch.no_grad()
    def _score(self, arch: Arch) -> dict[str, float]:
        """Accuracy (%) of path ``arch`` on the architecture half (BN on batch statistics), and its latency."""
        assert self._model is not None
        model = self._model
        out = {"acc_ws": self._half_accuracy(lambda b: model(self._images(normalise(b)), arch))}
        if self._target is not None:
            out["latency_ms"] = float(self._target.predict(self.space, [arch])[0])
        return out

    # -- storage -------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        recipe = {k: v for k, v in dataclasses.asdict(self.recipe).items() if k != "device"}
        from hardware_models.feature_cache import space_key

        return {"strategy": self.name, "seed": self.seed, "method": self.method, "recipe": recipe,
                "space": space_key(self.space)}

    def _record_scores(self, record: dict[str, Any]) -> dict[str, float]:
        """``acc_ws`` and, with a target, ``latency_ms`` of an epoch's derived arch."""
        return _scores(record)

    def _write_reports(self) -> None:
        """alpha.csv (long form: epoch, decision, option, probability) and oneshot.csv."""
        assert self.run_dir is not None and self._model is not None
        model = self._model

        def alpha_csv(path: Path) -> None:
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["epoch", "decision", "option", "probability"])
                for rec in self.history:
                    for i, row in enumerate(rec["alpha"]):
                        for opt, v in zip(model.options[i], row, strict=True):
                            w.writerow([rec["epoch"] + 1, f"position_{i}", _label(opt), f"{v:.6f}"])
                    for g, row in enumerate(rec["beta"]):
                        for d, v in zip(model.depths[g], row, strict=True):
                            w.writerow([rec["epoch"] + 1, f"depth_{g}", d, f"{v:.6f}"])

        _atomic(self.run_dir / "alpha.csv", alpha_csv)
        write_history(self.run_dir, self.history, ["epoch", "arch", "acc_ws", "latency_ms", "expected_ms",
                                                   "train_loss", "train_acc", "arch_loss", "arch_acc", "lr",
                                                   "seconds", "rss_mb"])


def _scores(rec: dict[str, Any]) -> dict[str, float]:
    """The objective values of an epoch record (latency only where a target predicted one)."""
    return {k: rec[k] for k in ("acc_ws", "latency_ms") if rec.get(k) is not None}


def _label(option: Any) -> str:
    return f"k{option[0]}_e{option[1]}" if isinstance(option, tuple) else str(option)
