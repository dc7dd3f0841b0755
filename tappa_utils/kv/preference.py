"""Per-layer preference scores for budget allocation: q-similarity (TAPPA) and CAKE's entropy x variance.

The q-similarity helpers are small private versions of the windowed / consecutive cosine measures (the same
definitions as `tappa_utils.metrics.q_similarity_window` / `q_similarity_consecutive`), kept here so the press does
not depend on the analysis module and works on the observation window only.
"""
from __future__ import annotations

import torch


def qsim_all_pairs(q: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal cosine similarity among the queries: q (..., W, D) -> (...). W >= 2 required."""
    w = q.shape[-2]
    if w < 2:
        raise ValueError(f"q-similarity needs at least 2 queries in the window, got {w}")
    qn = torch.nn.functional.normalize(q.float(), dim=-1)
    gram = qn @ qn.transpose(-1, -2)
    off = gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    return off / (w * (w - 1))


def qsim_consecutive(q: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of consecutive queries cos(q_t, q_t+1): q (..., W, D) -> (...). W >= 2 required."""
    if q.shape[-2] < 2:
        raise ValueError(f"q-similarity needs at least 2 queries in the window, got {q.shape[-2]}")
    qn = torch.nn.functional.normalize(q.float(), dim=-1)
    return (qn[..., 1:, :] * qn[..., :-1, :]).sum(-1).mean(-1)


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
