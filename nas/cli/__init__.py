"""The ``nas`` command line: each sub-command lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

COMMANDS = ("spaces", "proxies", "targets", "score", "search", "runs", "export", "latency", "benchmark",
            "sweep")
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
    except (UsageError, ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError,
            NotADirectoryError, RuntimeError) as err:
        if args.verbose:
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"nas: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
