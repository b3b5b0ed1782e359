"""Differentiable one-shot search (DARTS, PC-DARTS, GDAS) on nb201 and darts, as ask/tell strategies.

A differentiable method owns its epoch loop but records each epoch's genotype as a trial of the study:
``ask(1)`` trains the space's supernet (``space.supernet()``: :mod:`search_spaces.nb201_supernet`, or DARTS'
search network :mod:`search_spaces.darts_supernet`) for one epoch and returns the cell derived from alpha;
after ``epochs`` epochs ``ask`` raises :class:`~nas.strategies.Exhausted`. Each
derived cell's score comes from :meth:`evaluate`: ``acc_ws``, the accuracy (%) of the supernet with that
cell's ops fixed on the architecture half of the data, and ``param_free_edges`` (none/skip/pool edges),
computed right after the epoch and looked up afterwards. (Discretisation gap: a DARTS supernet is trained
as a mixture, so a single path cut out of it scores far below the mixture; ``arch_acc`` in ``oneshot.csv``
is the mixture's accuracy on the architecture batches.)

Recipe (DARTS, Liu et al. 2019, sec. 3.1 and its CIFAR-10 search; NAS-Bench-201's DARTS baselines use the
same): the training split's class-balanced ``train_size`` subset is halved (:func:`nas.datasets.split_in_two`);
weights train on the first half with SGD (lr 0.025 cosine to 0.001 over the epochs, momentum 0.9, weight
decay 3e-4, gradient norm clipped at 5), architecture parameters on the second with Adam (lr ``arch_lr``
3e-4, betas (0.5, 0.999), weight decay 1e-3); batches of 64 with random crop and flip on both halves.
Each step first updates the architecture on an architecture batch, then the weights on a weight batch.

* ``darts``: ``order=1`` uses the gradient of the validation loss at the current weights; ``order=2`` the
  unrolled gradient of DARTS eq. 7, its Hessian-vector product by finite differences (eq. 8).
* ``pcdarts`` (Xu et al. 2020): partial channels (``K=4``: a quarter of each edge's channels through its
  ops), edge normalisation (beta), and alpha frozen for the first ``warmup_epochs=15`` epochs, as the paper.
* ``gdas`` (Dong & Yang 2019): one op per edge drawn by Gumbel-max each step, only that op computed, and
  straight-through gradients; the temperature falls linearly from ``tau_max=10`` to ``tau_min=0.1``.

Derivation on nb201 (``derive``): ``darts`` takes each edge's op of largest alpha with ``none`` included
(``argmax``, as NAS-Bench-201's DARTS baselines); ``pcdarts`` the largest other than ``none`` (``no_none``,
the rule of PC-DARTS' and DARTS' own code), because a partial-channel edge always passes its other
``(K-1)/K`` channels: the supernet never runs without that edge, and at arch lr 1.5e-3 ``none`` wins edges
by small margins and cuts cells off (README, one-shot results). Either method takes either rule; gdas
derives by argmax, and the darts space always by DARTS' rule.

Proxy pruning (``prune=PROXY keep=K``, darts/pcdarts/gdas on nb201): before the first epoch each (edge, op)
is scored by a zero-cost proxy as the mean rank of ``prune_cells`` standalone random cells having that op on
that edge (:func:`prune_scores`), and each edge keeps its ``K`` best ops: the others weigh 0 in the mixture
(alpha at -inf before the softmax), are not computed, never drawn by GDAS and never derived. The mask and
scores are part of the checkpoint (and ``prune.csv``); the options are part of its fingerprint.

Run storage: the study hands a strategy that sets ``uses_storage`` a file path inside the run directory;
the strategy writes beside it ``supernet.pt`` (model, alpha, optimizers, scheduler, epoch, and every
epoch's genotype and scores: atomic, read with ``weights_only=True``), ``alpha.csv`` (softmax(alpha) per
epoch and edge), ``oneshot.csv`` (per epoch: cell, scores, losses, seconds, memory) and ``alpha.png``.
On resume the study replays its logged asks: an epoch the checkpoint already holds is answered from it
without training, and training goes on live from the checkpoint's epoch. Every epoch draws its data order,
augmentation and Gumbel noise from generators seeded by (seed, epoch), so an interrupted and resumed run
ends with the same genotypes and alpha as an uninterrupted one (bit for bit on CPU; cuDNN may differ).

Example:
    >>> import search_spaces
    >>> space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
    >>> darts = DARTS(space, seed=0, data="cifar10_jpeg", epochs=50, arch_lr=1.5e-3)  # doctest: +SKIP
    >>> (cell,) = darts.ask(1)                 # one epoch of supernet training  # doctest: +SKIP
    >>> darts.evaluate(space.to_string(cell))  # {'acc_ws': ..., 'param_free_edges': ...}  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nas.datasets import ImageData, augment, balanced_subset, load_split, normalise, split_in_two
from nas.errors import ResumeConflict
from nas.inherited import count_correct
from nas.registry import check_options
from nas.strategies import Exhausted, Values, register
from search_spaces import Arch, SearchSpace
from search_spaces.nb201 import EDGES, OPS
from search_spaces.nb201_supernet import Sample, gumbel_sample

__all__ = ["DARTS", "GDAS", "PCDARTS", "Recipe"]

log = logging.getLogger(__name__)

CHECKPOINT = "supernet.pt"
DERIVE_RULES = ("argmax", "no_none")
"""How DARTS and PC-DARTS derive an nb201 cell from alpha: with ``none`` among the candidates, or without."""
FORMAT = 1
"""Version of the checkpoint layout; a checkpoint of another version is refused on resume."""

PLOT_EVERY = 5
"""alpha.png is redrawn after the first epoch, every this many epochs and after the last."""


@dataclass(frozen=True)
class Recipe:
    """Data and training settings shared by the differentiable methods (defaults: DARTS's search recipe).

    ``data`` is a folder with ``train/`` class folders or an ``.npz`` (:func:`nas.datasets.load_split`);
    ``train_size`` images of its training split (class-balanced, seeded) are halved into weight and
    architecture halves (10000: 5k/5k). ``device`` "" picks CUDA when available.

    ``prune`` (a proxy name, nb201 only): before the first epoch, keep the ``keep`` best ops of each edge by
    that zero-cost proxy and mask the others out of the mixture (see :func:`prune_scores`); ``prune_cells``
    random cells (a multiple of 5) are scored for it. "" trains the full mixture.
    """

    data: str = ""
    train_size: int = 10000
    epochs: int = 50
    batch_size: int = 64
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    warmup_epochs: int = 0
    eval_batch_size: int = 256
    device: str = ""
    prune: str = ""
    keep: int = 5
    prune_cells: int = 50


class _Differentiable:
    """Ask/tell over a supernet's epochs; subclasses set the method (see the module docstring)."""

    name = "oneshot"
    uses_storage = True  # the study passes a path in the run directory: the checkpoint and plots go there
    asynchronous = False
    one_shot = True  # trains on data: suites that drive strategies on lookup tables leave it out
    default_epochs = Recipe.epochs  # a study's default budget: at most one new cell per epoch
    default_objectives = ("acc_ws",)
    spaces: tuple[str, ...] = ("nb201",)  # spaces whose supernet this method's forward passes fit
    prunable = False  # whether the method trains a mixture that ``prune=PROXY`` can mask (DARTS, PC-DARTS, GDAS)
    pruning: dict[str, Any] | None = None  # proxy scores per edge and op, and the mask kept (with prune=)

    def __init__(self, space: SearchSpace, seed: int, storage: str | os.PathLike[str] | None,
                 method: dict[str, Any], options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(Recipe)})
        if unknown:
            valid = ", ".join([f"{k}={v!r}" for k, v in method.items()]
                              + [f"{f.name}={f.default!r}" for f in dataclasses.fields(Recipe)])
            raise ValueError(f"strategy {self.name!r} has no option {', '.join(map(repr, unknown))}; valid: {valid}")
        check_options(f"strategy {self.name!r}", Recipe, options)
        self.recipe = Recipe(**options)
        if not self.recipe.data:
            raise ValueError(f"strategy {self.name!r} trains a supernet and needs data=DIR (a folder with train/ "
                             "class folders, e.g. ../shared/data/cifar10_jpeg) or data=FILE.npz")
        if getattr(space, "name", None) not in self.spaces:
            raise ValueError(f"strategy {self.name!r} searches the space(s) {', '.join(self.spaces)}, not "
                             f"{getattr(space, 'name', space)!r}")
        if self.recipe.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.recipe.epochs}")
        if self.recipe.prune and not self.prunable:
            raise ValueError(f"strategy {self.name!r} has no op mixture to prune; prune= applies to darts, pcdarts "
                             "and gdas")
        if self.recipe.prune:
            import proxies

            proxies.get(self.recipe.prune)  # an unknown proxy fails here, not after the data is loaded
            if getattr(space, "name", None) != "nb201":
                raise ValueError(f"prune={self.recipe.prune!r}: op pruning is implemented for the nb201 supernet only")
            if not 1 <= self.recipe.keep <= len(OPS) or self.recipe.prune_cells < len(OPS) \
                    or self.recipe.prune_cells % len(OPS):
                raise ValueError(f"prune needs 1 <= keep <= {len(OPS)} (got {self.recipe.keep}) and prune_cells a "
                                 f"positive multiple of {len(OPS)} (got {self.recipe.prune_cells})")
        self.pruning = None
        self.space, self.seed, self.method = space, int(seed), dict(method)
        self.run_dir = Path(storage).parent if storage is not None else None
        self.device = torch.device(self.recipe.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.history: list[dict[str, Any]] = []  # one record per trained epoch, in the checkpoint
        self._asked = 0
        self._cache: dict[str, dict[str, float]] = {}
        self._model: Any = None  # the space's supernet (NB201SuperNet or DartsSuperNet), built lazily
        self._stored: dict[str, Any] | None = None  # a checkpoint read but not yet loaded into a model
        if self.run_dir is not None and (self.run_dir / CHECKPOINT).is_file():
            self._read_checkpoint()

    # -- ask / tell ----------------------------------------------------------------------------------
    def ask(self, n: int) -> list[Arch]:
        """The derived cell after each of the next ``n`` epochs (trained now, or read from the checkpoint)."""
        out: list[Arch] = []
        while len(out) < n and self._asked < self.recipe.epochs:
            if self._asked >= len(self.history):
                self._train_epoch(len(self.history))
            out.append(self.space.from_string(self.history[self._asked]["arch"]))
            self._asked += 1
        if not out:
            raise Exhausted(f"{self.name}: all {self.recipe.epochs} epochs are trained")
        return out

    def tell(self, archs: Sequence[Arch], values: Sequence[Values]) -> None:
        """The supernet learns from its own data, not from the study's values."""

    def evaluate(self, arch: str) -> dict[str, float]:
        """``acc_ws`` (%) of the supernet with ``arch``'s ops fixed, and its count of parameter-free edges."""
        if arch not in self._cache:  # a cell no epoch derived: score it on the supernet as it is now
            self._setup()
            self._cache[arch] = self._score(self.space.from_string(arch))
        return dict(self._cache[arch])

    @property
    def final(self) -> Arch | None:
        """The cell derived after the last trained epoch (the method's answer), or None before any."""
        return self.space.from_string(self.history[-1]["arch"]) if self.history else None

    # -- the method's pieces (overridden per method) -------------------------------------------------
    def _build(self) -> torch.nn.Module:
        return self.space.supernet(seed=_derive(self.seed, 0, 1))  # type: ignore[attr-defined]

    def _sample(self, epoch: int, generator: torch.Generator) -> Sample | None:
        """A Gumbel draw for the next forward (GDAS), or None for the softmax mixture."""
        return None

    def _tau(self, epoch: int) -> float | None:
        return None

    def _genotype(self, model: Any) -> Any:
        """The cell the supernet's architecture state derives now (the space's supernet rule)."""
        return model.genotype()

    def _upgrade_fingerprint(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's fingerprint as this version writes it (options added since default to what older
        runs did)."""
        return stored

    # -- training ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Load the data halves, build the supernet and its optimizers, restore a read checkpoint."""
        if self._model is not None:
            return
        r = self.recipe
        data = balanced_subset(load_split(r.data, "train"), r.train_size, self.seed)
        self._check_data(data.x)
        self._halves = tuple(_to(h, self.device) for h in split_in_two(data, self.seed))
        if self.run_dir is not None:
            # The first alpha.png loads matplotlib (~70 MB): load it now, so that the per-epoch RSS measures
            # training alone and flat memory means flat (it fell between the first two epochs' readings).
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        model = self._build().to(self.device)
        self._weights, self._arch = model.weight_parameters(), model.arch_parameters()
        self._w_opt = torch.optim.SGD(self._weights, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
        self._a_opt = self._arch_optimizer()
        self._sched = torch.optim.lr_scheduler.CosineAnnealingLR(self._w_opt, T_max=r.epochs, eta_min=r.lr_min)
        if self.recipe.prune:
            stored = self._stored.get("pruning") if self._stored is not None else None
            self.pruning = stored if stored is not None else self._prune_ops()
            model.set_op_mask(torch.tensor(self.pruning["mask"], dtype=torch.bool))
        if self._stored is not None:
            model.load_state_dict(self._stored["model"])
            self._w_opt.load_state_dict(self._stored["w_opt"])
            self._a_opt.load_state_dict(self._stored["a_opt"])
            self._sched.load_state_dict(self._stored["sched"])
            self._stored = None  # its tensors now live in the model and optimizers
        self._model = model

    def _prune_ops(self) -> dict[str, Any]:
        """Score every (edge, op) by the proxy on standalone cells and keep the best ``keep`` ops per edge."""
        r = self.recipe
        xw, yw = self._halves[0]
        idx = torch.randperm(len(yw), generator=torch.Generator().manual_seed(_derive(self.seed, 0, 4)))[:64]
        idx = idx.to(yw.device)
        batch = proxies_batch(normalise(xw[idx]), yw[idx])
        start = time.perf_counter()
        scores, cells, values = prune_scores(self.space, batch, r.prune, r.prune_cells, _derive(self.seed, 0, 5),
                                             self.device)
        mask = keep_best(scores, r.keep)
        log.info("%s: pruned to %d ops per edge by %s over %d cells (%.1f s): %s", self.name, r.keep, r.prune,
                 r.prune_cells, time.perf_counter() - start,
                 "; ".join(",".join(o for o, m in zip(OPS, row, strict=True) if m) for row in mask))
        return {"proxy": r.prune, "keep": r.keep, "scores": scores, "mask": mask, "cells": cells, "values": values,
                "seconds": time.perf_counter() - start}

    def _check_data(self, x: torch.Tensor) -> None:
        """Raise when the training images cannot feed the space's networks."""
        if x.shape[1:] != tuple(self.space.input_shape):
            raise ValueError(f"data={self.recipe.data}: images of shape {tuple(x.shape[1:])}, but the space takes "
                             f"{tuple(self.space.input_shape)}")

    def _arch_optimizer(self) -> torch.optim.Optimizer:
        """Adam on the architecture parameters (DARTS' betas 0.5, 0.999)."""
        r = self.recipe
        return torch.optim.Adam(self._arch, lr=r.arch_lr, betas=(0.5, 0.999), weight_decay=r.arch_weight_decay)

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        """A normalised, augmented batch as the supernet takes it (the space's own input here)."""
        return x

    def _run_steps(self, epoch: int) -> dict[str, float | None]:
        """One epoch of alternating architecture and weight steps; its mean losses and accuracies."""
        assert self._model is not None
        r = self.recipe
        self._model.train()
        (xw, yw), (xa, ya) = self._halves
        gen = torch.Generator().manual_seed(_derive(self.seed, epoch, 2))
        order_w, order_a = torch.randperm(len(yw), generator=gen), torch.randperm(len(ya), generator=gen)
        bs = min(r.batch_size, len(yw), len(ya))
        steps = min(len(yw), len(ya)) // bs
        lr = self._sched.get_last_lr()[0]
        sums = torch.zeros(4, device=self.device)  # weight loss, weight correct, arch loss, arch correct
        for s in range(steps):
            iw = order_w[s * bs:(s + 1) * bs].to(self.device)
            ia = order_a[s * bs:(s + 1) * bs].to(self.device)
            bw = self._images(augment(normalise(xw[iw]), gen)), yw[iw]
            ba = self._images(augment(normalise(xa[ia]), gen)), ya[ia]
            if epoch >= r.warmup_epochs:
                sums[2:] += self._arch_step(ba, bw, lr, epoch, gen)
            sums[:2] += self._weight_step(bw, epoch, gen)
        self._sched.step()
        n, arch_steps = steps * bs, epoch >= r.warmup_epochs
        # None (an empty CSV cell) where there is no value: no arch step during warm-up.
        return {"train_loss": float(sums[0]) / n, "train_acc": 100.0 * float(sums[1]) / n,
                "arch_loss": float(sums[2]) / n if arch_steps else None,
                "arch_acc": 100.0 * float(sums[3]) / n if arch_steps else None, "lr": lr}

    def _train_epoch(self, epoch: int) -> None:
        """Train one epoch, derive the cell, score it, then checkpoint and write the run's files."""
        self._setup()
        start = time.perf_counter()
        record = {"epoch": epoch, **self._epoch_record(epoch, self._run_steps(epoch)),
                  "seconds": time.perf_counter() - start, "rss_mb": _rss_mb()}
        self.history.append(record)
        self._cache.setdefault(record["arch"], self._record_scores(record))
        log.info("%s epoch %d/%d: %s acc_ws %.2f%% (%.1f s)", self.name, epoch + 1, self.recipe.epochs,
                 record["arch"], record["acc_ws"], record["seconds"])
        if self.run_dir is not None:
            self._write_checkpoint()
            self._write_reports()

    def _epoch_record(self, epoch: int, losses: dict[str, float | None]) -> dict[str, Any]:
        """What an epoch's record holds besides its number, time and memory: the derived cell, its scores,
        the epoch's ``losses`` and the architecture state."""
        model = self._model
        assert model is not None
        genotype = self._genotype(model)
        return {
            "genotype": _plain(genotype), "arch": self.space.to_string(genotype),
            **self._score(genotype), **losses, "tau": self._tau(epoch),
            # One row of op weights per edge, cell types one after the other (darts: normal, then reduce).
            "alpha": model.op_weights().detach().cpu().reshape(-1, len(model.op_names)).tolist(),
            "beta": [] if model.edge_weights() is None else model.edge_weights().detach().cpu().flatten().tolist(),
        }

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], sample: Sample | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._model is not None
        logits = self._model(batch[0], sample=sample)
        return F.cross_entropy(logits, batch[1]), logits

    def _weight_step(self, batch: tuple[torch.Tensor, torch.Tensor], epoch: int,
                     gen: torch.Generator) -> torch.Tensor:
        """One SGD step of the weights on a weight batch; returns (loss sum, correct) for the log."""
        sample = self._sample(epoch, gen)
        if sample is not None:
            sample = (sample[0].detach(), sample[1])
        self._w_opt.zero_grad(set_to_none=True)
        loss, logits = self._loss(batch, sample)
        loss.backward(inputs=self._weights)
        torch.nn.utils.clip_grad_norm_(self._weights, self.recipe.grad_clip)
        self._w_opt.step()
        return torch.stack([loss.detach() * len(batch[1]), (logits.argmax(1) == batch[1]).sum()])

    def _arch_step(self, batch: tuple[torch.Tensor, torch.Tensor], train_batch: tuple[torch.Tensor, torch.Tensor],
                   lr: float, epoch: int, gen: torch.Generator) -> torch.Tensor:
        """One Adam step of the architecture parameters on an architecture batch (first order)."""
        loss, logits = self._loss(batch, self._sample(epoch, gen))
        grads = torch.autograd.grad(loss, self._arch, allow_unused=True)
        self._set_arch_grads(grads)
        self._a_opt.step()
        return torch.stack([loss.detach() * len(batch[1]), (logits.argmax(1) == batch[1]).sum()])

    def _set_arch_grads(self, grads: Sequence[torch.Tensor | None]) -> None:
        for p, g in zip(self._arch, grads, strict=True):
            p.grad = torch.zeros_like(p) if g is None else g

    @torch.no_grad()
    def _score(self, arch: Arch) -> dict[str, float]:
        """Accuracy (%) of the fixed path ``arch`` on the architecture half (batch statistics in BN)."""
        assert self._model is not None
        model = self._model
        return {"acc_ws": self._half_accuracy(lambda b: model(normalise(b), arch=arch)),
                "param_free_edges": float(self._model.param_free_edges(arch))}

    def _half_accuracy(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """Top-1 (%) of ``forward`` (a batch of raw images to logits) on the architecture half."""
        x, y = self._halves[1]
        # BN normalises with each batch's statistics, so a batch must mix the classes as training batches
        # do: image folders list their images class by class, and a one-class batch scores chance.
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(_derive(self.seed, 0, 3)))
        correct = count_correct(forward, x, y, self.recipe.eval_batch_size, order.to(self.device))
        return 100.0 * correct / len(y)

    # -- storage -------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        """Checkpoint entries beyond the supernet's (a subclass's controller or search state)."""
        return {}

    def _fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (everything but the device)."""
        recipe = {k: v for k, v in dataclasses.asdict(self.recipe).items() if k != "device"}
        s: Any = self.space
        if s.name == "nb201":  # the layout nb201 checkpoints have always had, so they stay resumable
            space = [s.num_classes, s.channels, s.cells_per_stage, list(s.input_shape)]
        else:
            space = [s.name, s.num_classes, s.channels, s.layers, list(s.input_shape)]
        if not self.recipe.prune:  # unpruned runs keep the fingerprint they always had (older runs resume)
            for k in ("prune", "keep", "prune_cells"):
                recipe.pop(k)
        return {"strategy": self.name, "seed": self.seed, "method": self.method, "recipe": recipe, "space": space}

    def _read_checkpoint(self) -> None:
        assert self.run_dir is not None
        path = self.run_dir / CHECKPOINT
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != FORMAT:
            raise ResumeConflict(f"{path}: checkpoint format {ckpt.get('format')!r}, expected {FORMAT}")
        if self._upgrade_fingerprint(ckpt["fingerprint"]) != self._fingerprint():
            raise ResumeConflict(f"{path} was trained with other settings ({ckpt['fingerprint']}) than these "
                                 f"({self._fingerprint()}); resume with the same ones or start a new run")
        self.history = list(ckpt["history"])
        for rec in self.history:
            if "arch" in rec:  # an epoch that derived a cell (SPOS's supernet epochs derive none)
                self._cache.setdefault(rec["arch"], self._record_scores(rec))
        self._stored = ckpt
        self.pruning = ckpt.get("pruning")  # known before the model is built (a run answered from its checkpoint)

    def _record_scores(self, record: dict[str, Any]) -> dict[str, float]:
        """The values an epoch's record holds for its derived cell (what ``evaluate`` answers)."""
        return {"acc_ws": record["acc_ws"], "param_free_edges": record["param_free_edges"]}

    def _write_checkpoint(self) -> None:
        assert self.run_dir is not None and self._model is not None
        state = {"format": FORMAT, "fingerprint": self._fingerprint(), "epoch": len(self.history),
                 "history": self.history, "model": self._model.state_dict(), "w_opt": self._w_opt.state_dict(),
                 "a_opt": self._a_opt.state_dict(), "sched": self._sched.state_dict(), **self._extra_state()}
        if self.pruning is not None:
            state["pruning"] = self.pruning
        # The data order, augmentation and Gumbel noise of an epoch come from generators seeded by
        # (seed, epoch), so no generator state is needed to continue at an epoch boundary.
        _atomic(self.run_dir / CHECKPOINT, lambda p: torch.save(state, p))

    def _alpha_labels(self) -> tuple[Sequence[str], Sequence[str]]:
        """Names of the rows (edges) and columns (ops) of an epoch's ``alpha`` in the reports."""
        assert self._model is not None
        return self._model.edge_names, self._model.op_names

    def _write_reports(self) -> None:
        """alpha.csv, oneshot.csv and alpha.png from the history (rewritten whole, atomically)."""
        assert self.run_dir is not None and self._model is not None
        edges, ops = self._alpha_labels()

        def alpha_csv(path: Path) -> None:
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["epoch", "edge", *ops])
                for rec in self.history:
                    for edge, row in zip(edges, rec["alpha"], strict=True):
                        w.writerow([rec["epoch"] + 1, edge, *(f"{v:.6f}" for v in row)])

        _atomic(self.run_dir / "alpha.csv", alpha_csv)
        if self.pruning is not None:
            def prune_csv(path: Path) -> None:
                assert self.pruning is not None
                with open(path, "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["edge", "op", f"{self.pruning['proxy']}_mean_rank", "kept"])
                    for edge, row, keep in zip(edges, self.pruning["scores"], self.pruning["mask"], strict=True):
                        for op, v, k in zip(ops, row, keep, strict=True):
                            w.writerow([edge, op, f"{v:.4f}", int(k)])

            _atomic(self.run_dir / "prune.csv", prune_csv)
        write_history(self.run_dir, self.history, ["epoch", "arch", "acc_ws", "param_free_edges", "train_loss",
                                                   "train_acc", "arch_loss", "arch_acc", "lr", "tau", "seconds",
                                                   "rss_mb"])
        n = len(self.history)
        if n == 1 or n % PLOT_EVERY == 0 or n == self.recipe.epochs:  # a plot costs ~0.3 s, an epoch may not
            _atomic(self.run_dir / "alpha.png", lambda p: self._plot_alpha(p, edges, ops))

    def _plot_alpha(self, path: Path, edges: Sequence[str], ops: Sequence[str]) -> None:
        """Draw ``alpha.png`` from the history (a subclass may draw its rows otherwise)."""
        plot_alpha(self.history, path, title=self.name, edges=edges, ops=ops)


@register("darts")
class DARTS(_Differentiable):
    """DARTS (Liu et al. 2019): softmax mixtures; ``order`` 1 (first order) or 2 (unrolled, eq. 7-8).

    ``derive`` (nb201): ``argmax`` derives each edge's op of largest alpha with ``none`` included, as
    NAS-Bench-201's DARTS baselines do; ``no_none`` the largest other than ``none``, as DARTS' own code
    does. The darts space always derives by DARTS' rule (``no_none``).
    """

    name = "darts"
    spaces = ("nb201", "darts")
    prunable = True
    default_derive = "argmax"

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1,
                 storage: str | os.PathLike[str] | None = None, order: int = 1, derive: str = "",
                 **options: Any) -> None:
        if order not in (1, 2):
            raise ValueError(f"darts: order must be 1 or 2, got {order!r}")
        super().__init__(space, seed, storage, {"order": int(order), "derive": self._derive_rule(space, derive)},
                         options)

    def _derive_rule(self, space: SearchSpace, derive: str) -> str:
        """The derivation rule to use: ``derive`` checked, or the method's default for the space."""
        if getattr(space, "name", None) == "darts":
            if derive not in ("", "no_none"):
                raise ValueError(f"{self.name}: the darts space derives cells by DARTS' rule (2 inputs per node, "
                                 f"each with its strongest op other than none): derive=no_none, got {derive!r}")
            return "no_none"
        rule = derive or self.default_derive
        if rule not in DERIVE_RULES:
            raise ValueError(f"{self.name}: derive must be one of {', '.join(DERIVE_RULES)}, got {derive!r}")
        return rule

    def _genotype(self, model: Any) -> Any:
        if getattr(self.space, "name", None) == "darts":
            return model.genotype()
        return model.genotype(exclude_none=self.method["derive"] == "no_none")

    def _upgrade_fingerprint(self, stored: dict[str, Any]) -> dict[str, Any]:
        # Runs from before ``derive`` existed derived by argmax on nb201 and by DARTS' rule on darts.
        if "derive" in stored.get("method", {}):
            return stored
        rule = "no_none" if getattr(self.space, "name", None) == "darts" else "argmax"
        return {**stored, "method": {**stored["method"], "derive": rule}}

    def _arch_step(self, batch: tuple[torch.Tensor, torch.Tensor], train_batch: tuple[torch.Tensor, torch.Tensor],
                   lr: float, epoch: int, gen: torch.Generator) -> torch.Tensor:
        if self.method["order"] == 1:
            return super()._arch_step(batch, train_batch, lr, epoch, gen)
        return self._unrolled_step(batch, train_batch, lr)

    def _unrolled_step(self, batch: tuple[torch.Tensor, torch.Tensor], train_batch: tuple[torch.Tensor, torch.Tensor],
                       lr: float) -> torch.Tensor:
        """Second-order step: grad_a L_val(w', a) - lr * (grad_a L_train(w+) - grad_a L_train(w-)) / (2 eps)."""
        weights, arch = self._weights, self._arch
        wd = self.recipe.weight_decay
        backup = [w.detach().clone() for w in weights]
        g_train = _grads(self._loss(train_batch, None)[0], weights)
        with torch.no_grad():  # w' = w - lr * dL_train/dw (one virtual SGD step, weight decay included)
            for w, g in zip(weights, g_train, strict=True):
                w.sub_(lr * (g + wd * w))
        loss, logits = self._loss(batch, None)
        grads = _grads(loss, arch + weights)
        d_arch, d_w = grads[:len(arch)], grads[len(arch):]
        eps = 0.01 / torch.cat([g.flatten() for g in d_w]).norm().clamp_min(1e-12)

        def arch_grad_at(sign: float) -> list[torch.Tensor]:
            with torch.no_grad():
                for w, b, d in zip(weights, backup, d_w, strict=True):
                    w.copy_(b + sign * eps * d)
            return _grads(self._loss(train_batch, None)[0], arch)

        plus, minus = arch_grad_at(1.0), arch_grad_at(-1.0)
        with torch.no_grad():
            for w, b in zip(weights, backup, strict=True):
                w.copy_(b)
        self._set_arch_grads([d - lr * (p - m) / (2 * eps) for d, p, m in zip(d_arch, plus, minus, strict=True)])
        self._a_opt.step()
        return torch.stack([loss.detach() * len(batch[1]), (logits.argmax(1) == batch[1]).sum()])


@register("pcdarts")
class PCDARTS(DARTS):
    """PC-DARTS (Xu et al. 2020): DARTS with partial channels (``K``), edge normalisation and an alpha warm-up.

    On nb201 it derives by its own code's rule (``derive=no_none``): an edge of a partial-channel supernet
    is never removed, since its other ``(K-1)/K`` channels bypass the ops whatever their weights, so a
    winning ``none`` only says "fewer channels through the ops"; deriving it would cut an edge the supernet
    never trained without (``derive=argmax`` does; README, one-shot results).
    """

    name = "pcdarts"
    default_derive = "no_none"

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1,
                 storage: str | os.PathLike[str] | None = None, K: int = 4, order: int = 1,  # noqa: N803
                 warmup_epochs: int = 15, derive: str = "", **options: Any) -> None:
        if order not in (1, 2):
            raise ValueError(f"pcdarts: order must be 1 or 2, got {order!r}")
        if K < 1 or space.channels % K:
            raise ValueError(f"pcdarts: K={K} must be at least 1 and divide the space's channels ({space.channels})")
        method = {"order": int(order), "K": int(K), "derive": self._derive_rule(space, derive)}
        _Differentiable.__init__(self, space, seed, storage, method, {"warmup_epochs": warmup_epochs, **options})

    def _build(self) -> torch.nn.Module:
        return self.space.supernet(partial_k=self.method["K"], edge_norm=True,  # type: ignore[attr-defined]
                                   seed=_derive(self.seed, 0, 1))


@register("gdas")
class GDAS(_Differentiable):
    """GDAS (Dong & Yang 2019): Gumbel-max sampled single paths, temperature ``tau_max`` -> ``tau_min``."""

    name = "gdas"
    spaces = ("nb201", "darts")
    prunable = True

    def __init__(self, space: SearchSpace, seed: int = 0, n_objectives: int = 1,
                 storage: str | os.PathLike[str] | None = None, tau_max: float = 10.0, tau_min: float = 0.1,
                 **options: Any) -> None:
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"gdas: need 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
        super().__init__(space, seed, storage, {"tau_max": float(tau_max), "tau_min": float(tau_min)}, options)

    def _tau(self, epoch: int) -> float:
        """Linear from tau_max at the first epoch to tau_min at the last."""
        frac = epoch / max(1, self.recipe.epochs - 1)
        return self.method["tau_max"] - (self.method["tau_max"] - self.method["tau_min"]) * frac

    def _sample(self, epoch: int, generator: torch.Generator) -> Sample:
        assert self._model is not None
        return gumbel_sample(self._model.masked_alpha(), self._tau(epoch), generator)


# -- op pruning by a zero-cost proxy ----------------------------------------------------------------------
def proxies_batch(x: torch.Tensor, y: torch.Tensor) -> Any:
    """A proxy batch of normalised images and their labels (on the CPU, where the proxies' cells are built)."""
    from proxies import Batch

    return Batch(x.detach().cpu(), y.detach().cpu(), "train")


def prune_scores(space: SearchSpace, batch: Any, proxy: str, n_cells: int, seed: int,
                 device: torch.device | str = "cpu") -> tuple[list[list[float]], list[str], list[float]]:
    """Per edge and op, the mean rank (0 worst .. 1 best) of the proxy over random cells with that op there.

    The scheme is a balanced marginal: ``n_cells`` cells (a multiple of 5) are drawn so that each edge holds
    each op in exactly ``n_cells / 5`` of them (per edge an independent shuffle of ops repeated), each cell
    is built standalone (``search_spaces.build_seeded``, as the proxies were validated) and scored once,
    the scores become ranks over the cells (proxies such as synflow span orders of magnitude; a NaN, e.g. a
    cell whose output is cut off by ``none``, ranks last), and an (edge, op) scores the mean rank of its
    cells. This estimates how good the cells using that op on that edge are by the proxy, averaged over the
    other edges, which is what the mixture has to decide. (The alternative, the drop of a proxy of the
    supernet when an op is removed, scores the mixture, on which no proxy was validated.)
    Returns the 6 x 5 mean ranks, the cells (strings) and their proxy values.
    """
    import proxies
    from search_spaces import build_seeded

    reps, seed = n_cells // len(OPS), seed % 2**31
    rng = np.random.default_rng(seed)
    columns = [rng.permutation(np.repeat(np.arange(len(OPS)), reps)) for _ in EDGES]
    cells = [tuple(OPS[int(col[i])] for col in columns) for i in range(n_cells)]
    values = []
    for i, cell in enumerate(cells):
        net = build_seeded(space, cell, seed=seed + i)
        values.append(proxies.score(net, batch, [proxy], seed=seed, device=device, errors={})[proxy])
    v = np.array(values, dtype=float)
    v = np.where(np.isfinite(v), v, -np.inf)
    ranks = np.empty(n_cells)
    ranks[np.argsort(v, kind="stable")] = np.arange(n_cells) / max(1, n_cells - 1)
    scores = [[float(ranks[columns[e] == o].mean()) for o in range(len(OPS))] for e in range(len(EDGES))]
    return scores, [space.to_string(c) for c in cells], [float(x) for x in values]


def keep_best(scores: Sequence[Sequence[float]], keep: int) -> list[list[bool]]:
    """Per edge, True for the ``keep`` highest scores (ties: the earlier op)."""
    out = []
    for row in scores:
        best = sorted(range(len(row)), key=lambda j: (-row[j], j))[:keep]
        out.append([j in best for j in range(len(row))])
    return out


# -- helpers ---------------------------------------------------------------------------------------------
def _derive(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for one (seed, epoch, stream): independent generators that need no stored state."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(2, np.uint64)[0] >> 1)


def _grads(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d params, zeros for parameters the loss does not reach."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _plain(genotype: Any) -> Any:
    """A genotype as lists and strings, which a ``weights_only`` checkpoint can hold (nb201: its 6 ops)."""
    if isinstance(genotype, tuple):
        return list(genotype)
    return {f.name: [list(e) for e in getattr(genotype, f.name)] for f in dataclasses.fields(genotype)}


def _to(data: ImageData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels on ``device`` (normalised batch by batch there: 4x less memory than float)."""
    return data.x.to(device), data.y.to(device)


def _rss_mb() -> float:
    """Resident memory of this process now (MB; Linux), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_history(run_dir: Path, history: list[dict[str, Any]], cols: list[str]) -> None:
    """``oneshot.csv``: one row per epoch record with the columns ``cols`` (epochs counted from 1)."""

    def write(path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for rec in history:
                w.writerow([rec["epoch"] + 1 if c == "epoch" else rec[c] for c in cols])

    _atomic(run_dir / "oneshot.csv", write)


def _atomic(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary file and ``os.replace``, so a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def plot_alpha(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = "",
               edges: Sequence[str] = tuple(f"{frm}->{to}" for to, frm in EDGES),
               ops: Sequence[str] = OPS, decisions: bool = False) -> None:
    """Op weights (softmax of alpha) per edge over epochs, one panel per edge, saved as PNG (nb201 by default).

    ``decisions``: the rows are a controller's decisions and the columns their options (ENAS on darts): a
    panel leaves out the options its decision never offers (0 at every epoch) and one legend serves all.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 3 if len(edges) <= 6 else 7  # nb201's 6 edges in 2 x 3; darts' 2 x 14 in 4 x 7
    rows = -(-len(edges) // cols)
    fig = Figure(figsize=(10 * cols / 3, 2.75 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    epochs = [rec["epoch"] + 1 for rec in history]
    weights = np.array([rec["alpha"] for rec in history])  # (epochs, edges, ops)
    # One colour per column in every panel. The default cycle has 10; beyond (ENAS's 12 on darts) tab20's
    # dark shades come first, then its light ones, so that neighbouring columns stay easy to tell apart.
    colours = [f"C{j}" for j in range(len(ops))] if len(ops) <= 10 else [
        matplotlib.colormaps["tab20"]((2 * j) % 20 + (j // 10) % 2) for j in range(len(ops))]
    for k, (edge, ax) in enumerate(zip(edges, axes.flat, strict=False)):
        for j, op in enumerate(ops):
            if decisions and not weights[:, k, j].any():
                continue
            ax.plot(epochs, weights[:, k, j], label=op, color=colours[j], marker="." if len(epochs) < 20 else None)
        ax.set_title(edge if decisions else f"edge {edge}", fontsize=9)
        if decisions:
            ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(edges):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("probability" if decisions else "softmax(alpha)")
    heading = "choice probabilities per decision" if decisions else "op weights per edge"
    fig.suptitle(f"{title}: {heading}" if title else heading)
    if decisions:  # a panel shows only its decision's options: gather one legend entry per option
        lines = {line.get_label(): line for ax in axes.flat for line in ax.get_lines()}
        fig.tight_layout(rect=(0, 0, 0.9, 1))
        fig.legend([lines[o] for o in ops if o in lines], [o for o in ops if o in lines], loc="center right",
                   fontsize=8)
    else:
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
    fig.savefig(path, format="png")
