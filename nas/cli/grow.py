"""``nas grow``: EAS, growing a trained chain network by function-preserving transformations."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser(
        "grow", help="EAS: grow a trained network with Net2Wider/Net2Deeper chosen by a meta-controller",
        description="Efficient Architecture Search by network transformation (Cai et al., AAAI 2018) on the "
                    "chain space: train --start, then every episode fine-tune --children networks grown from "
                    "the best one by --steps function-preserving steps each, and update the meta-controller "
                    "with REINFORCE on their validation accuracy. Every network is stored in OUT/run.sqlite "
                    "(see `nas runs`), its training in OUT/nets/; --resume continues a killed run.")
    p.add_argument("--start", help="the start network, a chain string, e.g. c3-16,p,c3-32,p,c3-64")
    p.add_argument("--data", metavar="PATH", help="a folder with train/ and test/ class folders, or an .npz")
    p.add_argument("--episodes", type=int, help="controller updates (default 5; a resumed run may raise it)")
    p.add_argument("--children", type=int, help="networks per episode (default 4)")
    p.add_argument("--steps", type=int, help="transformation steps per child (default 2)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs per child (default 2)")
    p.add_argument("--start-epochs", type=int, help="epochs of the start network from scratch (default 10)")
    p.add_argument("--train-size", type=int, metavar="N", help="a seeded class-balanced subset (as nas train)")
    p.add_argument("--val-size", type=int, metavar="N", help="held-out validation images (default 10%%)")
    p.add_argument("--batch-size", type=int, help="training batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (default 0.02)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--random", action="store_true", default=None,
                   help="uniformly drawn transformations, no learning: the baseline with the same budget")
    p.add_argument("--out", default="runs/eas", metavar="DIR", help="run folder (default runs/eas)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its settings")
    p.add_argument("--no-progress", action="store_true", help="no per-network lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Grow, then print the best network."""
    from nas.eas import grow

    result = grow(args.start, args.data, args.out, episodes=args.episodes, children=args.children,
                  steps=args.steps, epochs=args.epochs, start_epochs=args.start_epochs,
                  train_size=args.train_size, val_size=args.val_size, lr=args.lr, batch_size=args.batch_size,
                  seed=args.seed, random=args.random, resume=args.resume, progress=not args.no_progress)
    print(f"best: {result.best_arch}\nvalidation {result.val_accuracy:.2f}%, test {result.test_accuracy:.2f}% "
          f"after {result.total_epochs} epochs in total; {len(result.candidates)} networks in {result.out}")
    return 0
