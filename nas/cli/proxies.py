"""``nas proxies``: list the zero-cost proxies."""

from __future__ import annotations

import argparse

import proxies


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("proxies", help="list zero-cost proxies")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print each proxy's name and description."""
    from rich.console import Console
    from rich.table import Table

    table = Table("proxy", "description")
    for name in proxies.list():
        table.add_row(name, proxies.get(name).description)
    Console().print(table)
    return 0
