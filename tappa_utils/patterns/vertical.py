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
    """Channels whose period 2 pi / theta_m is at least `period` tokens (they turn less than once over it).

    Beware: how many channels that is depends on the RoPE base (at base 1e5 and 32 channels, 21 have a period above
    512 tokens); `slowest_channels` means the same on any base."""
    return 2 * np.pi / np.asarray(theta, float) >= period


def slowest_channels(theta: np.ndarray, k: int) -> np.ndarray:
    """Mask of the `k` channels with the smallest frequency theta_m (the longest periods): a low-frequency cut that
    means the same on any RoPE base and head size."""
    theta = np.asarray(theta, float)
    if not 1 <= int(k) < len(theta):
        raise ValueError(f"low_freq_channels must be between 1 and {len(theta) - 1} (the head has {len(theta)} "
                         f"channels), got {k}")
    mask = np.zeros(len(theta), bool)
    mask[np.argsort(theta, kind="stable")[: int(k)]] = True
    return mask


def column_channel_contributions(hd: HeadData, key: int, b: int = 0, skip: int = 0) -> np.ndarray:
    """(T', d/2) per-channel contributions to a[t, key] for t >= max(key, skip) (they sum to the logit)."""
    ts = np.arange(max(key, skip), hd.q.shape[1])
    zq, zk = theory._c(hd.q[b, ts]), theory._c(hd.k[b, key])
    return hd.scale * np.real(zq * np.conj(zk) * np.exp(1j * (ts - key)[:, None] * hd.theta))


def low_frequency_share(hd: HeadData, key: int, low: np.ndarray, b: int = 0, skip: int = 0) -> float:
    """Share of |contributions| to the logits on `key` carried by the channels of the mask `low` (d/2,), e.g.
    `slowest_channels(hd.theta, 2)`."""
    c = np.abs(column_channel_contributions(hd, key, b, skip))
    low = np.asarray(low, bool)
    if low.shape != (c.shape[1],):
        raise ValueError(f"the low-frequency mask has shape {low.shape}; the head has {c.shape[1]} channels")
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


def vertical_windows(hd: HeadData, low: np.ndarray, skip: int = 16, n_baseline_keys: int = 32,
                     seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """Per window of one head: the re-accessed key and the chapter's measurements on it against ordinary keys.

    Returns (rows, steps, c_key, c_base): one row per window with `key`, `low_freq_share` / `baseline_share`
    (`low_frequency_share` on the key / mean over `n_baseline_keys` random ordinary keys in [skip, T/2)),
    `alignment` / `baseline_alignment` (`key_alignment`), with `low` the mask of low-frequency channels
    (`slowest_channels`), `column_ratio` (the key's mean column change over the
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
        rows.append({"window": b, "key": key, "low_freq_share": low_frequency_share(hd, key, low, b, skip),
                     "baseline_share": float(np.mean([low_frequency_share(hd, int(j), low, b, int(j))
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



def alignment_gap(hd: HeadData, skip: int = 16, n_baseline_keys: int = 32, seed: int = 0) -> float:
    """Mean over windows of `key_alignment` on the re-accessed key (the argmax of attention) minus its mean over
    `n_baseline_keys` random ordinary keys in [skip, T/2): the quantity of `vertical_windows`' alignment columns.

    The key is chosen as the argmax of attention, i.e. of the logit, so on any weights it is more aligned than an
    ordinary key: compare with the same selection on random-weight draws (`sink_statistics`)."""
    if hd.probs is None:
        raise ValueError("alignment_gap needs the head's probabilities: capture_head(..., probs=True)")
    T = hd.q.shape[1]
    rng = np.random.default_rng(seed)
    gaps = []
    for b in range(hd.q.shape[0]):
        key = reaccessed_key(hd, b, skip)
        others = rng.choice(np.arange(skip, T // 2), size=min(n_baseline_keys, T // 2 - skip), replace=False)
        with np.errstate(invalid="ignore", divide="ignore"):
            base = np.nanmean([key_alignment(hd, int(j), b, int(j)) for j in others])
        gaps.append(key_alignment(hd, key, b, skip) - base)
    return float(np.mean(gaps))


def sink_statistics(model, input_ids, skip: int, threshold: float, k: int, m: int, layers=None,
                    n_baseline_keys: int = 32, seed: int = 0) -> dict[str, float]:
    """The head statistics of chapter 4's claims on one model: the same selection on a trained model and on each
    random-weight draw (`nulls.null_distribution(model, lambda net: sink_statistics(net, ...))`):

    - `top_fixed_key`: mean fixed-key mass (`head.head_masses`) of the `k` strongest heads (existence);
    - `share_vertical`: share of heads whose fixed-key mass reaches `threshold` (prevalence);
    - `alignment_gap`: mean `alignment_gap` over the `m` strongest heads (NaN when m = 0), each head's re-accessed
      key chosen by the same argmax of attention on either model (the selection-matched control)."""
    from .head import capture_head, clear_qk_capture, head_masses

    heads = head_masses(model, input_ids, skip, layers=layers)
    fk = heads.fixed_key_mass.to_numpy()
    order = np.argsort(-fk, kind="stable")
    gaps = [alignment_gap(capture_head(model, input_ids, int(heads.layer.iloc[i]), int(heads["head"].iloc[i])),
                          skip, n_baseline_keys, seed) for i in order[:m]]
    clear_qk_capture()
    return {"top_fixed_key": float(fk[order[:k]].mean()), "share_vertical": float((fk >= threshold).mean()),
            "alignment_gap": float(np.mean(gaps)) if gaps else float("nan")}
