"""Chapter 4: re-access / vertical stripes (sinks): low-frequency share, alignment, column stability."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import theory
from .assumptions import reaccessed_key
from .head import HeadData

# ---------------------------------------------------------------------------------------------------------------
# chapter 4: re-access / vertical
# ---------------------------------------------------------------------------------------------------------------


def low_frequency_mask(theta: np.ndarray, period: float) -> np.ndarray:
    """Channels whose period 2 pi / theta_m is at least `period` tokens (they turn less than once over it)."""
    return 2 * np.pi / np.asarray(theta, float) >= period


def column_channel_contributions(hd: HeadData, key: int, b: int = 0, skip: int = 0) -> np.ndarray:
    """(T', d/2) per-channel contributions to a[t, key] for t >= max(key, skip) (they sum to the logit)."""
    ts = np.arange(max(key, skip), hd.q.shape[1])
    zq, zk = theory._c(hd.q[b, ts]), theory._c(hd.k[b, key])
    return hd.scale * np.real(zq * np.conj(zk) * np.exp(1j * (ts - key)[:, None] * hd.theta))


def low_frequency_share(hd: HeadData, key: int, period: float, b: int = 0, skip: int = 0) -> float:
    """Share of |contributions| to the logits on `key` carried by channels with period >= `period`."""
    c = np.abs(column_channel_contributions(hd, key, b, skip))
    low = low_frequency_mask(hd.theta, period)
    return float(c[:, low].sum() / c.sum())


def key_alignment(hd: HeadData, key: int, b: int = 0, skip: int = 0) -> float:
    """Mean over t >= max(key, skip) of a[t,key] / sum_m |q_t^m||k^m|: 1 when every channel of the rotated query
    points at the key (the "small angle" assumption), about 0 for unrelated directions."""
    c = column_channel_contributions(hd, key, b, skip)
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




# ---------------------------------------------------------------------------------------------------------------
# chapter 4 claims: the vertical heads, per (head, window) measurements, wording of key 0
# ---------------------------------------------------------------------------------------------------------------


def vertical_strength(heads: pd.DataFrame) -> pd.Series:
    """max(sink_mass, column_mass) per head: the attention one fixed key receives (key 0 or any re-accessed key)."""
    for c in ("sink_mass", "column_mass"):
        if c not in heads.columns:
            raise KeyError(f"column {c!r} missing from the head table (use metrics.analyze_heads)")
    return heads[["sink_mass", "column_mass"]].max(axis=1)


def first_key_label(tokenizer, input_ids) -> str:
    """How to name key 0 of these windows in prose: the BOS token when the tokenizer has one and every window starts
    with it (e.g. 'key 0 (the BOS token `<s>`)'), else 'key 0 (the first token of each window; this tokenizer adds
    no BOS)' (Qwen's tokenizers have none)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    first = np.asarray(input_ids)[:, 0]
    if bos is not None and (first == bos).all():
        tok = getattr(tokenizer, "bos_token", None)
        return f"key 0 (the BOS token `{tok}`)" if tok else "key 0 (the BOS token)"
    if bos is None:
        return "key 0 (the first token of each window; this tokenizer adds no BOS)"
    return "key 0 (the first token of each window, not BOS)"


def vertical_windows(hd: HeadData, period: float, skip: int = 16, n_baseline_keys: int = 32,
                     seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """Per window of one head: the re-accessed key and the chapter's measurements on it against ordinary keys.

    Returns (rows, steps, c_key, c_base): one row per window with `key`, `low_freq_share` / `baseline_share`
    (`low_frequency_share` on the key / mean over `n_baseline_keys` random ordinary keys in [skip, T/2)),
    `alignment` / `baseline_alignment` (`key_alignment`), `column_ratio` (the key's mean column change over the
    median column's, `column_change`), `holds_chord` (fraction of steps where the chord bound holds: true by proof),
    `change`, `bound_chord`, `looseness` (mean change / mean chord bound), `rotation_vs_arc`; the `column_steps` of
    every window; and the mean |contribution| per channel on the key and on the ordinary keys (d/2,)."""
    if hd.probs is None or hd.logits is None:
        raise ValueError("vertical_windows needs the head's probabilities: capture_head(..., probs=True)")
    T = hd.q.shape[1]
    if T // 2 <= skip:
        raise ValueError(f"seq_len {T} leaves no ordinary keys in [skip={skip}, T/2); use seq_len > {2 * skip}")
    rng = np.random.default_rng(seed)
    rows, steps, c_key, c_base = [], [], [], []
    for b in range(hd.q.shape[0]):
        key = reaccessed_key(hd, b, skip)
        others = rng.choice(np.arange(skip, T // 2), size=min(n_baseline_keys, T // 2 - skip), replace=False)
        s = column_steps(hd, key, b, skip).assign(window=b, key=key)
        cc = column_change(hd, b, skip)
        base_c = [np.abs(column_channel_contributions(hd, int(j), b, int(j))).mean(0) for j in others]
        c_key.append(np.abs(column_channel_contributions(hd, key, b, skip)).mean(0))
        c_base.append(np.mean(base_c, 0))
        rows.append({"window": b, "key": key, "low_freq_share": low_frequency_share(hd, key, period, b, skip),
                     "baseline_share": float(np.mean([low_frequency_share(hd, int(j), period, b, int(j))
                                                      for j in others])),
                     "alignment": key_alignment(hd, key, b, skip),
                     "baseline_alignment": float(np.mean([key_alignment(hd, int(j), b, int(j)) for j in others])),
                     "column_ratio": float(cc[key] / np.nanmedian(np.delete(cc, key))),
                     "holds_chord": float((s.change <= s.bound_chord + 1e-9).mean()),
                     "change": float(s.change.mean()), "bound_chord": float(s.bound_chord.mean()),
                     "looseness": float(s.change.mean() / s.bound_chord.mean()),
                     "rotation_vs_arc": float(s.rotation_term.mean() / s.rotation_bound_arc.mean())})
        steps.append(s)
    rows = pd.DataFrame(rows).assign(layer=hd.layer, head=hd.head)
    return rows, pd.concat(steps, ignore_index=True), np.mean(c_key, 0), np.mean(c_base, 0)

