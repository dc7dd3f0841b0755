"""KV-cache compression guided by q-similarity (TAPPA, Section 6) with real eviction, on kvpress.

`TAPPAPress` (tappa_press), per-layer budgets (budgets), q-similarity / CAKE preferences (preference),
decoding on a compressed cache (decoding), and the evaluation harness (evaluate, `python -m tappa_utils kv-eval`).
kvpress is imported only when these modules are used.
"""
from __future__ import annotations

__all__ = ["TAPPAPress", "allocate_budgets"]


def __getattr__(name: str):
    """Lazy access to the press (kvpress is heavy to import)."""
    if name == "TAPPAPress":
        from .tappa_press import TAPPAPress

        return TAPPAPress
    if name == "allocate_budgets":
        from .budgets import allocate_budgets

        return allocate_budgets
    raise AttributeError(f"module 'tappa_utils.kv' has no attribute {name!r}")
