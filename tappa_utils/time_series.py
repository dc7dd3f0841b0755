"""Attention as a time series: channel-by-channel logits over t, query trajectories, q-similarity variants compared.

Used by the chapter "Attention as a time series"; every function is a plain computation on captured tensors or on
the per-head table of `tappa_utils.metrics.analyze_heads`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .metrics import QSIM_VARIANTS  # re-exported: chapter 2 reads `time_series.QSIM_VARIANTS`
from .rope import channel_logits


def channel_contributions(q_pre: torch.Tensor, k_pre: torch.Tensor, theta, scale: float = 1.0,
                          key: int | None = None, offset: int | None = None, start: int = 0) -> np.ndarray:
    """Per-channel contributions to one head's logit, for every query t >= start: array (T', d/2).

    q_pre: (T, d) pre-RoPE queries of the head; k_pre: (T, d) pre-RoPE keys of its KV head. Give exactly one of
    `key` (a fixed key j: a column of the attention map, e.g. 0 for the sink) or `offset` (the key j = t - offset:
    a diagonal). Row i is for query t = start + i (queries with j > t or j < 0 are dropped). Each row sums to the
    logit a[t, j] * `scale` as the model computes it.
    """
    if (key is None) == (offset is None):
        raise ValueError("give exactly one of key (a fixed key position) or offset (key = t - offset)")
    if q_pre.dim() != 2 or k_pre.dim() != 2 or q_pre.shape != k_pre.shape:
        raise ValueError(f"q_pre and k_pre must both be (T, d) of one head, got {tuple(q_pre.shape)} and "
                         f"{tuple(k_pre.shape)}")
    T = q_pre.shape[0]
    if key is not None:
        if not 0 <= key < T:
            raise IndexError(f"key {key} is out of range 0..{T - 1}")
        t = torch.arange(max(start, key), T)
        j = torch.full_like(t, key)
    else:
        if not 0 <= offset < T:
            raise IndexError(f"offset {offset} is out of range 0..{T - 1}")
        t = torch.arange(max(start, offset), T)
        j = t - offset
    return channel_logits(q_pre[t], k_pre[j], t, j, theta, scale).cpu().numpy()


def consecutive_cosine(q: torch.Tensor) -> np.ndarray:
    """cos(q_t, q_{t+1}) for t = 0..T-2 of a (T, d) query sequence."""
    if q.dim() != 2 or q.shape[0] < 2:
        raise ValueError(f"q must be (T, d) with T >= 2, got shape {tuple(q.shape)}")
    q = q.double()
    return torch.nn.functional.cosine_similarity(q[:-1], q[1:], dim=-1).cpu().numpy()


def pca_2d(x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (T, d) vectors on their first two principal components:
    ((T, 2) coordinates, explained fractions (2,))."""
    x = x.detach().double().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=float)  # any dtype (bf16)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be (T, d) with T >= 2, got shape {x.shape}")
    xc = x - x.mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s**2
    frac = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    coords = xc @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        frac = np.pad(frac, (0, 2 - len(frac)))
    return coords, frac


def variant_agreement(df: pd.DataFrame, variants: Sequence[str] = QSIM_VARIANTS) -> pd.DataFrame:
    """Spearman rank correlations between q-similarity variants across all heads (a variants x variants table)."""
    missing = [v for v in variants if v not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the table")
    return df[list(variants)].corr(method="spearman")


def within_layer_spearman(df: pd.DataFrame, x: str, y: str, layer: str = "layer") -> float:
    """Spearman correlation of columns x and y across heads after removing each layer's mean from both.

    NaN when fewer than 3 heads or a column is constant.
    """
    for col in (x, y, layer):
        if col not in df.columns:
            raise KeyError(f"column {col!r} is not in the table")
    sub = df[[layer, x, y]].dropna()
    if len(sub) < 3:
        return float("nan")
    rx = sub[x] - sub.groupby(layer)[x].transform("mean")
    ry = sub[y] - sub.groupby(layer)[y].transform("mean")
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(rx.corr(ry, method="spearman"))


def variant_separation(trained: pd.DataFrame, null: pd.DataFrame | None = None,
                       variants: Sequence[str] = QSIM_VARIANTS, target: str = "predictability") -> pd.DataFrame:
    """How well each q-similarity variant ranks heads by `target`: one row per variant.

    Columns: within-layer Spearman (each layer's mean removed) and across-all-heads Spearman for the trained
    model, the same for the random-weight null when given, and `excess` = trained - null (within layers).
    """
    rows = []
    for v in variants:
        row = {"variant": v, "within_layer": within_layer_spearman(trained, v, target),
               "all_heads": float(trained[v].corr(trained[target], method="spearman"))}
        if null is not None:
            row["within_layer_null"] = within_layer_spearman(null, v, target)
            row["all_heads_null"] = float(null[v].corr(null[target], method="spearman"))
            row["excess"] = row["within_layer"] - row["within_layer_null"]
        rows.append(row)
    return pd.DataFrame(rows)


def pick_heads(df: pd.DataFrame, layer: int | None = None, by: str = "predictability") -> tuple[int, int, int, int]:
    """(layer, head) of the most and of the least `by` head, within `layer` if given: (l_hi, h_hi, l_lo, h_lo)."""
    sub = df if layer is None else df[df["layer"] == layer]
    if sub.empty:
        raise ValueError(f"no heads in layer {layer}; layers available: {sorted(df['layer'].unique())}")
    hi, lo = sub.loc[sub[by].idxmax()], sub.loc[sub[by].idxmin()]
    return int(hi["layer"]), int(hi["head"]), int(lo["layer"]), int(lo["head"])


# ----------------------------------------------------------------------------------------------------------------
# choosing the q-similarity variant on calibration windows (chapter 2), tested on held-out windows (chapter 3)

DEFAULT_QSIM = "q_sim_consecutive_pre"  # the paper's description (consecutive queries, before RoPE)
QSIM_CHOICE_FILE = "qsim_choice.json"
QSIM_CRITERION = ("within-layer Spearman(variant, predictability) on the model minus the same on its random-weight "
                  "null (`variant_separation`'s `excess`), on calibration windows; the largest wins, ties in "
                  "QSIM_VARIANTS order")


def qsim_scores(heads_calib: pd.DataFrame, null_calib: pd.DataFrame,
                variants: Sequence[str] = QSIM_VARIANTS, target: str = "predictability") -> dict[str, float]:
    """{variant: excess} (`QSIM_CRITERION`) from per-head tables of the model and of its null on calibration windows."""
    sep = variant_separation(heads_calib, null_calib, variants, target)
    return {r.variant: float(r.excess) for r in sep.itertuples()}


def choose_qsim_variant(heads_calib: pd.DataFrame, null_calib: pd.DataFrame,
                        variants: Sequence[str] = QSIM_VARIANTS, target: str = "predictability") -> str:
    """The q-similarity variant that separates predictable from unpredictable heads best beyond the null.

    `heads_calib`, `null_calib`: `metrics.analyze_heads` tables of the model and of its random-weight null on
    *calibration* windows (the variant is then tested on other, held-out windows). Criterion: `QSIM_CRITERION`.
    When no variant has a finite score (e.g. one head per layer), `DEFAULT_QSIM` is returned.

    >>> import pandas as pd
    >>> t = pd.DataFrame({"layer": [0] * 4, "predictability": [.1, .2, .3, .4], "a": [1, 2, 3, 4], "b": [4, 1, 3, 2]})
    >>> n = pd.DataFrame({"layer": [0] * 4, "predictability": [.1, .2, .3, .4], "a": [1, 3, 2, 4], "b": [2, 1, 4, 3]})
    >>> choose_qsim_variant(t, n, variants=("a", "b"))
    'a'
    """
    scores = qsim_scores(heads_calib, null_calib, variants, target)
    finite = [(s, -i, v) for i, (v, s) in enumerate(scores.items()) if np.isfinite(s)]
    return max(finite)[2] if finite else DEFAULT_QSIM


def qsim_choice_record(heads_calib: pd.DataFrame, null_calib: pd.DataFrame, calibration_windows: Sequence[int],
                       **meta) -> dict:
    """The record chapter 2 writes to `<out_dir>/qsim_choice.json`: {"variant", "calibration_windows", "score",
    "scores", "criterion", ...meta} (meta: model, seq_len, text_file, ... so chapter 3 can pick other windows)."""
    scores = qsim_scores(heads_calib, null_calib)
    variant = choose_qsim_variant(heads_calib, null_calib)
    return {"variant": variant, "calibration_windows": [int(w) for w in calibration_windows],
            "score": scores.get(variant, float("nan")), "scores": scores, "criterion": QSIM_CRITERION, **meta}


def load_qsim_choice(path) -> dict | None:
    """Chapter 2's `qsim_choice.json` (a file or the folder holding it), or None when absent. A file without a known
    variant is a clear error."""
    import json
    from pathlib import Path

    p = Path(path)
    p = p / QSIM_CHOICE_FILE if p.is_dir() else p
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    if rec.get("variant") not in QSIM_VARIANTS or "calibration_windows" not in rec:
        raise ValueError(f"{p}: not a q-sim choice (needs 'variant' in {', '.join(QSIM_VARIANTS)} and "
                         "'calibration_windows'); re-run chapter 02_time_series")
    return rec
