"""Chapter 4: re-access / vertical stripes (sinks): low-frequency share, alignment, column stability."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import theory
from .head import HeadData


# ---------------------------------------------------------------------------------------------------------------
# chapter 4: re-access / vertical
# ---------------------------------------------------------------------------------------------------------------


def low_frequency_mask(theta: np.ndarray, period: float) -> np.ndarray:
    """Channels whose period 2 pi / theta_m is at least `period` tokens (they turn less than once over it)."""
    return 2 * np.pi / np.asarray(theta, float) >= period


def channel_contributions(hd: HeadData, key: int, b: int = 0, skip: int = 0) -> np.ndarray:
    """(T', d/2) per-channel contributions to a[t, key] for t >= max(key, skip) (they sum to the logit)."""
    ts = np.arange(max(key, skip), hd.q.shape[1])
    zq, zk = theory._c(hd.q[b, ts]), theory._c(hd.k[b, key])
    return hd.scale * np.real(zq * np.conj(zk) * np.exp(1j * (ts - key)[:, None] * hd.theta))


def low_frequency_share(hd: HeadData, key: int, period: float, b: int = 0, skip: int = 0) -> float:
    """Share of |contributions| to the logits on `key` carried by channels with period >= `period`."""
    c = np.abs(channel_contributions(hd, key, b, skip))
    low = low_frequency_mask(hd.theta, period)
    return float(c[:, low].sum() / c.sum())


def key_alignment(hd: HeadData, key: int, b: int = 0, skip: int = 0) -> float:
    """Mean over t >= max(key, skip) of a[t,key] / sum_m |q_t^m||k^m|: 1 when every channel of the rotated query
    points at the key (the "small angle" assumption), about 0 for unrelated directions."""
    c = channel_contributions(hd, key, b, skip)
    ts = np.arange(max(key, skip), hd.q.shape[1])
    amp = hd.scale * (np.abs(theory._c(hd.q[b, ts])) * np.abs(theory._c(hd.k[b, key]))).sum(-1)
    return float((c.sum(-1) / amp).mean())


def column_steps(hd: HeadData, key: int, b: int = 0, skip: int = 16) -> pd.DataFrame:
    """Per step t of the column of `key`: measured |a[t+1,key] - a[t,key]|, its query and rotation terms, and the
    bounds: chord (exact per channel) and arc (theta_m, the small-angle form)."""
    q, k, th = hd.q[b], hd.k[b, key], hd.theta
    ts = np.arange(max(key, skip), q.shape[0] - 1)
    a0 = theory.relative_logit(q[ts], k, ts - key, th)
    a1 = theory.relative_logit(q[ts + 1], k, ts + 1 - key, th)
    rot = theory.relative_logit(q[ts], k, ts + 1 - key, th) - a0
    s = hd.scale
    return pd.DataFrame({
        "t": ts, "change": s * np.abs(a1 - a0), "logit": s * a0, "query_term": s * np.abs(a1 - a0 - rot),
        "rotation_term": s * np.abs(rot),
        "bound_chord": s * theory.fixed_key_step_bound(q[ts], q[ts + 1], k, th, chord=True),
        "bound_arc": s * theory.fixed_key_step_bound(q[ts], q[ts + 1], k, th, chord=False),
        "rotation_bound_chord": s * theory.rotation_term_bound(q[ts], k, th, chord=True),
        "rotation_bound_arc": s * theory.rotation_term_bound(q[ts], k, th, chord=False)})


def column_change(hd: HeadData, b: int = 0, skip: int = 16) -> np.ndarray:
    """Mean |a[t+1,j] - a[t,j]| over t >= max(j, skip) for every key j (NaN where no step exists), from the
    model's logits."""
    A = hd.logits[b]
    T = A.shape[0]
    t = np.arange(T - 1)[:, None]
    j = np.arange(T)[None, :]
    ok = (j <= t) & (t >= skip)
    with np.errstate(invalid="ignore"):
        d = np.abs(A[1:] - A[:-1])  # row t: step t -> t+1 (masked entries give NaN, dropped by `ok`)
        return np.where(ok, d, 0).sum(0) / np.where(ok.sum(0) > 0, ok.sum(0), np.nan)


