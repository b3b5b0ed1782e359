"""Weight-sharing supernets of the image spaces and of ``tdnn``, and their checkpoints.

A space that shares weights has one supernet class with a small protocol: ``forward(x, arch)`` runs subnet
``arch`` on the shared weights, and ``subnet(arch)`` returns the standalone network of the space's own
``build(arch)`` type holding copies of the inherited weights (so ONNX export and ``nas train`` treat it as any
other network). The spaces with one: ``ofa`` (:class:`search_spaces.ofa_supernet.OFASupernet`), ``fbnet``
(:class:`search_spaces.fbnet_supernet.FBNetSupernet`) and ``nb201``
(:class:`search_spaces.nb201_supernet.NB201SuperNet`, whose BatchNorms keep no running statistics: its
subnets' are recalibrated before an eval-mode forward) and ``tdnn``
(:class:`search_spaces.tdnn_supernet.TDNNSupernet`, speaker networks on 16 kHz audio). ``nas supernet train`` (:mod:`nas.supernet_training`)
trains them. :func:`supernet_of` builds a fresh one for a space object; :func:`save_supernet` and
:func:`load_supernet` write and read a zcnas checkpoint, a plain ``torch.save`` dict of tensors and JSON-able
values read back with ``weights_only=True``. ``load_supernet`` also takes the published once-for-all state
dicts (``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2``) for the ``ofa`` space.

Example:
    >>> import search_spaces
    >>> space = search_spaces.get("ofa", num_classes=10)
    >>> sup = supernet_of(space)
    >>> net = sup.subnet(space.smallest(128))  # a MobileNetV3 with the supernet's weights
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "zcnas-supernet"
VERSION = 1

INPUT_ONLY_OPTIONS = frozenset({"proxy_scale", "resolutions", "min_resolution", "max_resolution", "input_shape",
                                "seconds"})
"""Space options that change how a subnet is fed or scored, never the supernet's weights: a checkpoint
trained without them still fits (the ofa search default proxy_scale=0.5 is one; tdnn's ``seconds`` lets a
supernet trained on 2-s crops be scored on the 1-s utterances a deployment sees)."""


def _builders() -> dict[str, Any]:
    """Space name -> function(space) returning a fresh supernet (imported lazily: torch modules)."""
    from search_spaces.fbnet_supernet import FBNetSupernet
    from search_spaces.nb201_supernet import supernet as nb201_supernet
    from search_spaces.ofa_supernet import OFASupernet
    from search_spaces.tdnn_supernet import TDNNSupernet

    def ofa(space: Any) -> nn.Module:
        return OFASupernet(width_mult=space.width_mult, num_classes=space.num_classes, dropout=space.dropout)

    def nb201(space: Any) -> nn.Module:
        # Its own seed argument only fixes the default; supernet_of's seed reaches it through torch's generator
        return nb201_supernet(space, seed=int(torch.initial_seed() % 2**31))

    return {"ofa": ofa, "fbnet": FBNetSupernet, "nb201": nb201, "tdnn": TDNNSupernet}


def weight_sharing_spaces() -> list[str]:
    """Names of the spaces that have a weight-sharing supernet."""
    return sorted(_builders())


def supernet_of(space: Any, seed: int | None = None) -> nn.Module:
    """A freshly initialised weight-sharing supernet for ``space`` (initial weights from ``seed`` when given)."""
    builders = _builders()
    name = getattr(space, "name", None)
    if name not in builders:
        raise ValueError(f"space {name!r} has no weight-sharing supernet; spaces with one: "
                         f"{', '.join(sorted(builders))}")
    if seed is None:
        return builders[name](space)
    with torch.random.fork_rng(devices=[]):  # the caller's global generator is left as it was
        torch.manual_seed(seed)
        return builders[name](space)


def stored_options(space: Any) -> dict[str, Any]:
    """The space options a checkpoint records: those that differ from their defaults, choice lists included
    (tdnn's ``channels=[64, 128]`` shape the weights), as JSON values."""
    from nas.settings import space_options_of
    from search_spaces.base import changed_options

    lists = {k: list(v) for k, v in changed_options(space, (tuple,)).items() if k not in INPUT_ONLY_OPTIONS}
    return {**space_options_of(space), **lists}


def save_supernet(path: str | os.PathLike[str], space: Any, supernet: nn.Module,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``supernet``'s weights with the space they belong to (atomic: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "space": space.name,
               "space_options": stored_options(space), "state_dict": supernet.state_dict(), **(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict (``weights_only=True``), with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"supernet checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a foreign file
        raise ValueError(f"{path}: not a readable supernet checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a supernet checkpoint is a dict, got {type(data).__name__}")
    return data


def load_supernet(path: str | os.PathLike[str], space: Any) -> nn.Module:
    """The supernet of ``space`` with the weights of checkpoint ``path`` (zcnas, or an official OFA file).

    A zcnas checkpoint must have been trained with ``space``'s options, except those in
    :data:`INPUT_ONLY_OPTIONS`: they change how subnets are fed (a search may score other resolutions than the
    supernet trained on), so the supernet is built with the checkpoint's values of them.
    """
    data = read_checkpoint(path)
    if data.get("format") != FORMAT:
        if space.name == "ofa":
            return supernet_of(space).load_official(data)  # type: ignore[operator]
        raise ValueError(f"{path}: not a zcnas supernet checkpoint (no format {FORMAT!r}); write one with "
                         "`nas supernet train`")
    if data.get("space") != space.name:
        raise ValueError(f"{path}: a supernet of space {data.get('space')!r}, not {space.name!r}")
    import search_spaces

    stored, ours = data.get("space_options", {}), stored_options(space)
    weights = {k: v for k, v in ours.items() if k not in INPUT_ONLY_OPTIONS}
    if {k: v for k, v in stored.items() if k not in INPUT_ONLY_OPTIONS} != weights:
        raise ValueError(f"{path}: trained with space options {stored}, but the search uses {ours}; pass the "
                         "same --space-option values")
    if stored != ours:
        space = search_spaces.get(space.name, **weights,
                                  **{k: v for k, v in stored.items() if k in INPUT_ONLY_OPTIONS})
    sup = supernet_of(space)
    state = data["state_dict"]
    own = sup.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not fit the {space.name} supernet: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    sup.load_state_dict(state)
    return sup
