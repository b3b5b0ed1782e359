"""Train one architecture of an image space from scratch: ``nas.train`` and ``nas train``.

The recipe of each space (optimiser, schedule, augmentation, with sources) is in :mod:`nas.recipes`.
The data (:mod:`nas.datasets`) are in-memory uint8 tensors; each batch is sliced, normalised and
augmented as tensors on the training device, so no loader workers are needed and torch's own threads
keep the cores busy. A seeded, class-balanced part of the training split (``val_size``, default 10%) is
held out for the per-epoch validation accuracy; the test split is evaluated once, at the end, for
``metrics.json`` only and never for a choice.

Reproducible and resumable: the network is initialised from the seed (:func:`search_spaces.build_seeded`),
and every random draw of an epoch (data order, crop/flip/cutout, drop-path, dropout) comes from
generators seeded with ``(seed, epoch, rank)`` alone. A checkpoint after every epoch (model, optimiser,
scheduler, epoch, the epoch's generator states; written atomically) therefore lets ``resume=True``
(``nas train --resume DIR``) continue a killed run to the very weights an uninterrupted run reaches on
the CPU (cuDNN's kernels may differ in the last bits on a GPU).

Data-parallel: under ``torchrun --nproc_per_node N -m nas train ...`` (or any launcher that sets the
``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` variables) each process joins a ``torch.distributed`` group (gloo
on CPU, NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``), wraps the network in
``DistributedDataParallel`` and trains on a disjoint shard of each epoch's permutation with
``batch_size / N`` images per step (the global batch stays the recipe's). Only rank 0 writes files.

Outputs in ``out``: ``config.json`` (the settings, for ``--resume``), ``train.csv`` (per epoch: epoch,
loss, train_acc, val_acc, lr, seconds), ``curve.png``, ``checkpoint.pt``, and at the end
``metrics.json``, ``model.pt`` (the state dict; ``torch.load(..., weights_only=True)`` and
``space.build(arch, num_classes=..., input_shape=...).load_state_dict``) and ``model.onnx`` (the trained
network itself, exported in eval mode). Accuracies are percentages.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import search_spaces
from nas.datasets import ImageData, augment, balanced_subset, load_split, normalise
from nas.errors import ResumeConflict
from nas.inherited import count_correct
from nas.recipes import Recipe, recipe_for

__all__ = ["TrainResult", "train"]

log = logging.getLogger(__name__)

FLAGS = {"space": "--space", "space_options": "--space-option", "arch": "--arch", "data": "--data",
         "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "train_size": "--train-size",
         "val_size": "--val-size", "seed": "--seed", "amp": "--amp", "recipe": "recipe",
         "kd": "--teacher/--kd-temperature/--kd-alpha",
         "world_size": "the number of processes (torchrun --nproc_per_node)",
         "init": "init (the starting weights)"}
"""The flag that sets each stored setting, named when ``--resume`` is given a different value."""

_ORDER, _AUGMENT, _DROP_PATH, _GLOBAL = range(4)  # independent random streams of an epoch
_CSV_FIELDS = ("epoch", "loss", "train_acc", "val_acc", "lr", "seconds")


@dataclass
class TrainResult:
    """What :func:`train` produced: accuracies (%), the per-epoch history and the trained network."""

    out: Path
    space: str
    arch: str
    test_accuracy: float
    val_accuracy: float | None
    params: int
    seconds_per_epoch: float
    history: list[dict[str, float]]
    model: nn.Module = field(repr=False)


def train(space: str | None = None, arch: Any = None, data: str | os.PathLike[str] | None = None, *,
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          train_size: int | None = None, val_size: int | None = None, seed: int | None = None,
          out: str | os.PathLike[str] | None = None, space_options: dict[str, Any] | None = None,
          resume: bool = False, device: str | None = None, progress: bool = True,
          recipe: Recipe | None = None, amp: bool | None = None,
          teacher: str | os.PathLike[str] | None = None, kd_temperature: float | None = None,
          kd_alpha: float | None = None, init: str | os.PathLike[str] | None = None,
          callback: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train ``arch`` of ``space`` on ``data`` from scratch and write the outputs to ``out``.

    Args:
        space: space name (``search_spaces.get(space, **space_options)``); nb201, nb101, darts, ofa, fbnet.
        arch: the architecture (its string or value).
        data: a folder with ``train/`` and ``test/`` class folders, or an ``.npz`` (see :mod:`nas.datasets`).
        epochs, batch_size, lr: override the space's recipe (:mod:`nas.recipes`); ``recipe`` replaces it.
        train_size: a seeded class-balanced subset of the training split (default all); ``val_size`` of
            it (default 10%) is held out for validation, the rest trains.
        seed: initial weights, data order, augmentation and the validation split (default 0).
        out: output folder (default ``runs/train-<space>-<arch hash>-s<seed>``); must not hold a run yet.
        resume: continue the run in ``out`` from its last checkpoint; settings left ``None`` are the
            stored ones and any other must agree (:class:`nas.errors.ResumeConflict` names the flag).
        device: ``cpu``, ``cuda``, ``cuda:1`` (default: CUDA when present).
        amp: bfloat16 autocast (fast on recent GPUs; default off).
        teacher: a ``nas train`` output folder: distil from that trained network with Hinton et al.'s
            loss ``(1 - kd_alpha) * CE + kd_alpha * T^2 * KL(teacher_T || student_T)`` at temperature
            ``T = kd_temperature`` (defaults 0.9 and 4, the settings of CRD's KD baseline, Tian et al.
            ICLR 2020); the teacher sees the same augmented images in eval mode.
        init: a state dict file (``torch.save``, read with ``weights_only=True``) of this architecture's
            network to start from instead of fresh weights: fine-tuning, e.g. a network grown by
            function-preserving transformations (:mod:`nas.eas`); its digest is part of the settings.
        callback: called with each epoch's row after its checkpoint is written.

    Example:
        >>> result = nas.train("nb201", "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|"
        ...                    "nor_conv_3x3~1|nor_conv_3x3~2|", "cifar.npz", epochs=2, train_size=1000,
        ...                    space_options={"channels": 8, "cells_per_stage": 1}, out="runs/t")
        >>> result.test_accuracy  # doctest: +SKIP
    """
    dev = resolve_device(device)
    dist = Distributed.start(dev)
    try:
        dev = dist.local_device(dev)
        kd = _kd_settings(teacher, kd_temperature, kd_alpha)
        settings, out_dir = _settings(space, arch, data, epochs, batch_size, lr, train_size, val_size, seed,
                                      out, space_options, resume, recipe, amp, dist.world, kd, _init_settings(init))
        # Loading the data and building the network check the rest of the input before anything is written
        trainer = _Trainer(settings, out_dir, dev, dist, progress and dist.rank == 0, callback)
        dist.write_config(out_dir, settings)
        return trainer.run()
    finally:
        dist.stop()


def _settings(space: str | None, arch: Any, data: Any, epochs: int | None, batch_size: int | None,
              lr: float | None, train_size: int | None, val_size: int | None, seed: int | None, out: Any,
              space_options: dict[str, Any] | None, resume: bool, recipe: Recipe | None, amp: bool | None,
              world: int, kd: dict[str, Any] | None = None,
              init: dict[str, str] | None = None) -> tuple[dict[str, Any], Path]:
    """The run's settings (fresh, or the stored ones checked against those given) and its folder."""
    if resume:
        if out is None:
            raise ValueError("resume needs the run's folder: nas train --resume DIR (or out=DIR)")
        out_dir = Path(out)
        config = out_dir / "config.json"
        if not config.is_file():
            raise ValueError(f"--resume {out_dir}: no config.json there; not a `nas train` output folder")
        stored = json.loads(config.read_text())["settings"]
        space = space or stored["space"]
        options = {**stored["space_options"], **(space_options or {})}
        arch_text = _arch_text(space, options, arch) if arch is not None else stored["arch"]
        base = recipe or Recipe(**stored["recipe"])
        given = {"space": space, "space_options": options, "arch": arch_text,
                 "data": None if data is None else data_path(data),
                 "recipe": recipe_for(space, epochs, batch_size, lr, base=base).to_dict(),
                 "train_size": train_size, "val_size": val_size, "seed": seed, "amp": amp, "world_size": world,
                 "kd": kd, "init": init}
        for key, value in given.items():
            if value is not None and value != stored.get(key):  # runs before kd/init lack those keys
                raise ResumeConflict(_conflict(key, value, stored.get(key), out_dir))
        return stored, out_dir
    if space is None or arch is None or data is None:
        raise ValueError("give the space, the architecture (--arch, --arch-file or a run folder) and --data")
    seed = 0 if seed is None else int(seed)
    if seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {seed}")
    options = dict(space_options or {})
    arch_text = _arch_text(space, options, arch)
    settings = {"space": space, "space_options": options, "arch": arch_text, "data": data_path(data),
                "recipe": recipe_for(space, epochs, batch_size, lr, base=recipe).to_dict(),
                "train_size": train_size, "val_size": val_size, "seed": seed, "amp": bool(amp),
                "world_size": world, "kd": kd, "init": init}
    if out is None:
        out = Path("runs") / f"train-{space}-{hashlib.sha1(arch_text.encode()).hexdigest()[:8]}-s{seed}"
    out_dir = Path(out)
    if (out_dir / "config.json").exists():
        raise FileExistsError(f"{out_dir} already holds a training run: continue it with --resume {out_dir} "
                              "or choose another --out")
    return settings, out_dir


def finished_metrics(out: str | os.PathLike[str], **settings: Any) -> dict[str, Any]:
    """``metrics.json`` of the training in ``out``: read when finished, else resumed when started, else
    trained with ``settings`` (the keyword arguments of :func:`train`), quietly."""
    out = Path(out)
    if not (out / "metrics.json").is_file():
        if (out / "config.json").is_file():
            train(out=out, resume=True, progress=False)
        else:
            train(out=out, progress=False, **settings)
    return json.loads((out / "metrics.json").read_text())


def _kd_settings(teacher: Any, temperature: float | None, alpha: float | None) -> dict[str, Any] | None:
    """The distillation settings (teacher folder, temperature, alpha), checked; None without a teacher."""
    if teacher is None:
        if temperature is not None or alpha is not None:
            raise ValueError("--kd-temperature and --kd-alpha distil from a teacher: give --teacher DIR too")
        return None
    folder = Path(teacher).expanduser().resolve()
    for name in ("metrics.json", "model.pt"):
        if not (folder / name).is_file():
            raise ValueError(f"--teacher {teacher}: no {name} there; give the folder of a finished `nas train`")
    temperature = 4.0 if temperature is None else float(temperature)
    alpha = 0.9 if alpha is None else float(alpha)
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ValueError(f"--kd-temperature must be > 0 and --kd-alpha in [0, 1], got {temperature}, {alpha}")
    return {"teacher": str(folder), "temperature": temperature, "alpha": alpha}


def _init_settings(init: str | os.PathLike[str] | None) -> dict[str, str] | None:
    """The starting-weights file and its digest (a changed file is caught on resume), checked to exist."""
    if init is None:
        return None
    path = Path(init).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"init {init}: no such file (a state dict saved with torch.save)")
    return {"path": str(path), "digest": hashlib.sha1(path.read_bytes()).hexdigest()[:16]}


def load_trained(folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The trained network of a ``nas train`` output folder (eval mode) and its ``metrics.json``."""
    folder = Path(folder)
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file() or not (folder / "model.pt").is_file():
        raise ValueError(f"{folder}: not a finished `nas train` output (metrics.json and model.pt are missing)")
    metrics = json.loads(metrics_file.read_text())
    space = search_spaces.get(metrics["space"], **metrics.get("space_options", {}))
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    # Older outputs lack num_classes: their classifier is the last weight of the state dict
    classes = int(metrics.get("num_classes") or state[[k for k in state if k.endswith(".weight")][-1]].shape[0])
    shape = _input_shape_of(metrics, space)
    net = space.build(space.from_string(metrics["arch"]), num_classes=classes, input_shape=shape)
    net.load_state_dict(state)
    return net.to(device).eval(), metrics


def _input_shape_of(metrics: dict[str, Any], space: Any) -> tuple[int, int, int]:
    """The input shape a trained network was built for (stored since the teacher option; else the space's)."""
    stored = metrics.get("input_shape")
    return tuple(int(d) for d in stored) if stored else tuple(space.input_shape)


def _conflict(key: str, value: Any, stored: Any, out_dir: Path) -> str:
    """The message of a setting given on resume that differs from the stored one."""
    if key == "recipe":
        diff = {k: (value[k], stored[k]) for k in value if value[k] != stored.get(k)}
        named = [k for k in diff if k in FLAGS]
        if named:
            key, (value, stored) = named[0], diff[named[0]]
        else:
            return f"recipe {diff} differs from the run stored in {out_dir}; train a new run with another --out"
    return (f"{FLAGS[key]} {value!r} differs from {stored!r} of the run stored in {out_dir}: a resumed run "
            "keeps its settings (train a new one with another --out)")


def _arch_text(space: str, options: dict[str, Any], arch: Any) -> str:
    """The canonical string of ``arch`` (a string or a value of the space)."""
    built = search_spaces.get(space, **options)
    if len(getattr(built, "input_shape", ())) != 3:
        raise ValueError(f"--space {space}: nas train trains image spaces (nb201, nb101, darts, ofa, fbnet, "
                         "vit); this one takes sequences")
    value = built.from_string(arch) if isinstance(arch, str) else arch
    return built.to_string(value)


def data_path(data: str | os.PathLike[str]) -> str:
    """``data`` as an absolute path, checked to exist."""
    path = Path(data).expanduser()
    if not path.exists():
        raise ValueError(f"--data {data}: no such folder or file (a folder with train/ and test/ class "
                         "folders, or an .npz with x_train, y_train, x_test, y_test)")
    return str(path.resolve())


def resolve_device(device: str | None) -> torch.device:
    """The training device: ``device``, else CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: {str(err).splitlines()[0]}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s)")
    return dev


class Distributed:
    """This process's place in a ``torch.distributed`` group (rank 0 of 1 when there is none)."""

    def __init__(self, rank: int, world: int, owned: bool) -> None:
        self.rank, self.world, self._owned = rank, world, owned

    @classmethod
    def start(cls, dev: torch.device) -> Distributed:
        """Join the group a launcher (torchrun) describes in the environment, or the one already set up."""
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            return cls(tdist.get_rank(), tdist.get_world_size(), False)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")  # env:// as torchrun sets it
            return cls(tdist.get_rank(), tdist.get_world_size(), True)
        return cls(0, 1, False)

    def local_device(self, dev: torch.device) -> torch.device:
        """This rank's device: a bare ``cuda`` means ``cuda:LOCAL_RANK`` under a launcher (one GPU per process)."""
        if dev.type == "cuda" and dev.index is None:
            local = int(os.environ.get("LOCAL_RANK", self.rank)) if self.world > 1 else torch.cuda.current_device()
            dev = torch.device("cuda", local)
        if dev.type == "cuda" and self.world > 1:
            torch.cuda.set_device(dev)  # NCCL's collectives run on the current device
        return dev

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            torch.distributed.barrier()

    def write_config(self, out_dir: Path, settings: dict[str, Any]) -> None:
        """Rank 0 writes ``out_dir/config.json``, once every rank has checked its input and ``out_dir``."""
        self.barrier()
        if self.rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / "config.json", {"settings": settings})

    def sum(self, values: list[float], dev: torch.device) -> list[float]:
        """Element-wise sums over the ranks."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=dev)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def average_buffers(self, net: nn.Module) -> None:
        """Average the float buffers (batch-norm statistics) over the ranks, as timm's ``distribute_bn``.

        DDP copies rank 0's buffers into every rank before each forward, but that forward then updates
        them from the rank's own batch, so they differ after the last step of an epoch.
        """
        if self.world == 1:
            return
        for buf in net.buffers():
            if buf.is_floating_point():
                torch.distributed.all_reduce(buf)
                buf.div_(self.world)

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average the gradients that exist over the ranks, for training without ``DistributedDataParallel``.

        Every rank must hold gradients for the same parameters (in the same order); one all-reduce per
        dtype over a flat copy, as DDP's buckets, because one call per tensor would cost a round trip each.
        """
        if self.world == 1:
            return
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in groups.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat.div_(self.world)
            for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(part.view_as(g))

    def stop(self) -> None:
        """Leave the group if this call joined it."""
        if self._owned:
            torch.distributed.destroy_process_group()


def stream_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    """A seed for one random stream of one epoch on one rank: a function of these alone."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_global(seed: int, dev: torch.device) -> Iterator[None]:
    """Seed torch's global generators (dropout draws from them) for a block and restore them after."""
    try:
        from nas.rng import seeded_global_rng  # holds the library's lock against other threads' draws
    except ImportError:  # pragma: no cover - before nas.rng existed
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            yield
        return
    with seeded_global_rng(seed, devices=[dev]):
        yield


def _build(space: Any, arch: Any, seed: int, num_classes: int, input_shape: tuple[int, int, int],
           aux: bool) -> nn.Module:
    """The network, initialised from ``seed`` alone (with DARTS's auxiliary head when ``aux``)."""
    options: dict[str, Any] = {"num_classes": num_classes, "input_shape": input_shape}
    if aux:
        options["auxiliary"] = True
    builder = getattr(search_spaces, "build_seeded", None)
    if builder is not None:
        return builder(space, arch, seed, **options)
    with torch.random.fork_rng(devices=[]):  # pragma: no cover - before search_spaces.build_seeded
        torch.manual_seed(seed)
        return space.build(arch, **options)


class _TrainingView(nn.Module):
    """What the optimiser trains and DDP wraps: the logits, and DARTS's auxiliary logits while training.

    DARTS's network leaves its auxiliary head out of ``forward`` (it is a training device); a forward hook
    on the cell at two thirds of the depth, where DARTS attaches it, feeds it here instead.
    """

    def __init__(self, net: nn.Module, aux_cell: nn.Module | None) -> None:
        super().__init__()
        self.net = net
        self._aux_input: torch.Tensor | None = None
        self._hook = aux_cell.register_forward_hook(self._keep) if aux_cell is not None else None

    def _keep(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if module.training:
            self._aux_input = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits, auxiliary logits or None)``."""
        logits = self.net(x)
        aux, self._aux_input = self._aux_input, None
        if aux is None:
            return logits, None
        return logits, self.net.auxiliary_head(aux)

    def remove_hooks(self) -> None:
        """Leave the network as the space built it."""
        if self._hook is not None:
            self._hook.remove()


class _DropPath:
    """DARTS's drop path: each non-identity op's output is zeroed per sample with probability ``prob``
    (and the rest scaled by ``1 / (1 - prob)``) while training, from an explicit generator."""

    def __init__(self, net: nn.Module) -> None:
        from search_spaces.darts_ops import DartsCell

        self.prob = 0.0
        self.generator = torch.Generator()
        self._handles = [op.register_forward_hook(self) for cell in net.modules() if isinstance(cell, DartsCell)
                         for op in cell.ops if not isinstance(op, nn.Identity)]

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook: the dropped output while training, else unchanged."""
        if not module.training or self.prob <= 0:
            return None
        keep = 1.0 - self.prob
        mask = torch.bernoulli(torch.full((output.shape[0], 1, 1, 1), keep), generator=self.generator)
        return output * mask.to(output.device, output.dtype) / keep

    def remove(self) -> None:
        """Unhook every op."""
        for handle in self._handles:
            handle.remove()


def hold_out(data: ImageData, n: int, seed: int) -> tuple[ImageData, ImageData]:
    """``(rest, held)``: ``n`` images held out with the classes as equal as they can be, seeded."""
    rng = np.random.default_rng([int(seed), 0x7A1])
    y = data.y.numpy()
    per_class = [list(rng.permutation(np.flatnonzero(y == c))) for c in np.unique(y)]
    order = []
    for i in range(max(len(p) for p in per_class)):  # round-robin over the classes
        order.extend(p[i] for p in per_class if i < len(p))
    order = np.asarray(order, dtype=np.int64)
    return data.take(np.sort(order[n:])), data.take(np.sort(order[:n]))


def restore_training(out: Path, dev: torch.device, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, model_key: str = "model",
                     extra: dict[str, nn.Module] | None = None) -> tuple[int, list[dict[str, Any]]] | None:
    """Load ``out/checkpoint.pt`` into ``model`` (its ``model_key`` entry), each module of ``extra`` (its own
    key, e.g. a loss head), ``optimizer`` and ``scheduler``; returns (epochs done, history), or None when
    there is no checkpoint yet."""
    path = out / "checkpoint.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location=dev, weights_only=True)
    model.load_state_dict(state[model_key])
    for key, module in (extra or {}).items():
        module.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log.info("resuming %s after epoch %d", out, int(state["epoch"]))
    return int(state["epoch"]), [dict(r) for r in state["history"]]


def make_optimizer(net: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser over every parameter (no weight decay on norms and biases if it says so)."""
    decay, no_decay = [], []
    for p in net.parameters():
        (no_decay if not recipe.decay_norm_and_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=recipe.lr, alpha=0.9, eps=1.0, momentum=recipe.momentum)
    if recipe.optimizer == "adam":  # weight decay as an L2 term in the gradient, as ECAPA-TDNN's Adam
        return torch.optim.Adam(groups, lr=recipe.lr)
    raise ValueError(f"recipe optimizer must be 'sgd', 'rmsprop' or 'adam', got {recipe.optimizer!r}")


class _Trainer:
    """One training run: data, network, optimiser, the epoch loop and the outputs."""

    def __init__(self, settings: dict[str, Any], out: Path, dev: torch.device, dist: Distributed,
                 progress: bool, callback: Callable[[dict[str, float]], None] | None) -> None:
        self.s, self.out, self.dev, self.dist, self.progress = settings, out, dev, dist, progress
        self.callback = callback
        self.recipe = Recipe(**settings["recipe"])
        self.seed = int(settings["seed"])
        self.space = search_spaces.get(settings["space"], **settings["space_options"])
        self.arch = self.space.from_string(settings["arch"])
        pool = balanced_subset(load_split(settings["data"], "train"), settings["train_size"], self.seed)
        n_val = round(0.1 * len(pool)) if settings["val_size"] is None else int(settings["val_size"])
        if not 0 <= n_val < len(pool):
            raise ValueError(f"--val-size {n_val}: must be 0 or more and leave training images of the {len(pool)}")
        self.train_set, self.val_set = hold_out(pool, n_val, self.seed)
        self.test_set = load_split(settings["data"], "test")
        self.num_classes = max(pool.num_classes, self.test_set.num_classes)
        self.input_shape = tuple(int(d) for d in pool.x.shape[1:])
        # DARTS's auxiliary head pools 5x5 at stride 3 and convolves 2x2: it needs a map of 8x8 or more
        aux = (self.recipe.aux_weight > 0 and "auxiliary" in _parameters(self.space.build)
               and min(self.input_shape[1:]) >= 32)
        self.net = _build(self.space, self.arch, self.seed, self.num_classes, self.input_shape, aux).to(dev)
        if settings.get("init"):
            state = torch.load(settings["init"]["path"], map_location=dev, weights_only=True)
            try:
                missing, unexpected = self.net.load_state_dict(state, strict=False)
            except RuntimeError as err:  # shapes that differ: say which file and network, not torch's dump
                raise ValueError(f"init {settings['init']['path']} does not fit {settings['arch']}: "
                                 f"{str(err).splitlines()[1].strip()}") from None
            if unexpected or [k for k in missing if not k.startswith("auxiliary")]:
                raise ValueError(f"init {settings['init']['path']} does not fit {settings['arch']}: missing "
                                 f"{missing[:3]}, unexpected {unexpected[:3]}")
        aux_cell = None
        if aux:
            cells = list(self.net.cells)
            aux_cell = cells[2 * len(cells) // 3]
        self.view = _TrainingView(self.net, aux_cell)
        self.drop_path = _DropPath(self.net) if self.recipe.drop_path > 0 else None
        self.model: nn.Module = self.view
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.view, device_ids=[dev] if dev.type == "cuda" else None)
        self.per_rank_batch = self.recipe.batch_size // dist.world
        if self.per_rank_batch < 1:
            raise ValueError(f"--batch-size {self.recipe.batch_size}: at least one image per process "
                             f"({dist.world} processes)")
        self.shard_size = len(self.train_set) // dist.world
        steps = math.ceil(self.shard_size / self.per_rank_batch)
        if steps > 1 and self.shard_size % self.per_rank_batch == 1:
            steps -= 1  # a last batch of one image would give batch norm no statistics
        self.steps = steps
        self.optimizer = make_optimizer(self.net, self.recipe)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.recipe.epochs * self.steps, eta_min=0.0)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.recipe.label_smoothing)
        self.kd = settings.get("kd")
        self.teacher = None
        if self.kd is not None:
            self.teacher, info = load_trained(self.kd["teacher"], dev)
            if _input_shape_of(info, self.space) != self.input_shape:
                raise ValueError(f"--teacher {self.kd['teacher']} was trained on {_input_shape_of(info, self.space)} "
                                 f"inputs, the data here are {self.input_shape}")
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self._rng_states: dict[str, torch.Tensor] = {}

    def run(self) -> TrainResult:
        """Train the remaining epochs, then measure the test accuracy and write the outputs."""
        self._restore()
        x_train, y_train = self.train_set.x.to(self.dev), self.train_set.y.to(self.dev)
        bar = EpochBar(self.progress)
        try:
            for epoch in range(self.start_epoch, self.recipe.epochs):
                row = self._epoch(epoch, x_train, y_train, bar)
                self.history.append(row)
                if self.dist.rank == 0:
                    self._checkpoint(epoch + 1)
                    write_csv(self.out / "train.csv", self.history)
                log.info("epoch %d/%d: loss %.4f, train %.2f%%, val %.2f%%, %.1f s", epoch + 1,
                         self.recipe.epochs, row["loss"], row["train_acc"], row["val_acc"], row["seconds"])
                if self.callback is not None:
                    self.callback(row)
        finally:
            bar.close()
        self.view.remove_hooks()
        if self.drop_path is not None:
            self.drop_path.remove()
        test_acc = self._accuracy(self.test_set)
        val_acc = self.history[-1]["val_acc"] if self.history else math.nan
        params = sum(p.numel() for n, p in self.net.named_parameters() if "auxiliary" not in n)
        seconds = float(np.mean([r["seconds"] for r in self.history])) if self.history else math.nan
        if self.dist.rank == 0:
            self._write_outputs(test_acc, val_acc, params, seconds)
        self.dist.barrier()
        self.net.eval()
        return TrainResult(self.out, self.s["space"], self.s["arch"], test_acc,
                           None if math.isnan(val_acc) else val_acc, params, seconds, list(self.history), self.net)

    def _restore(self) -> None:
        """Load the last checkpoint, if there is one."""
        restored = restore_training(self.out, self.dev, self.net, self.optimizer, self.scheduler)
        if restored is not None:
            self.start_epoch, self.history = restored

    def _checkpoint(self, epoch: int) -> None:
        """Write the whole training state after ``epoch`` epochs, atomically."""
        state = {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": epoch, "history": self.history,
                 "rng": self._rng_states}
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "checkpoint.pt")  # a kill mid-write leaves the previous checkpoint

    def _epoch(self, epoch: int, x: torch.Tensor, y: torch.Tensor, bar: EpochBar) -> dict[str, float]:
        """Train one epoch and validate; returns its row of ``train.csv``."""
        start = time.perf_counter()
        rank, r = self.dist.rank, self.recipe
        # Every draw of the epoch depends on (seed, epoch, rank) alone, so a resumed run repeats it exactly
        order = torch.Generator().manual_seed(stream_seed(self.seed, epoch, 0, _ORDER))  # same on all ranks
        shard = torch.randperm(len(self.train_set), generator=order)[rank::self.dist.world][: self.shard_size]
        aug = torch.Generator().manual_seed(stream_seed(self.seed, epoch, rank, _AUGMENT))
        self._rng_states = {"order": order.get_state(), "augment": aug.get_state()}
        if self.drop_path is not None:
            self.drop_path.prob = r.drop_path * epoch / r.epochs  # DARTS raises it linearly
            self.drop_path.generator.manual_seed(stream_seed(self.seed, epoch, rank, _DROP_PATH))
        lr = float(self.optimizer.param_groups[0]["lr"])
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.dev)
        correct = torch.zeros((), dtype=torch.int64, device=self.dev)
        seen = 0
        self.model.train()
        bar.start(epoch, r.epochs, self.steps)
        with seeded_global(stream_seed(self.seed, epoch, rank, _GLOBAL), self.dev):
            for step in range(self.steps):
                idx = shard[step * self.per_rank_batch:(step + 1) * self.per_rank_batch].to(self.dev)
                images = augment(normalise(x[idx]), aug, pad=r.pad, flip=r.flip, cutout=r.cutout)
                labels = y[idx]
                with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=bool(self.s["amp"])):
                    logits, aux_logits = self.model(images)
                    loss = self.criterion(logits.float(), labels)
                    if self.teacher is not None:
                        loss = self._distilled(loss, logits.float(), images)
                    if aux_logits is not None:
                        loss = loss + r.aux_weight * self.criterion(aux_logits.float(), labels)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if r.grad_clip:
                    nn.utils.clip_grad_norm_(self.net.parameters(), r.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                loss_sum += loss.detach().double() * len(idx)
                correct += (logits.detach().argmax(1) == labels).sum()
                seen += len(idx)
                bar.advance(loss if step % 10 == 0 else None)
        self.dist.average_buffers(self.net)  # every rank validates and checkpoints the same network
        total_loss, total_correct, total_seen = self.dist.sum([loss_sum.item(), float(correct.item()), seen],
                                                              self.dev)
        val_acc = self._accuracy(self.val_set) if len(self.val_set) else math.nan
        return {"epoch": epoch + 1, "loss": total_loss / total_seen, "train_acc": 100 * total_correct / total_seen,
                "val_acc": val_acc, "lr": lr, "seconds": time.perf_counter() - start}

    def _distilled(self, hard: torch.Tensor, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Hinton et al.'s loss: the hard-label loss mixed with the KL to the teacher's softened output."""
        t, alpha = self.kd["temperature"], self.kd["alpha"]
        with torch.no_grad():
            target = nn.functional.log_softmax(self.teacher(images).float() / t, dim=1)
        if target.shape != logits.shape:
            raise ValueError(f"--teacher outputs {target.shape[1]} classes, the student {logits.shape[1]}")
        soft = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=1), target, log_target=True,
                                    reduction="batchmean")
        return (1 - alpha) * hard + alpha * t * t * soft

    @torch.no_grad()
    def _accuracy(self, data: ImageData) -> float:
        """Top-1 accuracy (%) on ``data`` in eval mode, each rank counting its share."""
        self.net.eval()
        idx = torch.arange(len(data))[self.dist.rank::self.dist.world]

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=bool(self.s["amp"])):
                return self.net(normalise(x.to(self.dev)))

        correct = count_correct(forward, data.x, data.y, 1024 if self.dev.type == "cuda" else 256, order=idx)
        self.net.train()
        hits, total = self.dist.sum([float(correct), float(len(idx))], self.dev)
        return 100.0 * hits / total

    def _write_outputs(self, test_acc: float, val_acc: float, params: int, seconds: float) -> None:
        """``metrics.json``, ``model.pt``, ``model.onnx`` and ``curve.png`` of the trained network."""
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items() if not k.startswith("auxiliary")}
        torch.save(state, self.out / "model.pt")
        from search_spaces.base import export_onnx

        exported = copy.deepcopy(self.net).cpu().float()
        if getattr(exported, "auxiliary_head", None) is not None:
            exported.auxiliary_head = None  # a training device, not part of the network's output
        export_onnx(exported, torch.zeros(1, *self.input_shape), self.out / "model.onnx")
        plot_history(self.history, self.out / "curve.png", f"{self.s['space']} · {self.s['arch']}")
        metrics = {
            "space": self.s["space"], "space_options": self.s["space_options"], "arch": self.s["arch"],
            "recipe": self.s["recipe"], "epochs": len(self.history), "test_accuracy": test_acc,
            "val_accuracy": None if math.isnan(val_acc) else val_acc,
            "train_accuracy": self.history[-1]["train_acc"] if self.history else None,
            "params": params, "seconds_per_epoch": seconds, "seed": self.seed,
            "train_images": len(self.train_set), "val_images": len(self.val_set),
            "test_images": len(self.test_set), "data": self.s["data"], "device": str(self.dev),
            "world_size": self.dist.world, "amp": self.s["amp"], "input_shape": list(self.input_shape),
            "num_classes": self.num_classes, "kd": self.kd,
        }
        write_json(self.out / "metrics.json", metrics)


def _parameters(fn: Callable[..., Any]) -> set[str]:
    """Names of ``fn``'s parameters."""
    import inspect

    return set(inspect.signature(fn).parameters)


class EpochBar:
    """A rich progress bar over one epoch's steps with the running loss; silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[loss]}"), transient=False)
            self._bar.start()

    def start(self, epoch: int, epochs: int, steps: int) -> None:
        """A new bar for ``epoch`` (0-based)."""
        if self._bar is not None:
            self._task = self._bar.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, loss="")

    def advance(self, loss: torch.Tensor | None) -> None:
        """One step done; show ``loss`` when given (reading it waits for the device, so not every step)."""
        if self._bar is not None:
            fields = {"loss": f"loss {loss.item():.3f}"} if loss is not None else {}
            self._bar.update(self._task, advance=1, **fields)

    def close(self) -> None:
        """Stop drawing."""
        if self._bar is not None:
            self._bar.stop()


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_csv(path: Path, history: list[dict[str, float]], fields: tuple[str, ...] = _CSV_FIELDS) -> None:
    """A CSV with one row per epoch so far, atomically (a blank cell for a NaN, e.g. no ``val_acc`` held out)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if isinstance(row[k], float) and math.isnan(row[k]) else row[k])
                             for k in fields})
    os.replace(tmp, path)


def plot_history(history: list[dict[str, float]], path: Path, title: str,
                 curves: tuple[tuple[str, str], ...] = (("train_acc", "train"), ("val_acc", "validation"))) -> None:
    """Training loss, and the accuracy columns ``curves`` (key, label), per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.6), dpi=110)  # a bare Figure leaves pyplot's global state alone
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    loss_ax.plot(epochs, [r["loss"] for r in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="training loss")
    for key, label in curves:
        acc_ax.plot(epochs, [r[key] for r in history], marker="o", label=label)
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)")
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
