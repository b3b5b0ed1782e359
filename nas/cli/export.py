"""``nas export RUN_DIR``: export the best (or a chosen) candidate of a run as ONNX, TorchScript or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import nas
import search_spaces
from nas.cli import UsageError
from nas.result import export_network, run_network
from search_spaces import arch_input_shape

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "json": ".json"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("export", help="export a run's best network (ONNX, TorchScript or JSON)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=sorted(SUFFIX), default="onnx", help="output format (default onnx)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--arch", help="export this architecture string instead of the best")
    which.add_argument("--rank", type=int, metavar="K",
                       help="export the K-th ranked candidate (1 = best; Pareto front first)")
    p.add_argument("--out", help="output file (default RUN_DIR/export-<rank>.<suffix>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the chosen architecture and write it in the requested format."""
    result = nas.load_run(args.run_dir)
    space = search_spaces.get(result.config["space"], **result.config.get("space_options", {}))
    if args.arch is not None:
        arch_text, label = space.to_string(space.from_string(args.arch)), "arch"
    else:
        ranked = result.ranked()  # the pick leads
        k = args.rank or 1
        if not ranked:
            raise UsageError(f"{args.run_dir} has no feasible candidate to export")
        if not 1 <= k <= len(ranked):
            raise UsageError(f"--rank {k}: the run has {len(ranked)} feasible candidates (1..{len(ranked)})")
        arch_text, label = ranked[k - 1].arch, f"rank{k}"
    out = Path(args.out or Path(args.run_dir) / f"export-{label}{SUFFIX[args.format]}")
    arch = space.from_string(arch_text)
    # The weights that were scored: a --supernet run's inherited ones (BN recalibrated), else the initial ones.
    if args.format == "onnx":
        export_network(result.config, arch_text, out, space)
    elif args.format == "torchscript":
        model = run_network(result.config, arch_text, space)
        example = torch.zeros(1, *arch_input_shape(space, arch))
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(out))
    else:
        cand = next((c for c in result.candidates if c.arch == arch_text), None)
        record = {"space": result.config["space"], "arch": arch_text,
                  "scores": cand.scores if cand else {}, "metrics": cand.metrics if cand else {},
                  "oracle_accuracy": result.oracle.get(arch_text)}
        out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
