"""Render a synthetic speaker set with eSpeak NG: DIR/<speaker>/<utt>.wav, 16 kHz mono 16-bit PCM.

    pip install espeakng-loader   # a wheel bundling libespeak-ng and its voice data (no system install)
    python experiments/make_speakers.py --out experiments/out/tdnn/speakers --speakers 20 --utterances 30 --seed 0

A speaker is an eSpeak NG voice variant (``en`` with one of the male, female and Klatt variants of
``espeak-ng-data/voices/!v``, each used once before any repeats) with its own base pitch, pitch range
and speaking rate drawn from ``--seed``; speakers that share a variant differ in pitch and rate. An
utterance is a sentence of 6-12 words drawn from a fixed vocabulary (the same seed gives the same
texts), spoken with a small per-utterance change of rate and pitch, resampled from eSpeak's 22,050 Hz
to 16 kHz. ``speakers.csv`` records every speaker's settings and ``utterances.csv`` every text, so the
set can be regenerated or inspected. Same seed, same eSpeak NG version: the same audio.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import wave
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

VARIANTS = ("m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "f5", "m6", "m7", "klatt", "klatt2",
            "klatt3", "klatt4", "klatt5", "klatt6", "m8", "croak", "whisper", "iven", "john", "linda")
WORDS = ("the", "a", "small", "green", "river", "stone", "house", "music", "bright", "quiet", "morning",
         "window", "garden", "paper", "yellow", "heavy", "ticket", "station", "coffee", "winter", "summer",
         "little", "orange", "silver", "market", "doctor", "number", "people", "water", "evening", "seven",
         "twelve", "forty", "open", "closed", "under", "over", "behind", "before", "after", "never", "always",
         "slowly", "quickly", "happy", "cold", "warm", "table", "chair", "letter", "mountain", "city", "road",
         "train", "boat", "bird", "horse", "apple", "bread", "cheese", "simple", "strange", "careful", "gentle",
         "brings", "takes", "finds", "keeps", "leaves", "makes", "holds", "reads", "writes", "carries", "and",
         "but", "with", "from", "into", "near", "every", "other", "second", "third", "wooden", "golden")
ESPEAK_RATE, ESPEAK_PITCH, ESPEAK_RANGE = 1, 3, 4  # espeak_PARAMETER values of speak_lib.h
OUT_RATE = 16000


class Espeak:
    """The eSpeak NG library of ``espeakng-loader`` driven through ctypes, synthesising into memory."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        # AUDIO_OUTPUT_RETRIEVAL (1): samples come back through the callback, nothing is played
        self.rate = self.lib.espeak_Initialize(1, 500, espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            raise RuntimeError("espeak_Initialize failed: is espeakng-loader's voice data present?")
        # eSpeak NG draws breath noise (voices f2, f3, f5, ...) from a generator its initialisation seeds
        # from the clock; reseeding it before every utterance makes the audio reproducible and
        # independent of the order in which utterances are rendered.
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # kept on self: the library holds only a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes.Array, n: int, _events: int) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, noise_seed: int = 0) -> np.ndarray:
        """``text`` spoken by ``voice`` (e.g. ``en+m3``) as int16 samples at ``self.rate``; ``noise_seed``
        seeds the breath noise."""
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(noise_seed))
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        for param, value in ((ESPEAK_RATE, rate), (ESPEAK_PITCH, pitch), (ESPEAK_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self._chunks = []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def trim_silence(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """``x`` without leading and trailing samples below ``threshold`` of its peak (keeps 50 ms margins)."""
    loud = np.flatnonzero(np.abs(x) > threshold * max(np.abs(x).max(), 1e-9))
    if loud.size == 0:
        return x
    margin = OUT_RATE // 20
    return x[max(loud[0] - margin, 0): loud[-1] + margin]


def write_wav(path: Path, x: np.ndarray) -> None:
    """Float samples in [-1, 1] as a 16 kHz mono 16-bit PCM wav file."""
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(OUT_RATE)
        f.writeframes(pcm.tobytes())


def main(argv: list[str] | None = None) -> int:
    """Render the speaker set; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (DIR/<speaker>/<utt>.wav)")
    parser.add_argument("--speakers", type=int, default=20)
    parser.add_argument("--utterances", type=int, default=30, help="utterances per speaker")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.speakers < 2 or args.utterances < 1:
        parser.error("--speakers must be at least 2 and --utterances at least 1")
    rng = np.random.default_rng(args.seed)
    tts = Espeak()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    speakers = []
    for i in range(args.speakers):
        speakers.append({"speaker": f"spk{i:03d}", "voice": f"en+{VARIANTS[i % len(VARIANTS)]}",
                         "pitch": int(rng.integers(15, 86)), "range": int(rng.integers(20, 81)),
                         "rate": int(rng.integers(130, 196))})
    with open(out / "speakers.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(speakers[0]))
        writer.writeheader()
        writer.writerows(speakers)
    with open(out / "utterances.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["speaker", "utterance", "seconds", "text"])
        for spk in speakers:
            folder = out / spk["speaker"]
            folder.mkdir(exist_ok=True)
            for u in range(args.utterances):
                words = rng.choice(WORDS, size=int(rng.integers(6, 13)))
                text = " ".join(words).capitalize() + "."
                raw = tts.say(text, spk["voice"], spk["rate"] + int(rng.integers(-10, 11)),
                              min(99, max(0, spk["pitch"] + int(rng.integers(-4, 5)))), spk["range"],
                              noise_seed=int(rng.integers(2**31)))
                x = resample_poly(raw.astype(np.float64) / 32768.0, 320, 441)  # 22,050 Hz -> 16 kHz
                x = trim_silence(x)
                write_wav(folder / f"{u:03d}.wav", x)
                writer.writerow([spk["speaker"], f"{u:03d}", f"{len(x) / OUT_RATE:.2f}", text])
    print(f"{args.speakers} speakers x {args.utterances} utterances -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
