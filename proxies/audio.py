"""Speech calibration data for audio spaces: synthetic voices, or a folder of wav files per speaker.

An audio space takes mono 16 kHz waveforms shaped ``(N, 1, 1, samples)``. :func:`load_audio_batch` is
what :func:`proxies.load_batch` returns for such an input shape: ``None`` or ``"speech"`` gives vowel-like
utterances of synthetic speakers (:func:`synthetic_voices`, numpy only, no files); a folder
``DIR/<speaker>/<utt>.wav`` (16-bit PCM, e.g. ``experiments/make_speakers.py``) gives a speaker-balanced
batch of its utterances; an ``.npz`` with ``x`` (``N, samples`` or ``N, 1, 1, samples``) and ``y``
gives those.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch

from proxies.data import Batch, _balanced_indices

SAMPLE_RATE = 16000
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480], [570, 840, 2410],
                   [300, 870, 2240], [660, 1720, 2410], [490, 1350, 1690], [440, 1020, 2240]], dtype=float)
"""First three formants (Hz) of eight English vowels of an adult male voice (Peterson & Barney, 1952)."""


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A 16-bit PCM wav file as float32 in [-1, 1], channels averaged, resampled to ``sample_rate``."""
    with wave.open(str(path), "rb") as f:
        width, rate, channels = f.getsampwidth(), f.getframerate(), f.getnchannels()
        raw = f.readframes(f.getnframes())
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit samples; only 16-bit PCM wav files are read")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    x = x.reshape(-1, channels).mean(axis=1)
    if rate != sample_rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(rate, sample_rate)
        x = resample_poly(x, sample_rate // g, rate // g).astype(np.float32)
    return x


def speaker_files(folder: str | Path) -> list[tuple[str, list[Path]]]:
    """``(speaker, sorted wav files)`` for each sub-folder of ``folder`` that holds wav files."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--data {folder}: no such folder (expected DIR/<speaker>/<utt>.wav)")
    out = [(d.name, sorted(d.glob("*.wav"))) for d in sorted(root.iterdir()) if d.is_dir()]
    out = [(s, files) for s, files in out if files]
    if not out:
        raise ValueError(f"--data {folder}: no speaker sub-folders with .wav files (expected DIR/<speaker>/<utt>.wav)")
    return out


def crop(x: np.ndarray, samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``samples`` samples of ``x``: a window at a random (``rng``) or central offset, tiled when too short."""
    if len(x) == 0:
        raise ValueError("empty waveform")
    if len(x) < samples:
        x = np.tile(x, -(-samples // len(x)))
    spare = len(x) - samples
    start = int(rng.integers(spare + 1)) if rng is not None else spare // 2
    return x[start:start + samples]


def synthetic_voices(n_speakers: int, per_speaker: int, samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vowel-like utterances of ``n_speakers`` synthetic voices: ``(x, y)`` with ``x`` of shape
    ``(n_speakers * per_speaker, samples)``.

    A voice is a mean pitch (85-255 Hz), a vocal-tract scale of its formants (0.85-1.25), a spectral tilt
    and a breathiness; an utterance is a sequence of 80-250 ms vowels with a drifting pitch, synthesised
    as a sum of harmonics shaped by the three formants, plus aspiration noise. Speaker identity is thus in
    pitch and formant spacing, as in speech, and the same seed gives the same audio.
    """
    rng = np.random.default_rng([int(seed), 0xA0D10])
    t = np.arange(samples) / SAMPLE_RATE
    xs, ys = [], []
    for spk in range(n_speakers):
        f0_mean, scale = rng.uniform(85, 255), rng.uniform(0.85, 1.25)
        tilt, breath = rng.uniform(0.6, 1.4), rng.uniform(0.01, 0.06)
        for _ in range(per_speaker):
            # vowel targets every 80-250 ms, formants interpolated between them per sample
            bounds = np.cumsum(rng.uniform(0.08, 0.25, size=int(t[-1] / 0.08) + 2))
            bounds = np.concatenate([[0.0], bounds])
            targets = VOWELS[rng.integers(len(VOWELS), size=len(bounds))] * scale
            formants = np.stack([np.interp(t, bounds, targets[:, k]) for k in range(3)])
            f0 = f0_mean * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6.3)))
            phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
            signal = np.zeros(samples)
            for h in range(1, int(4000 / f0_mean) + 1):
                freq = h * f0
                gain = sum(1.0 / (1.0 + ((freq - formants[k]) / (60.0 + 30 * k)) ** 2) for k in range(3))
                signal += gain * np.sin(h * phase) / h ** tilt
            envelope = 0.5 + 0.5 * np.sin(np.pi * np.clip(t / t[-1], 0, 1)) ** 0.3  # soft onset and offset
            signal = signal * envelope + breath * rng.standard_normal(samples)
            xs.append((0.3 * signal / (np.abs(signal).max() + 1e-9)).astype(np.float32))
            ys.append(spk)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def load_audio_batch(source: str | Path | None, batch_size: int, seed: int, samples: int) -> Batch:
    """A ``(batch_size, 1, 1, samples)`` speech batch with speaker targets (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if source is None or str(source) in ("speech", "cifar10"):
        if str(source) == "cifar10":
            raise ValueError("--data cifar10: this space takes audio; give 'speech' (synthetic voices, the "
                             "default), 'gaussian', a folder DIR/<speaker>/<utt>.wav or an .npz of waveforms")
        n_speakers = min(batch_size, 8)
        x, y = synthetic_voices(n_speakers, -(-batch_size // n_speakers), samples, seed)
        idx = _balanced_indices(y, batch_size, rng)
        return Batch(torch.from_numpy(x[idx]).view(-1, 1, 1, samples), torch.from_numpy(y[idx]), "speech")
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise ValueError(f"{path}: an audio .npz needs 'x' (N, samples) waveforms and 'y' speaker ids; "
                                 f"found {sorted(data.files)}")
            x, y = data["x"].reshape(len(data["y"]), -1).astype(np.float32), data["y"].astype(np.int64)
        idx = _balanced_indices(y, min(batch_size, len(y)), rng)
        x = np.stack([crop(x[i], samples) for i in idx])
        return Batch(torch.from_numpy(x).view(-1, 1, 1, samples), torch.from_numpy(y[idx]), path.stem)
    if path.is_dir():
        speakers = speaker_files(path)
        files = [(f, label) for label, (_, fs) in enumerate(speakers) for f in fs]
        labels = np.array([label for _, label in files])
        idx = _balanced_indices(labels, min(batch_size, len(files)), rng)
        x = np.stack([crop(read_wav(files[i][0]), samples, rng) for i in idx])
        return Batch(torch.from_numpy(x).view(-1, 1, 1, samples), torch.from_numpy(labels[idx]), path.name)
    raise ValueError(f"--data {source!r}: this space takes audio; give 'speech' (synthetic voices, the default), "
                     "'gaussian', a folder DIR/<speaker>/<utt>.wav or an .npz with x (waveforms) and y")


__all__ = ["crop", "load_audio_batch", "read_wav", "speaker_files", "synthetic_voices"]
