"""KV-cache compression guided by q-similarity (TAPPA, Section 6) with real eviction, on kvpress.

`TAPPAPress` (tappa_press), its CAKE baseline `CAKEPress` (cake_press), CAKE's token score `CAKEScorePress`
(cake_score_press), per-layer budgets (budgets: the official rule and a proportional one), q-similarity / CAKE
preferences (preference), per-layer attention masks (attention_patch), decoding helpers (decoding), the registry of
compared methods (methods: every press kv-eval, its report and chapter 07 know) and the evaluation harness (evaluate,
`python -m tappa_utils kv-eval`). kvpress is imported only when these modules are used.
"""
from __future__ import annotations

__all__ = ["TAPPAPress", "CAKEPress", "CAKEScorePress", "allocate_budgets", "reference_budgets"]

_WHERE = {"TAPPAPress": "tappa_press", "CAKEPress": "cake_press", "CAKEScorePress": "cake_score_press",
          "allocate_budgets": "budgets", "reference_budgets": "budgets"}


def __getattr__(name: str):
    """Lazy access (kvpress is heavy to import)."""
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'tappa_utils.kv' has no attribute {name!r}")
