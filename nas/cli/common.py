"""Argument groups and helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nas.cli import UsageError
from search_spaces import ArchError, SearchSpace

SPACE_OPTION_HELP = ("space constructor option (repeatable; VALUE is JSON, else a string), e.g. nb201: "
                     "channels=8 cells_per_stage=1 (C and N), dataset=cifar100 num_classes=100 (the "
                     "accuracy-table column: cifar10, cifar100, imagenet16_120); ofa: width_mult=1.2; "
                     "a wrong KEY lists the valid ones")


def add_space_args(parser: argparse.ArgumentParser) -> None:
    """``--space``, ``--space-option`` and ``--accuracy-table``."""
    parser.add_argument("--space", default="nb201", help="search space (see `nas spaces`)")
    parser.add_argument("--space-option", action="append", default=[], metavar="KEY=VALUE",
                        help=SPACE_OPTION_HELP)
    parser.add_argument("--accuracy-table", metavar="PATH",
                        help="nb201: CSV of true accuracies (oracle for benchmarks, never a search signal)")


def space_options(args: argparse.Namespace) -> dict[str, object]:
    """Keyword options for ``search_spaces.get`` from ``--space-option`` and ``--accuracy-table``."""
    options = parse_options(getattr(args, "space_option", None) or [], "--space-option")
    if getattr(args, "accuracy_table", None):
        if "accuracy_table" in options:
            raise UsageError("give the accuracy table once: --accuracy-table or --space-option accuracy_table=")
        options["accuracy_table"] = args.accuracy_table
    return options


def parse_options(items: list[str], flag: str, example: str = "channels=8") -> dict[str, Any]:
    """``["channels=8", "dataset=cifar100"]`` -> ``{"channels": 8, "dataset": "cifar100"}`` (JSON, else text)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r}: write KEY=VALUE, e.g. {flag} {example}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    """``--cache/--no-cache`` and ``--cache-dir``."""
    parser.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse and store proxy values in the proxy cache (default: on)")
    parser.add_argument("--cache-dir", metavar="DIR", default=None,
                        help="proxy cache folder (default $ZCNAS_CACHE_DIR, else ~/.cache/zcnas)")


def cache_option(args: argparse.Namespace) -> bool | str:
    """The ``cache=`` argument of ``nas.search`` / ``proxies.cache.resolve_cache`` from the cache flags."""
    if not args.cache:
        if args.cache_dir is not None:
            raise UsageError("--no-cache and --cache-dir contradict each other; give one")
        return False
    return args.cache_dir if args.cache_dir is not None else True


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device``."""
    parser.add_argument("--device", default=None,
                        help="torch device for proxy computation, e.g. cpu, cuda, cuda:1 (default: CUDA when "
                             "present, else CPU)")


def check_device(device: str | None, local: bool = True) -> str | None:
    """``device`` unchanged once torch parses it (and, when ``local``, this machine has that CUDA device)."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as err:  # torch's message lists the device types it knows
        raise UsageError(f"--device {device!r}: {str(err).splitlines()[0]}") from None
    if local and parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise UsageError(f"--device {device}: this machine has {count} CUDA device(s)")
    return device


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--batch-size`` and ``--seed``."""
    parser.add_argument("--data", default=None,
                        help="calibration data: cifar10 (shipped, default), gaussian, an .npz with x/y, "
                             "or an image folder with one sub-folder per class")
    parser.add_argument("--batch-size", type=int, default=64, help="calibration batch size (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def read_arch_file(space: SearchSpace, path: str) -> list[tuple[str, object]]:
    """Parse one arch string per line; a bad line raises naming the file, line and problem."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--arch-file {path}: no such file")
    out = []
    for lineno, line in enumerate(file.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            out.append((text, space.from_string(text)))
        except ArchError as err:
            raise UsageError(f"{path}, line {lineno}: {err}") from None
    if not out:
        raise UsageError(f"--arch-file {path}: no architectures in it")
    return out


def split_names(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]
