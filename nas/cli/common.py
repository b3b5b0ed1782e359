"""Argument groups and helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from nas.cli import UsageError
from search_spaces import ArchError, SearchSpace


def add_space_args(parser: argparse.ArgumentParser) -> None:
    """``--space`` and ``--accuracy-table``."""
    parser.add_argument("--space", default="nb201", help="search space (see `nas spaces`)")
    parser.add_argument("--accuracy-table", metavar="PATH",
                        help="nb201: CSV of true accuracies (oracle for benchmarks, never a search signal)")


def space_options(args: argparse.Namespace) -> dict[str, object]:
    """Keyword options for ``search_spaces.get`` from the parsed flags."""
    return {"accuracy_table": args.accuracy_table} if getattr(args, "accuracy_table", None) else {}


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
