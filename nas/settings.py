"""A run's settings: defaults filled in, validated, the evaluator they describe, and resume checks.

:func:`nas.create_study` turns what a caller gives (names or objects) into a JSON config stored in the
run; :func:`nas.load_study` rebuilds the live objects from it. This module holds those steps, so that
:mod:`nas.study` is only the ask/tell core.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hardware_models
import proxies as proxy_lib
import search_spaces
from nas import strategies
from nas.errors import ResumeConflict
from nas.exploit import check_oracle, resolve_labels
from nas.objectives import Objective, is_predictor, parse_objectives
from search_spaces import SearchSpace

LATENCY_OBJECTIVES = frozenset({"latency", "latency_ms"})
"""Objectives measured by the target's latency model (they need ``--target``)."""

MEMORY_METRICS = frozenset({"sram_kb", "flash_kb"})
"""Objectives read from the exported graph by :mod:`hardware_models.memory` (int8 weights and activations)."""

METRIC_OBJECTIVES = LATENCY_OBJECTIVES | MEMORY_METRICS
"""Objectives measured by a hardware model (latency, memory) rather than computed as proxies."""

MEMORY_LIMITS = ("max_sram_kb", "max_flash_kb")
"""Constraints on the memory metrics."""


DEFAULTS: dict[str, Any] = {
    "strategy": "evolution", "budget": 100, "objectives": ["synflow"], "proxies": [], "batch_size": 64,
    "data": None, "strategy_options": {},
}
"""Settings used when neither the caller nor the space's ``search_defaults`` give them."""


Evaluate = Callable[[str], Any]
"""An evaluation: arch string -> a :class:`Candidate`, a ``{name: value}`` mapping, or the objective values."""


def resolve_settings(space: Any, given: dict[str, Any], target: str | None = None) -> dict[str, Any]:
    """Fill settings the caller left ``None`` from ``space.search_defaults``, then :data:`DEFAULTS`.

    A latency objective among the space's defaults is dropped when no target is given, so that a space
    may default to ``objectives=["zen", "latency"]`` and still search without ``--target``.
    """
    space_defaults = dict(getattr(space, "search_defaults", None) or {})
    out: dict[str, Any] = {}
    for key, value in given.items():
        if value is not None:
            out[key] = value
        elif key in space_defaults:
            out[key] = space_defaults[key]
            if key == "objectives" and target is None:
                names = [n for n in parse_objectives(value_list(out[key]))
                         if n.name not in LATENCY_OBJECTIVES]
                out[key] = [str(o) for o in names] or DEFAULTS["objectives"]
        else:
            out[key] = DEFAULTS[key]
    out["objectives"] = value_list(out["objectives"])
    out["proxies"] = value_list(out["proxies"])
    out["strategy_options"] = dict(out["strategy_options"] or {})
    return out


def value_list(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def proxy_names(objs: Sequence[Objective], extra: Sequence[str], max_flops: float | None) -> list[str]:
    """Proxies to compute: every objective that is not a latency or ``acc_ws``, the extra ones, flops for a
    flops limit."""
    from nas.inherited import SUPERNET_OBJECTIVES

    names = [o.name for o in objs if o.name not in METRIC_OBJECTIVES | SUPERNET_OBJECTIVES and not is_predictor(o.name)]
    if max_flops is not None:
        if "flops" not in proxy_lib.registry:
            raise ValueError("--max-flops needs the 'flops' proxy, which is not available; valid proxies: "
                             + ", ".join(proxy_lib.list()))
        names.append("flops")
    listed = sorted(SUPERNET_OBJECTIVES.intersection(extra))
    if listed:
        raise ValueError(f"--proxies {','.join(listed)}: not a proxy; a --supernet run records it for every "
                         "candidate, and --objectives may name it")
    names += list(extra)
    return list(dict.fromkeys(names))


def validate(config: dict[str, Any], space: SearchSpace) -> None:
    """Check a run's settings before anything is written; raises ``ValueError`` naming the problem."""
    objs = parse_objectives(config["objectives"])
    if int(config["budget"]) < 1:
        raise ValueError(f"budget must be at least 1, got {config['budget']}")
    if not str(config["strategy"]).startswith("custom:"):
        strategies.registry.get(config["strategy"])
    target_name = config.get("target")
    if target_name is None and any(o.name in LATENCY_OBJECTIVES for o in objs):
        raise ValueError("a latency objective needs a target (--target); see `nas targets`")
    if config.get("constraints", {}).get("latency_ms") is not None and target_name is None:
        raise ValueError("a latency limit (--latency-ms) needs a target (--target); see `nas targets`")
    if target_name is not None:
        hardware_models.get(target_name)
        hardware_models.check_space(space)
    check_memory_settings(config)
    check_oracle(space, int(config.get("oracle_queries", 0)))
    if config.get("labels") and "ensemble_fit" not in config["proxies"] and not uses_labels(config):
        raise ValueError("labels (--labels or --label-queries) fit the few-label ensemble or the predictor "
                         "strategy: add ensemble_fit to --objectives or --proxies, or use --strategy predictor")
    check_supernet_settings(config, space, objs)
    check_teacher_settings(config)
    if config.get("predictors") and config.get("evaluator") != "proxies":
        raise ValueError("--objectives predictor:FOLDER goes with a proxy search, not with a strategy that scores "
                         "its own proposals or a custom evaluate function")
    if config.get("evaluator") == "proxies":
        for name in config["proxies"]:
            if name not in proxy_lib.registry:
                valid = ", ".join([*proxy_lib.list(), "latency", *sorted(MEMORY_METRICS)])
                raise ValueError(f"unknown objective or proxy {name!r}; valid: {valid}, acc_ws (with --supernet)")
        check = getattr(proxy_lib, "check_available", None)
        if check is not None:
            check(space, config["proxies"])


def predictor_settings(objs: Sequence[Objective]) -> dict[str, dict[str, str | None]]:
    """``{objective: {"path", "digest"}}`` of the ``predictor:FOLDER`` objectives; each folder must load now.

    The path is made absolute (a resumed run finds it from any folder) and the digest of the folder's files
    is checked on ``--resume``, as ``--teacher``'s weights are.
    """
    from predictors.base import load

    out: dict[str, dict[str, str | None]] = {}
    for o in objs:
        if is_predictor(o.name):
            folder = Path(o.name.split(":", 1)[1])
            load(folder)  # a missing or unreadable folder fails before the run exists, naming the problem
            out[o.name] = {"path": str(folder.resolve()), "digest": predictor_digest(folder)}
    return out


def predictor_digest(folder: str | os.PathLike[str]) -> str:
    """SHA-1 over a predictor folder's file names and bytes (``predictor.json``, ``arrays.npz``, ...)."""
    digest = hashlib.sha1()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def uses_labels(config: dict[str, Any]) -> bool:
    """Whether the run's strategy takes the run's labels itself (``uses_labels``, e.g. ``predictor``)."""
    name = str(config.get("strategy"))
    return name in strategies.registry and bool(getattr(strategies.registry.get(name), "uses_labels", False))


def check_teacher_settings(config: dict[str, Any]) -> None:
    """Raise ``ValueError`` when the teacher-aware proxies and ``--teacher`` do not go together."""
    from proxies.distill import TEACHER_PROXIES

    asked = sorted(TEACHER_PROXIES.intersection(config["proxies"]))
    if asked and not config.get("teacher"):
        raise ValueError(f"{', '.join(asked)} compare each candidate with a trained teacher: give --teacher DIR "
                         "(a `nas train` output)")
    if config.get("teacher") and not asked:
        raise ValueError("--teacher serves the proxies diswot and diswot_relation: add one to --objectives or "
                         "--proxies")
    if config.get("teacher") and config.get("evaluator") != "proxies":
        raise ValueError("--teacher goes with a proxy search, not with a strategy that scores its own proposals")


def teacher_batch(batch: proxy_lib.Batch, folder: str | os.PathLike[str],
                  device: str | None = None) -> proxy_lib.Batch:
    """``batch`` carrying the matrices of the teacher trained in ``folder`` (for diswot, diswot_relation)."""
    from nas.training import load_trained
    from proxies.distill import with_teacher

    teacher, metrics = load_trained(folder, device or "cpu")
    return with_teacher(batch, teacher, tuple(metrics.get("input_shape") or ()) or None)


def check_memory_settings(config: dict[str, Any]) -> None:
    """Raise ``ValueError`` for a memory limit that is not a positive number, or memory asked of a strategy
    that scores its own proposals (a one-shot method records no memory)."""
    limits = config.get("constraints", {})
    for key in MEMORY_LIMITS:
        value = limits.get(key)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{FLAGS[key]} must be a positive number of kB (1 kB = 1024 bytes), got {value!r}")
    if needs_memory(config) and config.get("evaluator") == "strategy":
        raise ValueError(f"{config['strategy']!r} scores its own proposals and records no memory: sram_kb, flash_kb, "
                         "--max-sram-kb and --max-flash-kb go with a proxy search (random, evolution, nsga2, ...)")


def check_supernet_settings(config: dict[str, Any], space: SearchSpace, objs: Sequence[Objective]) -> None:
    """Raise ``ValueError`` when ``--supernet``, ``acc_ws`` and ``--data`` do not go together."""
    from nas.inherited import ACC_WS
    from nas.supernets import weight_sharing_spaces

    # a one-shot strategy scores acc_ws on the supernet it trains itself
    wants = any(o.name == ACC_WS for o in objs) and config.get("evaluator") == "proxies"
    path = config.get("supernet")
    if path is None:
        if wants:
            raise ValueError(f"objective {ACC_WS} (inherited-weight accuracy) needs --supernet PATH (a checkpoint "
                             "of `nas supernet train`, or an official OFA state dict for --space ofa) and "
                             "--data DIR (its train split is scored)")
        return
    if space.name not in weight_sharing_spaces():
        raise ValueError(f"--supernet: space {space.name!r} has no weight-sharing supernet; spaces with one: "
                         f"{', '.join(weight_sharing_spaces())}")
    if config.get("evaluator") != "proxies":
        raise ValueError(f"--supernet scores candidates by {ACC_WS}: it does not combine with a strategy that "
                         "trains its own supernet or with a custom evaluate function")
    if config.get("data") in (None, "cifar10", "gaussian", "speech"):
        if getattr(space, "input_kind", "image") == "audio":
            raise ValueError(f"--supernet needs --data DIR: a folder DIR/<speaker>/<utt>.wav; {ACC_WS} is measured "
                             "on utterances the supernet held out")
        raise ValueError(f"--supernet needs --data DIR: a folder with train/ (and test/) class folders or an "
                         f".npz with x_train, y_train; {ACC_WS} is measured on a held-out part of its train split")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--supernet {path}: no such file")


def supernet_scorer(config: dict[str, Any], space: SearchSpace) -> Any:
    """The run's :class:`~nas.inherited.SupernetScorer`, or ``None`` for a run without ``--supernet``."""
    from nas.inherited import SupernetScorer

    if config.get("supernet") is None:
        return None
    return SupernetScorer(space, config["supernet"], config["data"], int(config["seed"]),
                          int(config["val_size"]), int(config["bn_batches"]), config.get("device"),
                          config.get("supernet_digest"))


def needs_memory(config: dict[str, Any]) -> bool:
    """Whether a run records ``sram_kb`` and ``flash_kb`` for every candidate: a memory objective or limit."""
    limits = config.get("constraints", {})
    return any(limits.get(k) is not None for k in MEMORY_LIMITS) or \
        any(o.name in MEMORY_METRICS for o in parse_objectives(config["objectives"]))


def build_evaluator(config: dict[str, Any], space: SearchSpace, batch: proxy_lib.Batch | None = None) -> Evaluate:
    """The proxy :class:`~nas.evaluate.Evaluator` of a run's settings; checks that its data fit the space."""
    from nas.evaluate import Evaluator
    from proxies.cache import ProxyCache

    if config.get("evaluator", "proxies") != "proxies":
        raise ValueError(f"{config.get('evaluator')!r} runs are evaluated by a custom function: pass it to "
                         "optimize(evaluate=...)")
    batch = batch if batch is not None else load_data(config, space)
    target = hardware_models.get(config["target"]) if config.get("target") else None
    cache_dir = config.get("cache")
    cache = ProxyCache(None if cache_dir is True else cache_dir) if cache_dir else None
    return Evaluator(space, tuple(config["proxies"]), batch, target, int(config["seed"]), config.get("device"),
                     cache, labels=config.get("labels"), supernet=supernet_scorer(config, space),
                     memory=needs_memory(config),
                     predictors={n: p["path"] for n, p in config.get("predictors", {}).items()})


def load_data(config: dict[str, Any], space: SearchSpace) -> proxy_lib.Batch:
    """The calibration batch of a run, checked against what the space's networks take."""
    batch = proxy_lib.load_batch(config.get("data"), config.get("batch_size", 64), int(config["seed"]),
                                 tuple(space.input_shape))
    check_batch(space, batch, config.get("data"))
    if config.get("teacher"):
        batch = teacher_batch(batch, config["teacher"], config.get("device"))
    return batch


def check_batch(space: SearchSpace, batch: proxy_lib.Batch, source: str | None) -> None:
    """Raise ``ValueError`` when ``batch`` cannot feed ``space``'s networks (channels, images vs tokens)."""
    shape = tuple(space.input_shape)
    x = batch.inputs
    name = source or "cifar10"
    if len(shape) == 1:
        if x.is_floating_point() or x.dim() != 2:
            raise ValueError(f"--data {name}: space {space.name!r} takes token sequences (a text file), "
                             f"got inputs of shape {tuple(x.shape)}")
        return
    if x.dim() != 4:
        raise ValueError(f"--data {name}: space {space.name!r} takes images (N, C, H, W), got inputs of "
                         f"shape {tuple(x.shape)}")
    if x.shape[1] != shape[0]:
        raise ValueError(f"--data {name}: its images have {x.shape[1]} channel(s), but space {space.name!r} "
                         f"takes {shape[0]}-channel inputs ({'x'.join(map(str, shape))})")


def data_digest(config: dict[str, Any], batch: proxy_lib.Batch) -> str | None:
    """A digest of the calibration batch a run reads (a changed data file is caught on resume)."""
    if config.get("data") in (None, "cifar10", "gaussian"):
        return None  # shipped or generated: fixed by the package and the seed
    return hashlib.sha1(batch.inputs.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def file_digest(path: str | os.PathLike[str] | None) -> str | None:
    """SHA-1 of a file's bytes (``None`` for no file)."""
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


RESUMABLE = frozenset({"budget", "oracle_queries", "device", "cache"})
"""Settings a resumed run may change; every other given flag must agree with the stored run."""


FLAGS = {"space": "--space", "strategy": "--strategy", "objectives": "--objectives", "seed": "--seed",
         "target": "--target", "latency_ms": "--latency-ms", "max_params": "--max-params",
         "max_flops": "--max-flops", "max_sram_kb": "--max-sram-kb", "max_flash_kb": "--max-flash-kb",
         "proxies": "--proxies", "batch_size": "--batch-size", "data": "--data",
         "labels": "--labels", "label_queries": "--label-queries", "strategy_options": "--option",
         "space_options": "--space-option", "supernet": "--supernet", "val_size": "--val-size", "teacher": "--teacher",
         "bn_batches": "--bn-batches"}
"""The command-line flag of each setting, for messages."""


def check_resume(run_dir: Path, config: dict[str, Any], given: dict[str, Any]) -> None:
    """Raise :class:`ResumeConflict` when a setting given on resume contradicts the stored run."""
    for key, value in given.items():
        if value is None or key in RESUMABLE:
            continue
        stored = _stored_setting(config, key)
        wanted = _normalise_setting(key, value, config)
        if wanted != stored:
            raise ResumeConflict(
                f"--resume {run_dir}: {FLAGS.get(key, key)} {_show(wanted)} contradicts the stored run's "
                f"{_show(stored)}; only --budget and --oracle-queries may change on resume (start a new "
                "run with another --out for other settings)")


def check_inputs_unchanged(run_dir: Path, config: dict[str, Any], space: SearchSpace) -> proxy_lib.Batch | None:
    """Raise :class:`ResumeConflict` when the run's data or accuracy table changed since it started; returns
    the calibration batch when it had to be loaded for the check (so that it is not loaded again)."""
    batch = None
    if config.get("data_digest") is not None and config.get("evaluator") == "proxies":
        batch = load_data(config, space)
        now = data_digest(config, batch)
        if now != config["data_digest"]:
            raise ResumeConflict(f"--resume {run_dir}: --data {config.get('data')} changed since the run started "
                                 f"(digest {config['data_digest']} then, {now} now); restore it or start a new run")
    if config.get("supernet") is not None:
        check_supernet_unchanged(run_dir, config, space)
    if config.get("teacher") is not None:
        now = file_digest(Path(config["teacher"]) / "model.pt")
        if now != config.get("teacher_digest"):
            raise ResumeConflict(f"--resume {run_dir}: the --teacher {config['teacher']} weights changed since the "
                                 f"run started (digest {config.get('teacher_digest')} then, {now} now)")
    for name, stored in config.get("predictors", {}).items():
        now = predictor_digest(stored["path"]) if Path(stored["path"]).is_dir() else "missing"
        if now != stored["digest"]:
            raise ResumeConflict(f"--resume {run_dir}: the predictor {stored['path']} ({name}) changed since the run "
                                 f"started (digest {stored['digest']} then, {now} now); restore it or start a new run")
    table = config.get("space_options", {}).get("accuracy_table")
    if config.get("accuracy_table_digest") is not None:
        now = file_digest(table)
        if now != config["accuracy_table_digest"]:
            raise ResumeConflict(f"--resume {run_dir}: --accuracy-table {table} changed since the run started "
                                 f"(digest {config['accuracy_table_digest']} then, {now} now)")
    return batch


def check_supernet_unchanged(run_dir: Path, config: dict[str, Any], space: SearchSpace) -> None:
    """Raise :class:`ResumeConflict` when the run's supernet checkpoint or its held-out images changed."""
    from nas.inherited import file_sha1

    path = config["supernet"]
    now = file_sha1(path) if Path(path).is_file() else "missing"
    if now != config.get("supernet_digest"):
        raise ResumeConflict(f"--resume {run_dir}: --supernet {path} changed since the run started (digest "
                             f"{config.get('supernet_digest')} then, {now} now); restore it or start a new run")
    held = supernet_scorer(config, space).images()
    if held.digest() != config.get("supernet_data_digest"):
        raise ResumeConflict(f"--resume {run_dir}: --data {config.get('data')} changed since the run started "
                             f"(acc_ws images: digest {config.get('supernet_data_digest')} then, {held.digest()} "
                             "now); restore it or start a new run")


def _stored_setting(config: dict[str, Any], key: str) -> Any:
    if key in ("latency_ms", "max_params", "max_flops", *MEMORY_LIMITS):
        return config.get("constraints", {}).get(key)
    if key == "proxies":  # the extra proxies: what was computed beyond the objectives
        objs = {o.name for o in parse_objectives(config["objectives"])}
        return [p for p in config.get("proxies", []) if p not in objs and p != "flops"] or None
    if key == "labels":
        return [tuple(x) for x in config.get("labels") or []] or None
    return config.get(key)


def _normalise_setting(key: str, value: Any, config: dict[str, Any]) -> Any:
    if key == "objectives":
        return [str(o) for o in parse_objectives(value_list(value) if isinstance(value, str) else list(value))]
    if key == "proxies":
        objs = {o.name for o in parse_objectives(config["objectives"])}
        return [p for p in value_list(value) if p not in objs and p != "flops"] or None
    if key == "space":
        return value if isinstance(value, str) else value.name
    if key == "labels":
        return [tuple(x) for x in resolve_labels(None, value, None, 0) or []] or None
    if key == "space_options":  # only the options given must agree; the space's defaults fill the rest
        stored = config.get("space_options", {})
        return {**stored, **value}
    if key == "strategy_options":
        return dict(value)
    if key in ("latency_ms", "max_params", "max_flops", *MEMORY_LIMITS):
        return float(value)
    if key in ("seed", "batch_size", "label_queries", "val_size", "bn_batches"):
        return int(value)
    if key in ("supernet", "teacher"):
        return str(Path(value).resolve())
    if key == "data":
        return str(value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def cache_setting(cache: Any) -> bool | str:
    """A JSON-able form of the cache choice: True (default folder), False, or a folder path."""
    from proxies.cache import ProxyCache

    if isinstance(cache, ProxyCache):
        return str(cache.dir)
    if isinstance(cache, (str, os.PathLike)):
        return os.fspath(cache)
    return bool(cache)


def resolve_space(space: str | SearchSpace, options: Mapping[str, Any] | None
                   ) -> tuple[SearchSpace, str, dict[str, Any]]:
    """The space object, its registered name and the options that rebuild it."""
    if isinstance(space, str):
        obj = search_spaces.get(space, **dict(options or {}))
        defaults = dict(getattr(obj, "search_defaults", None) or {})
        if defaults.get("space_options"):  # e.g. OFA scores proxies at half resolution unless told otherwise
            options = {**defaults["space_options"], **dict(options or {})}
            obj = search_spaces.get(space, **options)
        return obj, space, dict(options or {})
    if options:
        raise ValueError("space_options go with a space name; a space object carries its own options")
    return space, space.name, space_options_of(space)


def space_options_of(space: SearchSpace) -> dict[str, Any]:
    """Constructor options of a space object that differ from their defaults (JSON-able ones)."""
    from search_spaces.base import changed_options

    return changed_options(space, (int, float, str, bool))


def stored_space(config: dict[str, Any]) -> SearchSpace:
    try:
        return search_spaces.get(config["space"], **config.get("space_options", {}))
    except search_spaces.UnknownNameError:
        raise ValueError(f"the run's space {config['space']!r} is not registered here: pass the space object "
                         "again (nas.load_study(..., space=...))") from None


def register_custom(items: str | Sequence[str | Callable[..., float]] | None) -> tuple[list[str], list[str]]:
    """Names of ``items``, registering each plain function as a proxy under its name (idempotent)."""
    if items is None:
        return [], []
    if isinstance(items, str):
        return value_list(items), []
    names, custom = [], []
    for item in items:
        if callable(item):
            name = getattr(item, "__name__", None)
            if not name or name == "<lambda>":
                raise ValueError("a custom proxy must be a named function (def my_proxy(model, batch): ...)")
            doc = (inspect.getdoc(item) or name).splitlines()[0]
            proxy_lib.proxy(name, doc)(item)
            names.append(name)
            custom.append(name)
        else:
            names.append(str(item))
    return names, custom


def resolve_strategy(strategy: Any) -> tuple[str | None, dict[str, Any] | None, strategies.Strategy | None]:
    """(name, options, instance) of a strategy given by name, spec or instance."""
    if strategy is None or isinstance(strategy, str):
        return strategy, None, None
    if isinstance(strategy, strategies.StrategySpec):
        return strategy.name, dict(strategy.options), None
    if callable(getattr(strategy, "ask", None)) and callable(getattr(strategy, "tell", None)):
        return f"custom:{type(strategy).__qualname__}", {}, strategy
    raise ValueError(f"strategy must be a name ({', '.join(strategies.registry.list())}), a spec such as "
                     f"nas.strategies.Evolution(population_size=50), or an object with ask/tell; got {strategy!r}")


def default_of(factory: Any, name: str) -> Any:
    """A factory's default for keyword ``name``: its signature's, else its ``default_<name>`` attribute."""
    try:
        param = inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):
        param = None
    if param is not None and param.default is not inspect.Parameter.empty:
        return param.default
    return getattr(factory, f"default_{name}", None)


def make_strategy(config: dict[str, Any], space: SearchSpace, run_dir: Path) -> strategies.Strategy:
    """The configured strategy; one that keeps its own study gets a database inside the run directory."""
    options = dict(config.get("strategy_options", {}))
    factory = strategies.registry.get(config["strategy"])
    if getattr(factory, "uses_storage", False) and "storage" not in options:
        options["storage"] = str(run_dir / "optuna.journal")
    if getattr(factory, "uses_labels", False) and config.get("labels") and "labels" not in options:
        options["labels"] = config["labels"]  # e.g. the predictor strategy fits on them
    if getattr(factory, "uses_target", False) and config.get("target") and "target" not in options:
        options["target"] = config["target"]  # e.g. ProxylessNAS's latency loss is for the run's --target
    n_objectives = len(parse_objectives(config["objectives"]))
    strategies.registry.check_options(config["strategy"], options, fixed=("space", "seed", "n_objectives"))
    return factory(space, seed=int(config["seed"]), n_objectives=n_objectives, **options)
