"""Train a weight-sharing supernet (ofa, fbnet, nb201, tdnn): ``nas.supernet_training.train_supernet`` and
``nas supernet train``.

**The sandwich rule with in-place distillation** (Yu & Huang, "Universally Slimmable Networks", ICCV 2019;
Yu et al., "BigNAS", ECCV 2020): every step runs the largest subnet, the smallest and ``num_random``
(default 2) random subnets on the same batch and accumulates their gradients before one optimiser step.
The largest learns from the labels (cross-entropy with the recipe's label smoothing); the others learn
from the largest's detached soft predictions (soft-target cross-entropy, as OFA's
``cross_entropy_loss_with_soft_target``), which BigNAS found to train the small subnets better than labels.
``label_weight`` (``--label-weight``, default 0) adds that many times the label loss to theirs, as OFA's
``kd_ratio * kd_loss + ce`` does with ``label_weight = 1``. ``warmup`` (``--warmup F``, fbnet, nb201 and
tdnn; default 0) trains the largest subnet alone for the first fraction F of the steps before the sandwich
starts, as OFA trains its full network before any elastic phase, so that the others distil from a teacher
that has learnt something and through stem and head that it has trained.

What "largest" and "smallest" are, per space:

- ``ofa``: kernel 7, expand 6, depth 4 at the largest resolution; kernel 3, expand 3, depth 2 at the
  smallest, restricted to the current phase's choices (below). Each subnet sees the batch resized
  (bilinear) to its own resolution, so the space's resolutions may differ from the images' size.
- ``fbnet``: per layer the op with the most parameters and the one with the fewest, counted on the
  supernet itself: ``k5_e6`` everywhere for the largest; for the smallest ``skip`` (an identity) where the
  layer keeps its width and stride, and ``k3_e1_g2`` where the skip would be a full 1x1 convolution.
- ``nb201``: the largest is every edge ``nor_conv_3x3``; there is no useful smallest (cells of only
  ``none``/``skip``/pooling hold no weights), so a third random path takes its place: the largest
  plus uniform single paths, as SPOS (Guo et al., ECCV 2020) with a distilling teacher.
- ``tdnn``: every choice at its largest (kernel, dilation, width, depth, SE, channels, MFA) and at its
  smallest (no SE); the random subnets are the space's uniform samples. The four subnets of a step share
  one filterbank computation (:class:`FbankView`).

**Speaker data for tdnn** (:mod:`nas.audio_data`): ``data`` is ``DIR/<speaker>/<utt>.wav``; ``val_size``
utterances of every speaker (default 10% of the fewest a speaker has, at least 1; seeded) are held out, so
every speaker is in both parts. An epoch is ``train_size`` crops (default one per training utterance): the
training utterances in seeded random order, each a random window of the space's ``seconds`` mixed with
coloured noise at an SNR uniform in 0-20 dB. Validation: the central window of each held-out utterance in
noise drawn once per run; BN recalibration on ``recalibration_images`` noisy crops of training utterances.
The default recipe is ECAPA-TDNN's (:mod:`nas.recipes`: Adam, lr 1e-3, batch 128, weight decay 2e-5) with
this module's cosine schedule. ``loss="aam"``: AAM-softmax (:class:`nas.losses.AAMSoftmax`, ArcFace's
additive angular margin as ECAPA-TDNN trains with it: margin 0.2, scale 30, weight decay 2e-4 on its class
centres) on the embedding instead of cross-entropy on the classifier. The largest learns with the margin;
the teacher's probabilities and the other subnets' logits are the scaled cosines without it. The head's
unit-length centres are copied into the supernet's classifier (bias 0) before each evaluation and each
save, so a subnet's argmax is the head's and ``supernet.pt`` stays a plain supernet (its logits are cosines
times the embedding's norm, not calibrated probabilities).

**Progressive shrinking for ofa** (Cai et al., "Once-for-All", ICLR 2020, Sec. 3.2 and the epochs of
its ``train_ofa_net.py``): the full network first, then elastic kernel, then elastic depth, then elastic
expand, each later phase keeping the earlier phases' choices elastic. OFA's ImageNet schedule is full
network 180 epochs, kernel 120, depth 25 (d 3-4) + 120 (d 2-4), expand 25 (e 4-6) + 120 (e 3-6), 590 in
all; here the same fractions of the training steps: full ``[0, 0.305)``, kernel ``[0.305, 0.508)``, depth
``[0.508, 0.754)`` (d 3-4 for its first 25/145), expand ``[0.754, 1]`` (e 4-6 for its first 25/145). Before
the first expand step the expanded channels are sorted by importance (``sort_channels``, OFA's
``re_organize_middle_weights``) and the optimiser's momentum is reset, as OFA starts each phase with a
fresh optimiser. Resolution is elastic in every phase, as in OFA. Simplifications: one cosine schedule
over all steps (OFA restarts the learning rate per phase) and in-place distillation instead of OFA's
separately trained teacher. ``progressive=False`` trains every choice from the start.

Data, augmentation, held-out validation split, recipe and reproducibility follow :mod:`nas.training`:
every random draw of an epoch comes from generators seeded by ``(seed, epoch, rank)``, and the checkpoint
after each epoch (``checkpoint.pt``: the supernet in :func:`nas.supernets.save_supernet`'s format plus
optimiser, scheduler, epoch and history) lets ``resume=True`` continue to the very weights an
uninterrupted run reaches on the CPU. Outputs in ``out``: ``config.json``, ``train.csv`` (per epoch:
phase, loss of the largest, validation accuracy of the largest and the smallest subnet after BN
recalibration, learning rate, seconds), ``curve.png``, and at the end ``supernet.pt``, which
``nas.supernets.load_supernet(path, space)`` reads for the space with the run's options (the number of
classes is the data's: ``num_classes`` is among the stored options).

**Data-parallel** as ``nas train``: under ``torchrun --nproc_per_node N -m nas supernet train ...`` each
process joins a ``torch.distributed`` group (gloo on CPU, NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``)
and takes a disjoint ``batch_size / N`` images of each step's global batch (the union over the ranks is a
single process's batch), augmented from its own ``(seed, epoch, rank)`` stream. The subnets of the sandwich
are drawn from a stream without the rank, so every rank runs the same ones. There is no
``DistributedDataParallel``: a step accumulates gradients over several subnets that touch different
parameters, so after its backward passes the gradients that exist (the same ones on every rank) are
averaged in one all-reduce before clipping and the optimiser step, and the weights stay identical on every
rank. BN statistics are averaged at the end of each epoch, the validation images are split over the ranks
(each recalibrates on all ``recalibration_images``, so the accuracies are a single process's) and only rank
0 writes files. The number of processes is a stored setting: ``--resume`` needs the same. With N > 1 the
weights are not a single process's: batch norm normalises over each rank's part of the batch and the
augmentation draws differ.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import search_spaces
from nas.datasets import ImageData, augment, balanced_subset, load_split, normalise
from nas.errors import ResumeConflict
from nas.recipes import Recipe, recipe_for
from nas.supernets import save_supernet, stored_options, supernet_of, weight_sharing_spaces
from nas.training import (
    Distributed,
    EpochBar,
    data_path,
    hold_out,
    make_optimizer,
    plot_history,
    resolve_device,
    restore_training,
    seeded_global,
    stream_seed,
    write_csv,
)

__all__ = ["LOSSES", "OFA_PHASES", "FbankView", "SupernetTrainResult", "distillation_loss", "evaluate_subnet",
           "ofa_phase", "sandwich_archs", "sandwich_step", "train_supernet"]

log = logging.getLogger(__name__)

OFA_PHASES: tuple[tuple[float, str, dict[str, tuple[int, ...]]], ...] = (
    (0.0, "full", {"ks": (7,), "e": (6,), "d": (4,)}),
    (180 / 590, "kernel", {"ks": (3, 5, 7), "e": (6,), "d": (4,)}),
    (300 / 590, "depth", {"ks": (3, 5, 7), "e": (6,), "d": (3, 4)}),
    (325 / 590, "depth", {"ks": (3, 5, 7), "e": (6,), "d": (2, 3, 4)}),
    (445 / 590, "expand", {"ks": (3, 5, 7), "e": (4, 6), "d": (2, 3, 4)}),
    (470 / 590, "expand", {"ks": (3, 5, 7), "e": (3, 4, 6), "d": (2, 3, 4)}),
)
"""(start as a fraction of all steps, phase, allowed choices): OFA's 180/120/25+120/25+120 epochs."""

_ALL_OFA = {"ks": (3, 5, 7), "e": (3, 4, 6), "d": (2, 3, 4)}
_ORDER, _AUGMENT, _GLOBAL, _ARCHS = 0, 1, 3, 4  # random streams of an epoch (nas.training's numbering)
_HEAD = 5  # the AAM head's initial weights
LOSSES = ("ce", "aam")
"""``ce``: cross-entropy on the classifier's logits; ``aam``: AAM-softmax on the embedding (tdnn)."""
AAM_WEIGHT_DECAY = 2e-4
"""ECAPA-TDNN's weight decay on the AAM-softmax layer (ten times the network's)."""
_CSV_FIELDS = ("epoch", "phase", "loss", "largest_val_acc", "smallest_val_acc", "lr", "seconds")
_FLAGS = {"space": "--space", "space_options": "--space-option", "data": "--data", "recipe": "recipe",
          "train_size": "--train-size", "val_size": "--val-size", "seed": "--seed", "num_random": "num_random",
          "progressive": "--no-progressive", "world_size": "the number of processes (torchrun --nproc_per_node)",
          "loss": "--loss", "label_weight": "--label-weight", "warmup": "--warmup"}


@dataclass
class SupernetTrainResult:
    """What :func:`train_supernet` produced: the per-epoch history and the trained supernet."""

    out: Path
    space: str
    space_options: dict[str, Any]
    history: list[dict[str, Any]]
    seconds_per_epoch: float
    supernet: nn.Module = field(repr=False)


def ofa_phase(progress: float, progressive: bool = True) -> tuple[str, dict[str, tuple[int, ...]]]:
    """The progressive-shrinking phase and its allowed ks/e/d choices at ``progress`` (0..1) of training."""
    if not progressive:
        return "all", dict(_ALL_OFA)
    name, allowed = OFA_PHASES[0][1], OFA_PHASES[0][2]
    for start, n, a in OFA_PHASES:
        if progress >= start:
            name, allowed = n, a
    return name, dict(allowed)


def sandwich_archs(space: Any, supernet: nn.Module, rng: np.random.Generator, num_random: int = 2,
                   allowed: dict[str, tuple[int, ...]] | None = None) -> list[Any]:
    """``[largest, smallest, random...]`` of one sandwich step (ofa: within ``allowed``; see the module doc)."""
    name = space.name
    if name == "ofa":
        from search_spaces.ofa import N_BLOCKS, N_STAGES, OFAArch

        a = allowed or _ALL_OFA
        res = space.resolutions

        def pick(key: str, n: int) -> tuple[int, ...]:
            return tuple(int(a[key][i]) for i in rng.integers(len(a[key]), size=n))

        largest = OFAArch((max(a["ks"]),) * N_BLOCKS, (max(a["e"]),) * N_BLOCKS, (max(a["d"]),) * N_STAGES,
                          max(res))
        smallest = OFAArch((min(a["ks"]),) * N_BLOCKS, (min(a["e"]),) * N_BLOCKS, (min(a["d"]),) * N_STAGES,
                           min(res))
        randoms = [OFAArch(pick("ks", N_BLOCKS), pick("e", N_BLOCKS), pick("d", N_STAGES),
                           int(res[int(rng.integers(len(res)))])).normalised() for _ in range(num_random)]
        return [largest.normalised(), smallest.normalised(), *randoms]
    if name == "nb201":
        from search_spaces.nb201 import EDGES

        return [("nor_conv_3x3",) * len(EDGES), *(space.sample(rng) for _ in range(num_random + 1))]
    if name in ("fbnet", "tdnn"):
        return [supernet.largest(), supernet.smallest(), *(space.sample(rng) for _ in range(num_random))]
    raise ValueError(f"space {name!r} has no supernet training; spaces with one: {', '.join(weight_sharing_spaces())}")


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy of the student against the teacher's probabilities (mean over the batch)."""
    return -(teacher_probs * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def _input_for(space: Any, images: torch.Tensor, arch: Any) -> torch.Tensor:
    """``images`` at ``arch``'s resolution (ofa; resized bilinearly when it differs), else unchanged."""
    r = getattr(arch, "r", None)
    if r is None or images.shape[-1] == r:
        return images
    return F.interpolate(images, size=(r, r), mode="bilinear", align_corners=False)


def sandwich_step(supernet: nn.Module, space: Any, images: torch.Tensor, labels: torch.Tensor,
                  archs: Sequence[Any], label_smoothing: float = 0.0,
                  criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                  label_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate one sandwich step's gradients; returns (the largest's loss, its detached probabilities).

    ``archs[0]`` (the largest) learns from ``labels`` (``criterion(logits, labels)``, default cross-entropy
    with ``label_smoothing``); every other arch from the largest's soft predictions, plus ``label_weight``
    times its own label loss (OFA's ``kd_ratio * kd_loss + ce`` is ``label_weight = 1``). Each
    subnet's backward runs before the next forward, so one graph is alive at a time.
    """
    def label_loss(logits: torch.Tensor) -> torch.Tensor:
        if criterion is None:
            return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return criterion(logits, labels)

    logits = supernet(_input_for(space, images, archs[0]), archs[0])
    loss = label_loss(logits.float())
    loss.backward()
    teacher = F.softmax(logits.detach().float(), dim=1)
    for arch in archs[1:]:
        if arch == archs[0]:  # OFA's full phase: the same subnet again would only double its step
            continue
        student = supernet(_input_for(space, images, arch), arch).float()
        step_loss = distillation_loss(student, teacher)
        if label_weight:
            step_loss = step_loss + label_weight * label_loss(student)
        step_loss.backward()
    return loss.detach(), teacher


class FbankView(nn.Module):
    """A tdnn supernet fed filterbanks, so that the subnets of a sandwich step share one filterbank computation;
    with ``head`` (e.g. :class:`nas.losses.AAMSoftmax`) the logits are the head's on the embedding."""

    def __init__(self, supernet: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.supernet, self.head = supernet, head

    def forward(self, fbank: torch.Tensor, arch: Any) -> torch.Tensor:
        """Logits of subnet ``arch`` for filterbanks ``(N, n_mels, T)``."""
        if self.head is None:
            return self.supernet.forward_fbank(fbank, arch)
        return self.head(self.supernet.embed_fbank(fbank, arch))


def train_supernet(space: str | None = None, data: str | Any = None, *, epochs: int | None = None,
                   out: str | Any = None, batch_size: int | None = None, lr: float | None = None,
                   train_size: int | None = None, val_size: int | None = None, seed: int | None = None,
                   space_options: dict[str, Any] | None = None, resume: bool = False,
                   device: str | None = None, progress: bool = True, num_random: int = 2,
                   progressive: bool | None = None, recalibration_images: int = 512,
                   loss: str | None = None, aam_margin: float | None = None, aam_scale: float | None = None,
                   label_weight: float | None = None, warmup: float | None = None,
                   callback: Callable[[dict[str, Any]], None] | None = None) -> SupernetTrainResult:
    """Train the supernet of ``space`` on ``data`` with the sandwich rule and write the outputs to ``out``.

    Args:
        space: ``ofa``, ``fbnet``, ``nb201`` or ``tdnn`` (``search_spaces.get(space, **space_options)``).
        data: a folder with ``train/`` (and ``test/``) class folders, or an ``.npz`` (see :mod:`nas.datasets`);
            for tdnn a folder ``DIR/<speaker>/<utt>.wav`` (:mod:`nas.audio_data`).
        epochs: required for a new run; ``batch_size``, ``lr`` override the space's recipe (:mod:`nas.recipes`).
        train_size, val_size: a seeded class-balanced subset of the training split and the part of it held
            out for validation (default 10%), as in :func:`nas.train`; for tdnn the crops per epoch (default
            one per training utterance) and the utterances held out per speaker (see the module doc).
        seed: initial weights, data order, augmentation, sampled subnets (default 0).
        out: output folder (required); must not hold a run unless ``resume``.
        resume: continue the run in ``out`` from its last checkpoint; settings given must agree, and so must
            the number of processes (torchrun's ``--nproc_per_node``; see the module doc).
        progressive: ofa's progressive shrinking (default on; ignored by the other spaces).
        recalibration_images: training images (tdnn: crops) the per-epoch validation recalibrates BN on.
        loss: ``ce`` (default) or ``aam`` (tdnn: AAM-softmax with ``aam_margin``, default 0.2, and
            ``aam_scale``, default 30; see the module doc).
        label_weight: weight of the label loss for the subnets other than the largest, beside their
            distillation loss: 0 (default; BigNAS's in-place distillation alone) or 1 (OFA's kd_ratio 1).
        warmup: fraction of the steps (0 to 1, default 0) that train the largest subnet alone first (not ofa,
            whose progressive shrinking starts with the full network).
        callback: called with each epoch's row after its checkpoint is written.

    Example:
        >>> r = train_supernet("fbnet", "cifar.npz", epochs=2, train_size=1000, out="runs/sup")  # doctest: +SKIP
        >>> r.history[-1]["largest_val_acc"]  # doctest: +SKIP
    """
    if out is None:
        raise ValueError("give the output folder (--out DIR)")
    if num_random < 0:
        raise ValueError(f"num_random must be 0 or more, got {num_random}")
    if label_weight is not None and not (math.isfinite(label_weight) and label_weight >= 0):
        raise ValueError(f"--label-weight must be a finite number >= 0, got {label_weight}")
    if warmup is not None and not 0 <= warmup < 1:
        raise ValueError(f"--warmup must be a fraction of the steps in [0, 1), got {warmup}")
    if warmup and space == "ofa":
        raise ValueError("--warmup is for fbnet, nb201 and tdnn: ofa's progressive shrinking already trains the "
                         "full network first")
    out_dir = Path(out)
    dev = resolve_device(device)
    dist = Distributed.start(dev)
    try:
        dev = dist.local_device(dev)
        settings = _settings(space, data, epochs, batch_size, lr, train_size, val_size, seed, space_options,
                             resume, num_random, progressive, out_dir, dist.world, (loss, aam_margin, aam_scale),
                             label_weight, warmup)
        trainer = _SupernetTrainer(settings, out_dir, dev, dist, progress and dist.rank == 0, recalibration_images,
                                   callback)
        dist.write_config(out_dir, settings)
        return trainer.run()
    finally:
        dist.stop()


def _settings(space: str | None, data: Any, epochs: int | None, batch_size: int | None, lr: float | None,
              train_size: int | None, val_size: int | None, seed: int | None,
              space_options: dict[str, Any] | None, resume: bool, num_random: int, progressive: bool | None,
              out_dir: Path, world: int = 1,
              loss: tuple[str | None, float | None, float | None] = (None, None, None),
              label_weight: float | None = None, warmup: float | None = None) -> dict[str, Any]:
    """The run's settings: fresh, or the stored ones checked against those given."""
    config = out_dir / "config.json"
    if resume:
        if not config.is_file():
            raise ValueError(f"--resume {out_dir}: no config.json there; not a `nas supernet train` output folder")
        # Runs from before data-parallel training had one process, and those from before --loss cross-entropy
        # and those from before the subnets' label loss (distillation alone)
        stored = {"world_size": 1, "loss": {"name": "ce"}, "label_weight": 0.0, "warmup": 0.0,
                  **json.loads(config.read_text())["settings"]}
        base = Recipe(**stored["recipe"])
        given = {"space": space, "space_options": None if not space_options else
                 {**stored["space_options"], **space_options},
                 "data": None if data is None else _data_path(stored["space"], data),
                 "recipe": recipe_for(stored["space"], epochs, batch_size, lr, base=base).to_dict(),
                 "train_size": train_size, "val_size": val_size, "seed": seed, "progressive": progressive,
                 "world_size": world, "loss": None if loss == (None, None, None) else
                 _loss_setting(stored["space"], *loss, base=stored["loss"]),
                 "label_weight": None if label_weight is None else float(label_weight),
                 "warmup": None if warmup is None else float(warmup)}
        for key, value in given.items():
            if value is not None and value != stored[key]:
                raise ResumeConflict(f"{_FLAGS[key]} {value!r} differs from {stored[key]!r} of the run stored in "
                                     f"{out_dir}: a resumed run keeps its settings (train a new one with another --out)")
        return stored
    if config.exists():
        raise FileExistsError(f"{out_dir} already holds a supernet run: continue it with --resume or choose "
                              "another --out")
    names = weight_sharing_spaces()
    if space not in names:
        raise ValueError(f"--space {space!r}: supernet training knows {', '.join(names)}")
    if data is None:
        raise ValueError("--data is required: " + ("a folder DIR/<speaker>/<utt>.wav" if _is_audio(space) else
                                                   "a folder with train/ and test/ class folders or an .npz"))
    if epochs is None:
        raise ValueError("--epochs is required for a new supernet run")
    seed = 0 if seed is None else int(seed)
    if seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {seed}")
    return {"space": space, "space_options": dict(space_options or {}), "data": _data_path(space, data),
            "recipe": recipe_for(space, epochs, batch_size, lr).to_dict(), "train_size": train_size,
            "val_size": val_size, "seed": seed, "num_random": int(num_random),
            "progressive": True if progressive is None else bool(progressive), "world_size": world,
            "loss": _loss_setting(space, *loss),
            "label_weight": 0.0 if label_weight is None else float(label_weight),
            "warmup": 0.0 if warmup is None else float(warmup)}


def _is_audio(space: str) -> bool:
    """Whether space ``space`` takes audio (its networks train on speaker folders)."""
    return getattr(search_spaces.registry.get(space), "input_kind", "image") == "audio"


def _data_path(space: str, data: Any) -> str:
    """``data`` as an absolute path, checked to exist (a speaker folder for an audio space)."""
    if not _is_audio(space):
        return data_path(data)
    path = Path(data).expanduser()
    if not path.is_dir():
        raise ValueError(f"--data {data}: no such folder (space {space!r} trains on DIR/<speaker>/<utt>.wav)")
    return str(path.resolve())


def _loss_setting(space: str, name: str | None, margin: float | None, scale: float | None,
                  base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``loss`` setting: ``{"name": "ce"}`` or ``{"name": "aam", "margin": m, "scale": s}``, checked;
    values not given come from ``base`` (a resumed run's), else the defaults."""
    base = base or {"name": "ce"}
    name = name or (base["name"] if margin is None and scale is None else "aam")
    if name not in LOSSES:
        raise ValueError(f"--loss {name!r}: choose one of {', '.join(LOSSES)}")
    if name == "ce":
        if margin is not None or scale is not None:
            raise ValueError("--aam-margin and --aam-scale go with --loss aam")
        return {"name": "ce"}
    if not _is_audio(space):
        raise ValueError(f"--loss aam trains on a speaker embedding; space {space!r} has none (use it with tdnn)")
    from nas.losses import AAMSoftmax

    margin = float(base.get("margin", 0.2) if margin is None else margin)
    scale = float(base.get("scale", 30.0) if scale is None else scale)
    AAMSoftmax(1, 2, margin, scale)  # checks the values, with the module's own message
    return {"name": "aam", "margin": margin, "scale": scale}


class _ImageEpochs:
    """What the image spaces train on: a class-balanced subset of the train split, held-out images for
    validation, padded crops, flips and cutout (the recipe's); the counterpart of
    :class:`nas.audio_data.SpeakerEpochs`."""

    def __init__(self, settings: dict[str, Any], recipe: Recipe, seed: int, recalibration: int) -> None:
        pool = balanced_subset(load_split(settings["data"], "train"), settings["train_size"], seed)
        n_val = round(0.1 * len(pool)) if settings["val_size"] is None else int(settings["val_size"])
        if not 0 <= n_val < len(pool):
            raise ValueError(f"--val-size {n_val}: must be 0 or more and leave training images of the {len(pool)}")
        self.train, val = hold_out(pool, n_val, seed)
        self.recipe, self.num_classes, self.train_count = recipe, pool.num_classes, len(self.train)
        self.recal = self.train.x[:min(recalibration, len(self.train))]
        self.val_x, self.val_y = val.x, val.y
        self.x, self.y = self.train.x, self.train.y

    def to(self, dev: torch.device) -> None:
        """Keep the training images on ``dev`` (augmentation runs there)."""
        self.x, self.y = self.train.x.to(dev), self.train.y.to(dev)

    def order(self, gen: torch.Generator) -> torch.Tensor:
        """The epoch's image indices: a random permutation."""
        return torch.randperm(self.train_count, generator=gen)

    def batch(self, idx: torch.Tensor, gen: torch.Generator, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx`` augmented with ``gen``, and their labels, on ``dev``."""
        idx = idx.to(self.x.device)
        r = self.recipe
        return augment(normalise(self.x[idx]), gen, pad=r.pad, flip=r.flip, cutout=r.cutout), self.y[idx]

    @staticmethod
    def prepare(space: Any, x: torch.Tensor, arch: Any, dev: torch.device) -> torch.Tensor:
        """Stored uint8 images as subnet ``arch`` takes them (normalised, at its resolution)."""
        return _input_for(space, normalise(x.to(dev)), arch)


class _SupernetTrainer:
    """One supernet training run: data, supernet, optimiser, the epoch loop and the outputs."""

    def __init__(self, settings: dict[str, Any], out: Path, dev: torch.device, dist: Distributed, progress: bool,
                 recalibration_images: int, callback: Callable[[dict[str, Any]], None] | None) -> None:
        self.s, self.out, self.dev, self.dist, self.progress = settings, out, dev, dist, progress
        self.callback = callback
        self.recipe = Recipe(**settings["recipe"])
        self.seed = int(settings["seed"])
        self.audio = _is_audio(settings["space"])
        options = dict(settings["space_options"])
        if self.audio:
            from nas.audio_data import SpeakerEpochs, load_speakers

            speakers = load_speakers(settings["data"])
            options.setdefault("num_classes", speakers.num_classes)  # the data's speakers, stored with the weights
            self.space = search_spaces.get(settings["space"], **options)
            self.data: Any = SpeakerEpochs(speakers, self.space.samples, settings["val_size"],
                                           settings["train_size"], self.seed, recalibration_images)
        else:
            self.data = _ImageEpochs(settings, self.recipe, self.seed, recalibration_images)
            options.setdefault("num_classes", self.data.num_classes)  # the data's classes, stored with the weights
            self.space = search_spaces.get(settings["space"], **options)
        if self.data.num_classes > self.space.num_classes:
            raise ValueError(f"--data {settings['data']} has {self.data.num_classes} classes but "
                             f"--space-option num_classes={self.space.num_classes}; leave it out to use the data's")
        self.supernet = supernet_of(self.space, seed=self.seed).to(dev)
        self.head = self._head(settings["loss"])
        self.model: nn.Module = FbankView(self.supernet, self.head) if self.audio else self.supernet
        self.params = [*self.supernet.parameters(), *(self.head.parameters() if self.head is not None else ())]
        # Each rank takes its share of every global batch, as nas.training does; batch norm over (N, C)
        # vectors (tdnn's pooling and embedding) needs two examples to have statistics at all
        least = 2 if self.audio else 1
        self.per_rank_batch = self.recipe.batch_size // dist.world
        if self.per_rank_batch < least:
            raise ValueError(f"--batch-size {self.recipe.batch_size}: at least {least} per process "
                             f"({dist.world} processes)")
        self.shard_size = self.data.train_count // dist.world
        if self.shard_size < least:
            raise ValueError(f"{self.data.train_count} training examples per epoch cannot be shared by {dist.world} "
                             "processes; give a larger --train-size or fewer processes")
        steps = math.ceil(self.shard_size / self.per_rank_batch)
        if steps > 1 and self.shard_size % self.per_rank_batch == 1:
            steps -= 1  # a last batch of one image would give batch norm no statistics
        self.steps = steps
        self.optimizer = make_optimizer(self.supernet, self.recipe)
        if self.head is not None:
            self.optimizer.add_param_group({"params": list(self.head.parameters()), "weight_decay": AAM_WEIGHT_DECAY})
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.recipe.epochs * self.steps, eta_min=0.0)
        self.val_x = self.data.val_x[dist.rank::dist.world]
        self.val_y = self.data.val_y[dist.rank::dist.world]
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0

    def _head(self, loss: dict[str, Any]) -> nn.Module | None:
        """The AAM-softmax head of an ``aam`` run (initial weights from the run's seed), else None."""
        if loss["name"] != "aam":
            return None
        from nas.losses import AAMSoftmax

        with seeded_global(stream_seed(self.seed, 0, 0, _HEAD), torch.device("cpu")):
            head = AAMSoftmax(self.space.embedding, self.space.num_classes, loss["margin"], loss["scale"])
        return head.to(self.dev)

    @torch.no_grad()
    def _sync_classifier(self) -> None:
        """Copy the AAM head's unit class centres into the supernet's classifier (bias 0): argmax unchanged."""
        if self.head is not None:
            self.supernet.classifier.weight.copy_(self.head.centres())
            self.supernet.classifier.bias.zero_()

    def phase(self, step: int) -> tuple[str, dict[str, tuple[int, ...]] | None]:
        """The phase and allowed ofa choices at global step ``step`` (no restriction outside ofa); ``largest``
        while the warm-up trains the largest subnet alone."""
        # A step belongs to the phase its midpoint falls in, so short runs still visit every phase
        progress = (step + 0.5) / (self.recipe.epochs * self.steps)
        if self.space.name == "ofa":
            return ofa_phase(progress, bool(self.s["progressive"]))
        return ("largest" if progress < float(self.s["warmup"]) else "sandwich"), None

    def run(self) -> SupernetTrainResult:
        """Train the remaining epochs and write ``supernet.pt``."""
        self._restore()
        self.data.to(self.dev)
        bar = EpochBar(self.progress)
        try:
            for epoch in range(self.start_epoch, self.recipe.epochs):
                row = self._epoch(epoch, bar)
                self.history.append(row)
                if self.dist.rank == 0:
                    save_supernet(self.out / "checkpoint.pt", self.space, self.supernet, self._state(epoch + 1))
                    write_csv(self.out / "train.csv", self.history, _CSV_FIELDS)
                log.info("supernet epoch %d/%d (%s): loss %.4f, largest %.2f%%, smallest %.2f%%, %.1f s",
                         epoch + 1, self.recipe.epochs, row["phase"], row["loss"], row["largest_val_acc"],
                         row["smallest_val_acc"], row["seconds"])
                if self.callback is not None:
                    self.callback(row)
        finally:
            bar.close()
        if self.dist.rank == 0:
            save_supernet(self.out / "supernet.pt", self.space, self.supernet,
                          {"settings": json.dumps(self.s), "history": self.history})
            plot_history(self.history, self.out / "curve.png", f"supernet {self.s['space']}",
                         (("largest_val_acc", "largest (val)"), ("smallest_val_acc", "smallest (val)")))
        self.dist.barrier()  # no rank returns before the outputs are written
        seconds = float(np.mean([r["seconds"] for r in self.history])) if self.history else math.nan
        self.supernet.eval()
        return SupernetTrainResult(self.out, self.space.name, stored_options(self.space), list(self.history),
                                   seconds, self.supernet)

    def _state(self, epoch: int) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "epoch": epoch, "history": self.history}
        if self.head is not None:
            state["head"] = self.head.state_dict()
        return state

    def _restore(self) -> None:
        """Load the last checkpoint, if there is one (every rank reads rank 0's)."""
        extra = {"head": self.head} if self.head is not None else None
        restored = restore_training(self.out, self.dev, self.supernet, self.optimizer, self.scheduler, "state_dict",
                                    extra)
        if restored is not None:
            self.start_epoch, self.history = restored

    def _epoch(self, epoch: int, bar: EpochBar) -> dict[str, Any]:
        """Train one epoch of sandwich steps and validate; returns its row of ``train.csv``."""
        start = time.perf_counter()
        r, bs, rank, world = self.recipe, self.per_rank_batch, self.dist.rank, self.dist.world
        # Every draw of the epoch depends on (seed, epoch, rank) alone, so a resumed run repeats it exactly.
        # The order and the subnets leave the rank out: every rank shards the same permutation (so a step's
        # shards make up a single process's batch) and runs the same subnets (so the same gradients exist)
        order = torch.Generator().manual_seed(stream_seed(self.seed, epoch, 0, _ORDER))
        shard = self.data.order(order)[rank::world][: self.shard_size]
        aug = torch.Generator().manual_seed(stream_seed(self.seed, epoch, rank, _AUGMENT))
        rng = np.random.default_rng(stream_seed(self.seed, epoch, 0, _ARCHS))
        lr = float(self.optimizer.param_groups[0]["lr"])
        loss_sum, seen, phase = torch.zeros((), dtype=torch.float64, device=self.dev), 0, ""
        self.model.train()
        criterion = self.head.loss if self.head is not None else None
        bar.start(epoch, r.epochs, self.steps)
        with seeded_global(stream_seed(self.seed, epoch, rank, _GLOBAL), self.dev):
            for step in range(self.steps):
                g = epoch * self.steps + step
                phase, allowed = self.phase(g)
                if phase == "expand" and self.phase(g - 1)[0] != "expand":
                    self.supernet.sort_channels()  # type: ignore[operator]
                    self.optimizer.state.clear()  # momentum of the unsorted channels; OFA's phases start fresh
                inputs, labels = self.data.batch(shard[step * bs:(step + 1) * bs], aug, self.dev)
                if self.audio:
                    with torch.no_grad():  # no weights before the filterbanks: computed once for the subnets
                        inputs = self.supernet.features(inputs)
                archs = sandwich_archs(self.space, self.supernet, rng, int(self.s["num_random"]), allowed)
                if phase == "largest":
                    archs = archs[:1]
                self.optimizer.zero_grad(set_to_none=True)
                loss, _ = sandwich_step(self.model, self.space, inputs, labels, archs, r.label_smoothing, criterion,
                                        float(self.s["label_weight"]))
                # Not DDP: it would all-reduce after each subnet's backward and need find_unused_parameters
                # for the weights a subnet skips; one average of the step's summed gradients does the same
                self.dist.average_gradients(self.params)
                if r.grad_clip:
                    nn.utils.clip_grad_norm_(self.params, r.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                loss_sum += loss.double() * len(labels)
                seen += len(labels)
                bar.advance(loss if step % 10 == 0 else None)
        # Training never reads the running statistics (batch norm uses the batch's, and every evaluation
        # recalibrates a copy), but each rank updated them from its own images: averaged, every rank holds
        # rank 0's checkpoint, so a resumed rank goes on exactly as it would have
        self.dist.average_buffers(self.supernet)
        total_loss, total_seen = self.dist.sum([loss_sum.item(), float(seen)], self.dev)
        self._sync_classifier()
        # The largest and smallest of the phase the epoch ended in (ofa: the subnets trained so far)
        ends = sandwich_archs(self.space, self.supernet, np.random.default_rng(0), 0,
                              self.phase((epoch + 1) * self.steps - 1)[1])
        accs = [self.accuracy(a) if len(self.data.val_y) else math.nan for a in ends[:2]]
        if self.space.name == "nb201":
            accs[1] = math.nan  # no smallest subnet in nb201's sandwich
        return {"epoch": epoch + 1, "phase": phase, "loss": total_loss / max(total_seen, 1),
                "largest_val_acc": accs[0], "smallest_val_acc": accs[1], "lr": lr,
                "seconds": time.perf_counter() - start}

    def accuracy(self, arch: Any) -> float:
        """Validation accuracy (%) of subnet ``arch`` (inherited weights, recalibrated BN; supernet untouched)."""
        # Each rank recalibrates on all the images (so the statistics are a single process's) and counts
        # the hits on its share of the validation images
        def prepare(x: torch.Tensor) -> torch.Tensor:
            return self.data.prepare(self.space, x, arch, self.dev)

        hits = _subnet_hits(self.supernet, arch, self.data.recal, self.val_x, self.val_y, prepare,
                            self.recipe.batch_size)
        total_hits, total = self.dist.sum([float(hits), float(len(self.val_y))], self.dev)
        return 100.0 * total_hits / total


def evaluate_subnet(supernet: nn.Module, space: Any, arch: Any, recal: torch.Tensor, val: ImageData,
                    batch_size: int = 256) -> float:
    """Top-1 accuracy (%) on ``val`` of ``arch`` cut from ``supernet``, BN recalibrated on uint8 ``recal``."""
    dev = next(supernet.parameters()).device

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return _ImageEpochs.prepare(space, x, arch, dev)

    return 100.0 * _subnet_hits(supernet, arch, recal, val.x, val.y, prepare, batch_size) / len(val)


def _subnet_hits(supernet: nn.Module, arch: Any, recal: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> int:
    """How many of ``val_x`` subnet ``arch`` (BN recalibrated on ``recal``) classifies as ``val_y``; ``prepare``
    turns stored examples into the subnet's input on the supernet's device."""
    from nas.inherited import count_correct, recalibrate_bn

    dev = next(supernet.parameters()).device
    net = supernet.subnet(arch).to(dev)  # type: ignore[operator]  # a space builds its networks on the CPU
    with torch.no_grad():
        recalibrate_bn(net, (prepare(x) for x in recal.split(batch_size)))
    return count_correct(lambda x: net(prepare(x)), val_x, val_y, batch_size)
