"""Single-path weight-sharing search (SPOS, ENAS) on nb201 and darts, as ask/tell strategies.

Both train the space's supernet (``space.supernet()``: :mod:`search_spaces.nb201_supernet`, or DARTS' search
network :mod:`search_spaces.darts_supernet` at the space's channels and cells) one fixed path per batch
(``net(x, arch=...)``: only that path's ops run, so only their weights get a gradient and move) and reuse
the data halves, recipe, checkpoint and resume machinery of :mod:`nas.strategies.oneshot`: weights train on
the first half of the class-balanced ``train_size`` subset with the DARTS recipe's SGD (lr 0.025 cosine to
0.001, momentum 0.9, weight decay 3e-4, gradient norm clipped at 5, batches of 64 with crop and flip); the
second half scores paths. Every epoch draws its data order, augmentation and paths from generators seeded
by (seed, epoch), and ``supernet.pt`` (beside the study's ``optuna.journal``) holds the whole state after
each epoch, so an interrupted and resumed run ends as an uninterrupted one (bit for bit on CPU).
``param_free_edges`` counts the path's parameter-free ops as the space's supernet does (nb201: of its 6
edges; darts: of the genotype's 16).

* ``spos`` (Guo et al. 2020, single-path one-shot). Phase 1 trains the supernet for ``epochs`` epochs
  with one uniformly drawn path per batch: on nb201 an op per edge, ``none`` included (NAS-Bench-201's
  SPOS); on darts the space's own uniform ``sample`` (per node 2 different inputs and an op for each, no
  ``none``), from a numpy generator seeded by the epoch's torch generator. Phase 2 is a
  search over architectures scored by inherited-weight accuracy: ``evaluate(arch)`` gives ``acc_ws``, the
  accuracy (%) of the path on the held-out half in eval mode after BN recalibration (running statistics
  reset, then ``bn_batches`` fixed training batches forwarded in train mode with the path fixed: the same
  seeded images for every architecture, so a score is a pure function of the weights and the arch;
  ``val_size`` > 0 scores on a seeded subset of the held-out half, for speed).
  Ask/tell: epochs are not trials. The first ``ask`` trains the epochs the checkpoint lacks (none on a
  resume past phase 1); every ``ask`` proposes cells of an inner :class:`RegularizedEvolution`
  (``population_size``, ``sample_size``; the space's ``mutate``) that ``tell`` feeds with the scores, so
  the study's budget is the number of architectures phase 2 scores. ``final`` is the told cell of the best
  first objective. A study given no budget scores ``default_budget`` (100) cells in phase 2.
* ``enas`` (Pham et al. 2018). An LSTM controller (``hidden`` units) emits the architecture as a sequence
  of categorical decisions (:func:`controller_decisions`), each step fed the embedding of the previous
  choice; logits are ``2.5 * tanh(h / 5)`` (NAS-Bench-201's ENAS settings). On nb201 the decisions are
  the six edge ops in order; on darts they follow ENAS's micro search space: per cell type (normal, then
  reduce) and node, two inputs among the node's earlier states (the second masked to differ from the
  first, as a darts node takes two different inputs), then an op (the space's 7, no ``none``) per input.
  (ENAS scores a node's inputs by attention over the earlier nodes' LSTM states; here a linear layer over
  state indices scores them, as it scores ops, which keeps one controller for both spaces.)
  Per epoch: one pass over the weight half, each batch on a path sampled from the controller;
  then one pass over the architecture half, one REINFORCE step per batch with reward = the sampled path's
  accuracy on that (unaugmented) batch, a moving-average baseline (``baseline_decay``) and an entropy
  bonus (``entropy_weight``); Adam at ``controller_lr``. ``ask(1)`` = one epoch, returning the
  controller's greedy (most likely) cell; :class:`~nas.strategies.Exhausted` after ``epochs``. After the
  last epoch ``final_samples`` cells are sampled from the controller and the one of highest ``acc_ws``
  is ``final`` (ENAS's derivation). ``acc_ws`` for ENAS is the oneshot module's: BN on batch statistics
  (the supernet keeps none), as ENAS scores its children. ``alpha.csv``/``alpha.png`` hold the greedy
  decode's probabilities per decision: nb201's op per edge; on darts one row per decision (e.g. ``normal
  node3 input_b``) over the columns ``input 0``..``input 4`` and the 7 ops, 0 where the step has no such
  option.

Example:
    >>> import search_spaces
    >>> space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
    >>> spos = SPOS(space, seed=0, data="cifar10_jpeg", epochs=10)  # doctest: +SKIP
    >>> (cell,) = spos.ask(1)                 # trains phase 1 first, then proposes  # doctest: +SKIP
    >>> spos.evaluate(space.to_string(cell))  # {'acc_ws': ..., 'param_free_edges': ...}  # doctest: +SKIP
    >>> darts = search_spaces.get("darts", channels=8, layers=5)
    >>> ENAS(darts, seed=0, data="cifar10_jpeg", epochs=10).ask(1)  # a DartsGenotype  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.datasets import augment, normalise
from nas.inherited import count_correct, recalibrate_bn
from nas.strategies import Values, register
from nas.strategies.evolution import RegularizedEvolution
from nas.strategies.oneshot import _derive, _Differentiable, _plain, _rss_mb, plot_alpha, write_history
from search_spaces import Arch, SearchSpace
from search_spaces.darts import CELL_TYPES as DARTS_CELL_TYPES
from search_spaces.darts import NODES as DARTS_NODES
from search_spaces.darts import OPS as DARTS_OPS
from search_spaces.darts_supernet import DartsSuperNet
from search_spaces.nb201 import EDGES, OPS
from search_spaces.nb201_supernet import NB201SuperNet

__all__ = ["DARTS_DECISIONS", "ENAS", "NB201_DECISIONS", "SPOS", "Controller", "Decision", "controller_decisions",
           "decode_choices", "track_running_stats"]

log = logging.getLogger(__name__)

_ARCH_OPTIONS = ("arch_lr", "arch_weight_decay", "warmup_epochs")
"""Recipe fields of the differentiable methods that a single-path method has no use for."""


def track_running_stats(net: nn.Module) -> nn.Module:
    """Give every BatchNorm of ``net`` running statistics (cumulative averages: ``momentum=None``), in place.

    The shared supernet normalises with batch statistics only; SPOS evaluates a path in eval mode on
    statistics recalibrated for that path, which needs the buffers. A cumulative average makes the
    recalibrated statistics the plain mean over the recalibration batches.
    """
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats, m.momentum = True, None
            m.register_buffer("running_mean", torch.zeros(m.num_features))
            m.register_buffer("running_var", torch.ones(m.num_features))
            m.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return net


def _param_free_edges(space: SearchSpace, arch: Arch) -> float:
    """The parameter-free ops of ``arch`` as the space's supernet counts them (nb201: of 6 edges, darts: of 16)."""
    net = DartsSuperNet if getattr(space, "name", None) == "darts" else NB201SuperNet
    return float(net.param_free_edges(arch))  # type: ignore[arg-type]


class _SinglePath(_Differentiable):
    """Weight steps on one fixed path per batch; the method's search lives in the subclass."""

    spaces = ("nb201", "darts")

    def __init__(self, space: SearchSpace, seed: int, storage: str | os.PathLike[str] | None,
                 method: dict[str, Any], options: dict[str, Any]) -> None:
        unused = [k for k in _ARCH_OPTIONS if k in options]
        if unused:
            raise ValueError(f"strategy {self.name!r} has no architecture parameters: option(s) "
                             f"{', '.join(unused)} do not apply")
        super().__init__(space, seed, storage, method, options)

    def _path_step(self, batch: tuple[torch.Tensor, torch.Tensor], path: Any) -> torch.Tensor:
        """One SGD step on the weights of ``path`` only; returns (loss sum, correct) for the log."""
        assert self._model is not None
        # set_to_none: ops off the path keep grad None, so SGD skips them (no momentum or weight decay).
        self._w_opt.zero_grad(set_to_none=True)
        logits = self._model(batch[0], arch=path)
        loss = F.cross_entropy(logits, batch[1])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._weights, self.recipe.grad_clip)
        self._w_opt.step()
        return torch.stack([loss.detach() * len(batch[1]), (logits.argmax(1) == batch[1]).sum()])

    def _weight_pass(self, epoch: int, gen: torch.Generator, draw: Any) -> tuple[float, float, float]:
        """One pass over the weight half, each batch on the path ``draw(gen)``; (loss, accuracy %, lr)."""
        assert self._model is not None
        r = self.recipe
        self._model.train()
        xw, yw = self._halves[0]
        order = torch.randperm(len(yw), generator=gen)
        bs = min(r.batch_size, len(yw))
        steps = len(yw) // bs
        lr = self._sched.get_last_lr()[0]
        sums = torch.zeros(2, device=self.device)
        for s in range(steps):
            idx = order[s * bs:(s + 1) * bs].to(self.device)
            batch = augment(normalise(xw[idx]), gen), yw[idx]
            sums += self._path_step(batch, draw(gen))
        self._sched.step()
        return float(sums[0]) / (steps * bs), 100.0 * float(sums[1]) / (steps * bs), lr


@register("spos")
class SPOS(_SinglePath):
    """Single-path one-shot (Guo et al. 2020): uniform single-path supernet training, then evolution over
    inherited-weight accuracy with BN recalibration.

    Example:
        >>> import search_spaces
        >>> space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
        >>> SPOS(space, seed=0, data="data.npz", epochs=2).recipe.epochs  # doctest: +SKIP
        2
    """

    name = "spos"
    default_budget = 100  # the study's budget counts the cells phase 2 scores, not supernet epochs

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1,
                 storage: str | os.PathLike[str] | None = None, population_size: int = 20, sample_size: int = 5,
                 bn_batches: int = 4, val_size: int = 0, **options: Any) -> None:
        if bn_batches < 1 or val_size < 0:
            raise ValueError(f"spos: need bn_batches >= 1 and val_size >= 0, got {bn_batches}, {val_size}")
        method = {"population_size": int(population_size), "sample_size": int(sample_size),
                  "bn_batches": int(bn_batches), "val_size": int(val_size)}
        super().__init__(space, seed, storage, method, options)
        self._evolution = RegularizedEvolution(space, seed=_derive(self.seed, 0, 6), n_objectives=n_objectives,
                                               population_size=population_size, sample_size=sample_size)
        self._told: list[tuple[Arch, Values]] = []

    # -- ask / tell ----------------------------------------------------------------------------------
    def ask(self, n: int) -> list[Arch]:
        """``n`` cells of the evolution (the supernet's missing epochs are trained first)."""
        self._train_supernet()
        return self._evolution.ask(n)

    def tell(self, archs: Sequence[Arch], values: Sequence[Values]) -> None:
        """Give the scores to the evolution."""
        self._evolution.tell(archs, values)
        self._told.extend((a, tuple(v)) for a, v in zip(archs, values, strict=True))

    def evaluate(self, arch: str) -> dict[str, float]:
        """``acc_ws`` (%) of ``arch`` on the trained supernet after BN recalibration, and its parameter-free edges."""
        if arch not in self._cache:
            self._train_supernet()
            self._setup()
            self._cache[arch] = self._score(self.space.from_string(arch))
        return dict(self._cache[arch])

    @property
    def final(self) -> Arch | None:
        """The told cell with the best first objective (the first such, in tell order), or None before any."""
        if not self._told:
            return None
        return max(self._told, key=lambda t: t[1][0])[0]  # max keeps the first of equal values

    # -- phase 1 -------------------------------------------------------------------------------------
    def _build(self) -> nn.Module:
        return track_running_stats(super()._build())

    def _uniform_path(self, gen: torch.Generator) -> Any:
        """A uniformly drawn path for the next batch, from the epoch's generator ``gen``."""
        if self.space.name == "nb201":  # an op index per edge, none included (nb201 runs have always drawn so)
            return torch.randint(len(OPS), (len(EDGES),), generator=gen).tolist()
        # The space's own sampler keeps its distribution in one place; seeding it from ``gen`` keeps every
        # draw a function of (seed, epoch), so a resumed epoch draws the same genotypes.
        return self.space.sample(np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen))))

    def _train_supernet(self) -> None:
        while len(self.history) < self.recipe.epochs:
            self._train_epoch(len(self.history))

    def _train_epoch(self, epoch: int) -> None:
        """One epoch of uniform single-path training, then the checkpoint and ``oneshot.csv``."""
        self._setup()
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(_derive(self.seed, epoch, 2))
        loss, acc, lr = self._weight_pass(epoch, gen, self._uniform_path)
        self.history.append({"epoch": epoch, "train_loss": loss, "train_acc": acc, "lr": lr,
                             "seconds": time.perf_counter() - start, "rss_mb": _rss_mb()})
        log.info("spos epoch %d/%d: loss %.3f, train acc %.2f%% (%.1f s)", epoch + 1, self.recipe.epochs, loss,
                 acc, self.history[-1]["seconds"])
        if self.run_dir is not None:
            self._write_checkpoint()
            self._write_reports()

    # -- phase 2 scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def _recalibrate(self, arch: Arch) -> None:
        """Reset BN running statistics and re-estimate them for ``arch`` on fixed training batches."""
        assert self._model is not None
        model, ebs = self._model, self.recipe.eval_batch_size
        xw = self._halves[0][0]
        # The same seeded images for every arch: a score depends on the weights and the arch alone.
        gen = torch.Generator().manual_seed(_derive(self.seed, 0, 4))
        idx = torch.randperm(len(xw), generator=gen)[:self.method["bn_batches"] * ebs].to(self.device)
        batches = (normalise(xw[idx[i:i + ebs]]) for i in range(0, len(idx), ebs))
        recalibrate_bn(model, batches, forward=lambda x: model(x, arch=arch))

    @torch.no_grad()
    def _score(self, arch: Arch) -> dict[str, float]:
        """Accuracy (%) of the path ``arch`` on the held-out half, in eval mode after BN recalibration."""
        assert self._model is not None
        self._recalibrate(arch)
        model, ebs = self._model, self.recipe.eval_batch_size
        x, y = self._halves[1]
        if self.method["val_size"]:  # a seeded subset (the half lists its images class by class)
            gen = torch.Generator().manual_seed(_derive(self.seed, 0, 3))
            keep = torch.randperm(len(y), generator=gen)[:self.method["val_size"]].to(self.device)
            x, y = x[keep], y[keep]
        model.eval()
        correct = count_correct(lambda b: model(normalise(b), arch=arch), x, y, ebs)
        model.train()
        return {"acc_ws": 100.0 * correct / len(y), "param_free_edges": _param_free_edges(self.space, arch)}

    def _write_reports(self) -> None:
        """``oneshot.csv``: per supernet epoch, loss, accuracy, lr, seconds and memory."""
        assert self.run_dir is not None
        write_history(self.run_dir, self.history, ["epoch", "train_loss", "train_acc", "lr", "seconds", "rss_mb"])


@dataclass(frozen=True)
class Decision:
    """One categorical step of the :class:`Controller`: the first ``size`` options of the vocabulary ``vocab``.

    Steps of one vocabulary share its embedding rows and output logits (every darts node picks its inputs
    among state indices 0, 1, ...). ``differ`` names an earlier step of the same vocabulary whose choice
    this step may not repeat: it is masked out (probability 0), as a darts node takes two different inputs.
    """

    vocab: str
    size: int
    differ: int | None = None


NB201_DECISIONS: tuple[Decision, ...] = tuple(Decision("op", len(OPS)) for _ in EDGES)
"""nb201: the op of each of the six edges, in the space's edge order."""


def _darts_decisions() -> tuple[Decision, ...]:
    out: list[Decision] = []
    for _ in DARTS_CELL_TYPES:
        for k in range(DARTS_NODES):
            first = len(out)
            # ENAS's micro controller: a node's two inputs first, then the op applied to each.
            out += [Decision("input", k + 2), Decision("input", k + 2, differ=first),
                    Decision("op", len(DARTS_OPS)), Decision("op", len(DARTS_OPS))]
    return tuple(out)


DARTS_DECISIONS: tuple[Decision, ...] = _darts_decisions()
"""darts: per cell type (normal, reduce) and node 2..5: input a, input b (not a), op on a, op on b (32 steps)."""
DARTS_STEP_NAMES: tuple[str, ...] = tuple(f"{t} node{k + 2} {step}" for t in DARTS_CELL_TYPES for k in range(DARTS_NODES)
                                          for step in ("input_a", "input_b", "op_a", "op_b"))
"""A name per darts decision (the rows of ENAS's ``alpha.csv`` on darts)."""
DARTS_OPTION_NAMES: tuple[str, ...] = (*(f"input {i}" for i in range(DARTS_NODES + 1)), *DARTS_OPS)
"""The controller's options on darts, vocabulary by vocabulary (the columns of ``alpha.csv``)."""


def controller_decisions(space: SearchSpace) -> tuple[Decision, ...]:
    """The decisions ENAS's controller takes for an architecture of ``space`` (nb201 or darts)."""
    name = getattr(space, "name", None)
    if name == "nb201":
        return NB201_DECISIONS
    if name == "darts":
        return DARTS_DECISIONS
    raise ValueError(f"ENAS's controller emits architectures of the spaces nb201, darts, not {name!r}")


def decode_choices(space: SearchSpace, choices: Sequence[int]) -> Arch:
    """The architecture of ``space`` that the controller's ``choices`` (one per decision) describe."""
    decisions = controller_decisions(space)
    if len(choices) != len(decisions):
        raise ValueError(f"{space.name} needs {len(decisions)} controller choices, got {len(choices)}")
    if space.name == "nb201":
        return tuple(OPS[int(i)] for i in choices)  # type: ignore[return-value]
    it = iter(int(c) for c in choices)
    cells = []
    for _ in DARTS_CELL_TYPES:
        entries: list[tuple[str, int]] = []
        for _node in range(DARTS_NODES):
            a, b, op_a, op_b = next(it), next(it), next(it), next(it)
            entries += [(DARTS_OPS[op_a], a), (DARTS_OPS[op_b], b)]
        cells.append(entries)
    # The space's own normalisation (each node's pair sorted by input), so strings equal the space's.
    return space.make(*cells)  # type: ignore[attr-defined,no-any-return]


class Controller(nn.Module):
    """ENAS's LSTM controller over a sequence of categorical decisions: step k embeds decision k-1's choice
    and emits decision k's logits. The default is NAS-Bench-201's: ``n_edges`` steps of ``n_ops`` ops;
    ``decisions`` (:class:`Decision`) gives any other sequence, e.g. :data:`DARTS_DECISIONS`.

    One embedding table and one output layer span all vocabularies (a step reads the rows and logits of
    its own), so the NAS-Bench-201 controller has exactly the parameters it always had.

    Example:
        >>> c = Controller(hidden=64, seed=0)
        >>> ops, log_prob, entropy, probs = c.sample(torch.Generator().manual_seed(0))
        >>> len(ops), tuple(probs.shape)
        (6, (6, 5))
        >>> d = Controller(hidden=64, decisions=DARTS_DECISIONS)
        >>> choices, *_, probs = d.sample(torch.Generator().manual_seed(0))
        >>> len(choices), tuple(probs.shape)
        (32, (32, 12))
    """

    def __init__(self, hidden: int = 64, n_edges: int = len(EDGES), n_ops: int = len(OPS),
                 temperature: float = 5.0, tanh_constant: float = 2.5, seed: int = 0,
                 decisions: Sequence[Decision] | None = None) -> None:
        super().__init__()
        self.decisions = (tuple(decisions) if decisions is not None
                          else tuple(Decision("op", n_ops) for _ in range(n_edges)))
        sizes: dict[str, int] = {}  # per vocabulary its largest step, in order of first use
        for k, d in enumerate(self.decisions):
            if d.size < 1 or (d.differ is not None and not (0 <= d.differ < k and d.size >= 2
                                                             and self.decisions[d.differ].vocab == d.vocab)):
                raise ValueError(f"decision {k} ({d}) needs size >= 1, and a 'differ' that names an earlier step "
                                 "of the same vocabulary with size >= 2")
            sizes[d.vocab] = max(sizes.get(d.vocab, 0), d.size)
        offsets = dict(zip(sizes, itertools.accumulate([0, *sizes.values()]), strict=False))
        self.n_options = sum(sizes.values())
        self._offsets = [offsets[d.vocab] for d in self.decisions]
        self.temperature, self.tanh_constant = temperature, tanh_constant
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(self.n_options + 1, hidden)  # the last row is the start token
            self.lstm = nn.LSTMCell(hidden, hidden)
            self.head = nn.Linear(hidden, self.n_options)
            for p in self.parameters():  # ENAS initialises the controller uniformly in [-0.1, 0.1]
                nn.init.uniform_(p, -0.1, 0.1)

    def sample(self, generator: torch.Generator | None = None, greedy: bool = False
               ) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Choices drawn (or the argmax when ``greedy``), their summed log-probability and entropy, and the
        per-step probabilities (steps, options: each step's in its vocabulary's columns, 0 elsewhere)."""
        token = torch.tensor([self.embed.num_embeddings - 1])
        state = None
        choices: list[int] = []
        log_prob, entropy, probs = torch.zeros(()), torch.zeros(()), []
        for d, start in zip(self.decisions, self._offsets, strict=True):
            h, c = self.lstm(self.embed(token), state)
            state = (h, c)
            logits = self.tanh_constant * torch.tanh(self.head(h)[0, start:start + d.size] / self.temperature)
            taken = None
            if d.differ is not None:
                taken = torch.arange(d.size) == choices[d.differ]
                logits = logits.masked_fill(taken, -math.inf)
            logp = F.log_softmax(logits, dim=-1)
            p = logp.exp()
            choice = int(p.argmax()) if greedy else int(torch.multinomial(p.detach(), 1, generator=generator))
            choices.append(choice)
            log_prob = log_prob + logp[choice]
            # A masked option has p = 0 and log p = -inf; it adds 0 to the entropy, not 0 * -inf = NaN.
            entropy = entropy - (p * (logp if taken is None else logp.masked_fill(taken, 0.0))).sum()
            probs.append(F.pad(p, (start, self.n_options - start - d.size)))
            token = torch.tensor([start + choice])
        return choices, log_prob, entropy, torch.stack(probs)


@register("enas")
class ENAS(_SinglePath):
    """ENAS (Pham et al. 2018): an LSTM controller trained by REINFORCE on a shared-weight supernet's paths.

    Example:
        >>> import search_spaces
        >>> space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
        >>> ENAS(space, seed=0, data="data.npz", epochs=2).ask(1)  # doctest: +SKIP
        >>> darts = search_spaces.get("darts", channels=8, layers=5)
        >>> ENAS(darts, seed=0, data="data.npz", epochs=2).ask(1)  # [DartsGenotype(...)]  # doctest: +SKIP
    """

    name = "enas"

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1,
                 storage: str | os.PathLike[str] | None = None, hidden: int = 64, controller_lr: float = 1e-3,
                 entropy_weight: float = 1e-4, baseline_decay: float = 0.99, final_samples: int = 20,
                 **options: Any) -> None:
        if hidden < 1 or final_samples < 1 or not 0 <= baseline_decay < 1:
            raise ValueError(f"enas: need hidden >= 1, final_samples >= 1 and 0 <= baseline_decay < 1; got "
                             f"{hidden}, {final_samples}, {baseline_decay}")
        method = {"hidden": int(hidden), "controller_lr": float(controller_lr),
                  "entropy_weight": float(entropy_weight), "baseline_decay": float(baseline_decay),
                  "final_samples": int(final_samples)}
        self._final: dict[str, Any] | None = None
        super().__init__(space, seed, storage, method, options)

    @property
    def final(self) -> Arch | None:
        """The best of ``final_samples`` controller samples after the last epoch; before it, the greedy cell."""
        if self._final is not None:
            return self.space.from_string(self._final["arch"])
        return super().final

    # -- training ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        if self._model is not None:
            return
        stored = self._stored
        super()._setup()
        # The controller is tiny and samples from CPU generators: it stays on the CPU whatever the device.
        self._controller = Controller(self.method["hidden"], seed=_derive(self.seed, 0, 7),
                                      decisions=controller_decisions(self.space))
        self._c_opt = torch.optim.Adam(self._controller.parameters(), lr=self.method["controller_lr"])
        self._baseline: float | None = None
        if stored is not None:
            self._controller.load_state_dict(stored["controller"])
            self._c_opt.load_state_dict(stored["c_opt"])
            self._baseline = stored["baseline"]

    def _train_epoch(self, epoch: int) -> None:
        """Shared weights on controller-sampled paths, then REINFORCE on the other half; checkpoint."""
        self._setup()
        assert self._model is not None
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(_derive(self.seed, epoch, 2))

        def draw(g: torch.Generator) -> Arch:
            with torch.no_grad():
                return decode_choices(self.space, self._controller.sample(g)[0])

        loss, acc, lr = self._weight_pass(epoch, gen, draw)
        c_loss, reward, entropy = self._controller_pass(gen)
        with torch.no_grad():
            choices, _, _, probs = self._controller.sample(greedy=True)
        genotype = decode_choices(self.space, choices)
        record = {
            "epoch": epoch, "genotype": _plain(genotype), "arch": self.space.to_string(genotype),
            **self._score(genotype), "train_loss": loss, "train_acc": acc, "arch_loss": c_loss,
            "arch_acc": 100.0 * reward, "lr": lr, "tau": None, "alpha": probs.tolist(), "beta": [],
            "baseline": self._baseline, "entropy": entropy,
        }
        self._cache.setdefault(record["arch"], self._record_scores(record))
        if epoch == self.recipe.epochs - 1:
            self._final = self._derive_final()
        record.update(seconds=time.perf_counter() - start, rss_mb=_rss_mb())
        self.history.append(record)
        log.info("enas epoch %d/%d: %s acc_ws %.2f%%, reward %.3f (%.1f s)", epoch + 1, self.recipe.epochs,
                 record["arch"], record["acc_ws"], reward, record["seconds"])
        if self.run_dir is not None:
            self._write_checkpoint()
            self._write_reports()

    def _controller_pass(self, gen: torch.Generator) -> tuple[float, float, float]:
        """One REINFORCE step per batch of the architecture half; (mean loss, mean reward, mean entropy)."""
        assert self._model is not None
        r, m = self.recipe, self.method
        xa, ya = self._halves[1]
        order = torch.randperm(len(ya), generator=gen)
        bs = min(r.batch_size, len(ya))
        steps = len(ya) // bs
        totals = [0.0, 0.0, 0.0]
        for s in range(steps):
            idx = order[s * bs:(s + 1) * bs].to(self.device)
            choices, log_prob, entropy, _ = self._controller.sample(gen)
            path = decode_choices(self.space, choices)
            with torch.no_grad():  # the reward: the sampled child's accuracy on this batch (batch-stat BN)
                reward = float((self._model(normalise(xa[idx]), arch=path).argmax(1) == ya[idx]).float().mean())
            if self._baseline is None:
                self._baseline = reward
            loss = -(reward - self._baseline) * log_prob - m["entropy_weight"] * entropy
            self._baseline = m["baseline_decay"] * self._baseline + (1 - m["baseline_decay"]) * reward
            self._c_opt.zero_grad(set_to_none=True)
            loss.backward()
            self._c_opt.step()
            totals[0] += float(loss.detach())
            totals[1] += reward
            totals[2] += float(entropy.detach())
        return totals[0] / steps, totals[1] / steps, totals[2] / steps

    def _derive_final(self) -> dict[str, Any]:
        """ENAS's derivation: ``final_samples`` cells from the controller, the best by ``acc_ws`` wins."""
        gen = torch.Generator().manual_seed(_derive(self.seed, self.recipe.epochs, 5))
        samples = []
        for _ in range(self.method["final_samples"]):
            with torch.no_grad():
                genotype = decode_choices(self.space, self._controller.sample(gen)[0])
            arch = self.space.to_string(genotype)
            if arch not in self._cache:
                self._cache[arch] = self._score(genotype)
            samples.append((arch, _plain(genotype), self._cache[arch]["acc_ws"]))
        arch, genotype, acc = max(samples, key=lambda s: s[2])  # the first of equal scores
        return {"arch": arch, "genotype": genotype, "acc_ws": acc,
                "samples": [[a, s] for a, _, s in samples]}

    # -- storage -------------------------------------------------------------------------------------
    def _alpha_labels(self) -> tuple[Sequence[str], Sequence[str]]:
        """nb201: the supernet's edges and ops (a step per edge); darts: the 32 decisions and their options."""
        if self.space.name == "darts":
            return DARTS_STEP_NAMES, DARTS_OPTION_NAMES
        return super()._alpha_labels()

    def _plot_alpha(self, path: Path, edges: Sequence[str], ops: Sequence[str]) -> None:
        plot_alpha(self.history, path, title=self.name, edges=edges, ops=ops, decisions=self.space.name == "darts")

    def _extra_state(self) -> dict[str, Any]:
        return {"controller": self._controller.state_dict(), "c_opt": self._c_opt.state_dict(),
                "baseline": self._baseline, "final": self._final}

    def _read_checkpoint(self) -> None:
        super()._read_checkpoint()
        assert self._stored is not None
        self._final = self._stored.get("final")
        for arch, acc in (self._final or {}).get("samples", []):
            self._cache.setdefault(arch, {"acc_ws": acc, "param_free_edges": _param_free_edges(
                self.space, self.space.from_string(arch))})
