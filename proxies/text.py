"""Calibration text for sequence models: a shipped public-domain corpus and a byte-level tokenizer.

Sequence spaces (``bert``, ``rnn``, ``gpt``) take integer token ids. Their calibration batch is a
``Batch`` whose ``inputs`` are ``LongTensor[N, T]`` windows of text and whose ``targets`` are the
``N * T`` flattened next tokens (``lm``) or original tokens under 15 % masking (``mlm``), so that a plain
``cross_entropy(model(inputs), targets)`` is the language-model loss for models that return
``[N * T, vocab]`` logits.

Example:
    >>> from proxies.text import ByteTokenizer, text_batch
    >>> tok = ByteTokenizer()
    >>> tok.decode(tok.encode("Call me Ishmael."))
    'Call me Ishmael.'
    >>> b = text_batch(batch_size=4, seq_len=16)
    >>> tuple(b.inputs.shape), tuple(b.targets.shape)
    ((4, 16), (64,))
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from proxies.data import Batch

PAD, MASK, BOS, EOS = 0, 1, 2, 3
NUM_SPECIAL = 4
OBJECTIVES = ("lm", "mlm")


class ByteTokenizer:
    """UTF-8 bytes shifted past four special tokens (pad 0, mask 1, bos 2, eos 3): 260 ids, no files."""

    vocab_size = 256 + NUM_SPECIAL

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return [b + NUM_SPECIAL for b in text.encode("utf-8")]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Text of token ids; special tokens are dropped."""
        return bytes(int(i) - NUM_SPECIAL for i in ids if int(i) >= NUM_SPECIAL).decode("utf-8", "replace")


def shipped_text() -> str:
    """The public-domain calibration corpus shipped in the package (about 9 KB of English)."""
    return resources.files("proxies").joinpath("data/calibration_text.txt").read_text(encoding="utf-8")


def load_tokens(source: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Token ids of ``source``: None (shipped corpus), a ``.txt`` file, or an ``.npy``/``.npz`` of token ids."""
    if source is None or str(source) in ("text", "shipped"):
        return np.asarray(ByteTokenizer().encode(shipped_text()), dtype=np.int64)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"text data {str(source)!r}: expected 'text' (shipped corpus), a .txt file, or an "
                         ".npy/.npz file of integer token ids")
    if path.suffix == ".npy":
        ids = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            key = "tokens" if "tokens" in data else data.files[0]
            ids = data[key]
    else:
        ids = np.asarray(ByteTokenizer().encode(path.read_text(encoding="utf-8", errors="replace")))
    ids = np.asarray(ids).reshape(-1)
    if not np.issubdtype(ids.dtype, np.integer) or ids.size == 0 or ids.min() < 0:
        raise ValueError(f"{path}: token ids must be a non-empty array of non-negative integers")
    return ids.astype(np.int64)


def text_batch(batch_size: int = 16, seq_len: int = 32, seed: int = 0, objective: str = "lm",
               source: str | os.PathLike[str] | None = None, vocab_size: int | None = None) -> Batch:
    """``batch_size`` random windows of ``seq_len`` tokens with next-token (``lm``) or masked (``mlm``) targets.

    Token ids at or above ``vocab_size`` (user token files) are folded into range modulo ``vocab_size``.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} unknown; valid: {', '.join(OBJECTIVES)}")
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"need batch_size >= 1 and seq_len >= 2, got {batch_size} and {seq_len}")
    ids = load_tokens(source)
    if vocab_size is not None:
        ids = np.where(ids >= vocab_size, NUM_SPECIAL + ids % max(1, vocab_size - NUM_SPECIAL), ids)
    if len(ids) < seq_len + 2:
        raise ValueError(f"text of {len(ids)} tokens is shorter than one window of {seq_len + 1}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - seq_len - 1, size=batch_size)
    windows = np.stack([ids[s: s + seq_len + 1] for s in starts])
    name = "text" if source is None else Path(source).stem
    if objective == "lm":
        x, y = windows[:, :-1], windows[:, 1:]
    else:
        x = windows[:, :-1].copy()
        y = x.copy()
        masked = rng.random(x.shape) < 0.15
        x[masked] = MASK
    return Batch(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.reshape(-1).copy()), name)


def as_objective(batch: Batch, objective: str, seed: int = 0) -> Batch:
    """Turn a next-token batch into the ``objective`` a space trains with (``mlm`` masks 15 % of inputs)."""
    if objective == "lm":
        return batch
    if objective != "mlm":
        raise ValueError(f"objective {objective!r} unknown; valid: {', '.join(OBJECTIVES)}")
    x = batch.inputs.clone()
    y = x.reshape(-1).clone()
    gen = torch.Generator().manual_seed(seed)
    masked = torch.rand(x.shape, generator=gen) < 0.15
    x[masked.to(x.device)] = MASK
    return Batch(x, y, batch.name)


def load_text_batch(source: str | os.PathLike[str] | None, batch_size: int, seed: int,
                    seq_len: int) -> Batch:
    """``load_batch`` for token inputs: ``source`` None/'cifar10'/'text' means the shipped corpus."""
    if source is not None and str(source) in ("cifar10", "gaussian"):
        source = None  # image defaults of the CLI; token spaces read text
    return text_batch(batch_size, seq_len, seed, "lm", source)
