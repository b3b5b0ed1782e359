"""Speaker data for training audio networks: a folder of wav files per speaker, split by utterance, and the
noisy random crops a training step sees.

A source is ``DIR/<speaker>/<utt>.wav`` (16-bit PCM, any rate: resampled to 16 kHz; the layout
:func:`proxies.audio.speaker_files` reads and ``experiments/make_speakers.py`` writes); speakers are
numbered in sorted order. :func:`split_utterances` holds out utterances per speaker (seeded), so every
speaker is in both parts. Augmentation is ECAPA-TDNN's in spirit (Desplanques et al., Interspeech 2020:
random 2-s crops with additive noise): a random window of the network's length from each utterance
(tiled when the utterance is shorter) mixed with coloured noise (white to pinker than pink) at a random
signal-to-noise ratio, all drawn from an explicit ``torch.Generator``, so a run is reproducible from its
seed. Validation segments are the central window of each held-out utterance in noise drawn once from a
fixed generator: the same segments every epoch.

Example:
    >>> data = load_speakers("experiments/out/tdnn/speakers")            # doctest: +SKIP
    >>> train, val = split_utterances(data, 2, seed=0)                    # doctest: +SKIP
    >>> x, y = crop_utterances(train.wavs, train.labels, torch.arange(8), 32000, torch.Generator(), SNR_TRAIN)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from proxies.audio import read_wav, speaker_files

__all__ = ["SNR_TRAIN", "SpeakerData", "SpeakerEpochs", "add_noise", "centre_segments", "coloured_noise",
           "crop_batch", "crop_utterances", "default_val_size", "held_out_split", "load_speakers",
           "recalibration_crops", "split_utterances", "validation_segments"]

SNR_TRAIN = (0.0, 20.0)
"""Training crops are mixed with coloured noise at an SNR drawn uniformly from this range (dB)."""


@dataclass(frozen=True)
class SpeakerData:
    """Utterances as float waveforms (16 kHz, [-1, 1]) with speaker labels, their files and speaker names."""

    wavs: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    files: tuple[str, ...]
    speakers: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.wavs)

    @property
    def num_classes(self) -> int:
        """How many speakers the labels range over."""
        return len(self.speakers)

    def take(self, idx: np.ndarray | torch.Tensor | list[int]) -> SpeakerData:
        """The utterances at ``idx``."""
        idx = [int(i) for i in np.asarray(idx).reshape(-1)]
        return SpeakerData(tuple(self.wavs[i] for i in idx), self.labels[torch.as_tensor(idx, dtype=torch.long)],
                           tuple(self.files[i] for i in idx), self.speakers)


def load_speakers(folder: str | os.PathLike[str]) -> SpeakerData:
    """Every utterance of ``DIR/<speaker>/<utt>.wav``; raises naming the folder when it holds none."""
    speakers = speaker_files(folder)
    wavs, labels, files = [], [], []
    for label, (_, paths) in enumerate(speakers):
        for path in paths:
            x = read_wav(path)
            if len(x) == 0:
                raise ValueError(f"--data {folder}: {path} holds no samples")
            wavs.append(torch.from_numpy(x))
            labels.append(label)
            files.append(str(Path(path).relative_to(Path(folder))))
    if len(speakers) < 2:
        raise ValueError(f"--data {folder}: {len(speakers)} speaker folder with .wav files; speaker-ID training "
                         "needs at least 2 (DIR/<speaker>/<utt>.wav)")
    return SpeakerData(tuple(wavs), torch.tensor(labels, dtype=torch.long), tuple(files),
                       tuple(name for name, _ in speakers))


def split_utterances(data: SpeakerData, per_speaker: int, seed: int) -> tuple[SpeakerData, SpeakerData]:
    """``(train, held out)``: ``per_speaker`` utterances of every speaker held out, drawn with ``seed``."""
    if per_speaker < 0:
        raise ValueError(f"--val-size must be 0 or more utterances per speaker, got {per_speaker}")
    y = data.labels.numpy()
    counts = np.bincount(y, minlength=data.num_classes)
    few = [f"{data.speakers[c]} ({counts[c]})" for c in range(data.num_classes) if counts[c] <= per_speaker]
    if few:
        raise ValueError(f"holding out {per_speaker} utterance(s) per speaker leaves none to train on for "
                         f"speaker(s) {', '.join(few[:5])}: every speaker needs at least {per_speaker + 1} "
                         "utterances (add utterances or lower --val-size)")
    rng = np.random.default_rng([int(seed), 0x5BE])
    held = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_speaker]
                                   for c in range(data.num_classes)])).astype(np.int64)
    rest = np.setdiff1d(np.arange(len(data)), held)
    return data.take(rest), data.take(held)


def default_val_size(data: SpeakerData) -> int:
    """Held-out utterances per speaker when none are asked for: 10% of the fewest a speaker has, at least 1."""
    fewest = int(np.bincount(data.labels.numpy(), minlength=data.num_classes).min())
    return max(1, round(0.1 * fewest))


def coloured_noise(n: int, samples: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` unit-power noises whose spectra fall as f^-a/2, a drawn in [0, 1.5] (white to pinker than pink)."""
    spec = torch.fft.rfft(torch.randn(n, samples, generator=gen))
    freqs = torch.arange(spec.shape[1]).clamp(min=1).float()
    slope = 1.5 * torch.rand(n, 1, generator=gen)
    noise = torch.fft.irfft(spec * freqs[None] ** (-slope / 2), n=samples)
    return noise / noise.pow(2).mean(dim=1, keepdim=True).sqrt()


def add_noise(x: torch.Tensor, snr_db: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``x`` (N, S) plus coloured noise at ``snr_db`` (N,) dB below each row's power."""
    power = x.pow(2).mean(dim=1, keepdim=True).clamp(min=1e-8)  # silence: noise at a floor, not NaN
    noise = coloured_noise(x.shape[0], x.shape[1], gen)
    return x + noise * (power / 10 ** (snr_db[:, None] / 10)).sqrt()


def _tiled(w: torch.Tensor, samples: int) -> torch.Tensor:
    """``w``, repeated end to end when it is shorter than ``samples``."""
    return w.repeat(-(-samples // len(w))) if len(w) < samples else w


def crop_utterances(wavs: tuple[torch.Tensor, ...] | list[torch.Tensor], labels: torch.Tensor | list[int],
                    idx: torch.Tensor, samples: int, gen: torch.Generator,
                    snr: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``samples``-long crop of each utterance ``idx`` in noise at an SNR uniform in ``snr``:
    waveforms ``(N, 1, 1, samples)`` and their labels."""
    xs = []
    for i in idx.tolist():
        w = _tiled(wavs[i], samples)
        start = int(torch.randint(len(w) - samples + 1, (1,), generator=gen))
        xs.append(w[start:start + samples])
    n = len(xs)
    snr_db = snr[0] + (snr[1] - snr[0]) * torch.rand(n, generator=gen)
    x = add_noise(torch.stack(xs), snr_db, gen)
    return x.view(n, 1, 1, samples), torch.as_tensor([int(labels[i]) for i in idx.tolist()], dtype=torch.long)


def crop_batch(wavs: tuple[torch.Tensor, ...] | list[torch.Tensor], labels: torch.Tensor | list[int], n: int,
               samples: int, gen: torch.Generator, snr: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random ``samples``-long crops (utterances drawn uniformly) in noise at SNRs uniform in ``snr``."""
    idx = torch.randint(len(wavs), (n,), generator=gen)
    return crop_utterances(wavs, labels, idx, samples, gen, snr)


def centre_segments(wavs: tuple[torch.Tensor, ...] | list[torch.Tensor], samples: int,
                    snr: float | tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """The central ``samples`` of every utterance (tiled when shorter) in coloured noise at ``snr`` dB (one
    value, or a range each segment draws from): ``(N, 1, 1, samples)``."""
    tiled = [_tiled(w, samples) for w in wavs]
    x = torch.stack([w[(len(w) - samples) // 2:][:samples] for w in tiled])
    if isinstance(snr, tuple):
        snr_db = snr[0] + (snr[1] - snr[0]) * torch.rand(len(wavs), generator=gen)
    else:
        snr_db = torch.full((len(wavs),), float(snr))
    return add_noise(x, snr_db, gen).view(len(wavs), 1, 1, samples)


def _generator(seed: int, stream: int) -> torch.Generator:
    """A torch generator for one fixed purpose of a run with ``seed``."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0]))


def validation_segments(val: SpeakerData, samples: int, seed: int) -> torch.Tensor:
    """The held-out utterances as a run validates on them: central windows in training-like noise (SNR uniform
    in :data:`SNR_TRAIN`), drawn once from ``seed``."""
    if len(val) == 0:
        return torch.zeros(0, 1, 1, samples)
    return centre_segments(val.wavs, samples, SNR_TRAIN, _generator(seed, 0x7A1))


def recalibration_crops(train: SpeakerData, n: int, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (at most one per utterance, speakers mixed) noisy random crops of training utterances for BN
    recalibration, drawn once from ``seed``, and their labels."""
    gen = _generator(seed, 0xBA7)
    idx = torch.randperm(len(train), generator=gen)[:max(1, min(n, len(train)))]
    return crop_utterances(train.wavs, train.labels, idx, samples, gen, SNR_TRAIN)


def held_out_split(data: SpeakerData, val_size: int | None, seed: int) -> tuple[SpeakerData, SpeakerData]:
    """:func:`split_utterances` with ``val_size`` utterances per speaker (None: :func:`default_val_size`)."""
    return split_utterances(data, default_val_size(data) if val_size is None else int(val_size), seed)


class SpeakerEpochs:
    """What ``nas supernet train`` reads for an audio space: the utterance split, each epoch's noisy crops, the
    validation segments and the recalibration crops (see :mod:`nas.supernet_training`).

    An epoch is ``train_size`` crops (default: one per training utterance): the training utterances in seeded
    random orders, one after another, a fresh random window and noise for each.
    """

    def __init__(self, data: SpeakerData, samples: int, val_size: int | None, train_size: int | None,
                 seed: int, recalibration: int) -> None:
        self.train, self.val = held_out_split(data, val_size, seed)
        self.samples = int(samples)
        self.num_classes = data.num_classes
        self.train_count = len(self.train) if train_size is None else int(train_size)
        if self.train_count < 1:
            raise ValueError(f"--train-size {train_size}: an epoch needs at least one crop")
        self.recal = recalibration_crops(self.train, recalibration, self.samples, seed)[0]
        self.val_x, self.val_y = validation_segments(self.val, self.samples, seed), self.val.labels

    def to(self, dev: torch.device) -> None:
        """Nothing to move: crops are cut on the CPU and each batch moves alone."""

    def order(self, gen: torch.Generator) -> torch.Tensor:
        """The epoch's ``train_count`` utterance indices: whole random permutations, the last one cut short."""
        n = len(self.train)
        return torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-self.train_count // n))])[:self.train_count]

    def batch(self, idx: torch.Tensor, gen: torch.Generator, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A random crop of each utterance ``idx`` in noise: waveforms ``(N, 1, 1, samples)`` and labels on ``dev``."""
        x, y = crop_utterances(self.train.wavs, self.train.labels, idx.cpu(), self.samples, gen, SNR_TRAIN)
        return x.to(dev), y.to(dev)

    @staticmethod
    def prepare(space: object, x: torch.Tensor, arch: object, dev: torch.device) -> torch.Tensor:
        """Stored waveforms as a subnet takes them (already float, at the space's length)."""
        return x.to(dev)
