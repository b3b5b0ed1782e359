"""``nas memory``: flash and peak SRAM of architectures on a microcontroller, from their ONNX graphs."""

from __future__ import annotations

import argparse
import csv

import search_spaces
from nas.cli import UsageError
from nas.cli.common import add_space_args, read_arch_file, space_options
from search_spaces import ArchError

TABLE_ROWS = 15
"""Rows shown on the terminal (all of them are in the CSV)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser(
        "memory", help="flash and peak SRAM (kB) of architectures, from their ONNX graphs",
        description="Flash: parameters at --weight-bits (biases at 32 bits); SRAM: the peak of live activations "
                    "at --activation-bits when the graph runs node by node (in-place ops, residuals kept alive), "
                    "batch 1. kB = 1024 bytes. The defaults are what `nas search --max-sram-kb/--max-flash-kb` "
                    "and the objectives sram_kb, flash_kb record.")
    add_space_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", action="append", metavar="ARCH", help="an architecture string (repeatable)")
    which.add_argument("--arch-file", help="one architecture string per line")
    p.add_argument("--out", required=True, help="output CSV arch,sram_kb,flash_kb,params,peak_node in input order")
    p.add_argument("--weight-bits", type=int, default=8, help="bits per weight (default 8)")
    p.add_argument("--activation-bits", type=int, default=8, help="bits per activation (default 8)")
    p.add_argument("--patches", type=int, default=1, metavar="N",
                   help="run the first stage patch by patch on an N x N grid (MCUNetV2); adds the stage's peak "
                        "with and without patches as columns (default 1: no patches)")
    p.add_argument("--patch-stride", type=int, default=8, metavar="S",
                   help="the patch stage ends before the feature map drops below 1/S of the input (default 8)")
    p.add_argument("--no-inplace-depthwise", action="store_true",
                   help="depthwise convolutions get a separate output buffer (default: in place, as TinyEngine)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write one row per architecture, in input order, and print them."""
    from hardware_models.memory import memory_of

    space = search_spaces.get(args.space, **space_options(args))
    if args.arch_file:
        archs = [a for _, a in read_arch_file(space, args.arch_file)]
    else:
        archs = []
        for text in args.arch:
            try:
                archs.append(space.from_string(text.strip()))
            except ArchError as err:
                raise UsageError(f"--arch {text!r}: {err}") from None
    reports = [memory_of(space, a, args.weight_bits, args.activation_bits, patches=args.patches,
                         patch_stride=args.patch_stride, inplace_depthwise=not args.no_inplace_depthwise)
               for a in archs]
    patched = args.patches > 1
    header = ["arch", "sram_kb", "flash_kb", "params", "peak_node"]
    if patched:
        header += ["stage_end", "stage_kb", "patch_stage_kb", "rest_kb"]
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for arch, r in zip(archs, reports, strict=True):
            # repr: the exact floats a search run records, so the two files compare equal
            row = [space.to_string(arch), repr(r.sram_kb), repr(r.flash_kb), r.params, r.peak_node]
            if patched:
                row += [r.stage_end or "", *("" if v is None else repr(v)
                                             for v in (r.stage_kb, r.patch_stage_kb, r.rest_kb))]
            w.writerow(row)
    _print(space, archs, reports, patched)
    print(f"{len(archs)} architecture(s) written to {args.out}")
    return 0


def _print(space: search_spaces.SearchSpace, archs: list, reports: list, patched: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    bits = f"{reports[0].weight_bits}-bit weights, {reports[0].activation_bits}-bit activations"
    table = Table(title=f"memory ({bits}; kB = 1024 bytes)")
    for name in ("architecture", "sram_kb", "flash_kb", "params", "peak node"):
        table.add_column(name, justify="left" if name in ("architecture", "peak node") else "right",
                         overflow="fold")
    if patched:
        table.add_column("stage kB (layers -> patches)", justify="right")
    for arch, r in list(zip(archs, reports, strict=True))[:TABLE_ROWS]:
        cells = [space.to_string(arch), f"{r.sram_kb:.1f}", f"{r.flash_kb:.1f}", f"{r.params:,}", r.peak_node]
        if patched:
            cells.append("-" if r.stage_kb is None else
                         f"{r.stage_kb:.1f} -> {r.patch_stage_kb:.1f} ({r.patch_reduction:.1f}x)")
        table.add_row(*cells)
    Console().print(table)
    if len(archs) > TABLE_ROWS:
        print(f"... {len(archs) - TABLE_ROWS} more in the CSV")
