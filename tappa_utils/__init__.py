"""tappa_utils: the code of the TAPPA Book (capture, RoPE, metrics, theory, KV-cache compression, pruning)."""
from __future__ import annotations

__version__ = "0.1.0"

from .interrupts import early_handlers  # noqa: E402 - standard library only: before torch is imported

early_handlers()  # a command line: Ctrl-C / SIGTERM during the imports below give one line, not a traceback

import warnings  # noqa: E402

# tqdm.auto (imported by huggingface_hub / transformers) warns "IProgress not found" inside a Jupyter kernel without
# ipywidgets; the book shows no progress bars (HF_HUB_DISABLE_PROGRESS_BARS), so the notice is noise on every page.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

from .capture import capture  # noqa: E402
from .models import DEFAULT_MODEL, UnsupportedModelError, load_model, random_weight_copy  # noqa: E402

__all__ = ["DEFAULT_MODEL", "TAPPAPress", "UnsupportedModelError", "capture", "load_model", "random_weight_copy"]


def __getattr__(name: str):
    """Lazy imports of the heavier parts (kvpress is only imported when the press is used)."""
    if name == "TAPPAPress":
        from .kv.tappa_press import TAPPAPress

        return TAPPAPress
    raise AttributeError(f"module 'tappa_utils' has no attribute {name!r}")
