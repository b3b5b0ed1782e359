"""``nas supernet train``: train a weight-sharing supernet (sandwich rule, in-place distillation)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from nas.cli import UsageError
from nas.cli.common import parse_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("supernet", help="weight-sharing supernets: train one (ofa, fbnet, nb201, tdnn)",
                       description="Weight-sharing supernets of the image spaces and of tdnn.")
    actions = p.add_subparsers(dest="supernet_command", metavar="ACTION")
    actions.required = True
    t = actions.add_parser(
        "train", help="train a supernet with the sandwich rule and in-place distillation",
        description="Train the supernet of ofa, fbnet, nb201 or tdnn on --data (sandwich rule: largest, smallest "
                    "and two random subnets per step; the largest distils into the others; ofa: progressive "
                    "shrinking; tdnn: noisy random crops of speakers' utterances). Writes train.csv, curve.png, a checkpoint per epoch and supernet.pt, which "
                    "`nas search --supernet` reads. Data-parallel under "
                    "`torchrun --nproc_per_node N -m nas supernet train ...`. See nas.supernet_training.")
    t.add_argument("--space", help="ofa, fbnet, nb201 or tdnn (required unless --resume)")
    t.add_argument("--space-option", action="append", default=[], metavar="KEY=VALUE",
                   help="space constructor option, repeatable (e.g. ofa: min_resolution=32 max_resolution=64; "
                        "nb201: channels=8; tdnn: seconds=1.0 channels=[64,128])")
    t.add_argument("--data", metavar="PATH",
                   help="required: a folder with train/ and test/ class folders (CIFAR-10's layout) or an .npz; "
                        "tdnn: a folder DIR/<speaker>/<utt>.wav")
    t.add_argument("--epochs", type=int, help="epochs (required for a new run)")
    t.add_argument("--out", metavar="DIR", help="output folder (required for a new run)")
    t.add_argument("--batch-size", type=int, help="batch size (default: the space's recipe)")
    t.add_argument("--lr", type=float, help="initial learning rate (default: the recipe's)")
    t.add_argument("--train-size", type=int, metavar="N",
                   help="a seeded class-balanced subset of N training images; tdnn: N random crops per epoch "
                        "(default one per training utterance)")
    t.add_argument("--val-size", type=int, metavar="N",
                   help="training images held out for validation (default 10%%); tdnn: utterances held out per "
                        "speaker (default 10%% of the fewest a speaker has, at least 1)")
    t.add_argument("--seed", type=int, help="weights, data order, augmentation, sampled subnets (default 0)")
    t.add_argument("--no-progressive", action="store_true",
                   help="ofa: train every kernel, depth and expand choice from the start (no progressive shrinking)")
    t.add_argument("--loss", choices=("ce", "aam"),
                   help="ce: cross-entropy (default); aam: AAM-softmax on the speaker embedding (tdnn; ArcFace's "
                        "additive angular margin as ECAPA-TDNN trains)")
    t.add_argument("--aam-margin", type=float, metavar="M", help="AAM-softmax margin in radians (default 0.2)")
    t.add_argument("--aam-scale", type=float, metavar="S", help="AAM-softmax scale (default 30)")
    t.add_argument("--label-weight", type=float, metavar="W",
                   help="the other subnets learn from the largest's predictions plus W times the labels' loss "
                        "(0: BigNAS's in-place distillation alone; 1: OFA's kd_ratio 1)")
    t.add_argument("--warmup", type=float, metavar="F",
                   help="fbnet, nb201, tdnn: train the largest subnet alone for the first fraction F of the steps "
                        "(as OFA trains its full network first; default 0)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    t.add_argument("--resume", metavar="DIR", help="continue the killed or finished run in DIR with its settings")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the flags, train, print the summary."""
    from nas.supernet_training import train_supernet

    out = args.out
    if args.resume is not None:
        if out is not None and Path(out).resolve() != Path(args.resume).resolve():
            raise UsageError(f"--out {out} and --resume {args.resume} name different folders; give one")
        out = args.resume
    else:
        missing = [flag for flag, value in (("--space", args.space), ("--data", args.data),
                                            ("--epochs", args.epochs), ("--out", out)) if value is None]
        if missing:
            raise UsageError(f"a new supernet run needs {', '.join(missing)} (or --resume DIR)")
    result = train_supernet(args.space, args.data, epochs=args.epochs, out=out, batch_size=args.batch_size,
                            lr=args.lr, train_size=args.train_size, val_size=args.val_size, seed=args.seed,
                            space_options=parse_options(args.space_option, "--space-option") or None,
                            resume=args.resume is not None, device=args.device,
                            progress=not args.no_progress, progressive=False if args.no_progressive else None,
                            loss=args.loss, aam_margin=args.aam_margin, aam_scale=args.aam_scale,
                            label_weight=args.label_weight, warmup=args.warmup)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank runs this; one summary
        _print_summary(result)
    return 0


def _print_summary(result: object) -> None:
    """A rich table of the run's last epoch."""
    from rich.console import Console
    from rich.table import Table

    last = result.history[-1] if result.history else {}

    def pct(key: str) -> str:
        value = last.get(key, math.nan)
        return "-" if value is None or math.isnan(value) else f"{value:.2f} %"

    table = Table(title="nas supernet train", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    rows = [("space", result.space), ("space options", str(result.space_options)),
            ("epochs", str(len(result.history))), ("last phase", str(last.get("phase", "-"))),
            ("largest subnet, validation", pct("largest_val_acc")),
            ("smallest subnet, validation", pct("smallest_val_acc")),
            ("seconds per epoch", f"{result.seconds_per_epoch:.1f}"),
            ("supernet", str(Path(result.out) / "supernet.pt"))]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
