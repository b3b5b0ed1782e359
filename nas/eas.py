"""Efficient Architecture Search by network transformation (EAS; Cai et al., AAAI 2018) on the ``chain`` space.

A meta-controller grows a trained network instead of training candidates from scratch: every child is
the best network so far transformed by function-preserving Net2Wider / Net2Deeper steps
(:mod:`search_spaces.chain`), so it starts from its parent's accuracy and is only fine-tuned briefly.

- **Encoder**: each unit of the chain (kind, kernel, width) is embedded and read by a bidirectional LSTM.
- **Net2Wider actor**: for every unit that can grow, a shared sigmoid head decides whether it widens to
  the next width level (:data:`WIDTH_LEVELS`).
- **Net2Deeper actor**: a softmax over the places where an identity conv layer can go (after a conv,
  residual or pooling unit), and a softmax over its kernel size {1, 3, 5}.
- A child takes ``steps`` steps (each: the wider decisions, then one insertion), is fine-tuned with
  :func:`nas.train` (``init=`` its transformed weights) and rewarded with its validation accuracy through
  EAS's ``tan(acc * pi / 2)``. REINFORCE with an exponential-moving-average baseline updates the
  controller (Adam) once per episode of ``children`` children; the next episode starts from the best
  network found so far (validation accuracy; the test split is never used for a choice).
- ``random=True`` draws the same kinds of actions uniformly (the widening rate the untrained controller
  starts with) and never learns: the baseline with the same budget.

Every network is a candidate of the run's store (``run.sqlite``: ``val_acc``, ``test_acc``,
``total_epochs`` of its lineage, ``params``), each training a ``nas train`` folder under ``nets/``; the
controller is checkpointed after every episode, so a killed run continues with ``resume=True``. An
architecture already trained is not trained again (its first result is reused), as a network cache.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.run import Candidate, RunStore
from search_spaces import ArchError
from search_spaces.chain import ChainArch, ChainSpace, Unit, deeper, relu_output, unit_channels, wider

WIDTH_LEVELS: tuple[int, ...] = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
"""Widths a Net2Wider action moves a unit to (the next level above its width)."""
KERNELS: tuple[int, ...] = (1, 3, 5)
KINDS: tuple[str, ...] = ("conv", "res", "maxpool", "avgpool", "dense", "fc")
WIDEN_PRIOR = -2.0
"""Initial logit of the wider head (about 12% of units widen per step), also the random baseline's rate."""


def _features(arch: ChainArch) -> torch.Tensor:
    """One row per unit: one-hot kind, kernel / 7, log2 of its width (sum of growths) / 9."""
    rows = torch.zeros(len(arch), len(KINDS) + 2)
    for i, u in enumerate(arch):
        rows[i, KINDS.index(u.kind)] = 1.0
        rows[i, -2] = u.kernel / 7
        rows[i, -1] = math.log2(sum(u.widths)) / 9 if u.widths else 0.0
    return rows


def widenable(arch: ChainArch) -> list[int]:
    """Units a Net2Wider action may grow: conv and fc units below the top width, not feeding a residual block."""
    out = []
    for i, u in enumerate(arch):
        if u.kind not in ("conv", "fc") or u.widths[0] >= WIDTH_LEVELS[-1]:
            continue
        nxt = next((v for v in arch[i + 1:] if v.kind not in ("maxpool", "avgpool")), None)
        if u.kind == "conv" and nxt is not None and nxt.kind == "res":
            continue
        out.append(i)
    return out


def deepenable(arch: ChainArch) -> list[int]:
    """Units after which an identity conv layer may go (their output is a ReLU output, not an fc unit's)."""
    return [i for i, u in enumerate(arch) if u.kind != "fc" and relu_output(arch, i)]


def next_width(width: int) -> int:
    """The first width level above ``width``."""
    return next(w for w in WIDTH_LEVELS if w > width)


@dataclass(frozen=True)
class Step:
    """One transformation step of a child: the units it widens, then where and with which kernel it deepens."""

    widen: tuple[int, ...]
    after: int
    kernel: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"widen": list(self.widen), "after": self.after, "kernel": self.kernel}


def apply_step(space: ChainSpace, arch: ChainArch, step: Step, net: nn.Module | None = None,
               seed: int = 0) -> tuple[ChainArch, nn.Module | None]:
    """``arch`` (and, when given, its network, function-preservingly) after ``step``; the input's channels
    are the network's, else the space's."""
    if net is None:
        arch = _widened(arch, step.widen)
        channels = unit_channels(arch, space.input_shape[0])[step.after]
        new = Unit("conv", step.kernel, (channels,))
        return arch[:step.after + 1] + (new,) + arch[step.after + 1:], None
    for unit in step.widen:
        arch, net = wider(space, arch, net, unit, next_width(arch[unit].widths[0]), seed=seed + unit)
    return deeper(space, arch, net, step.after, kind="conv", kernel=step.kernel)


class MetaController(nn.Module):
    """EAS's meta-controller: a bidirectional LSTM encoder with a Net2Wider and a Net2Deeper actor."""

    def __init__(self, hidden: int = 50) -> None:
        super().__init__()
        self.embed = nn.Linear(len(KINDS) + 2, hidden)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
        self.wider_head = nn.Linear(2 * hidden, 1)
        self.place_head = nn.Linear(2 * hidden, 1)
        self.kernel_head = nn.Linear(2 * hidden, len(KERNELS))
        nn.init.constant_(self.wider_head.bias, WIDEN_PRIOR)

    def _encode(self, arch: ChainArch) -> torch.Tensor:
        out, _ = self.encoder(torch.tanh(self.embed(_features(arch))).unsqueeze(0))
        return out[0]

    def step_log_prob(self, arch: ChainArch, step: Step) -> torch.Tensor:
        """Log-probability of ``step`` on ``arch`` under the controller (differentiable)."""
        h = self._encode(arch)
        logp = torch.zeros(())
        grow = widenable(arch)
        if grow:
            logits = self.wider_head(h[grow]).squeeze(1)
            chosen = torch.tensor([float(i in step.widen) for i in grow])
            logp = logp - nn.functional.binary_cross_entropy_with_logits(logits, chosen, reduction="sum")
        widened = _widened(arch, step.widen)
        places = deepenable(widened)
        h2 = self._encode(widened)
        place_logits = self.place_head(h2[places]).squeeze(1)
        logp = logp + torch.log_softmax(place_logits, 0)[places.index(step.after)]
        kernel_logits = self.kernel_head(h2[step.after])
        return logp + torch.log_softmax(kernel_logits, 0)[KERNELS.index(step.kernel)]

    @torch.no_grad()
    def sample(self, arch: ChainArch, generator: torch.Generator) -> Step:
        """Draw one step for ``arch``."""
        h = self._encode(arch)
        grow = widenable(arch)
        widen: tuple[int, ...] = ()
        if grow:
            p = torch.sigmoid(self.wider_head(h[grow]).squeeze(1))
            widen = tuple(i for i, keep in zip(grow, torch.rand(len(grow), generator=generator) < p, strict=True)
                          if keep)
        widened = _widened(arch, widen)
        places = deepenable(widened)
        h2 = self._encode(widened)
        place = places[int(torch.multinomial(torch.softmax(self.place_head(h2[places]).squeeze(1), 0), 1,
                                             generator=generator))]
        kernel = KERNELS[int(torch.multinomial(torch.softmax(self.kernel_head(h2[place]), 0), 1, generator=generator))]
        return Step(widen, place, kernel)


def _widened(arch: ChainArch, widen: tuple[int, ...]) -> ChainArch:
    units = list(arch)
    for i in widen:
        units[i] = Unit(units[i].kind, units[i].kernel, (next_width(units[i].widths[0]),))
    return tuple(units)


def random_step(arch: ChainArch, generator: torch.Generator) -> Step:
    """A step drawn uniformly: each growable unit widens at the untrained controller's rate."""
    grow = widenable(arch)
    rate = 1 / (1 + math.exp(-WIDEN_PRIOR))
    widen = tuple(i for i in grow if float(torch.rand((), generator=generator)) < rate)
    places = deepenable(_widened(arch, widen))
    place = places[int(torch.randint(len(places), (), generator=generator))]
    return Step(widen, place, KERNELS[int(torch.randint(len(KERNELS), (), generator=generator))])


@dataclass
class GrowResult:
    """What :func:`grow` found: the best network by validation accuracy and every trained network."""

    out: Path
    best_arch: str
    val_accuracy: float
    test_accuracy: float
    total_epochs: int
    candidates: list[Candidate]


SETTINGS = ("start", "data", "episodes", "children", "steps", "epochs", "start_epochs", "train_size", "val_size",
            "lr", "batch_size", "seed", "random")
RESUMABLE = frozenset({"episodes"})


def grow(start: str | None = None, data: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] = "runs/eas",
         *, episodes: int | None = None, children: int | None = None, steps: int | None = None,
         epochs: int | None = None, start_epochs: int | None = None, train_size: int | None = None,
         val_size: int | None = None, lr: float | None = None, batch_size: int | None = None,
         seed: int | None = None, random: bool | None = None, resume: bool = False,
         progress: bool = True) -> GrowResult:
    """Grow the chain ``start`` on ``data`` with EAS's meta-controller (or random steps) into ``out``.

    Args:
        start: the start network, a ``chain`` string (e.g. ``c3-16,p,c3-32,p,c3-64``).
        data: a folder with ``train/`` and ``test/`` class folders, or an ``.npz`` (as ``nas train``).
        episodes: controller updates (default 5); a resumed run may be given more.
        children: networks per episode (default 4); steps: transformation steps per child (default 2).
        epochs: fine-tuning epochs of each child (default 2); start_epochs: training of the start network
            from scratch (default 10).
        train_size, val_size, batch_size: as ``nas train`` (seeded subset; held-out validation images).
        lr: fine-tuning learning rate (default 0.02, cosine); the start network uses the recipe's.
        random: draw steps uniformly and never learn (the baseline with the same budget).
        resume: continue the run in ``out``; other settings given must agree with the stored ones.
    """

    given = {"start": start, "data": None if data is None else str(Path(data).resolve()), "episodes": episodes,
             "children": children, "steps": steps, "epochs": epochs, "start_epochs": start_epochs,
             "train_size": train_size, "val_size": val_size, "lr": lr, "batch_size": batch_size, "seed": seed,
             "random": random}
    out = Path(out)
    store, config = _open(out, given, resume)
    space = ChainSpace()
    controller = MetaController()
    optimizer = torch.optim.Adam(controller.parameters(), lr=1e-3)
    state = {"episode": 0, "baseline": None}
    ckpt = out / "controller.pt"
    try:
        if ckpt.is_file():
            saved = torch.load(ckpt, weights_only=True)
            controller.load_state_dict(saved["controller"])
            optimizer.load_state_dict(saved["optimizer"])
            state = {"episode": int(saved["episode"]), "baseline": saved["baseline"]}
        start_arch = space.to_string(space.from_string(config["start"]))
        nets = store.get_meta("nets", {})
        if store.get(start_arch) is None:
            _train(out, store, nets, config, start_arch, None, config["start_epochs"], 0, -1, progress)
        for episode in range(state["episode"], config["episodes"]):
            parent = _best(store)
            parent_epochs = int(parent.metrics["total_epochs"])
            rewards, trajectories = [], []
            for child in range(config["children"]):
                gen = torch.Generator().manual_seed(int(config["seed"]) * 1_000_003 + episode * 1009 + child)
                arch, trajectory = space.from_string(parent.arch), []
                for _ in range(config["steps"]):
                    step = random_step(arch, gen) if config["random"] else controller.sample(arch, gen)
                    trajectory.append((arch, step))
                    arch = apply_step(space, arch, step)[0]
                text = space.to_string(arch)
                cand = store.get(text) or _train(out, store, nets, config, text, (parent, trajectory),
                                                 config["epochs"], parent_epochs, episode, progress)
                rewards.append(_reward(cand))
                trajectories.append(trajectory)
            if not config["random"]:
                state["baseline"] = _reinforce(controller, optimizer, trajectories, rewards, state["baseline"])
            state["episode"] = episode + 1
            _save(ckpt, controller, optimizer, state)
            if progress:
                best = _best(store)
                print(f"episode {episode + 1}/{config['episodes']}: rewards {np.round(rewards, 3).tolist()}, best "
                      f"val {best.scores['val_acc']:.2f}% {best.arch}", flush=True)
        best = _best(store)
        return GrowResult(out, best.arch, best.scores["val_acc"], best.scores["test_acc"],
                          int(best.metrics["total_epochs"]), store.candidates())
    finally:
        store.close()


def _open(out: Path, given: dict[str, Any], resume: bool) -> tuple[RunStore, dict[str, Any]]:
    """The run's store and settings (fresh, or the stored ones checked against those given)."""
    defaults = {"episodes": 5, "children": 4, "steps": 2, "epochs": 2, "start_epochs": 10, "lr": 0.02,
                "seed": 0, "random": False, "train_size": None, "val_size": None, "batch_size": None}
    if resume:
        if not (out / "run.sqlite").is_file():
            raise FileNotFoundError(f"--resume {out}: not an EAS run (no run.sqlite)")
        store = RunStore(out)
        config = store.get_meta("config")
        for key, value in given.items():
            if value is not None and key not in RESUMABLE and value != config[key]:
                store.close()
                raise ValueError(f"{key} {value!r} differs from {config[key]!r} of the run in {out}; a resumed "
                                 "run keeps its settings (only episodes may grow)")
        if given["episodes"] is not None:
            config["episodes"] = int(given["episodes"])
    else:
        if given["start"] is None or given["data"] is None:
            raise ValueError("give the start network (--start, a chain string) and --data")
        if (out / "run.sqlite").exists():
            raise FileExistsError(f"{out} already holds a run: continue it with --resume or choose another --out")
        ChainSpace().from_string(given["start"])  # a malformed start fails before anything is written
        if not Path(given["data"]).exists():
            raise ValueError(f"--data {given['data']}: no such folder or file")
        config = {k: (defaults[k] if given[k] is None and k in defaults else given[k]) for k in SETTINGS}
        for key in ("episodes", "children", "steps", "epochs", "start_epochs"):
            if int(config[key]) < 1:
                raise ValueError(f"{key} must be at least 1, got {config[key]}")
        if config["val_size"] == 0:
            raise ValueError("--val-size 0: EAS rewards validation accuracy, so it needs validation images")
        config.update(space="chain", strategy="eas-random" if config["random"] else "eas",
                      objectives=["max:val_acc"])
    config["budget"] = 1 + int(config["episodes"]) * int(config["children"])  # at most: repeats are not retrained
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        store = RunStore(out)
    store.lock()
    store.set_meta("config", config)
    return store, config


def _train(out: Path, store: RunStore, nets: dict[str, str], config: dict[str, Any], arch: str,
           origin: tuple[Candidate, list[tuple[ChainArch, Step]]] | None, epochs: int, parent_epochs: int,
           episode: int, progress: bool) -> Candidate:
    """Train (or fine-tune from its parent's transformed weights) one network and store it as a candidate."""
    from nas.training import finished_metrics, load_trained

    space = ChainSpace()
    folder = out / "nets" / hashlib.sha1(arch.encode()).hexdigest()[:12]
    init = None
    started = time.perf_counter()
    try:
        if origin is not None and not (folder / "config.json").is_file():
            parent, trajectory = origin
            net, _ = load_trained(nets[parent.arch])
            current = space.from_string(parent.arch)
            for i, (_, step) in enumerate(trajectory):
                current, net = apply_step(space, current, step, net, seed=int(config["seed"]) + 31 * i)
            folder.mkdir(parents=True, exist_ok=True)
            init = folder / "init.pt"
            torch.save(net.state_dict(), init)
        metrics = finished_metrics(
            folder, space="chain", arch=arch, data=config["data"], epochs=epochs, train_size=config["train_size"],
            val_size=config["val_size"], seed=config["seed"], batch_size=config["batch_size"],
            lr=None if origin is None else config["lr"], init=init)
        nets[arch] = str(folder)
        store.set_meta("nets", nets)
        cand = Candidate(arch, {"val_acc": float(metrics["val_accuracy"]), "test_acc": float(metrics["test_accuracy"])},
                         {"params": metrics["params"] / 1e6, "total_epochs": float(parent_epochs + epochs),
                          "episode": float(episode)}, wall_s=time.perf_counter() - started)
    except (ValueError, ArchError) as err:  # e.g. a chain grown past its unit limit
        cand = Candidate(arch, {}, {"episode": float(episode)}, status="failed", error=str(err),
                         wall_s=time.perf_counter() - started)
    if progress:
        shown = f"val {cand.scores['val_acc']:.2f}%" if cand.status == "ok" else f"failed: {cand.error}"
        print(f"  {arch}: {shown} ({cand.wall_s:.0f} s)", flush=True)
    return store.add(cand)


def _reward(cand: Candidate) -> float:
    """EAS's reward: tan(accuracy * pi / 2), which weighs gains near 100% more; a failed child gets 0."""
    if cand.status != "ok":
        return 0.0
    return math.tan(min(cand.scores["val_acc"], 99.0) / 100 * math.pi / 2)


def _reinforce(controller: MetaController, optimizer: torch.optim.Optimizer,
               trajectories: list[list[tuple[ChainArch, Step]]], rewards: list[float],
               baseline: float | None) -> float:
    """One REINFORCE update on an episode's children; returns the new moving-average baseline."""
    mean = float(np.mean(rewards))
    base = mean if baseline is None else baseline
    loss = torch.zeros(())
    for trajectory, reward in zip(trajectories, rewards, strict=True):
        logp = sum((controller.step_log_prob(arch, step) for arch, step in trajectory), torch.zeros(()))
        loss = loss - (reward - base) * logp
    optimizer.zero_grad()
    (loss / len(rewards)).backward()
    optimizer.step()
    return 0.95 * base + 0.05 * mean


def _best(store: RunStore) -> Candidate:
    """The stored network with the best validation accuracy (the earliest among equals)."""
    ok = [c for c in store.candidates() if c.status == "ok"]
    if not ok:
        raise RuntimeError("no network of the run could be trained; see the failed candidates' errors")
    return max(ok, key=lambda c: (c.scores["val_acc"], -c.index))


def _save(path: Path, controller: MetaController, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """The controller's checkpoint, written atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save({"controller": controller.state_dict(), "optimizer": optimizer.state_dict(), **state}, tmp)
    os.replace(tmp, path)
