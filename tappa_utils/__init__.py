"""tappa_utils: the code of the TAPPA Book (capture, RoPE, metrics, theory, KV-cache compression, pruning)."""
from __future__ import annotations

__version__ = "0.1.0"


def _import_tqdm_quietly() -> None:
    """Import tqdm.auto once with its "IProgress not found" notice silenced: in a Jupyter kernel without ipywidgets
    tqdm prints it (with the venv's absolute path) the first time transformers / huggingface_hub import tqdm.auto,
    i.e. into a chapter's output. The module is cached, so later imports stay quiet; tqdm itself is unchanged."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        try:
            import tqdm.auto  # noqa: F401
        except ImportError:
            pass


_import_tqdm_quietly()

from .models import DEFAULT_MODEL, UnsupportedModelError, load_model, random_weight_copy  # noqa: E402
from .capture import capture  # noqa: E402


def __getattr__(name: str):
    """Lazy imports of the heavier parts (kvpress is only imported when the press is used)."""
    if name == "TAPPAPress":
        from .kv.tappa_press import TAPPAPress

        return TAPPAPress
    raise AttributeError(f"module 'tappa_utils' has no attribute {name!r}")
