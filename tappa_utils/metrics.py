"""The per-head analysis: every metric of `metric_defs.METRICS` on each head, streamed through query blocks.

`analyze_heads` runs one forward per window and turns each layer's queries and keys into the metrics' statistics
(`block_stats`: query blocks, never a whole T x T map), averages them over windows and takes each metric's final
step (`_finalize`: one row per head, with its pattern label). `head_metrics` does the same from captured attention
maps (one block holding every row). The definitions of the metrics, their thresholds and calibration: `metric_defs`
(re-exported here).

>>> block_rows(num_heads=9, T=512)
512
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from .capture import causal_mask
from .metric_defs import (
    HEAD_COLUMNS,
    INVALID,
    METRIC_COLUMNS,
    METRICS,
    PATTERNS,
    QSIM_VARIANTS,
    Block,
    Metric,
    MetricConfig,
    Queries,
    _check_len,
    _check_probs,
    _full_block,
    column_mass,
    concentration,
    diagonal_offset_mass,
    distance_coords,
    distance_profile,
    half_consistency,
    half_profiles,
    label_pattern,
    metric_columns,
    period_strength,
    predictability,
    predictor_sums,
    profile_length,
    q_similarity_consecutive,
    q_similarity_window,
    row_concentration,
    sink_mass,
)

__all__ = [
    "HEAD_COLUMNS", "INVALID", "METRIC_COLUMNS", "METRICS", "PATTERNS", "QSIM_VARIANTS", "BLOCK_BYTES", "Block",
    "Metric", "MetricConfig", "Queries", "analyze_heads", "attention_blocks", "attention_implementation",
    "block_rows", "block_stats",
    "calibrate_period_threshold", "column_mass", "concentration", "config_dict", "diagonal_offset_mass",
    "distance_coords", "distance_profile", "half_consistency", "half_profiles", "head_metrics", "label_pattern",
    "layer_table", "metric_columns", "null_heads", "null_quantile", "period_strength", "predictability",
    "predictor_sums", "profile_length", "q_similarity_consecutive", "q_similarity_window", "record_block_stats",
    "row_concentration", "sink_mass",
]


def _window_stats(queries: Queries, blocks: Iterable[Block], cfg: MetricConfig) -> dict[str, torch.Tensor]:
    """Every metric's per-window statistics (float64): the query metrics once, the attention metrics' block shares
    added over `blocks` (each metric with its own carry from block to block)."""
    stats: dict[str, torch.Tensor] = {}

    def add(shares: dict[str, torch.Tensor]) -> None:
        for k, v in shares.items():
            stats[k] = stats[k] + v if k in stats else v.double()

    carries: dict[str, dict] = {name: {} for name in METRICS}
    for name, m in METRICS.items():
        if m.source == "queries":
            add(m.update(queries, cfg, carries[name]))
    for block in blocks:
        for name, m in METRICS.items():
            if m.source == "attention":
                add(m.update(block, cfg, carries[name]))
    return stats


def _record_stats(record, cfg: MetricConfig) -> dict[str, torch.Tensor]:
    """Per-window statistics of one layer record's whole attention maps (one block): (B, H, ...) each."""
    for name in ("q_pre", "q_post", "probs"):
        if getattr(record, name, None) is None:
            raise ValueError(f"the layer record lacks {name}; capture with what=('q_pre', 'q_post', 'probs')")
    probs = record.probs
    _check_probs(probs)
    if probs.dim() != 4 or probs.shape[0] == 0:
        raise ValueError(f"the layer record's probs must be (batch >= 1, heads, T, T), got {tuple(probs.shape)}")
    return _window_stats(Queries(record.q_pre, record.q_post), [_full_block(probs, cfg.skip)], cfg)


def _finalize(layer: int, kv_group: int, means: dict[str, torch.Tensor], cfg: MetricConfig) -> list[dict[str, Any]]:
    """Per-head rows from window-averaged statistics: every metric's final step, then the pattern label."""
    cols: dict[str, list] = {}
    for m in METRICS.values():
        out = m.final(means, cfg)
        for c in m.columns:
            cols[c] = out[c].tolist()
    rows = []
    for h in range(len(next(iter(cols.values())))):
        row: dict[str, Any] = {"layer": int(layer), "head": h, "kv_head": h // kv_group}
        row.update({c: v[h] for c, v in cols.items()})
        row["pattern"] = label_pattern(row["sink_mass"], row["column_mass"], row["diag_mass"],
                                       row["period_strength"], row["predictability"], cfg, row["concentration"])
        rows.append(row)
    return rows


def head_metrics(record, cfg: MetricConfig | None = None) -> list[dict[str, Any]]:
    """One dict per query head of a `LayerRecord` (needs q_pre, q_post, probs), averaged over its batch rows."""
    cfg = cfg or MetricConfig()
    stats = _record_stats(record, cfg)
    means = {k: v.mean(0) for k, v in stats.items()}
    return _finalize(record.layer, record.kv_group, means, cfg)


# ----------------------------------------------------------------------------------------------------------------
# the streaming path: per-head statistics through query blocks, never a full T x T map

BLOCK_BYTES = 2**26  # float32 logits of one query block (all heads): 64 MB
MASKED = -1e30  # logit of a masked key: finite, so its 0 probability times its logit is 0 in the entropy


def block_rows(num_heads: int, T: int, batch: int = 1, block_bytes: int = BLOCK_BYTES) -> int:
    """Queries per block so that one block's float32 logits (batch x heads x rows x T) fit in `block_bytes`."""
    return max(1, min(T, block_bytes // max(1, 4 * batch * num_heads * T)))


def attention_blocks(q_post: torch.Tensor, k_post: torch.Tensor, scaling: float, skip: int,
                     sliding_window: int | None = None, rows: int | None = None) -> Iterator[Block]:
    """The attention rows skip..T-1 of q (B, H, T, D) and post-RoPE k (B, H_kv, T, D) as `Block`s of `rows`
    queries (default: `block_rows`), float32 like the model's eager attention, each made when asked for.

    The entropy comes from the logits, shifted to a row maximum of 0 (x <= 0): log A[t, j] = x_j - log sum exp x =
    x_j + log max_j A[t, j], so H = -log max_j A[t, j] - sum_j A[t, j] x_j, with no logarithm over the block."""
    B, H, T, D = q_post.shape
    Hkv = k_post.shape[1]
    group = H // Hkv
    rows = rows or block_rows(H, T, B)
    dev = q_post.device
    kT = k_post.float().transpose(-1, -2)  # (B, Hkv, D, T)
    qg = q_post.float().reshape(B, Hkv, group, T, D)
    for t0 in range(skip, T, rows):
        t1 = min(T, t0 + rows)
        b = t1 - t0
        logits = torch.matmul(qg[..., t0:t1, :].reshape(B, Hkv, group * b, D), kT[..., :t1]).reshape(B, H, b, t1)
        logits.mul_(scaling)
        logits.masked_fill_(~causal_mask(b, dev, sliding_window, offset=t0), MASKED)
        logits.sub_(logits.amax(-1, keepdim=True))
        p = torch.softmax(logits, dim=-1)
        entropy = -p.amax(-1).log() - (p * logits).sum(-1)
        del logits
        yield Block(p, t0, T, entropy)


def block_stats(q_pre: torch.Tensor, q_post: torch.Tensor, k_post: torch.Tensor, scaling: float,
                cfg: MetricConfig, sliding_window: int | None = None, rows: int | None = None
                ) -> dict[str, torch.Tensor]:
    """The statistics of `_record_stats` from q (B, H, T, D) and post-RoPE k (B, H_kv, T, D), working through
    blocks of `rows` queries (default: `block_rows`).

    Every attention metric is a sum over query rows, and a row's softmax needs only that row's logits, so each block
    computes its rows' probabilities, adds its shares to the statistics, and is dropped: peak memory is one block
    (B x H x rows x T), never the layer's T x T maps. Equal to the full path on the same q/k (tests/test_capture.py).
    """
    _check_len(q_post.shape[-2], max(cfg.skip, 1))
    blocks = attention_blocks(q_post, k_post, scaling, cfg.skip, sliding_window, rows)
    return _window_stats(Queries(q_pre, q_post), blocks, cfg)
def record_block_stats(record, cfg: MetricConfig, rows: int | None = None) -> dict[str, torch.Tensor]:
    """`block_stats` of a `LayerRecord` captured with q_pre, q_post and k_post."""
    for name in ("q_pre", "q_post", "k_post"):
        if getattr(record, name, None) is None:
            raise ValueError(f"the layer record lacks {name}; capture with what=('q_pre', 'q_post', 'k_post')")
    return block_stats(record.q_pre, record.q_post, record.k_post, record.scaling, cfg, record.sliding_window, rows)


@contextmanager
def attention_implementation(model, name: str) -> Iterator:
    """Inside the block the model runs with attention implementation `name` (e.g. "sdpa"); restored on exit."""
    old = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(old)


def analyze_heads(model, input_ids: torch.Tensor, cfg: MetricConfig | None = None,
                  layers: Iterable[int] | int | None = None, progress: bool = False, rows: int | None = None):
    """Per-head metrics table (one row per layer and head, averaged over the rows of `input_ids`).

    Bounded memory: one forward per window through the decoder only (no LM head: its T x vocab logits are not
    needed), with the model's attention switched to sdpa for that forward so the model never materialises a layer's
    attention either; a `capture` reducer turns each layer's q/k into statistics through query blocks of `rows`
    queries (`block_stats`) as soon as the layer is done. Peak extra memory: one layer's q/k plus one block
    (default 64 MB of logits), not T x T. Metrics are computed in float32/float64 whatever the model's dtype.
    """
    import pandas as pd

    from .capture import capture

    cfg = cfg or MetricConfig()
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError("input_ids must be a LongTensor of shape (num_windows, seq_len)")
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids holds no windows (shape (0, seq_len)); give at least one window")
    T = input_ids.shape[1]
    _check_len(T, cfg.skip)
    device = next(model.parameters()).device
    sums: dict[int, dict[str, torch.Tensor]] = {}
    groups: dict[int, int] = {}

    def reducer(rec):
        groups[rec.layer] = rec.kv_group
        return {k: v.sum(0).cpu() for k, v in record_block_stats(rec, cfg, rows).items()}

    windows = range(input_ids.shape[0])
    if progress:
        from tqdm.auto import tqdm

        windows = tqdm(windows, desc="windows", leave=False)
    what = ("q_pre", "q_post", "k_post")
    with torch.no_grad(), attention_implementation(model, "sdpa"), \
            capture(model, layers, what=what, reducer=reducer) as cap:
        for w in windows:
            model.model(input_ids=input_ids[w : w + 1].to(device), use_cache=False)
            for layer in cap.layers():
                stats = cap.records.pop(layer)
                acc = sums.setdefault(layer, {k: torch.zeros_like(v) for k, v in stats.items()})
                for k, v in stats.items():
                    acc[k] += v
    n = input_ids.shape[0]
    rows_out = []
    for layer in sorted(sums):
        rows_out += _finalize(layer, groups[layer], {k: v / n for k, v in sums[layer].items()}, cfg)
    return pd.DataFrame(rows_out, columns=["layer", "head", "kv_head", *metric_columns()])


def layer_table(heads_df):
    """Per-layer means of the numeric metrics, plus the number of heads and of each pattern label."""
    import pandas as pd

    numeric = [c for m in METRICS.values() for c in m.columns if c not in m.positions and c in heads_df.columns]
    out = heads_df.groupby("layer")[numeric].mean()
    out.insert(0, "n_heads", heads_df.groupby("layer").size())
    counts = pd.crosstab(heads_df["layer"], heads_df["pattern"]).reindex(columns=list(PATTERNS), fill_value=0)
    for p in PATTERNS:
        out[f"n_{p}"] = counts[p].reindex(out.index, fill_value=0).astype(int)
    return out.reset_index()


def null_heads(model, input_ids: torch.Tensor, cfg: MetricConfig | None = None, seed: int = 0,
               layers: Iterable[int] | int | None = None, progress: bool = False):
    """`analyze_heads` on the random-weight null of `model` (same architecture).

    No second model: `models.random_weights` draws random weights into the model and restores its own on exit
    (they wait in a temporary file; cost one random draw of the parameters and one write and read of the weights).
    The null is drawn with `stats.null_seed(seed)`, never with `seed` itself, so the null of a random-weight model
    built with seed `seed` is not that very model.
    """
    from .models import random_weights
    from .stats import null_seed

    with random_weights(model, null_seed(seed)):
        return analyze_heads(model, input_ids, cfg, layers, progress)


def null_quantile(models, input_ids_list, column: str, cfg: MetricConfig | None = None,
                  seeds: Iterable[int] = range(5), quantile: float = 0.99) -> dict[str, float]:
    """`column` over all heads of random-weight copies (`null_heads`, each seed) of each model: quantile, max, count.

    `models` and `input_ids_list` are parallel lists (each model with its own token ids). This is how
    `period_threshold` and `concentration_threshold` were calibrated (module docstring).
    """
    names = metric_columns()[:-1]
    if column not in names:
        raise KeyError(f"{column!r} is not a numeric metric column; choose from {', '.join(names)}")
    vals = []
    for model, ids in zip(models, input_ids_list):
        for s in seeds:
            vals.append(null_heads(model, ids, cfg, seed=s)[column].to_numpy())
    v = np.concatenate(vals).astype(np.float64)
    return {"quantile": float(np.quantile(v, quantile)), "max": float(v.max()), "n_heads": int(v.size),
            "q": quantile}


def calibrate_period_threshold(models, input_ids_list, cfg: MetricConfig | None = None, seeds: Iterable[int] = range(5),
                               quantile: float = 0.99) -> dict[str, float]:
    """`null_quantile` of period_strength (kept for the chapters that call it)."""
    return null_quantile(models, input_ids_list, "period_strength", cfg, seeds, quantile)


def config_dict(cfg: MetricConfig) -> dict[str, Any]:
    """The config as a plain dict (for summary files)."""
    return asdict(cfg)
