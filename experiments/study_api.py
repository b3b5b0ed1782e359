"""The ask/tell study as a notebook user composes it: objects in, a run that resumes in a new process.

1. builds a study from objects: a space instance (small NB-201 networks), a custom proxy written as a
   plain function, a strategy instance (``nas.strategies.Evolution(population_size=8)``);
2. asks and tells two trials by hand, then optimizes to half the budget;
3. resumes the run in a *new Python process* (``--resume``), which passes the custom proxy again and
   optimizes to the full budget, replaying the first process's events (nothing is evaluated twice);
4. reads the DataFrame and prints the best candidates.

Usage: ``python experiments/study_api.py [--out DIR] [--budget 24]`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import nas
import proxies
import search_spaces
from nas import strategies


def logit_spread(model: torch.nn.Module, batch: proxies.Batch) -> float:
    """Mean per-class standard deviation of the untrained network's logits over the batch."""
    with torch.no_grad():
        return float(model(batch.inputs).std(dim=0).mean())


def first_process(run_dir: Path, budget: int) -> None:
    """Create the study from objects, tell two trials by hand, optimize to half the budget."""
    space = search_spaces.get("nb201", channels=8, cells_per_stage=1)
    study = nas.create_study(space, objectives=[logit_spread, "params"], storage=run_dir, seed=3,
                             strategy=strategies.Evolution(population_size=8, sample_size=3),
                             proxies=["nwot"], batch_size=16)
    evaluate = study.evaluator()
    for _ in range(2):  # the manual ask/tell a notebook user writes
        trial = study.ask()
        study.tell(trial, evaluate(trial.string))
    study.optimize(budget=budget // 2)
    print(f"process 1: {len(study.candidates)} candidates, events logged: {len(study.store.events())}")
    study.close()


def second_process(run_dir: Path, budget: int) -> None:
    """Reopen the study (the custom proxy is passed again), optimize to the full budget, read the frame."""
    study = nas.load_study(run_dir, proxies=[logit_spread])
    before = len(study.candidates)
    study.optimize(budget=budget)
    frame = study.to_dataframe()
    archs = frame["arch"].tolist()
    print(f"process 2: resumed at {before}, now {len(frame)} candidates, {len(set(archs))} distinct, "
          f"duplicate evaluations: {study.store.get_meta('duplicate_evaluations', 0)}")
    cols = ["index", "arch", "logit_spread", "params", "nwot", "status"]
    print(frame[cols].sort_values("logit_spread", ascending=False).head(5).to_string(index=False))
    print(f"Pareto front (max logit_spread, min params): {len(study.pareto)} candidates")
    study.close()


def main() -> None:
    """Run both processes (the second as a subprocess of the first)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--budget", type=int, default=24)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resume:
        second_process(args.out, args.budget)
        return
    run_dir = args.out or Path(tempfile.mkdtemp(prefix="study-api-")) / "run"
    first_process(run_dir, args.budget)
    subprocess.run([sys.executable, __file__, "--resume", "--out", str(run_dir), "--budget", str(args.budget)],
                   check=True)


if __name__ == "__main__":
    main()
