"""Image data for training networks and supernets: decoded once, kept as uint8 tensors, augmented on the fly.

A source is a folder with ``train/`` and ``test/`` sub-folders of one folder of images per class (the
layout of ``../shared/data/cifar10_jpeg``) or an ``.npz`` with ``x_train``, ``y_train``, ``x_test``,
``y_test`` (images ``N,C,H,W`` or ``N,H,W,C``, uint8). A folder is decoded once (Pillow) and cached as an
``.npz`` in ``~/.cache/zcnas/datasets`` (``$ZCNAS_CACHE_DIR``), keyed by the folder's file names and
sizes, so later runs start in a second. Augmentation (random crop with padding, flip, cutout) is plain
tensor work driven by an explicit ``torch.Generator``, so a run is reproducible from its seed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nas.rng import class_round_robin
from proxies.cache import default_cache_dir
from proxies.data import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SUFFIXES

__all__ = ["ImageData", "augment", "balanced_subset", "load_split", "normalise", "split_in_two"]


@dataclass(frozen=True)
class ImageData:
    """Images as uint8 ``(N, C, H, W)`` with int64 labels and the class names."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        """How many classes the labels range over."""
        return len(self.classes)

    def take(self, idx: np.ndarray | torch.Tensor) -> ImageData:
        """The images at ``idx``."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return ImageData(self.x[idx], self.y[idx], self.classes)


def load_split(source: str | os.PathLike[str], split: str) -> ImageData:
    """The ``train`` or ``test`` split of an image folder or ``.npz`` (see the module docstring)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        return _from_npz(path, split)
    if path.is_dir():
        folder = path / split
        if not folder.is_dir():
            raise ValueError(f"--data {path}: expected {split}/ with one folder of images per class inside "
                             f"(found {sorted(p.name for p in path.iterdir())[:8]})")
        return _from_folder(folder)
    raise ValueError(f"--data {source}: expected a folder with train/ and test/ class folders, or an .npz "
                     "with x_train, y_train, x_test, y_test")


def _from_npz(path: Path, split: str) -> ImageData:
    with np.load(path, allow_pickle=False) as data:
        keys = (f"x_{split}", f"y_{split}")
        if not all(k in data for k in keys):
            raise ValueError(f"{path}: needs arrays {', '.join(keys)}; found {sorted(data.files)}")
        x, y = data[keys[0]], data[keys[1]]
        classes = tuple(str(c) for c in data["classes"]) if "classes" in data else None
    if x.ndim != 4:
        raise ValueError(f"{path}: {keys[0]} must be 4-D images, got shape {x.shape}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: {keys[0]} must be uint8 images (0-255), got {x.dtype}")
    classes = classes or tuple(str(c) for c in range(int(y.max()) + 1))
    return ImageData(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)), classes)


def _from_folder(folder: Path) -> ImageData:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{folder}: needs one sub-folder of images per class")
    files = [(f, label) for label, c in enumerate(classes) for f in sorted((folder / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    key = hashlib.sha1(str(folder.resolve()).encode())
    for f, _ in files:
        key.update(f"{f.parent.name}/{f.name}:{f.stat().st_size}".encode())
    cached = default_cache_dir() / "datasets" / f"{folder.name}-{key.hexdigest()[:16]}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as data:
            return ImageData(torch.from_numpy(data["x"]), torch.from_numpy(data["y"]), tuple(classes))
    from PIL import Image

    images = []
    for f, _ in files:
        with Image.open(f) as img:
            images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    if len({a.shape for a in images}) > 1:
        raise ValueError(f"{folder}: images of different sizes ({sorted({a.shape for a in images})[:3]}...); "
                         "resize them to one size first")
    x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    y = np.array([label for _, label in files], dtype=np.int64)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")  # concurrent decoders never share it
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, cached)  # a concurrent reader never sees half a file
    return ImageData(torch.from_numpy(x), torch.from_numpy(y), tuple(classes))


def balanced_subset(data: ImageData, n: int | None, seed: int) -> ImageData:
    """A seeded subset of ``n`` images with the classes as equal as they can be (all when ``n`` is None)."""
    if n is None or n >= len(data):
        return data
    if n < 1:
        raise ValueError(f"--train-size must be at least 1, got {n}")
    order = class_round_robin(data.y.numpy(), np.random.default_rng([int(seed), 0x5EB]))
    return data.take(np.sort(order[:n]))


def split_in_two(data: ImageData, seed: int) -> tuple[ImageData, ImageData]:
    """Two class-balanced halves (one-shot search: weights train on one, architecture on the other)."""
    rng = np.random.default_rng([int(seed), 0x2])
    y = data.y.numpy()
    first, second = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2:])
    return data.take(np.sort(np.concatenate(first))), data.take(np.sort(np.concatenate(second)))


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float, standardised with CIFAR-10's channel statistics (3 channels) or to [-1, 1]."""
    out = x.float().div_(255.0)
    if out.shape[1] == 3:
        mean = torch.tensor(CIFAR10_MEAN, device=out.device).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD, device=out.device).view(1, 3, 1, 1)
        return (out - mean) / std
    return out.mul_(2).sub_(1)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True,
            cutout: int = 0) -> torch.Tensor:
    """Random crop after zero padding, horizontal flip and cutout of a normalised batch (N, C, H, W)."""
    n, _, h, w = x.shape
    dev = x.device
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev)[None])  # (n, h)
        cols = (dx[:, None] + torch.arange(w, device=dev)[None])  # (n, w)
        batch = torch.arange(n, device=dev)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(dev)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    if cutout:
        cy = torch.randint(0, h, (n,), generator=generator).to(dev)
        cx = torch.randint(0, w, (n,), generator=generator).to(dev)
        ys = torch.arange(h, device=dev)[None, :, None]
        xs = torch.arange(w, device=dev)[None, None, :]
        half = cutout // 2  # a cutout x cutout square centred on (cy, cx), clipped at the border (DARTS)
        dy, dx = ys - cy[:, None, None], xs - cx[:, None, None]
        hole = (dy >= -half) & (dy < cutout - half) & (dx >= -half) & (dx < cutout - half)
        x = x * (~hole)[:, None].to(x.dtype)
    return x.contiguous()
