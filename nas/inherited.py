"""Inherited-weight accuracy (``acc_ws``): a subnet of a trained supernet, scored without training it.

Once-for-all's evaluation, as a search objective: the candidate's standalone subnet is copied out of the
supernet (``supernet.subnet(arch)``), its BatchNorm statistics are recalibrated on a few batches of
training images (:func:`recalibrate_bn`: running statistics reset, then a cumulative average over the
batches in train mode), and its top-1 accuracy (%) is measured in eval mode on a held-out validation
split of the training images. Both image sets come from the ``train`` split of ``--data``
(:func:`held_out`: seeded and class-balanced, disjoint); the test split is never read. Images are resized
to the candidate's own input (``arch.r`` for ofa).

An audio space (``tdnn``) reads a speaker folder ``DIR/<speaker>/<utt>.wav`` instead (:func:`held_out_audio`):
the validation utterances are those the supernet held out when its checkpoint says so (``nas supernet
train`` on the same folder; otherwise any), at most ``val_size`` of them, speakers in turn, each scored on
its central window in noise drawn once from the seed; BN is recalibrated on noisy random crops of the
other utterances (:mod:`nas.audio_data`).

A :class:`SupernetScorer` is what the evaluator holds: it pickles as its settings, and each process loads
the checkpoint and the images once (a lock makes the first load thread-safe; later reads share the
supernet, and every candidate gets its own subnet copy), so serial, threaded and Ray evaluation agree.

Example:
    >>> scorer = SupernetScorer(space, "supernet.pt", "data/cifar10_jpeg")  # doctest: +SKIP
    >>> scorer.accuracy(space.smallest(32))                                 # doctest: +SKIP
    12.4
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.datasets import ImageData, load_split, normalise
from nas.rng import class_round_robin, seeded_global_rng
from search_spaces import SearchSpace, arch_input_shape

__all__ = ["ACC_WS", "SUPERNET_OBJECTIVES", "HeldOut", "SupernetScorer", "held_out", "held_out_audio",
           "inherited_accuracy", "recalibrate_bn"]

ACC_WS = "acc_ws"
"""The objective: inherited-weight top-1 accuracy (%) on the held-out split, maximised."""

SUPERNET_OBJECTIVES = frozenset({ACC_WS})
"""Objectives computed from a supernet rather than by a proxy."""

DEFAULT_VAL_SIZE = 500
"""Held-out validation images per candidate (class-balanced): 5 % steps of accuracy on 10 classes are
then resolved to about +-2 %, enough to rank, at a cost a CPU search affords."""

DEFAULT_BN_BATCHES = 4
"""Recalibration batches of :data:`BN_BATCH_SIZE` images (OFA recalibrates on about 2,000 images; 256
give statistics that move accuracy by well under a point at CIFAR scale and cost a fifth of the time)."""

BN_BATCH_SIZE = 64
EVAL_BATCH_SIZE = 100

@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor],
                   forward: Callable[[torch.Tensor], Any] | None = None) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain mean over ``batches``
    (each run through ``forward``, default ``model``, in train mode); returns ``model`` in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    missing = [m for m in norms if not m.track_running_stats or m.running_mean is None]
    if missing:
        raise ValueError(f"{len(missing)} BatchNorm layer(s) keep no running statistics to recalibrate; "
                         "give them buffers first (nas.strategies.weight_sharing.track_running_stats)")
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch weighs the same, whatever their number
    model.train()
    seen = 0
    try:
        for x in batches:
            (forward or model)(x)
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    if seen == 0:
        raise ValueError("BN recalibration needs at least one batch of images")
    return model.eval()


@torch.no_grad()
def inherited_accuracy(model: nn.Module, images: ImageData, shape: tuple[int, ...],
                       device: torch.device | str = "cpu", batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode on ``images`` resized to ``shape`` (C, H, W)."""
    model.eval()
    correct = count_correct(lambda x: model(_inputs(x, shape, device)), images.x, images.y, batch_size)
    return 100.0 * correct / max(1, len(images))


@torch.no_grad()
def count_correct(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  batch_size: int, order: torch.Tensor | None = None) -> int:
    """How many of the stored examples ``x`` are classified as ``y``, ``batch_size`` at a time, in ``order``
    (indices; default all in turn) without copying ``x``; ``forward`` maps a batch of ``x`` to logits (input
    preparation and device included)."""
    correct = 0
    for i in range(0, len(y) if order is None else len(order), batch_size):
        part = slice(i, i + batch_size) if order is None else order[i:i + batch_size]
        pred = forward(x[part]).argmax(1)
        correct += int((pred == y[part].to(pred.device)).sum())
    return correct


def _inputs(x: torch.Tensor, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """uint8 images -> normalised float at the network's input size (bilinear, as the proxies' data); float
    inputs (an audio space's waveforms) are already what the network takes."""
    if x.is_floating_point():
        return x.to(device)
    out = normalise(x.to(device))
    if tuple(out.shape[2:]) != tuple(shape[1:]):
        out = F.interpolate(out, size=tuple(shape[1:]), mode="bilinear", align_corners=False)
    return out


@dataclass(frozen=True)
class HeldOut:
    """The images ``acc_ws`` reads: a validation split and recalibration images, both from ``train`` (for an
    audio space: float waveforms of the speakers' utterances, see :func:`held_out_audio`)."""

    val: ImageData
    calib: ImageData

    def digest(self) -> str:
        """SHA-1 of both image sets and the labels (a changed data folder is caught on resume)."""
        h = hashlib.sha1()
        for t in (self.val.x, self.val.y, self.calib.x):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def held_out(source: str | os.PathLike[str], val_size: int, calib_size: int, seed: int,
             trained: ImageData | None = None) -> HeldOut:
    """``val_size`` class-balanced validation images and ``calib_size`` others for BN recalibration, drawn
    with ``seed`` from the ``train`` split of ``source`` (a folder or ``.npz`` as :mod:`nas.datasets` reads);
    images in ``trained`` (those the supernet trained on) are never validation images."""
    if val_size < 1 or calib_size < 1:
        raise ValueError(f"--val-size and --bn-batches must be at least 1, got {val_size} and "
                         f"{calib_size // BN_BATCH_SIZE}")
    train = load_split(source, "train")
    allowed = np.ones(len(train), dtype=bool)
    if trained is not None:
        seen = {bytes(img.numpy().tobytes()) for img in trained.x}
        allowed = np.array([bytes(img.numpy().tobytes()) not in seen for img in train.x], dtype=bool)
    if int(allowed.sum()) < val_size or len(train) <= val_size:
        raise ValueError(f"--data {source}: its train split has {int(allowed.sum())} images the supernet did "
                         f"not train on (of {len(train)}), too few to hold out --val-size {val_size} and keep "
                         "images for BN recalibration; lower --val-size")
    rng = np.random.default_rng([int(seed), 0xACC])
    y = train.y.numpy()
    per_class = [list(rng.permutation(np.flatnonzero((y == c) & allowed))) for c in np.unique(y)]
    order: list[int] = []
    for i in range(max(len(p) for p in per_class)):  # round-robin: the classes as equal as they can be
        order.extend(int(p[i]) for p in per_class if i < len(p))
    val = np.sort(np.asarray(order[:val_size]))
    rest = np.setdiff1d(np.arange(len(train)), val)  # recalibration may use training images, as OFA does
    calib = rest[rng.permutation(len(rest))[:calib_size]]  # random order: every batch mixes the classes
    return HeldOut(train.take(val), train.take(calib))


def held_out_audio(source: str | os.PathLike[str], val_size: int, calib_size: int, seed: int, samples: int,
                   checkpoint: str | os.PathLike[str] | None = None) -> HeldOut:
    """Up to ``val_size`` validation segments of held-out utterances of speaker folder ``source`` (speakers in
    turn; those ``checkpoint``'s run held out when it trained on this folder) and ``calib_size`` noisy crops
    of the other utterances for BN recalibration, ``samples`` long, drawn with ``seed``."""
    from nas.audio_data import load_speakers, recalibration_crops, validation_segments

    if val_size < 1 or calib_size < 1:
        raise ValueError(f"--val-size and --bn-batches must be at least 1, got {val_size} and "
                         f"{calib_size // BN_BATCH_SIZE}")
    data = load_speakers(source)
    allowed = np.ones(len(data), dtype=bool)
    held = None if checkpoint is None else _held_out_files(checkpoint, data)
    if held is not None:
        allowed = np.array([f in held for f in data.files], dtype=bool)
    candidates = np.flatnonzero(allowed)
    order = candidates[class_round_robin(data.labels.numpy()[candidates], np.random.default_rng([int(seed), 0xACC]))]
    val = np.sort(order[:val_size])
    rest = np.setdiff1d(np.arange(len(data)), val)
    if len(val) == 0 or len(rest) == 0:
        raise ValueError(f"--data {source}: no utterances to validate on and recalibrate with ({len(val)} held out "
                         f"of {len(data)}); the supernet's run held out none (--val-size 0)?")
    names = tuple(data.speakers)
    val_set, train_set = data.take(val), data.take(rest)
    calib_x, calib_y = recalibration_crops(train_set, calib_size, samples, seed)
    return HeldOut(ImageData(validation_segments(val_set, samples, seed), val_set.labels, names),
                   ImageData(calib_x, calib_y, names))


def _training_settings(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``nas supernet train`` settings a checkpoint stores, when they name the data it trained on."""
    import json

    from nas.supernets import read_checkpoint

    settings = read_checkpoint(path).get("settings")
    if not isinstance(settings, str):
        return None
    s = json.loads(settings)
    return s if s.get("data") else None


def _held_out_files(path: str | os.PathLike[str], data: Any) -> set[str] | None:
    """The utterances (relative paths) a ``nas supernet train`` checkpoint held out, when it trained on a
    folder with the same files as ``data``; ``None`` when it does not say."""
    from nas.audio_data import held_out_split
    from proxies.audio import speaker_files

    s = _training_settings(path)
    if s is None:
        return None
    try:
        root = Path(s["data"])
        theirs = tuple(str(f.relative_to(root)) for _, files in speaker_files(root) for f in files)
    except (ValueError, OSError):
        return None  # trained on data not here: nothing to compare with
    if theirs != data.files:
        return None
    return set(held_out_split(data, s.get("val_size"), int(s.get("seed") or 0))[1].files)


def file_sha1(path: str | os.PathLike[str]) -> str:
    """SHA-1 (16 hex digits) of a file's bytes, read in chunks (checkpoints reach hundreds of MB)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def checkpoint_space_options(path: str | os.PathLike[str], space: str) -> dict[str, Any]:
    """The options of space ``space`` a zcnas supernet checkpoint was trained with (``{}`` for an official
    OFA file or another space's checkpoint, which loading then reports)."""
    from nas.supernets import FORMAT, read_checkpoint

    data = read_checkpoint(path)
    if data.get("format") != FORMAT or data.get("space") != space:
        return {}
    return dict(data.get("space_options") or {})


def trained_images(path: str | os.PathLike[str], data: str | os.PathLike[str]) -> ImageData | None:
    """The training images of a ``nas supernet train`` checkpoint when it trained on the train split of
    ``data`` (same number of images), rebuilt from its stored settings; ``None`` when it does not say."""
    from nas.datasets import balanced_subset
    from nas.training import hold_out

    s = _training_settings(path)
    if s is None:
        return None
    try:
        theirs = load_split(s["data"], "train")
    except (ValueError, OSError):
        return None  # trained on data not here: nothing to compare with
    ours = load_split(data, "train")
    if len(theirs) != len(ours):
        return None
    seed = int(s.get("seed") or 0)
    pool = balanced_subset(theirs, s.get("train_size"), seed)
    n_val = round(0.1 * len(pool)) if s.get("val_size") is None else int(s["val_size"])
    return hold_out(pool, n_val, seed)[0]


# One loaded supernet and one set of images per process, whoever asks: Ray workers and threads share them.
_LOCK = threading.Lock()
_SUPERNETS: dict[tuple[str, str, str], nn.Module] = {}
_DATA: dict[tuple[str, int, int, int], HeldOut] = {}


@dataclass
class SupernetScorer:
    """Scores architectures of ``space`` by inherited-weight accuracy on a checkpoint's supernet.

    ``digest`` (the checkpoint's :func:`file_sha1`, stored in the run) makes a worker refuse a file that
    changed after the run started. Picklable: only the settings travel; the loaded state is per process.

    Example:
        >>> scorer = SupernetScorer(space, "supernet.pt", "data.npz", val_size=200)  # doctest: +SKIP
        >>> net = scorer.subnet(arch)   # standalone, recalibrated, eval mode          # doctest: +SKIP
    """

    space: SearchSpace
    path: str
    data: str
    seed: int = 0
    val_size: int = DEFAULT_VAL_SIZE
    bn_batches: int = DEFAULT_BN_BATCHES
    device: str | None = None
    digest: str | None = None
    _dev: torch.device | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dev": None}

    @property
    def dev(self) -> torch.device:
        """The torch device evaluations run on (the run's ``--device``, else CPU)."""
        if self._dev is None:
            self._dev = torch.device(self.device or "cpu")
        return self._dev

    def supernet(self) -> nn.Module:
        """The checkpoint's supernet (eval mode), loaded once per process; raises naming a bad file."""
        from nas.evaluate import space_key

        key = (str(Path(self.path).resolve()), self.digest or "", space_key(self.space))
        with _LOCK:
            if key not in _SUPERNETS:
                if not Path(self.path).is_file():
                    raise FileNotFoundError(f"supernet checkpoint {self.path} does not exist (moved or deleted "
                                            "since the run started?)")
                if self.digest is not None and file_sha1(self.path) != self.digest:
                    raise ValueError(f"supernet checkpoint {self.path} changed since the run started "
                                     f"(digest {self.digest}); restore it or start a new run")
                _SUPERNETS[key] = _load(self.path, self.space).to(self.dev).eval()
            return _SUPERNETS[key]

    def images(self) -> HeldOut:
        """The validation and recalibration images, loaded once per process; validation images exclude
        those the supernet trained on when its checkpoint says which (``nas supernet train``'s settings)."""
        # which images are held out depends on the checkpoint, and audio segments on the input length
        key = (str(self.data), str(self.path), int(self.val_size), int(self.bn_batches), int(self.seed),
               int(getattr(self.space, "samples", 0)))
        with _LOCK:
            if key not in _DATA:
                if getattr(self.space, "input_kind", "image") == "audio":
                    _DATA[key] = held_out_audio(self.data, self.val_size, self.bn_batches * BN_BATCH_SIZE,
                                                self.seed, int(self.space.samples), self.path)
                else:
                    _DATA[key] = held_out(self.data, self.val_size, self.bn_batches * BN_BATCH_SIZE, self.seed,
                                          trained_images(self.path, self.data))
            return _DATA[key]

    def check(self) -> HeldOut:
        """Load the supernet and the images now and check that they fit each other (before a run starts)."""
        sup, data = self.supernet(), self.images()
        channels = int(self.space.input_shape[0])
        if data.val.x.shape[1] != channels:
            raise ValueError(f"--data {self.data}: images have {data.val.x.shape[1]} channel(s), the "
                             f"{self.space.name} supernet takes {channels}")
        classes = _classes(sup)
        if classes is not None and data.val.num_classes > classes:
            raise ValueError(f"--data {self.data} has {data.val.num_classes} classes but the supernet's "
                             f"classifier has {classes}; use a checkpoint trained on these data (or pass "
                             f"--space-option num_classes={data.val.num_classes} with one that has as many)")
        return data

    def subnet(self, arch: Any) -> nn.Module:
        """The standalone subnet of ``arch`` with the inherited weights and recalibrated BN, in eval mode."""
        sup = self.supernet()
        # subnet() builds a fresh network from torch's global generator before copying the weights in:
        # under the global-RNG lock, so that it never shifts the seeded builds of other threads.
        with seeded_global_rng(0):
            net = sup.subnet(arch)
        net = net.to(self.dev)
        shape = arch_input_shape(self.space, arch)
        calib = self.images().calib
        batches = (_inputs(calib.x[i:i + BN_BATCH_SIZE], shape, self.dev)
                   for i in range(0, len(calib), BN_BATCH_SIZE))
        return recalibrate_bn(net, batches)

    def accuracy(self, arch: Any) -> float:
        """``acc_ws`` of ``arch``: top-1 (%) on the validation split after BN recalibration."""
        return inherited_accuracy(self.subnet(arch), self.images().val, arch_input_shape(self.space, arch),
                                  self.dev)


def _load(path: str, space: SearchSpace) -> nn.Module:
    from nas.supernets import load_supernet

    return load_supernet(path, space)


def _classes(module: nn.Module) -> int | None:
    """Width of the supernet's classifier (its last Linear), if it has one."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return int(linears[-1].out_features) if linears else None
