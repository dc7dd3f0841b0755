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
    """Mean cosine similarity of consecutive queries cos(q_t, q_t+1): q (..., W, D) -> (...) float32. W >= 2 required."""
    return q_similarity_consecutive(q, skip=0).float()


def cake_preference(window_attention: torch.Tensor, tau1: float = 1.0, tau2: float = 1.0) -> float:
    """CAKE's layer preference entropy^(1/tau1) * variance^(1/tau2) of the observation window's attention.

    window_attention (B, H, W, T) (rows = the last W queries, probabilities over all T keys). Entropy of the
    window-mean attention distribution (spatial dispersion) and the sum over keys of the variance across the window
    queries (temporal shift), both averaged over heads and batch, as in CAKE (Qin et al., ICLR 2025).
    """
    a = window_attention.float()
    mean = a.mean(-2)
    entropy = -(mean * torch.log(mean.clamp_min(1e-12))).sum(-1).mean()
    variance = a.var(-2, unbiased=False).sum(-1).mean()
    return float(entropy.clamp_min(0) ** (1.0 / tau1) * variance.clamp_min(0) ** (1.0 / tau2))
