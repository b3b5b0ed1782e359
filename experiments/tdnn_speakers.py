"""Searched vs random TDNN of equal MACs, trained stand-alone on a synthetic speaker set (issue 26).

    python experiments/make_speakers.py --out experiments/out/tdnn/speakers --speakers 20 --utterances 30 --seed 0
    OMP_NUM_THREADS=1 python experiments/tdnn_speakers.py --data experiments/out/tdnn/speakers \\
        --out experiments/out/tdnn/run --seeds 0 1 2

Per seed: (1) evolution over the ``tdnn`` space (CPU-sized choices below) maximising a zero-cost proxy
(SynFlow by default) under a MACs budget, on a calibration batch of training utterances only; (2) a
random architecture whose MACs are within ``--macs-tolerance`` of the searched one's (rejection sampling
with the same seed); (3) both trained from scratch with the same recipe, steps and data order; (4)
speaker-ID accuracy of the classifier on the held-out utterances (whole utterances) and the equal-error
rate of cosine-scored embeddings over every pair of held-out utterances. Each finished network is saved
as ``<out>/seed<S>/<kind>.json``, so a rerun skips it; ``<out>/results.md`` is the table.

The split is by utterance: per speaker the first ``--train-utts`` files train, the rest are held out.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import nas
import proxies
from nas.evaluate import Evaluator
from proxies.audio import read_wav, speaker_files
from search_spaces.tdnn import TDNN, Fbank, TDNNSpace, frames

log = logging.getLogger("tdnn_speakers")
SPACE_OPTIONS = {"channels": (64, 128, 256), "widths": (32, 64, 128, 256), "mfa": (192, 384, 768),
                 "seconds": 2.0}
"""CPU-sized choices: the networks train in minutes on one core."""


def load_fbanks(folder: Path, train_utts: int) -> tuple[list, list, list, list, list[str]]:
    """Log-mel filterbanks of every utterance (crops are mean-normalised again), split by utterance index."""
    fbank = Fbank()
    train_x, train_y, test_x, test_y = [], [], [], []
    speakers = speaker_files(folder)
    with torch.no_grad():
        for label, (_, files) in enumerate(speakers):
            if len(files) <= train_utts:
                raise ValueError(f"{folder}: speaker {label} has {len(files)} utterances; need more than "
                                 f"--train-utts {train_utts}")
            for i, f in enumerate(files):
                feats = fbank(torch.from_numpy(read_wav(f))[None])[0]
                (train_x if i < train_utts else test_x).append(feats)
                (train_y if i < train_utts else test_y).append(label)
    return train_x, train_y, test_x, test_y, [s for s, _ in speakers]


def crop_batch(feats: list[torch.Tensor], labels: list[int], n: int, t: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random ``t``-frame crops (utterances drawn uniformly), each mean-normalised over its frames."""
    idx = torch.randint(len(feats), (n,), generator=gen)
    xs = []
    for i in idx.tolist():
        f = feats[i]
        if f.shape[1] < t:
            f = f.repeat(1, -(-t // f.shape[1]))
        start = int(torch.randint(f.shape[1] - t + 1, (1,), generator=gen))
        xs.append(f[:, start:start + t])
    x = torch.stack(xs)
    return x - x.mean(dim=2, keepdim=True), torch.tensor([labels[i] for i in idx.tolist()])


def calibration_batch(feats_wavs: list[np.ndarray], labels: list[int], n: int, samples: int,
                      seed: int) -> proxies.Batch:
    """A speaker-balanced proxy batch of 2-s crops of training utterances (never held-out ones)."""
    rng = np.random.default_rng([seed, 0xCA1])
    y = np.array(labels)
    per = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    order = [i for row in zip(*per, strict=False) for i in row][:n]
    x = []
    for i in order:
        w = feats_wavs[i]
        w = np.tile(w, -(-samples // len(w))) if len(w) < samples else w
        start = int(rng.integers(len(w) - samples + 1))
        x.append(w[start:start + samples])
    return proxies.Batch(torch.from_numpy(np.stack(x)).view(-1, 1, 1, samples), torch.from_numpy(y[order]),
                         "speakers-train")


def equal_macs_random(space: TDNNSpace, target: int, tolerance: float, seed: int) -> tuple[str, int]:
    """A uniformly drawn architecture whose body MACs are within ``tolerance`` of ``target``."""
    rng = np.random.default_rng([seed, 0x5A11])
    for _ in range(200_000):
        arch = space.sample(rng)
        macs = space.macs(arch)["body"]
        if abs(macs / target - 1) <= tolerance:
            return space.to_string(arch), macs
    raise RuntimeError(f"no architecture within {tolerance:.0%} of {target / 1e6:.1f}M MACs in 200,000 draws")


def eer(scores: np.ndarray, same: np.ndarray) -> float:
    """Equal-error rate (%) of ``scores`` for target trials ``same`` (the point where FAR = FRR)."""
    order = np.argsort(-scores)
    same = same[order]
    tar, non = same.sum(), (~same).sum()
    frr = 1 - np.cumsum(same) / tar  # accepting the top k: targets missed
    far = np.cumsum(~same) / non  # non-targets accepted
    k = int(np.argmin(np.abs(frr - far)))
    return float(100 * (frr[k] + far[k]) / 2)


def evaluate(model: TDNN, feats: list[torch.Tensor], labels: list[int]) -> dict[str, float]:
    """Speaker-ID accuracy (%) and EER (%) on whole held-out utterances."""
    model.eval()
    embs, correct = [], 0
    with torch.no_grad():
        for f, y in zip(feats, labels, strict=True):
            x = (f - f.mean(dim=1, keepdim=True))[None]
            e = model.embed_fbank(x)
            correct += int(model.classifier(e).argmax(1).item() == y)
            embs.append(nn.functional.normalize(e, dim=1)[0])
    e = torch.stack(embs).numpy()
    sim = e @ e.T
    y = np.array(labels)
    iu = np.triu_indices(len(y), k=1)
    return {"accuracy": 100.0 * correct / len(labels), "eer": eer(sim[iu], (y[:, None] == y[None])[iu])}


def train(space: TDNNSpace, arch_string: str, data: tuple, steps: int, batch: int, lr: float,
          seed: int) -> dict[str, float]:
    """Train ``arch_string`` from scratch (AdamW, one-cycle, cross-entropy) and evaluate it."""
    train_x, train_y, test_x, test_y, _ = data
    torch.manual_seed(seed)
    model = space.build(space.from_string(arch_string))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=2e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)  # the same crops in the same order for every network
    t = frames(space.samples)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        x, y = crop_batch(train_x, train_y, batch, t, gen)
        loss = nn.functional.cross_entropy(model.classifier(model.embed_fbank(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("  step %d/%d loss %.3f", step + 1, steps, loss.item())
    metrics = evaluate(model, test_x, test_y)
    metrics["train_s"] = time.perf_counter() - start
    metrics["final_loss"] = float(loss.item())
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Run the comparison for every seed and write ``results.md``; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="DIR/<speaker>/<utt>.wav (experiments/make_speakers.py)")
    parser.add_argument("--out", default="experiments/out/tdnn/run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-utts", type=int, default=20, help="per speaker; the rest are held out")
    parser.add_argument("--macs-budget", type=float, default=60.0, help="MACs limit of the search (millions, 2 s)")
    parser.add_argument("--macs-tolerance", type=float, default=0.03)
    parser.add_argument("--proxy", default="synflow")
    parser.add_argument("--budget", type=int, default=100, help="architectures the search evaluates")
    parser.add_argument("--proxy-batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.data)
    speakers = speaker_files(folder)
    space = TDNNSpace(num_classes=len(speakers), **SPACE_OPTIONS)
    log.info("loading %s (%d speakers)", folder, len(speakers))
    data = load_fbanks(folder, args.train_utts)
    wavs = [read_wav(f) for _, files in speakers for f in files[:args.train_utts]]
    wav_labels = [label for label, (_, files) in enumerate(speakers) for _ in files[:args.train_utts]]
    rows = []
    for seed in args.seeds:
        seed_dir = out / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        pick_file = seed_dir / "picks.json"
        if pick_file.is_file():
            picks = json.loads(pick_file.read_text())
        else:
            batch = calibration_batch(wavs, wav_labels, args.proxy_batch, space.samples, seed)
            evaluator = Evaluator(space, (args.proxy, "flops"), batch, seed=seed)
            t0 = time.perf_counter()
            result = nas.search(space, "evolution", [args.proxy], budget=args.budget, seed=seed,
                                out=seed_dir / "search", max_flops=args.macs_budget, evaluate=evaluator,
                                progress=False, plot=False, cache=False)
            searched = result.best.arch
            macs = space.macs(space.from_string(searched))["body"]
            rand, rand_macs = equal_macs_random(space, macs, args.macs_tolerance, seed)
            picks = {"searched": searched, "searched_macs": macs, "random": rand, "random_macs": rand_macs,
                     "search_s": time.perf_counter() - t0}
            pick_file.write_text(json.dumps(picks, indent=1))
        for kind in ("searched", "random"):
            path = seed_dir / f"{kind}.json"
            if path.is_file():
                res = json.loads(path.read_text())
            else:
                arch = picks[kind]
                log.info("seed %d %s %s (%.1fM MACs)", seed, kind, arch, picks[f"{kind}_macs"] / 1e6)
                res = train(space, arch, data, args.steps, args.batch_size, args.lr, seed)
                res.update(arch=arch, macs=picks[f"{kind}_macs"], params=space.params(space.from_string(arch)))
                path.write_text(json.dumps(res, indent=1))
            log.info("seed %d %s: acc %.1f%% EER %.2f%%", seed, kind, res["accuracy"], res["eer"])
            rows.append((seed, kind, res))
    write_table(out / "results.md", rows, args)
    print((out / "results.md").read_text())
    return 0


def write_table(path: Path, rows: list, args: argparse.Namespace) -> None:
    """The markdown table of every trained network and the per-kind means."""
    lines = [f"Searched ({args.proxy}, evolution, {args.budget} archs, <= {args.macs_budget:g}M MACs) vs random "
             f"of equal MACs (+-{args.macs_tolerance:.0%}); {args.steps} steps x {args.batch_size} 2-s crops; "
             "held-out utterances.", "",
             "| seed | net | arch | MACs (M, 2 s) | params (M) | speaker-ID acc (%) | EER (%) | train (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for seed, kind, r in rows:
        arch = r["arch"].replace("|", "\\|")  # a bare | would end the table cell
        lines.append(f"| {seed} | {kind} | `{arch}` | {r['macs'] / 1e6:.1f} | {r['params'] / 1e6:.2f} | "
                     f"{r['accuracy']:.1f} | {r['eer']:.2f} | {r['train_s']:.0f} |")
    for kind in ("searched", "random"):
        rs = [r for _, k, r in rows if k == kind]
        if rs:
            lines.append(f"| mean | {kind} | | {np.mean([r['macs'] for r in rs]) / 1e6:.1f} | "
                         f"{np.mean([r['params'] for r in rs]) / 1e6:.2f} | {np.mean([r['accuracy'] for r in rs]):.1f}"
                         f" | {np.mean([r['eer'] for r in rs]):.2f} | |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
