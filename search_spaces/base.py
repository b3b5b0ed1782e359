"""The search-space protocol and what every space shares (ONNX export, arch errors)."""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import warnings
from collections.abc import Hashable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from nas.rng import seeded_global_rng

Arch = Hashable
"""An architecture is an immutable, hashable value owned by its space (tuple, frozen dataclass, ...)."""


class ArchError(ValueError):
    """A malformed or invalid architecture; the message says which part is wrong and what is allowed."""


@runtime_checkable
class SearchSpace(Protocol):
    """What a search space provides. Optional capabilities (``crossover``, ``decisions``) are checked by
    the strategies that need them."""

    name: str
    description: str
    input_shape: tuple[int, int, int]
    num_classes: int

    @property
    def cardinality(self) -> int:
        """Number of distinct architectures (may be astronomically large)."""
        ...

    def sample(self, rng: np.random.Generator) -> Arch:
        """Draw an architecture uniformly (or as the benchmark's authors sample)."""
        ...

    def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch:
        """Return a new architecture that differs from ``arch`` in one decision."""
        ...

    def to_string(self, arch: Arch) -> str:
        """Canonical serialization; ``from_string(to_string(a)) == a``."""
        ...

    def from_string(self, text: str) -> Arch:
        """Parse a string (canonical or accepted alias); raise ``ArchError`` naming the bad part."""
        ...

    def encode(self, arch: Arch) -> np.ndarray:
        """Fixed-length float vector for predictors and Bayesian optimisation."""
        ...

    def suggest(self, trial: Any) -> Arch:
        """Draw an architecture through an Optuna trial (define-by-run)."""
        ...

    def build(
        self, arch: Arch, num_classes: int | None = None, input_shape: tuple[int, int, int] | None = None
    ) -> nn.Module:
        """Instantiate the architecture as a freshly initialised ``torch.nn.Module``.

        An image space whose networks end in global average pooling (nb201, nb101, darts, ofa, fbnet)
        returns a :class:`PooledImageNetwork`: its pre-pool feature map is ``forward_features(x)``.
        """
        ...

    def to_onnx(self, arch: Arch, path: str | os.PathLike[str]) -> str:
        """Export the built network to an ONNX file and return its path."""
        ...


@runtime_checkable
class PooledImageNetwork(Protocol):
    """What ``build`` returns for an image space whose network ends in global average pooling.

    timm's convention: ``forward_features(x)`` is the (N, C, H, W) feature map right before the global
    pooling, ``forward_head(features)`` pools it and applies the rest of the head, and ``forward(x)`` is
    ``forward_head(forward_features(x))``. Proxies that read the pre-pool map (``zen``) call
    ``forward_features`` and fail, naming the class, on a network without it; the ViT (a class-token head,
    no pooling) and the sequence spaces have none.

    Example:
        >>> net = search_spaces.get("nb201", channels=8, cells_per_stage=1).build(("nor_conv_3x3",) * 6)
        >>> x = torch.zeros(2, 3, 32, 32)
        >>> net.forward_features(x).shape
        torch.Size([2, 32, 8, 8])
        >>> torch.equal(net(x), net.forward_head(net.forward_features(x)))
        True
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, H, W) feature map right before global pooling."""
        ...

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the pre-pool feature map: global average pooling, then the classifier head."""
        ...


def changed_options(space: Any, types: tuple[type, ...] = (int, float, str, bool, tuple)) -> dict[str, Any]:
    """Constructor options of ``space`` whose value (of one of ``types``) differs from the default.

    A wrapper that adds a dimension to a base space (``precision="mixed"``, :mod:`search_spaces.precision`)
    reports its base's options plus its own, so that a run stores, and a cache keys, both.
    """
    base = getattr(space, "base", None)
    if base is not None and getattr(space, "precision", None) not in (None, "fp32"):
        return {**changed_options(base, types), "precision": space.precision}
    try:
        params = inspect.signature(type(space).__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {n: getattr(space, n) for n, p in params.items()
            if n != "self" and p.default is not inspect.Parameter.empty and hasattr(space, n)
            and isinstance(getattr(space, n), types) and getattr(space, n) != p.default}


def arch_input_shape(space: SearchSpace, arch: Arch) -> tuple[int, int, int]:
    """Input (C, H, W) of ``arch``: spaces with elastic resolution expose ``arch_input_shape``."""
    own = getattr(space, "arch_input_shape", None)
    return tuple(own(arch)) if own is not None else tuple(space.input_shape)


def export_onnx(
    model: nn.Module, example: torch.Tensor | Sequence[torch.Tensor], path: str | os.PathLike[str]
) -> str:
    """Export ``model`` in eval mode to ONNX (opset 17), quietly, with a dynamic batch dimension."""
    path = os.fspath(path)
    args = tuple(example) if isinstance(example, (list, tuple)) else (example,)
    model = model.eval()
    names = [f"input{i}" if i else "input" for i in range(len(args))]
    dynamic = {n: {0: "batch"} for n in names}
    dynamic["output"] = {0: "batch"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            # The TorchScript exporter is 20x faster than the dynamo one for these small static graphs.
            torch.onnx.export(
                model, args, path, input_names=names, output_names=["output"],
                dynamic_axes=dynamic, opset_version=17, dynamo=False,
            )
        except TypeError:  # torch without the ``dynamo`` keyword
            torch.onnx.export(
                model, args, path, input_names=names, output_names=["output"],
                dynamic_axes=dynamic, opset_version=17,
            )
    return path


def default_to_onnx(space: SearchSpace, arch: Arch, path: str | os.PathLike[str], batch_size: int = 1) -> str:
    """Build ``arch`` and export it with an example input of the arch's own resolution."""
    model = space.build(arch)
    example = torch.zeros(batch_size, *arch_input_shape(space, arch))
    return export_onnx(model, example, path)


def build_seeded(space: SearchSpace, arch: Arch, seed: int, **options: Any) -> nn.Module:
    """Build ``arch`` with its initialisation drawn from ``seed`` alone, whatever other threads do.

    Torch modules initialise themselves from the process-global generator and take no generator of
    their own, so the build runs under :func:`nas.rng.seeded_global_rng`: a process-wide lock around
    ``fork_rng`` + ``manual_seed(seed)``. The weights are bit-identical to those of the unlocked
    ``torch.manual_seed(seed); space.build(arch)`` (cached proxy values and published numbers stay
    valid), and the caller's global RNG state is left as it was. ``options`` go to ``space.build``.
    """
    with seeded_global_rng(seed):
        return space.build(arch, **options)


def to_onnx_seeded(space: SearchSpace, arch: Arch, path: str | os.PathLike[str], seed: int) -> str:
    """``space.to_onnx(arch, path)`` with the weights of :func:`build_seeded` ``(space, arch, seed)``."""
    with seeded_global_rng(seed):  # to_onnx builds its own network from the global generator
        return space.to_onnx(arch, path)


def suggest_choices(space: Any, trial: Any) -> list[int]:
    """Ask an Optuna trial for each of ``space.decisions()``; returns the chosen option indices."""
    choices = []
    for name, options in space.decisions():
        options = list(options)
        choices.append(options.index(trial.suggest_categorical(name, options)))
    return choices
