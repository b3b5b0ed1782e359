"""``nas spaces``: list the search spaces."""

from __future__ import annotations

import argparse

import search_spaces


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("spaces", help="list search spaces")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print each space's name, size and description."""
    from rich.console import Console
    from rich.table import Table

    table = Table("space", "architectures", "description")
    for name in search_spaces.list():
        space = search_spaces.get(name)
        size = space.cardinality
        table.add_row(name, f"{size:,}" if size < 10**9 else f"{size:.2e}", space.description)
    Console().print(table)
    return 0
