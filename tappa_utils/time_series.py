"""Attention as a time series: channel-by-channel logits over t, query trajectories, q-similarity variants compared.

Used by the chapter "Attention as a time series"; every function is a plain computation on captured tensors or on
the per-head table of `tappa_utils.metrics.analyze_heads`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .rope import channel_logits

QSIM_VARIANTS = ("q_sim_consecutive_pre", "q_sim_consecutive_post", "q_sim_window_pre", "q_sim_window_post")


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
    """Project (T, d) vectors on their first two principal components: ((T, 2) coordinates, explained fractions (2,))."""
    x = np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=float)
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
