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

Measured (20 speakers x 30 utterances of make_speakers.py --seed 0; defaults; 2 CPU cores at load 15-27),
mean of seeds 0/1/2:
stand-alone searched 92.8% / EER 7.10% vs random 92.7% / 6.44% (52.2M vs 51.0M MACs; per seed the
searched net wins on seed 1 only); with inherited weights of a 150-step supernet (an in-script trainer since
replaced by the package's, below) searched 85.0% / 8.97% vs random 84.3% / 8.79%.
SynFlow under a MACs limit does not beat an equal-MACs random TDNN here: a tie within the noise of 200
test segments (0.5% accuracy each).

``--search-by acc_ws`` (the package's path: ``nas supernet train --space tdnn`` on the training utterances
only, 40 epochs, 4 of them per speaker held out; ``nas search --supernet`` evolving 100 subnets by acc_ws on
those 80 held-out utterances, <= 60M MACs; the pick against 10 random subnets within 3% of its MACs, all with
inherited weights, BN recalibrated, on the 200 test segments), seeds 0/1/2, one supernet per seed:

    OMP_NUM_THREADS=1 python experiments/tdnn_speakers.py --data experiments/out/tdnn/speakers \
        --out experiments/out/tdnn/acc_ws --seeds 0 1 2 --search-by acc_ws --no-standalone [--search-seconds 1]

acc_ws on 2-s segments: pick 89.5 / 86.0 / 85.0% vs random means 87.3 / 86.4 / 86.8% (EER 8.53 / 9.79 / 8.67
vs 8.40 / 9.83 / 8.47%); on 1-s segments (the test length): 87.0 / 85.0 / 90.0 vs 87.3 / 85.5 / 89.8% (EER
8.00 / 10.64 / 8.21 vs 8.40 / 9.16 / 7.81%). No gain: the trained supernet's subnets score 93-100% on the
held-out utterances (the largest 97.5-98.75%, the smallest 95-96%), and across the pick and its 10 random
twins validation accuracy ranks test accuracy at Spearman 0.73 / -0.07 / -0.27 (validation cross-entropy
-0.76 / -0.26 / +0.37): at equal MACs these subnets differ less than 80 validation and 200 test utterances
can resolve.

A harder set resolves them (``make_speakers.py --speakers 100 --utterances 25 --seed 1``: 100 speakers, four per
eSpeak NG variant, told apart by pitch and rate; 15 training utterances per speaker, 4 of them held out for
acc_ws, so acc_ws scores 400 utterances and the test 1,000 segments):

    OMP_NUM_THREADS=1 python experiments/tdnn_speakers.py --data experiments/out/tdnn/speakers100 \
        --out experiments/out/tdnn/acc_ws100 --train-utts 15 --seeds 0 1 2 --search-by acc_ws --no-standalone \
        --search-seconds 1

about 35 min per seed on one core (supernet 49 s/epoch; the search 100 subnets in 1.5 min). The largest and
smallest subnets reach 81 / 77 % on the held-out 2-s windows; acc_ws of the 100 searched subnets spans 67.8-74.5 %
(seed 0). Pick vs its 10 random twins on the 1,000 test segments, seeds 0/1/2: 67.9 / 68.2 / 67.6 % vs means
67.2 / 66.5 / 66.1 % (the pick above 7, 10 and 7 of the 10; mean gain +1.3 points), EER 7.45 / 7.55 / 7.65 % vs
7.56 / 7.55 / 8.46 % (mean gain 0.31 points; lower than 8, 4 and 9 of the 10).
Trained from scratch instead (add ``--steps 1200 --standalone-twins 3`` and drop ``--no-standalone``: the pick
and its first 3 twins, 1,200 steps of 32 crops, about 4 min each), the gain is gone: 74.0 / 77.1 / 75.6 % vs
twin means 75.3 / 76.4 / 74.4 % (75.6 vs 75.4 % over the seeds; the pick above 5 of the 9), EER 8.13 vs 8.33 %.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import nas
import proxies
from nas import supernet_training
from nas.audio_data import SNR_TRAIN, centre_segments, crop_batch
from nas.evaluate import Evaluator
from nas.inherited import recalibrate_bn
from nas.supernets import load_supernet
from proxies.audio import read_wav, speaker_files
from search_spaces.tdnn import TDNNSpace
from search_spaces.tdnn_supernet import TDNNSupernet

log = logging.getLogger("tdnn_speakers")
SPACE_OPTIONS = {"channels": (64, 128), "widths": (32, 64, 128), "mfa": (192, 384), "seconds": 2.0}
"""CPU-sized choices: 31-121M MACs per 2-s utterance; the networks train in minutes on one core."""


def load_wavs(folder: Path, train_utts: int) -> tuple[list[torch.Tensor], list[int], list[torch.Tensor], list[int]]:
    """Every utterance as a float tensor, split by utterance index: (train, labels, held out, labels)."""
    train_x, train_y, test_x, test_y = [], [], [], []
    for label, (_, files) in enumerate(speaker_files(folder)):
        if len(files) <= train_utts:
            raise ValueError(f"{folder}: speaker {label} has {len(files)} utterances; need more than "
                             f"--train-utts {train_utts}")
        for i, f in enumerate(files):
            (train_x if i < train_utts else test_x).append(torch.from_numpy(read_wav(f)))
            (train_y if i < train_utts else test_y).append(label)
    return train_x, train_y, test_x, test_y


def test_segments(wavs: list[torch.Tensor], seconds: float, snr_db: float) -> torch.Tensor:
    """The central ``seconds`` of every held-out utterance in noise at ``snr_db`` (fixed seed: the same
    test set for every network)."""
    return centre_segments(wavs, int(seconds * 16000), float(snr_db), torch.Generator().manual_seed(1234))


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


def equal_macs_random(space: TDNNSpace, target: int, tolerance: float, seed: int, count: int = 1,
                      exclude: str | None = None) -> list[tuple[str, int]]:
    """``count`` distinct uniformly drawn architectures (never ``exclude``) whose body MACs are within
    ``tolerance`` of ``target``."""
    rng = np.random.default_rng([seed, 0x5A11])
    picks: dict[str, int] = {}
    for _ in range(200_000):
        arch = space.sample(rng)
        macs = space.macs(arch)["body"]
        text = space.to_string(arch)
        if abs(macs / target - 1) <= tolerance and text != exclude:
            picks.setdefault(text, macs)
            if len(picks) == count:
                return list(picks.items())
    raise RuntimeError(f"fewer than {count} architectures within {tolerance:.0%} of {target / 1e6:.1f}M MACs "
                       "in 200,000 draws")


def training_folder(folder: Path, train_utts: int, out: Path) -> Path:
    """``out`` holding links to the first ``train_utts`` utterances of every speaker: what the supernet and
    the acc_ws search see (the held-out test utterances never reach them)."""
    for name, files in speaker_files(folder):
        dest = out / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in files[:train_utts]:
            link = dest / Path(f).name
            if not link.exists():
                link.symlink_to(Path(f).resolve())
    return out


def search_by_acc_ws(space: TDNNSpace, train_dir: Path, seed_dir: Path, args: argparse.Namespace,
                     seed: int) -> tuple[str, Path]:
    """Train (or resume) the seed's supernet with ``nas supernet train``'s trainer on ``train_dir``, then
    evolve subnets by ``acc_ws`` on the utterances the supernet held out, under the MACs limit; returns
    (the pick, the checkpoint)."""
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in SPACE_OPTIONS.items()}
    sup_dir = seed_dir / "supernet"
    done = sup_dir / "supernet.pt"
    if not (done.is_file() and _epochs_done(sup_dir) >= args.supernet_epochs):
        supernet_training.train_supernet("tdnn", str(train_dir), epochs=args.supernet_epochs, out=sup_dir, seed=seed,
                       val_size=args.val_utts, space_options=options, resume=(sup_dir / "config.json").is_file(),
                       progress=False, device="cpu")
    # acc_ws on utterances of the test length; the MACs limit (given for 2-s inputs) scales with the frames
    seconds = args.search_seconds or space.seconds
    scored = TDNNSpace(num_classes=space.num_classes, **{**SPACE_OPTIONS, "seconds": seconds})
    samples = [space.sample(np.random.default_rng([seed, i])) for i in range(20)]
    limit = args.macs_budget * min(scored.macs(a)["body"] / space.macs(a)["body"] for a in samples)  # 0.496 at 1 s
    search_dir = seed_dir / f"search{_tag(args)}"
    result = nas.search("tdnn", "evolution", ["acc_ws"], budget=args.budget, seed=seed, out=search_dir,
                        max_flops=limit, supernet=str(done), data=str(train_dir),
                        space_options={**options, "seconds": seconds}, progress=False, plot=False, cache=False,
                        device="cpu", resume=search_dir.is_dir())
    return result.best.arch, done


def _tag(args: argparse.Namespace) -> str:
    """Suffix of a run's files when acc_ws scores another utterance length (the supernets are shared)."""
    return f"_{args.search_seconds:g}s" if args.search_by == "acc_ws" and args.search_seconds else ""


def _epochs_done(sup_dir: Path) -> int:
    """Rows in a supernet run's train.csv (0 when it has none)."""
    path = sup_dir / "train.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def eer(scores: np.ndarray, same: np.ndarray) -> float:
    """Equal-error rate (%) of ``scores`` for target trials ``same`` (the point where FAR = FRR)."""
    order = np.argsort(-scores)
    same = same[order]
    tar, non = same.sum(), (~same).sum()
    frr = 1 - np.cumsum(same) / tar  # accepting the top k: targets missed
    far = np.cumsum(~same) / non  # non-targets accepted
    k = int(np.argmin(np.abs(frr - far)))
    return float(100 * (frr[k] + far[k]) / 2)


def evaluate(embed: Callable[[torch.Tensor], torch.Tensor], classify: Callable[[torch.Tensor], torch.Tensor],
             x: torch.Tensor, labels: list[int]) -> dict[str, float]:
    """Speaker-ID accuracy (%) and EER (%) of cosine-scored embeddings over every pair of test segments."""
    with torch.no_grad():
        e = torch.cat([embed(chunk) for chunk in x.split(50)])
        pred = classify(e).argmax(1).numpy()
    y = np.array(labels)
    e = nn.functional.normalize(e, dim=1).numpy()
    iu = np.triu_indices(len(y), k=1)
    return {"accuracy": float(100.0 * (pred == y).mean()), "eer": eer((e @ e.T)[iu], (y[:, None] == y[None])[iu])}


def train(space: TDNNSpace, arch_string: str, data: tuple, test: torch.Tensor, args: argparse.Namespace,
          seed: int) -> dict[str, float]:
    """Train ``arch_string`` from scratch (AdamW, one-cycle, cross-entropy, noisy crops) and evaluate it."""
    train_x, train_y, _, test_y = data
    torch.manual_seed(seed)
    model = space.build(space.from_string(arch_string))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=2e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)  # the same crops and noise in the same order for every network
    start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        x, y = crop_batch(train_x, train_y, args.batch_size, space.samples, gen, SNR_TRAIN)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            log.info("  step %d/%d loss %.3f", step + 1, args.steps, loss.item())
    model.eval()
    metrics = evaluate(model.embed, model.classifier, test, test_y)
    metrics["train_s"] = time.perf_counter() - start
    metrics["final_loss"] = float(loss.item())
    return metrics


def inherited(sup: TDNNSupernet, space: TDNNSpace, arch_string: str, data: tuple, test: torch.Tensor,
              seed: int, batches: int = 8) -> dict[str, float]:
    """Accuracy and EER of a subnet with inherited weights, its BatchNorm statistics recalibrated on
    ``batches`` noisy training batches (as OFA does before evaluating a subnet)."""
    train_x, train_y, _, test_y = data
    gen = torch.Generator().manual_seed(seed + 777)
    net = recalibrate_bn(sup.subnet(space.from_string(arch_string)),
                         (crop_batch(train_x, train_y, 32, space.samples, gen, SNR_TRAIN)[0] for _ in range(batches)))
    return evaluate(net.embed, net.classifier, test, test_y)


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
    parser.add_argument("--steps", type=int, default=200, help="stand-alone training steps per network")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--test-seconds", type=float, default=1.0)
    parser.add_argument("--test-snr", type=float, default=5.0)
    parser.add_argument("--no-standalone", action="store_true", help="skip the stand-alone training")
    parser.add_argument("--search-by", choices=("proxy", "acc_ws"), default="proxy",
                        help="proxy: evolution on --proxy; acc_ws: train a supernet per seed on the training "
                             "utterances (nas supernet train), evolve by inherited accuracy on the utterances it "
                             "held out, and compare the pick with --random-picks equal-MACs subnets on the test "
                             "utterances, weights inherited")
    parser.add_argument("--supernet-epochs", type=int, default=40, help="--search-by acc_ws: supernet epochs")
    parser.add_argument("--search-seconds", type=float, default=None,
                        help="--search-by acc_ws: utterance length acc_ws scores on (default: the 2 s the "
                             "supernet trains on; --test-seconds mirrors the test)")
    parser.add_argument("--val-utts", type=int, default=4,
                        help="--search-by acc_ws: training utterances per speaker the supernet holds out for acc_ws")
    parser.add_argument("--standalone-twins", type=int, default=1,
                        help="--search-by acc_ws: how many of the equal-MACs random subnets to train stand-alone")
    parser.add_argument("--random-picks", type=int, default=10,
                        help="--search-by acc_ws: equal-MACs random subnets compared with inherited weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.data)
    speakers = speaker_files(folder)
    space = TDNNSpace(num_classes=len(speakers), **SPACE_OPTIONS)
    log.info("loading %s (%d speakers)", folder, len(speakers))
    data = load_wavs(folder, args.train_utts)
    test = test_segments(data[2], args.test_seconds, args.test_snr)
    rows, inherited_rows = [], []
    train_dir = training_folder(folder, args.train_utts, out / "train_speakers") if args.search_by == "acc_ws" else folder
    if args.search_by == "acc_ws":
        space = TDNNSpace(num_classes=len(speakers), **SPACE_OPTIONS)
    for seed in args.seeds:
        seed_dir = out / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        pick_file = seed_dir / f"picks{_tag(args)}.json"
        if pick_file.is_file():
            picks = json.loads(pick_file.read_text())
        elif args.search_by == "acc_ws":
            t0 = time.perf_counter()
            searched, checkpoint = search_by_acc_ws(space, train_dir, seed_dir, args, seed)
            macs = space.macs(space.from_string(searched))["body"]
            randoms = equal_macs_random(space, macs, args.macs_tolerance, seed, args.random_picks, exclude=searched)
            picks = {"searched": searched, "searched_macs": macs, "random": randoms[0][0],
                     "random_macs": randoms[0][1], "randoms": randoms, "supernet": str(checkpoint),
                     "search_s": time.perf_counter() - t0}
            pick_file.write_text(json.dumps(picks, indent=1))
        else:
            wavs = [w.numpy() for w in data[0]]
            batch = calibration_batch(wavs, data[1], args.proxy_batch, space.samples, seed)
            evaluator = Evaluator(space, (args.proxy, "flops"), batch, seed=seed)
            t0 = time.perf_counter()
            result = nas.search(space, "evolution", [args.proxy], budget=args.budget, seed=seed,
                                out=seed_dir / "search", max_flops=args.macs_budget, evaluate=evaluator,
                                progress=False, plot=False, cache=False)
            searched = result.best.arch
            macs = space.macs(space.from_string(searched))["body"]
            (rand, rand_macs), = equal_macs_random(space, macs, args.macs_tolerance, seed)
            picks = {"searched": searched, "searched_macs": macs, "random": rand, "random_macs": rand_macs,
                     "search_s": time.perf_counter() - t0}
            pick_file.write_text(json.dumps(picks, indent=1))
        if args.search_by == "acc_ws":
            inh_file = seed_dir / f"inherited{_tag(args)}.json"
            if inh_file.is_file():
                inh = json.loads(inh_file.read_text())
            else:
                sup = load_supernet(picks["supernet"], space).eval()
                inh = {"searched": inherited(sup, space, picks["searched"], data, test, seed),
                       "randoms": [inherited(sup, space, arch, data, test, seed) for arch, _ in picks["randoms"]]}
                inh_file.write_text(json.dumps(inh, indent=1))
            inherited_rows.append((seed, picks, inh))
        # --search-by acc_ws keeps 10 equal-MACs twins: --standalone-twins trains the first K of them
        nets = {"searched": (picks["searched"], picks["searched_macs"]),
                "random": (picks["random"], picks["random_macs"])}
        for i, (arch, macs) in enumerate(picks.get("randoms", [])[1:args.standalone_twins], start=2):
            nets[f"random{i}"] = (arch, macs)
        for kind, (arch, macs) in nets.items():
            path = seed_dir / f"{kind}{_tag(args)}.json"
            if path.is_file():
                res = json.loads(path.read_text())
            elif args.no_standalone:
                continue
            else:
                log.info("seed %d %s %s (%.1fM MACs)", seed, kind, arch, macs / 1e6)
                res = train(space, arch, data, test, args, seed)
                res.update(arch=arch, macs=macs, params=space.params(space.from_string(arch)))
                path.write_text(json.dumps(res, indent=1))
            log.info("seed %d %s: acc %.1f%% EER %.2f%%", seed, kind, res["accuracy"], res["eer"])
            rows.append((seed, kind, res))
    table = out / f"results{_tag(args)}.md"
    write_table(table, rows, args)
    if inherited_rows:
        write_inherited_table(table, inherited_rows, args)
    print(table.read_text())
    return 0


def write_table(path: Path, rows: list, args: argparse.Namespace) -> None:
    """The markdown table of every trained network and the per-kind means."""
    lines = [f"Searched ({args.proxy}, evolution, {args.budget} archs, <= {args.macs_budget:g}M MACs) vs random "
             f"of equal MACs (+-{args.macs_tolerance:.0%}); {args.steps} steps x {args.batch_size} 2-s crops in "
             f"noise at {SNR_TRAIN[0]:g}-{SNR_TRAIN[1]:g} dB SNR; test: the central {args.test_seconds:g} s of each "
             f"held-out utterance at {args.test_snr:g} dB SNR.", "",
             "| seed | net | arch | MACs (M, 2 s) | params (M) | speaker-ID acc (%) | EER (%) | train (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for seed, kind, r in rows:
        arch = r["arch"].replace("|", "\\|")  # a bare | would end the table cell
        lines.append(f"| {seed} | {kind} | `{arch}` | {r['macs'] / 1e6:.1f} | {r['params'] / 1e6:.2f} | "
                     f"{r['accuracy']:.1f} | {r['eer']:.2f} | {r['train_s']:.0f} |")
    for kind in ("searched", "random"):
        rs = [r for _, k, r in rows if k.startswith(kind)]  # random, random2, ...: every twin
        if rs:
            lines.append(f"| mean | {kind} | | {np.mean([r['macs'] for r in rs]) / 1e6:.1f} | "
                         f"{np.mean([r['params'] for r in rs]) / 1e6:.2f} | {np.mean([r['accuracy'] for r in rs]):.1f}"
                         f" | {np.mean([r['eer'] for r in rs]):.2f} | |")
    path.write_text("\n".join(lines) + "\n")


def write_inherited_table(path: Path, rows: list, args: argparse.Namespace) -> None:
    """Append the inherited-weight comparison: per seed the pick against its equal-MACs random subnets."""
    lines = ["", f"Inherited weights (supernet {args.supernet_epochs} epochs, acc_ws on {args.val_utts} held-out "
             f"training utterances per speaker, evolution over {args.budget} subnets <= {args.macs_budget:g}M MACs) "
             f"vs {args.random_picks} random subnets within +-{args.macs_tolerance:.0%} MACs; same test set.", "",
             "| seed | searched MACs (M) | searched acc (%) | random acc (%), mean [min, max] | randoms below the pick "
             "| searched EER (%) | random EER (%), mean | randoms with a higher EER |",
             "|---|---|---|---|---|---|---|---|"]
    wins = []
    for seed, picks, inh in rows:
        acc = np.array([r["accuracy"] for r in inh["randoms"]])
        eers = np.array([r["eer"] for r in inh["randoms"]])
        s_acc, s_eer = inh["searched"]["accuracy"], inh["searched"]["eer"]
        wins.append((s_acc - acc.mean(), eers.mean() - s_eer))
        lines.append(f"| {seed} | {picks['searched_macs'] / 1e6:.1f} | {s_acc:.1f} | {acc.mean():.1f} [{acc.min():.1f}, "
                     f"{acc.max():.1f}] | {(acc < s_acc).sum()}/{len(acc)} | {s_eer:.2f} | {eers.mean():.2f} | "
                     f"{(eers > s_eer).sum()}/{len(eers)} |")
    gain = np.array(wins)
    lines.append(f"| mean gain | | {gain[:, 0].mean():+.1f} points accuracy | | | {gain[:, 1].mean():+.2f} points EER | | |")
    with path.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
