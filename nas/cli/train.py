"""``nas train``: train an architecture (given, from a file, or a search run's pick) from scratch."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from nas.cli import UsageError
from nas.cli.common import add_space_args, read_arch_file, space_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser(
        "train", help="train an architecture from scratch (test accuracy, curve, ONNX with trained weights)",
        description="Train an architecture of an image space (nb201, nb101, darts, ofa, fbnet) with the "
                    "space's recipe (see nas.recipes) and write train.csv, curve.png, metrics.json, model.pt "
                    "and model.onnx. Data-parallel under `torchrun --nproc_per_node N -m nas train ...`.")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                   help="a search run folder: train its best candidate (or the --rank K-th)")
    p.add_argument("--rank", type=int, metavar="K", help="with RUN_DIR: the K-th ranked candidate (1 = best)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--arch", help="architecture string")
    which.add_argument("--arch-file", metavar="F", help="file whose first architecture line is trained")
    add_space_args(p)
    p.set_defaults(space=None)  # from RUN_DIR or --resume when not given; else nb201
    p.add_argument("--data", metavar="PATH",
                   help="required: a folder with train/ and test/ folders of one folder of images per class "
                        "(CIFAR-10's layout), or an .npz with x_train, y_train, x_test, y_test")
    p.add_argument("--epochs", type=int, help="epochs (default: the space's recipe, e.g. nb201 200)")
    p.add_argument("--batch-size", type=int, help="global batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: the recipe's)")
    p.add_argument("--train-size", type=int, metavar="N",
                   help="a seeded class-balanced subset of N training-split images (default all), "
                        "validation images included")
    p.add_argument("--val-size", type=int, metavar="N",
                   help="training-split images held out for per-epoch validation (default 10%%; 0: none)")
    p.add_argument("--seed", type=int, help="initial weights, data order, augmentation (default 0)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default RUN_DIR/train-rank<K>, else runs/train-<space>-<hash>-s<seed>)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--amp", action="store_true", default=None, help="bfloat16 autocast (recent GPUs)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the killed or finished run in DIR from its last epoch with its settings")
    p.add_argument("--teacher", metavar="DIR",
                   help="distil from the network trained in DIR (a `nas train` output) with the KD loss")
    p.add_argument("--kd-temperature", type=float, metavar="T", help="with --teacher: softmax temperature (default 4)")
    p.add_argument("--kd-alpha", type=float, metavar="A",
                   help="with --teacher: weight of the distillation term, 1 - A on the labels (default 0.9)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve the architecture and settings, train, and print the summary."""
    import nas

    options = space_options(args)
    space, arch, out = args.space, None, args.out
    if args.rank is not None and args.run_dir is None:
        raise UsageError("--rank K picks from a search run: nas train RUN_DIR --rank K")
    if args.run_dir is not None:
        if args.arch or args.arch_file:
            raise UsageError("give RUN_DIR or --arch/--arch-file, not both")
        space, arch, run_options = _run_pick(args.run_dir, args.rank or 1, space)
        options = {**run_options, **options}
        out = out or str(Path(args.run_dir) / f"train-rank{args.rank or 1}")
    if args.resume is not None:
        if out is not None and Path(out).resolve() != Path(args.resume).resolve():
            raise UsageError(f"--out {out} and --resume {args.resume} name different folders; give one")
        out = args.resume
    else:
        space = space or "nb201"
        if args.data is None:
            raise UsageError("--data is required: a folder with train/ and test/ class folders (CIFAR-10's "
                             "layout) or an .npz with x_train, y_train, x_test, y_test")
        if arch is None and args.arch is None and args.arch_file is None:
            raise UsageError("give the architecture: --arch ARCH, --arch-file F, or a search run folder")
    if args.arch_file is not None:
        import search_spaces

        built = search_spaces.get(space or _stored_space(args.resume), **options)
        arch = read_arch_file(built, args.arch_file)[0][0]
    elif args.arch is not None:
        arch = args.arch
    result = nas.train(space, arch, args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       train_size=args.train_size, val_size=args.val_size, seed=args.seed, out=out,
                       space_options=options, resume=args.resume is not None, device=args.device,
                       progress=not args.no_progress, amp=args.amp, teacher=args.teacher,
                       kd_temperature=args.kd_temperature, kd_alpha=args.kd_alpha)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank runs this; one summary
        _print_summary(result)
    return 0


def _run_pick(run_dir: str, rank: int, space: str | None) -> tuple[str, str, dict[str, object]]:
    """``(space, arch string, space options)`` of the ``rank``-th candidate of a search run (1 = its pick)."""
    import nas

    if not Path(run_dir).is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    result = nas.load_run(run_dir)
    run_space = result.config.get("space")
    if run_space is None:
        raise UsageError(f"{run_dir}: the run stores no space in its config")
    if space is not None and space != run_space:
        raise UsageError(f"--space {space}: the run {run_dir} searched {run_space}")
    ranked = result.ranked()  # the pick leads
    if not ranked:
        raise UsageError(f"{run_dir} has no feasible candidate to train")
    if not 1 <= rank <= len(ranked):
        raise UsageError(f"--rank {rank}: the run has {len(ranked)} feasible candidates (1..{len(ranked)})")
    options = dict(result.config.get("space_options") or {})
    options.pop("accuracy_table", None)  # a benchmark oracle, nothing training needs
    return run_space, ranked[rank - 1].arch, options


def _stored_space(resume: str | None) -> str:
    """The space stored in a ``--resume`` folder's config (nb201 when there is none)."""
    config = Path(resume or "") / "config.json"
    if resume and config.is_file():
        return json.loads(config.read_text())["settings"]["space"]
    return "nb201"


def _print_summary(result: object) -> None:
    """A rich table of the trained network's numbers."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="nas train", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # an architecture string is long; show all of it
    val = result.val_accuracy
    rows = [("space", result.space), ("architecture", result.arch),
            ("test accuracy", f"{result.test_accuracy:.2f} %"),
            ("validation accuracy (last epoch)", "-" if val is None or math.isnan(val) else f"{val:.2f} %"),
            ("parameters", f"{result.params:,}"), ("epochs", str(len(result.history))),
            ("seconds per epoch", f"{result.seconds_per_epoch:.1f}"), ("output", str(result.out))]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
