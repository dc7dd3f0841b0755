"""Text for the analyses, cut into windows: a reader's own text, or one of two built-in texts.

- `code`: the held-out sample of Python standard-library code shipped with the package (`assets/heldout_sample.txt`),
  never trained on by `tappa-tiny`, which was trained on other stdlib files: the default for `tappa-tiny`.
- `english`: real English prose from the Python documentation bundled with every Python (`pydoc_data.topics`, the
  PSF-licensed language reference), split by topic into a calibration part (topics whose key's SHA-256 is divisible
  by 4, about a quarter) and a held-out part (the rest): the default for every other model. `long_tasks` builds its
  long-context samples from the same held-out topics. Analyses and tasks read the held-out part;
  calibration (pruning's beta, the q-sim variant's choice) reads the calibration part, so no test sees its text.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .models import ASSETS, DEFAULT_MODEL

HELDOUT_SAMPLE = ASSETS / "heldout_sample.txt"
ENGLISH_SOURCE = "the Python documentation bundled with Python (pydoc_data.topics, PSF license)"
SPLITS = ("heldout", "calibration")
CODE_MODELS = ("tappa-tiny", "random:tappa-tiny")  # trained on (or shaped like) code: the code sample by default


def is_calibration_topic(topic: str) -> bool:
    """True for the documentation topics of the calibration split (the key's SHA-256 divisible by 4)."""
    return int(hashlib.sha256(topic.encode()).hexdigest(), 16) % 4 == 0


def english_topics(split: str = "heldout") -> dict[str, str]:
    """The documentation topics of one split (`is_calibration_topic`), in sorted order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    from pydoc_data.topics import topics

    return {k: topics[k] for k in sorted(topics) if is_calibration_topic(k) == (split == "calibration")}


def _paragraphs(split: str) -> list[str]:
    return [p for v in english_topics(split).values() for p in v.strip().split("\n\n")]


def english_text(split: str = "heldout") -> str:
    """The English text of one split, paragraphs joined by blank lines (held-out: about 330k characters).

    The documentation repeats some paragraphs under several topics: the held-out text leaves out every paragraph of
    more than 80 characters that also occurs in the calibration part, so the two share no such paragraph.
    """
    paragraphs = _paragraphs(split)
    if split == "heldout":
        seen = {p for p in _paragraphs("calibration") if len(p) > 80}
        paragraphs = [p for p in paragraphs if p not in seen]
    return "\n\n".join(paragraphs)


def default_text_kind(model=None) -> str:
    """`code` for tappa-tiny (and its random-weight null), `english` for any other model."""
    if model is None:
        return "code"
    name = str(model).rstrip("/")
    if name.lower().startswith("random:"):
        name = name.partition("@")[0]  # a draw of the same architecture (random:tappa-tiny@3)
    if name.lower() in CODE_MODELS or Path(name).expanduser().resolve() == (ASSETS / DEFAULT_MODEL).resolve():
        return "code"
    return "english"


def text_source(model=None, split: str = "heldout", seed: int = 0) -> str:
    """In words, where the built-in text of `split` for `model` comes from (`default_text_kind`), for pages and
    result files.

    >>> text_source("smollm2-135m", "calibration")
    'the calibration split of the Python documentation bundled with Python (pydoc_data.topics, PSF license)'
    >>> text_source("tappa-tiny")
    'tappa_utils held-out sample of Python code (assets/heldout_sample.txt)'
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if default_text_kind(model) == "english":
        return f"the {'held-out' if split == 'heldout' else split} split of {ENGLISH_SOURCE}"
    if split == "calibration":
        return f"tappa_utils.tiny.corpus training split, seeded stretch (seed {seed})"
    return "tappa_utils held-out sample of Python code (assets/heldout_sample.txt)"


CODE_PROMPTS = ("def __init__(self, ", "import os\nimport ", "    for i in range(")
ENGLISH_PROMPTS = ("The capital of France is", "A list in Python is", "The function returns")


def default_prompts(model=None) -> tuple[str, ...]:
    """Prompts for continuations in the text the model reads (`default_text_kind`): code for tappa-tiny, English
    otherwise."""
    return CODE_PROMPTS if default_text_kind(model) == "code" else ENGLISH_PROMPTS


def load_text(text: str | None = None, text_file: str | Path | None = None, model=None) -> str:
    """`text` if given, else the contents of `text_file`, else the built-in text for `model` (`default_text_kind`:
    the held-out code sample for tappa-tiny or when no model is named, held-out English otherwise). Empty text is an
    error."""
    if text is not None and text_file is not None:
        raise ValueError("give either text or text_file, not both")
    if text is None and text_file is None and default_text_kind(model) == "english":
        text = english_text("heldout")
    if text is None:
        path = Path(text_file) if text_file is not None else HELDOUT_SAMPLE
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        text = path.read_text(encoding="utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the text is empty; pass a non-empty text or text_file")
    return text


def token_windows(tokenizer, text: str, seq_len: int, num_windows: int, stride: int | None = None) -> torch.Tensor:
    """(num_windows, seq_len) token ids: consecutive windows of the text, each starting with BOS.

    Raises ValueError when the text is too short for the requested windows.
    """
    for name, v in (("seq_len", seq_len), ("num_windows", num_windows)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # long texts are cut below
    bos = tokenizer.bos_token_id
    body = seq_len - (1 if bos is not None else 0)
    stride = stride or body
    need = (num_windows - 1) * stride + body
    if len(ids) < need:
        raise ValueError(
            f"text too short: {len(ids)} tokens, {num_windows} windows of {seq_len} need {need}; "
            "give a longer text or fewer/shorter windows"
        )
    rows = []
    for w in range(num_windows):
        chunk = ids[w * stride : w * stride + body]
        rows.append(([bos] if bos is not None else []) + chunk)
    return torch.tensor(rows, dtype=torch.long)
