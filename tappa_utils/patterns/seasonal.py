"""Chapter 6: seasonal patterns: periodic inputs, resonance with the dominant frequency."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .. import theory
from .head import HeadData, capture_head


# ---------------------------------------------------------------------------------------------------------------
# chapter 6: seasonal
# ---------------------------------------------------------------------------------------------------------------


def periodic_ids(tokenizer, text: str, period: int, seq_len: int, num_windows: int = 1, stride: int = 997
                 ) -> torch.Tensor:
    """(num_windows, seq_len) ids: BOS then a `period`-token segment of `text` repeated (window w starts at
    token w * stride of the text)."""
    if period < 1 or seq_len < 2:
        raise ValueError(f"need period >= 1 and seq_len >= 2, got period={period}, seq_len={seq_len}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    need = (num_windows - 1) * stride + period
    if len(ids) < need:
        raise ValueError(f"text too short: {len(ids)} tokens, {num_windows} windows need {need}")
    bos = tokenizer.bos_token_id
    body = seq_len - (1 if bos is not None else 0)
    rows = []
    for w in range(num_windows):
        seg = ids[w * stride : w * stride + period]
        rep = (seg * (body // period + 1))[:body]
        rows.append(([bos] if bos is not None else []) + rep)
    return torch.tensor(rows, dtype=torch.long)


def seasonal_pairs(hd: HeadData, L: int, dominant: int, b: int = 0, start: int | None = None) -> pd.DataFrame:
    """All pairs (t, i), i <= t, t >= start (default: the second period, L + 1), t + L < T: measured
    |a[t+L,i] - a[t,i]| and the bound's terms (`theory.seasonal_bound`), scaled like the logits."""
    q, k, th = hd.q[b], hd.k[b], hd.theta
    T = q.shape[0]
    start = L + 1 if start is None else start
    ts = np.arange(start, T - L)
    if len(ts) == 0:
        raise ValueError(f"no query t with start={start} and t + L < T (L={L}, T={T}); use a longer seq_len")
    tt, ii = np.meshgrid(ts, np.arange(T), indexing="ij")
    keep = ii <= tt
    tt, ii = tt[keep], ii[keep]
    a0 = theory.relative_logit(q[tt], k[ii], tt - ii, th)
    a1 = theory.relative_logit(q[tt + L], k[ii], tt + L - ii, th)
    sb = theory.seasonal_bound(q[tt], q[tt + L], k[ii], L, th, dominant)
    s = hd.scale
    return pd.DataFrame({"t": tt, "i": ii, "change": s * np.abs(a1 - a0), "bound": s * sb.full,
                         "bound_paper": s * sb.paper, "query": s * sb.query, "resonant": s * sb.resonant,
                         "phase": s * sb.phase})


def seasonal_sweep(model, tokenizer, text: str, layer: int, head: int, periods, seq_len: int, dominant: int,
                   num_windows: int = 1) -> pd.DataFrame:
    """For each period L: periodic input, then per L the mean measured change, mean bounds, the fraction of pairs
    where the full / paper bound holds, eps_q (mean |q_{t+L} - q_t| / mean |q|) and the mismatch delta of the
    dominant channel."""
    rows = []
    for L in periods:
        ids = periodic_ids(tokenizer, text, int(L), seq_len, num_windows)
        hd = capture_head(model, ids, layer, head, probs=False)
        for b in range(ids.shape[0]):
            p = seasonal_pairs(hd, int(L), dominant, b)
            q = hd.q[b]
            eq = np.linalg.norm(q[L + 1:] - q[1:-L], axis=-1).mean() / np.linalg.norm(q, axis=-1).mean()
            rows.append({"L": int(L), "window": b, "delta": float(theory.resonance_mismatch(L, hd.theta[dominant])),
                         "eps_q": float(eq), "change": p["change"].mean(), "bound": p["bound"].mean(),
                         "bound_paper": p["bound_paper"].mean(),
                         "holds_full": float((p["change"] <= p["bound"] + 1e-9).mean()),
                         "holds_paper": float((p["change"] <= p["bound_paper"] + 1e-9).mean()),
                         "phase": p["phase"].mean()})
    return pd.DataFrame(rows).groupby("L", as_index=False).mean().drop(columns="window")


def resonant_periods(theta_m: float, around: int, count: int = 9, spread: float = 0.5) -> list[int]:
    """`count` integer periods around `around` (within +-spread of it), always including round(around)."""
    if around < 2:
        raise ValueError(f"around must be >= 2, got {around}")
    lo, hi = max(2, int(math.floor(around * (1 - spread)))), int(math.ceil(around * (1 + spread)))
    vals = sorted(set(np.linspace(lo, hi, count).round().astype(int).tolist()) | {int(round(around))})
    return vals


