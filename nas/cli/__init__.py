"""The ``nas`` command line: each sub-command lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from nas.errors import RunInUse, RunStoreError, SearchFailed

COMMANDS = ("spaces", "proxies", "targets", "score", "search", "runs", "export", "latency", "memory",
            "benchmark", "sweep", "train", "supernet", "grow", "dashboard", "quantize", "predictor")
"""Sub-command modules in ``nas.cli``, in help order; a module that does not exist yet is skipped."""


class UsageError(Exception):
    """A user mistake reported as ``nas: error: ...`` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="nas", description="Neural architecture search with zero-cost proxies and hardware models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"nas.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"nas.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


USAGE_ERRORS: tuple[type[BaseException], ...] = (UsageError, ValueError, FileNotFoundError, FileExistsError,
                                                 NotADirectoryError)
"""A user mistake (bad flag, unknown name, missing file; ValueError covers ResumeConflict): exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nas`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False)])
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("nas: interrupted; everything evaluated so far is saved (continue with --resume)",
              file=sys.stderr)
        return 130
    except (SearchFailed, RunStoreError, RunInUse) as err:  # a run that cannot go on: exit 1
        if args.verbose:
            raise
        print(f"nas: error: {err}", file=sys.stderr)
        return 1
    except USAGE_ERRORS as err:
        # Only what we expect: an internal TypeError, KeyError or RuntimeError is a bug and keeps its traceback
        if args.verbose:
            raise
        print(f"nas: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
