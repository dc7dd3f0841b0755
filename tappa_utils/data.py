"""Text for the analyses: the held-out sample shipped with the package, or a reader's own text, cut into windows."""
from __future__ import annotations

from pathlib import Path

import torch

from .models import ASSETS

HELDOUT_SAMPLE = ASSETS / "heldout_sample.txt"


def load_text(text: str | None = None, text_file: str | Path | None = None) -> str:
    """`text` if given, else the contents of `text_file`, else the shipped held-out sample. Empty text is an error."""
    if text is not None and text_file is not None:
        raise ValueError("give either text or text_file, not both")
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
