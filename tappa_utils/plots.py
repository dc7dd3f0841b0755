"""Plotting helpers shared by the chapters: attention-map galleries, per-head heat maps, head labels.

The functions that gather data (`attention_maps`, `head_grid`, `head_title`) are plain logic and tested; the
`plot_*` functions only draw what they are given and return the matplotlib Figure.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

from .capture import capture


def attention_maps(model, input_ids: torch.Tensor, layers: Iterable[int] | int | None = None,
                   window: int = 0) -> dict[tuple[int, int], np.ndarray]:
    """{(layer, head): (T, T) attention probabilities} of one sequence (row `window` of `input_ids`).

    Runs one forward with `capture` in streaming mode, so only one layer's attention is alive at a time.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, T), got shape {tuple(input_ids.shape)}")
    if not 0 <= window < input_ids.shape[0]:
        raise IndexError(f"window {window} is out of range: input_ids has {input_ids.shape[0]} rows")
    ids = input_ids[window : window + 1].to(next(model.parameters()).device)

    def keep(rec):
        return rec.probs[0].float().cpu().numpy()

    with torch.no_grad(), capture(model, layers, what=("probs",), reducer=keep) as cap:
        model(ids)
    return {(layer, h): cap[layer][h] for layer in cap.layers() for h in range(cap[layer].shape[0])}


def head_title(row, metrics: Sequence[str] = ("sink_mass", "diag_mass", "predictability")) -> str:
    """A short title for one head: 'L2 H1 diagonal' then the chosen metrics, e.g. 'sink .05 diag .61 pred .42'."""
    short = {"sink_mass": "sink", "diag_mass": "diag", "predictability": "pred", "q_sim_consecutive_pre": "qsim",
             "q_sim_consecutive_post": "qsim+", "q_sim_window_pre": "wsim", "q_sim_window_post": "wsim+",
             "period_strength": "per"}
    head = f"L{int(row['layer'])} H{int(row['head'])}"
    if "pattern" in row and isinstance(row["pattern"], str):
        head += f" {row['pattern']}"
    parts = []
    for m in metrics:
        v = float(row[m])
        label = short.get(m, m)
        if m == "diag_mass" and "diag_offset" in row:
            label = f"diag@{int(row['diag_offset'])}"
        parts.append(f"{label} {v:.2f}")
    return head + "\n" + " ".join(parts)


def head_grid(df, value: str, index: str = "layer", columns: str = "head"):
    """Pivot a per-head table to a (layers x heads) DataFrame of `value` (mean if a cell has several rows)."""
    for col in (index, columns, value):
        if col not in df.columns:
            raise KeyError(f"column {col!r} is not in the table; available: {', '.join(map(str, df.columns))}")
    return df.pivot_table(index=index, columns=columns, values=value, aggfunc="mean").sort_index()


def gallery_shape(n: int, ncols: int | None = None) -> tuple[int, int]:
    """(rows, cols) of a gallery of n panels; ncols defaults to ceil(sqrt(n))."""
    if n < 1:
        raise ValueError("a gallery needs at least one map")
    ncols = ncols or math.ceil(math.sqrt(n))
    return math.ceil(n / ncols), ncols


def plot_attention_gallery(maps: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int | None = None,
                           panel_size: float = 2.2, power: float = 0.5, max_tokens: int | None = None,
                           suptitle: str | None = None, cmap: str = "magma"):
    """Draw attention maps (each (T, T), query rows, key columns) in a grid and return the Figure.

    `power` < 1 brightens small probabilities (colour = p**power) so that stripes stay visible; `max_tokens`
    crops every map to its first queries/keys.
    """
    import matplotlib.pyplot as plt

    maps = [np.asarray(m, dtype=float) for m in maps]
    if titles is not None and len(titles) != len(maps):
        raise ValueError(f"got {len(maps)} maps but {len(titles)} titles")
    for m in maps:
        if m.ndim != 2:
            raise ValueError(f"each map must be 2-D (queries x keys), got shape {m.shape}")
    rows, cols = gallery_shape(len(maps), ncols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size * cols, panel_size * rows * 1.12), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(maps):
            ax.axis("off")
            continue
        m = maps[i] if max_tokens is None else maps[i][:max_tokens, :max_tokens]
        ax.imshow(np.clip(m, 0, None) ** power, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_head_heatmap(df, value: str, ax=None, cmap: str = "viridis", fmt: str = ".2f", vmin=None, vmax=None,
                      title: str | None = None, annot: bool = True):
    """Heat map of one per-head metric, layers as rows and heads as columns; returns the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    grid = head_grid(df, value)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.8 * grid.shape[1], 0.8 + 0.45 * grid.shape[0]))
    else:
        fig = ax.figure
    sns.heatmap(grid, ax=ax, cmap=cmap, annot=annot, fmt=fmt, vmin=vmin, vmax=vmax, cbar=True,
                annot_kws={"fontsize": 7})
    ax.set_title(title or value)
    return fig
