"""The assumptions of chapters 4-6 per head, head selection helpers, demonstrations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .. import theory
from .head import HeadData, capture_head, continuity

# ---------------------------------------------------------------------------------------------------------------
# assumptions, head selection, demonstrations
# ---------------------------------------------------------------------------------------------------------------


def assumption_summary(hd: HeadData, skip: int = 16, max_period: float | None = None) -> dict[str, float]:
    """The assumptions the theory needs, measured on one head (mean over windows): query and key continuity
    (`continuity`), the dominant channel of |q^m||k^m| and its share; with `max_period`, also the dominant channel
    among those with period <= max_period (`dominant_fit`, `share_fit`)."""
    m, share = theory.dominant_channel_share(hd.q[:, skip:], hd.k[:, skip:])
    out = {"layer": hd.layer, "head": hd.head, "q_continuity": continuity(hd.q, skip),
           "k_continuity": continuity(hd.k, skip), "dominant": int(m), "dominant_period": 2 * np.pi / hd.theta[int(m)],
           "dominant_share": float(share)}
    if max_period is not None:
        amp = (np.abs(theory._c(hd.q[:, skip:])) * np.abs(theory._c(hd.k[:, skip:]))).reshape(-1, len(hd.theta))
        amp = amp.mean(0)
        ok = 2 * np.pi / hd.theta <= max_period
        if not ok.any():
            raise ValueError(f"no RoPE channel has a period <= {max_period} tokens")
        mf = int(np.flatnonzero(ok)[np.argmax(amp[ok])])
        out.update(dominant_fit=mf, period_fit=2 * np.pi / hd.theta[mf], share_fit=float(amp[mf] / amp.sum()))
    return out


def assumption_table(model, input_ids: torch.Tensor, heads, skip: int = 16,
                     max_period: float | None = None) -> pd.DataFrame:
    """`assumption_summary` for each (layer, head) in `heads` (one forward in all, see `capture_head`)."""
    return pd.DataFrame([assumption_summary(capture_head(model, input_ids, layer, head, probs=False), skip, max_period)
                         for layer, head in heads])


def reaccessed_key(hd: HeadData, b: int = 0, skip: int = 16) -> int:
    """The key with the largest attention mass summed over queries t >= skip (the sink, for sink heads)."""
    return int(np.argmax(hd.probs[b, skip:].sum(0)))


def phase_term_demo(theta: np.ndarray, L: int, dominant: int, n_pairs: int = 2000, dominance: float = 3.0,
                    seed: int = 0) -> dict[str, float]:
    """Random exactly-periodic q, k (eps = 0) whose channel `dominant` is `dominance` times larger: fraction of
    (t, i) pairs where |a[t+L,i] - a[t,i]| exceeds the paper's bound (no phase term) and the full bound, and the
    mean size of each term."""
    rng = np.random.default_rng(seed)
    theta = np.asarray(theta, float)
    d = 2 * len(theta)
    q, k = rng.standard_normal((2, n_pairs, d))
    for x in (q, k):
        x[:, [dominant, dominant + d // 2]] *= dominance
    n = rng.integers(0, 4 * L, n_pairs)
    change = np.abs(theory.relative_logit(q, k, n + L, theta) - theory.relative_logit(q, k, n, theta))
    sb = theory.seasonal_bound(q, q, k, L, theta, dominant)
    return {"L": L, "delta": float(theory.resonance_mismatch(L, theta[dominant])),
            "violates_paper": float((change > sb.paper + 1e-10).mean()),
            "violates_full": float((change > sb.full + 1e-10).mean()), "change": float(change.mean()),
            "resonant_term": float(sb.resonant.mean()), "phase_term": float(sb.phase.mean())}
