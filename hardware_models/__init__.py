"""Hardware targets: devices with a latency model that predicts milliseconds for architectures.

Every target reads the architecture's graph (see :mod:`hardware_models.graph_features`), so a target
predicts for any search space: non-negative node costs, plus a residual network on spaces the reference
devices measured (NAS-Bench-201, see :mod:`hardware_models.residual`). Shipped targets (the devices of NAS-Bench-201's latency tables, ``rpi4``
among them) live in ``hardware_models/data/targets.json``; ``local`` is this machine; targets a user adapts
with ``nas latency adapt`` live in ``$ZCNAS_CONFIG_DIR/targets`` (default ``~/.config/zcnas/targets``).

Example:
    >>> import numpy as np, hardware_models, search_spaces
    >>> space = search_spaces.get("nb201")
    >>> ms = hardware_models.get("rpi4").predict(space, [space.sample(np.random.default_rng(0))])
    >>> bool(ms[0] > 0)
    True
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from nas.registry import Registry

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data"
SHIPPED = DATA / "targets.json"


class Target(Protocol):
    """A device and its latency model."""

    name: str
    description: str

    def predict(self, space: Any, archs: Sequence[Any]) -> Any:
        """Predicted latency (ms) of each architecture of ``space``, as a float array."""
        ...


registry: Registry[Callable[[], Target]] = Registry("target")
"""Target name -> zero-argument factory (models are loaded lazily, only when a target is used)."""


@lru_cache(maxsize=1)
def shipped() -> dict[str, Any]:
    """The shipped models file (empty when it has not been built yet)."""
    if not SHIPPED.is_file():
        return {"targets": {}, "references": {"names": [], "models": {}}}
    return json.loads(SHIPPED.read_text())


def _factory(name: str, description: str) -> Callable[[], Target]:
    def make() -> Target:
        from hardware_models.model import GraphTarget, LatencyModel

        entry = shipped()["targets"][name]
        return GraphTarget(name, description, LatencyModel.from_dict(entry, f"{SHIPPED}:{name}"))

    make.description = description  # type: ignore[attr-defined]
    return make


def _local_factory() -> Target:
    """This machine: the user's adapted ``local`` if present, else the shipped uncalibrated prior."""
    from hardware_models.model import config_dir, load_user_target

    own = config_dir() / "targets" / "local.json"
    if own.is_file():
        return load_user_target(own)
    return _factory("local", _LOCAL_DESCRIPTION)()


_LOCAL_DESCRIPTION = ("this machine (onnxruntime, CPU); shipped prior = fitted to onnxruntime measurements of "
                      "the build machine; calibrate with `nas latency measure` + `nas latency adapt --name local`")
_local_factory.description = _LOCAL_DESCRIPTION  # type: ignore[attr-defined]


def _user_factory(path: Path) -> Callable[[], Target]:
    def make() -> Target:
        from hardware_models.model import load_user_target

        return load_user_target(path)

    try:
        make.description = json.loads(path.read_text()).get("description", "")  # type: ignore[attr-defined]
    except (OSError, ValueError):
        make.description = f"unreadable user target {path}"  # type: ignore[attr-defined]
    return make


def _register_shipped() -> None:
    for name, entry in shipped()["targets"].items():
        if name == "local":
            registry.register(name, _local_factory)
        else:
            registry.register(name, _factory(name, entry.get("description", "")))
    if "local" not in registry:
        registry.register("local", _local_factory)


def refresh_user_targets() -> list[str]:
    """Register targets found in the user's config dir (new files only); returns their names."""
    from hardware_models.model import config_dir

    found = []
    for path in sorted((config_dir() / "targets").glob("*.json")):
        name = path.stem
        found.append(name)
        if name not in registry:
            registry.register(name, _user_factory(path))
    return found


def check_space(space: Any) -> None:
    """Raise ``ValueError`` for a space whose models no latency target describes (simulated circuits)."""
    if getattr(space, "input_kind", "image") == "circuit":
        raise ValueError(f"latency targets model neural networks running on a device; the {space.name} "
                         "space's circuits run on a simulator, so --target and latency do not apply to them "
                         "(its cost proxies are depth and two_qubit_gates)")


def get(name: str) -> Target:
    """The target registered as ``name`` (user-adapted targets included)."""
    if name not in registry:
        refresh_user_targets()
    return registry.get(name)()


def list(pattern: str = "*") -> list[str]:  # noqa: A001
    """Registered target names matching ``pattern``."""
    refresh_user_targets()
    return registry.list(pattern)


def describe(name: str) -> str:
    """One-line description of a target without loading its model."""
    if name not in registry:
        refresh_user_targets()
    return getattr(registry.get(name), "description", "")


_register_shipped()
