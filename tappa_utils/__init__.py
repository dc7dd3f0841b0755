"""tappa_utils: the code of the TAPPA Book (capture, RoPE, metrics, theory, KV-cache compression, pruning)."""
from __future__ import annotations

__version__ = "0.1.0"

from .models import DEFAULT_MODEL, UnsupportedModelError, load_model, random_weight_copy  # noqa: E402
from .capture import capture  # noqa: E402


def __getattr__(name: str):
    """Lazy imports of the heavier parts (kvpress is only imported when the press is used)."""
    if name == "TAPPAPress":
        from .kv.tappa_press import TAPPAPress

        return TAPPAPress
    raise AttributeError(f"module 'tappa_utils' has no attribute {name!r}")
