"""Per-layer preference scores for budget allocation: q-similarity (TAPPA) and CAKE's entropy x variance.

The q-similarity helpers apply `tappa_utils.metrics.q_similarity_window` / `q_similarity_consecutive` to the
observation window only (all of its queries, no skip).
"""
from __future__ import annotations

import torch

from ..metrics import q_similarity_consecutive, q_similarity_window


def qsim_all_pairs(q: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal cosine similarity among all the queries: q (..., W, D) -> (...) float32. W >= 2 required."""
    return q_similarity_window(q, window=q.shape[-2]).float()


def qsim_consecutive(q: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of consecutive queries cos(q_t, q_t+1): q (..., W, D) -> (...) float32.
    W >= 2 required."""
    return q_similarity_consecutive(q, skip=0).float()


def cake_preference(window_attention: torch.Tensor, tau1: float = 1.0, tau2: float = 1.0) -> float:
    """CAKE's layer preference `D^(1/tau1) * V^(1/tau2)` as the official TAPPA code computes it.

    window_attention (B, H, W, T): the last W queries' attention over all T keys. Only the keys before the window
    count (`[..., :T - W]`). D = -sum p log(p + 1e-10) over heads, rows and keys (float32); V = unbiased variance
    over the W rows, summed over heads and keys (KVCache/tappa/model/llama_forward.py, `calculate_entropy` in
    KVCache/cake/utils.py). Deviation: the reference also sums over the batch; we average over it, so a layer's
    preference does not grow with the batch size (identical at batch 1).
    """
    w, t = window_attention.shape[-2:]
    a = window_attention[..., : t - w]
    b = a.shape[0]
    a32 = a.float()
    entropy = -(a32 * torch.log(a32 + 1e-10)).sum() / b
    dev = (a - a.mean(-2, keepdim=True)).square_()  # unbiased variance by hand (torch.var is slow on CPU)
    variance = (dev.sum(-2) / (a.shape[-2] - 1)).sum().float() / b
    return float(entropy.clamp_min(0) ** (1.0 / tau1) * variance.clamp_min(0) ** (1.0 / tau2))
