"""The offline training corpus (Python's standard library and its bundled docs) and the synthetic mixtures.

Every machine with Python has this text, so the default model can be rebuilt anywhere.  Files are split into
train and held-out by a hash of their relative path (deterministic, independent of file order).
"""
from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
VOCAB_SIZE = 259
HELDOUT_PERCENT = 5


def stdlib_files() -> list[tuple[str, Path]]:
    """(relative name, path) of every stdlib `.py` file (site-packages excluded) plus `pydoc_data/topics.py`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in {"site-packages", "__pycache__"})
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                p = Path(dirpath) / fn
                out.append((str(p.relative_to(root)), p))
    return out


def is_heldout(name: str) -> bool:
    """Deterministic held-out split by a hash of the relative file name."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


@dataclass
class Corpus:
    """Concatenated bytes of the train and held-out files, with the file manifest (name, sha256, split)."""

    train: np.ndarray
    heldout: np.ndarray
    manifest: list[dict] = field(default_factory=list)


def load_corpus(max_file_bytes: int = 200_000) -> Corpus:
    """Read the stdlib corpus; files larger than `max_file_bytes` are skipped (generated tables, test data)."""
    train, held, manifest = [], [], []
    for name, path in stdlib_files():
        data = path.read_bytes()
        if not data or len(data) > max_file_bytes and not name.startswith("pydoc_data"):
            continue
        split = "heldout" if is_heldout(name) else "train"
        (held if split == "heldout" else train).append(data + b"\n")
        manifest.append({"file": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "split": split})
    to_arr = lambda parts: np.frombuffer(b"".join(parts), dtype=np.uint8).astype(np.int64)
    return Corpus(to_arr(train), to_arr(held), manifest)


def text_window(rng: np.random.Generator, data: np.ndarray, n: int) -> np.ndarray:
    """A random contiguous slice of `n` bytes."""
    start = int(rng.integers(0, len(data) - n))
    return data[start : start + n].copy()


def random_segment(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random printable ASCII bytes: only copying can predict a second occurrence."""
    return rng.integers(33, 127, size=n)


def copy_window(rng: np.random.Generator, data: np.ndarray, n: int, random_share: float = 0.6,
                max_reps: int = 4) -> np.ndarray:
    """Text with a segment (random bytes or text, 16-96 long) that occurs 2..max_reps times in the window."""
    x = text_window(rng, data, n)
    seg_len = min(int(rng.integers(16, 97)), n // 3)  # the cap only binds for short windows (tests)
    seg = random_segment(rng, seg_len) if rng.random() < random_share else text_window(rng, data, seg_len)
    reps = int(rng.integers(2, max_reps + 1))
    slots = np.sort(rng.choice(np.arange(0, n - seg_len, seg_len + 1), size=min(reps, (n - seg_len) // (seg_len + 1)),
                               replace=False))
    for s in slots:
        x[s : s + seg_len] = seg
    return x


def periodic_window(rng: np.random.Generator, data: np.ndarray, n: int) -> np.ndarray:
    """A stretch of text repeated with a period L in 4..64 (with 2 % byte noise), after a text prefix."""
    period = int(rng.integers(4, 65))
    unit = text_window(rng, data, period)
    prefix = int(rng.integers(0, n // 4))
    x = text_window(rng, data, n)
    reps = np.resize(unit, n - prefix)
    noise = rng.random(len(reps)) < 0.02
    reps[noise] = rng.integers(33, 127, size=int(noise.sum()))
    x[prefix:] = reps
    return x


def induction_window(rng: np.random.Generator, data: np.ndarray, n: int) -> np.ndarray:
    """Copy-heavy window: random segments (8-64 bytes) each re-occurring 2-8 times among text."""
    x = text_window(rng, data, n)
    for _ in range(int(rng.integers(1, 4))):
        x = _plant(rng, x, random_segment(rng, int(rng.integers(8, 65))), int(rng.integers(2, 9)))
    return x


def _plant(rng: np.random.Generator, x: np.ndarray, seg: np.ndarray, reps: int) -> np.ndarray:
    slots = np.arange(0, len(x) - len(seg), len(seg) + 1)
    for s in rng.choice(slots, size=min(reps, len(slots)), replace=False):
        x[s : s + len(seg)] = seg
    return x


def retrieval_window(rng: np.random.Generator, data: np.ndarray, n: int) -> np.ndarray:
    """Long-range retrieval: a random segment (16-48 bytes) in the first quarter of the window re-occurs at least a
    quarter of the window later.  The text between holds no match, so heads that look for one must park their
    attention somewhere until the segment's beginning re-occurs; its rest is predictable only by retrieval."""
    x = text_window(rng, data, n)
    seg = random_segment(rng, min(int(rng.integers(16, 49)), n // 4))
    first = int(rng.integers(0, n // 4))
    lo, hi = min(first + len(seg) + n // 4, n - len(seg)), n - len(seg)
    second = int(rng.integers(lo, hi + 1))
    x[first : first + len(seg)] = seg
    x[second : second + len(seg)] = seg
    return x


def noise_window(rng: np.random.Generator, data: np.ndarray, n: int) -> np.ndarray:
    """Text with 1-3 stretches (64-256 bytes, at most a third of the window each) of random printable bytes: there
    nothing in the context predicts the next byte, so a head's best contribution is none (park on BOS)."""
    x = text_window(rng, data, n)
    for _ in range(int(rng.integers(1, 4))):
        m = min(int(rng.integers(64, 257)), n // 3)
        start = int(rng.integers(0, n - m + 1))
        x[start : start + m] = random_segment(rng, m)
    return x


MIXTURE = (("text", 0.5, text_window), ("copy", 0.35, copy_window), ("periodic", 0.15, periodic_window))
# Phase 2 (from step 500 of the shipped run): the copy signal of phase 1 was too weak (copy ratio still 1.0).
MIXTURE_COPY_HEAVY = (("text", 0.35, text_window), ("copy", 0.2, copy_window), ("induction", 0.3, induction_window),
                      ("periodic", 0.15, periodic_window))
# Phase 3 (second version, 1024+ tokens): long-range retrieval across stretches without a match (sinks, context).
MIXTURE_LONG = (("text", 0.3, text_window), ("copy", 0.15, copy_window), ("induction", 0.15, induction_window),
                ("retrieval", 0.25, retrieval_window), ("periodic", 0.15, periodic_window))
# Phase 4: retrieval at 1024 tokens was still short of the goal (0.79 at step 3700): more long-range retrieval.
MIXTURE_RETRIEVAL = (("text", 0.2, text_window), ("copy", 0.1, copy_window), ("induction", 0.15, induction_window),
                     ("retrieval", 0.4, retrieval_window), ("periodic", 0.15, periodic_window))
# Phase 5 (sinks): stretches where no head can help (noise), so heads learn to park, besides the long mixture.
MIXTURE_PARK = (("text", 0.3, text_window), ("copy", 0.1, copy_window), ("induction", 0.15, induction_window),
                ("retrieval", 0.2, retrieval_window), ("periodic", 0.1, periodic_window), ("noise", 0.15, noise_window))
MIXTURES = {"base": MIXTURE, "copy-heavy": MIXTURE_COPY_HEAVY, "long": MIXTURE_LONG, "retrieval": MIXTURE_RETRIEVAL,
            "park": MIXTURE_PARK}


def sample_batch(rng: np.random.Generator, data: np.ndarray, batch: int, seq_len: int, mixture=MIXTURE) -> np.ndarray:
    """A (batch, seq_len) int64 array: BOS followed by a window drawn from the mixture."""
    names, probs, fns = zip(*mixture)
    out = np.empty((batch, seq_len), dtype=np.int64)
    out[:, 0] = BOS_ID
    for b in range(batch):
        fn = fns[int(rng.choice(len(fns), p=np.asarray(probs) / sum(probs)))]
        out[b, 1:] = fn(rng, data, seq_len - 1)
    return out


def copy_test_batch(rng: np.random.Generator, data: np.ndarray, n: int, seq_len: int = 256, seg_len: int = 48):
    """Copy test: BOS, text, random segment, text, the same segment. Returns ids and the two segment slices."""
    out = np.empty((n, seq_len), dtype=np.int64)
    out[:, 0] = BOS_ID
    first = slice(40, 40 + seg_len)
    second = slice(seq_len - seg_len - 8, seq_len - 8)
    for b in range(n):
        x = text_window(rng, data, seq_len - 1)
        seg = random_segment(rng, seg_len)
        x[first.start - 1 : first.stop - 1] = seg
        x[second.start - 1 : second.stop - 1] = seg
        out[b, 1:] = x
    return out, first, second
