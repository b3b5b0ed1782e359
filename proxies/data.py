"""Calibration data for proxies: shipped real CIFAR-10 images, user files, or Gaussian noise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class Batch:
    """Inputs and integer class targets for one proxy evaluation; ``teacher`` (a
    :class:`proxies.distill.TeacherReference`) serves the distillation-aware proxies."""

    inputs: torch.Tensor
    targets: torch.Tensor
    name: str = "cifar10"
    teacher: Any = None

    @property
    def num_classes(self) -> int:
        """Number of classes present in the targets' label range."""
        return int(self.targets.max().item()) + 1

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        teacher = None if self.teacher is None else self.teacher.to(device)
        return Batch(self.inputs.to(device), self.targets.to(device), self.name, teacher)

    def resized(self, size: tuple[int, int]) -> Batch:
        """The batch bilinearly resized to ``size`` (H, W); unchanged when it already has that size."""
        if tuple(self.inputs.shape[-2:]) == tuple(size) or not self.inputs.is_floating_point():
            return self  # token ids (sequence models) are never resized
        x = F.interpolate(self.inputs, size=size, mode="bilinear", align_corners=False)
        return Batch(x, self.targets, self.name, self.teacher)


def _normalise(x_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(x_uint8)).float().div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x - mean) / std if x.shape[1] == 3 else x


def calibration_batch(batch_size: int = 64, seed: int = 0,
                      input_shape: tuple[int, int, int] = (3, 32, 32)) -> Batch:
    """A class-balanced batch of the real CIFAR-10 images shipped in the package, resized to ``input_shape``."""
    with resources.files("proxies").joinpath("data/cifar10_calibration.npz").open("rb") as f:
        data = np.load(f)
        x, y = data["x"], data["y"]
    if batch_size > len(x):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(x)} shipped calibration images; "
                         "pass your own data with --data")
    idx = _balanced_indices(y, batch_size, np.random.default_rng(seed))
    batch = Batch(_normalise(x[idx]), torch.from_numpy(y[idx].astype(np.int64)), "cifar10")
    return batch.resized(input_shape[1:])


def _balanced_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(y)
    per_class = [rng.permutation(np.where(y == c)[0]) for c in classes]
    order = [idx for row in zip(*per_class, strict=False) for idx in row]  # round-robin over classes
    taken = set(order)
    order += [i for i in rng.permutation(len(y)) if i not in taken]
    return np.asarray(order[:n])


def load_batch(source: str | os.PathLike[str] | None = None, batch_size: int = 64, seed: int = 0,
               input_shape: tuple[int, int, int] = (3, 32, 32)) -> Batch:
    """A batch from ``source``: None (shipped CIFAR-10), ``"gaussian"``, an ``.npz`` with ``x``/``y``,
    or a folder with one sub-folder of images per class. A 1-D ``input_shape`` (seq_len,) means token
    inputs: shipped text, or a ``.txt`` / token ``.npy`` file (see :mod:`proxies.text`); ``(1, 1, samples)``
    means mono 16 kHz audio: synthetic voices or a folder of wav files per speaker (see :mod:`proxies.audio`)."""
    if len(input_shape) == 1:  # token models: input_shape is (seq_len,); read text
        from proxies.text import load_text_batch
        return load_text_batch(source, batch_size, seed, input_shape[0])
    if len(input_shape) == 3 and tuple(input_shape[:2]) == (1, 1) and str(source) != "gaussian":
        from proxies.audio import load_audio_batch  # audio models: (1, 1, samples) mono waveforms
        return load_audio_batch(source, batch_size, seed, input_shape[2])
    if source is None or str(source) == "cifar10":
        return calibration_batch(batch_size, seed, input_shape)
    rng = np.random.default_rng(seed)
    if str(source) == "gaussian":
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, *input_shape, generator=gen)
        y = torch.from_numpy(rng.integers(10, size=batch_size))
        return Batch(x, y, "gaussian")
    path = Path(source)
    if _is_training_layout(path):  # the layout of `nas train` data: calibrate on its train split only
        return _from_training_layout(path, batch_size, rng, input_shape)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise ValueError(f"{path}: an .npz needs arrays 'x' (N,C,H,W or N,H,W,C) and 'y'; "
                                 f"found {sorted(data.files)}")
            x, y = data["x"], data["y"]
        if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        idx = _balanced_indices(y, min(batch_size, len(x)), rng)
        xt = _normalise(x[idx]) if x.dtype == np.uint8 else torch.from_numpy(x[idx]).float()
        return Batch(xt, torch.from_numpy(y[idx].astype(np.int64)), path.stem).resized(input_shape[1:])
    if path.is_dir():
        return _load_image_folder(path, batch_size, rng, input_shape)
    raise ValueError(f"--data {source!r}: expected 'cifar10', 'gaussian', an .npz file or an image folder")


def _is_training_layout(path: Path) -> bool:
    """A folder with ``train/`` (and ``test/``) class folders, or an ``.npz`` with ``x_train``/``y_train``."""
    if path.is_dir():
        return (path / "train").is_dir() and any(p.is_dir() for p in (path / "train").iterdir())
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return "x_train" in data.files and "x" not in data.files
    return False


def _from_training_layout(path: Path, batch_size: int, rng: np.random.Generator,
                          input_shape: tuple[int, int, int]) -> Batch:
    """A class-balanced batch of the ``train`` split (never ``test``: it is kept for reporting)."""
    from nas.datasets import load_split

    train = load_split(path, "train")
    y = train.y.numpy()
    idx = _balanced_indices(y, min(batch_size, len(y)), rng)
    x = train.x[torch.from_numpy(idx)]
    return Batch(_normalise(x.numpy()), torch.from_numpy(y[idx].astype(np.int64)),
                 path.stem).resized(input_shape[1:])


def _load_image_folder(path: Path, batch_size: int, rng: np.random.Generator,
                       input_shape: tuple[int, int, int]) -> Batch:
    from matplotlib import image as mpimg

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{path}: an image folder needs one sub-folder per class")
    files = [(f, label) for label, c in enumerate(classes) for f in sorted(c.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    labels = np.array([label for _, label in files])
    idx = _balanced_indices(labels, min(batch_size, len(files)), rng)
    images = []
    for i in idx:
        img = np.asarray(mpimg.imread(files[i][0]), dtype=np.float32)
        img = img / 255.0 if img.max() > 1.0 else img
        img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
        t = torch.from_numpy(img).permute(2, 0, 1)[None]
        images.append(F.interpolate(t, size=input_shape[1:], mode="bilinear", align_corners=False))
    x = torch.cat(images)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    y = torch.from_numpy(labels[idx].astype(np.int64))
    return Batch((x - mean) / std, y, path.name)
