"""Layer pruning guided by q-similarity (TAPPA, Section 6) next to ShortGPT's block influence.

Scores, removal orders and layer removal (`scores`), the evaluation harness (`evaluate`,
`python -m tappa_utils prune-eval`). The public functions of `scores` are re-exported here:
`from tappa_utils import prune as P; P.tappa_order(...)`.
"""
from __future__ import annotations

from .scores import *  # noqa: F401,F403
