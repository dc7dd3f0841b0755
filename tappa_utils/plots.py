"""Plotting helpers shared by the chapters: attention-map galleries, per-head heat maps, per-layer summaries.

The functions that gather data (`attention_maps`, `head_grid`, `head_title`, `top_heads`) are plain logic and
tested; the `plot_*` functions only draw what they are given and return the matplotlib Figure.

Readable at any number of heads and tokens: a gallery draws at most `MAX_MAPS` (48) maps (tappa-tiny's 48 heads all
fit) in rows at most `MAX_WIDTH` inches wide, with labelled query/key axes, one colourbar and no text below
`MIN_FONT` points; a map over `DISPLAY_MAX` tokens is max-pooled (`max_pool_map`), so a one-token sink stays visible;
a per-head heat map drops its cell labels and keeps a bounded size beyond `ANNOTATE_MAX_HEADS` heads per layer or
`ANNOTATE_MAX_CELLS` cells; `plot_layer_summary` shows each metric's per-layer mean and range, which stays one
line per metric whether a layer has 4 heads or 32; `top_heads` picks the heads worth drawing.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .capture import capture

MAX_MAPS = 48
MAX_WIDTH = 11.0  # inches: a gallery wider than the page would shrink its text below MIN_FONT
DISPLAY_MAX = 128  # display cells per axis of one attention map (longer maps are max-pooled)
MIN_FONT = 9  # points, at the figure's saved size
ANNOTATE_MAX_HEADS = 16
ANNOTATE_MAX_CELLS = 160


def attention_maps(model, input_ids: torch.Tensor, layers: Iterable[int] | int | None = None,
                   window: int = 0, max_tokens: int | None = None) -> dict[tuple[int, int], np.ndarray]:
    """{(layer, head): (T, T) attention probabilities} of one sequence (row `window` of `input_ids`).

    Runs one forward with `capture` in streaming mode, so only one layer's attention is alive at a time. With
    `max_tokens`, only the first `max_tokens` tokens are fed: under causal attention their (max_tokens x max_tokens)
    block is the same as in the full sequence, and the maps of a long context cost no more than the crop.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, T), got shape {tuple(input_ids.shape)}")
    if not 0 <= window < input_ids.shape[0]:
        raise IndexError(f"window {window} is out of range: input_ids has {input_ids.shape[0]} rows")
    ids = input_ids[window : window + 1, :max_tokens].to(next(model.parameters()).device)

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


def top_heads(df, metric: str, n: int = MAX_MAPS, ascending: bool = False):
    """The `n` rows of a per-head table with the highest `metric` (lowest with `ascending`), best first."""
    if metric not in df.columns:
        raise KeyError(f"column {metric!r} is not in the table; available: {', '.join(map(str, df.columns))}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return df.sort_values(metric, ascending=ascending, kind="stable").head(n)


def gallery_shape(n: int, ncols: int | None = None) -> tuple[int, int]:
    """(rows, cols) of a gallery of n panels; ncols defaults to ceil(sqrt(n))."""
    if n < 1:
        raise ValueError("a gallery needs at least one map")
    ncols = ncols or math.ceil(math.sqrt(n))
    return math.ceil(n / ncols), ncols


def max_pool_map(m: np.ndarray, size: int = DISPLAY_MAX) -> np.ndarray:
    """Downsample a (T, S) map to at most `size` x `size` cells, each the MAX of its block of queries x keys.

    Max, not mean or stride: a key that takes all the mass (a 1-token sink) stays a full-height column at any T,
    where averaging would dim it by the block width and striding could skip it. Maps that fit are returned as is.
    """
    m = np.asarray(m, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"a map must be 2-D (queries x keys), got shape {m.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    for axis in (0, 1):
        block = pool_block(m.shape[axis], size)
        if block > 1:
            m = np.maximum.reduceat(m, np.arange(0, m.shape[axis], block), axis=axis)
    return m


def pool_block(n: int, size: int = DISPLAY_MAX) -> int:
    """Tokens per display cell when `n` tokens are max-pooled to at most `size` cells."""
    return max(1, math.ceil(n / size))


def position_ticks(n: int, count: int = 3) -> list[int]:
    """A few round token positions in [0, n): 0 first, then multiples of a 1-2-5 step (e.g. 0, 50, 100 for 128)."""
    if n <= 1:
        return [0]
    raw = (n - 1) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(k * mag for k in (1, 2, 5, 10) if k * mag >= raw * 0.7)
    step = max(1, int(step))
    return list(range(0, n, step))


def plot_attention_gallery(maps: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int | None = None,
                           panel_size: float = 2.6, power: float = 0.5, max_tokens: int | None = None,
                           suptitle: str | None = None, cmap: str = "magma", max_maps: int = MAX_MAPS,
                           max_width: float = MAX_WIDTH, display_max: int = DISPLAY_MAX):
    """Draw attention maps (each (T, T), query rows, key columns) in a grid and return the Figure.

    Every panel is in token positions: "query position t" down, "key position j" across, a few ticks; one
    colourbar serves the whole gallery (colour = p**`power`, so that small probabilities stay visible). A map
    longer than `display_max` tokens is max-pooled (`max_pool_map`) to at most `display_max` x `display_max`
    cells, so a one-key sink stays a visible column at any T (the colourbar label says so). `max_tokens` crops
    every map to its first queries/keys. The grid is at most `max_width` inches wide (more rows, never smaller
    panels), and all text is at least `MIN_FONT` points. At most `max_maps` maps are drawn (the first ones: pass
    them best first, e.g. through `top_heads`); the title then says how many were left out.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    maps = list(maps)
    if titles is not None and len(titles) != len(maps):
        raise ValueError(f"got {len(maps)} maps but {len(titles)} titles")
    total = len(maps)
    if total > max_maps:
        maps, titles = maps[:max_maps], (None if titles is None else list(titles)[:max_maps])
        note = f"first {max_maps} of {total} maps"
        suptitle = f"{suptitle} ({note})" if suptitle else note
        ncols = None if ncols is None or ncols > max_maps else ncols
    maps = [np.asarray(m, dtype=float) for m in maps]
    for m in maps:
        if m.ndim != 2:
            raise ValueError(f"each map must be 2-D (queries x keys), got shape {m.shape}")
    if maps:
        ncols = min(ncols or gallery_shape(len(maps))[1], max(1, int(max_width // panel_size)))
    rows, cols = gallery_shape(len(maps), ncols)
    wrap = max(12, int(panel_size * 72 / (0.62 * (MIN_FONT + 1))))  # characters of a title line that fit a panel
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size * cols + 1.0, panel_size * rows * 1.15 + 0.4),
                             squeeze=False, layout="constrained")
    norm = PowerNorm(gamma=power, vmin=0.0, vmax=1.0)
    blocks, image, panels = set(), None, []
    for i, ax in enumerate(axes.flat):
        if i >= len(maps):
            ax.axis("off")
            continue
        m = maps[i] if max_tokens is None else maps[i][:max_tokens, :max_tokens]
        t_len, s_len = m.shape
        blocks.add((pool_block(t_len, display_max), pool_block(s_len, display_max)))
        image = ax.imshow(np.clip(max_pool_map(m, display_max), 0, None), cmap=cmap, norm=norm,
                          interpolation="nearest", extent=(-0.5, s_len - 0.5, t_len - 0.5, -0.5))
        frame_outside(ax, m.shape, plt.get_cmap(cmap)(0.0))
        ax.set_xticks(position_ticks(s_len))
        ax.set_yticks(position_ticks(t_len))
        ax.tick_params(labelsize=MIN_FONT, length=2)
        last_row, first_col = i + cols >= len(maps), i % cols == 0
        ax.tick_params(labelbottom=last_row, labelleft=first_col)
        if last_row:
            ax.set_xlabel("key position j", fontsize=MIN_FONT + 1)
        if first_col:
            ax.set_ylabel("query position t", fontsize=MIN_FONT + 1)
        if titles is not None:
            ax.set_title("\n".join(textwrap.fill(line, wrap) for line in str(titles[i]).split("\n")),
                         fontsize=MIN_FONT + 1)
        panels.append(ax)
    label = "attention probability p" + (f" (colour ~ p^{power:g})" if power != 1 else "")
    pooled = sorted(b for b in blocks if b != (1, 1))
    if pooled:
        sizes = ", ".join(f"{a} x {b}" for a, b in pooled)
        label += f"\neach cell: max over {sizes} tokens"
    if image is not None:
        cbar = fig.colorbar(image, ax=panels, shrink=min(0.85, 4.0 / (panel_size * rows)), aspect=25,
                            anchor=(0.0, 1.0), panchor=(1.0, 1.0))  # at the top of a tall gallery
        cbar.set_label(label, fontsize=MIN_FONT + 1)
        cbar.ax.tick_params(labelsize=MIN_FONT)
    if suptitle:
        fig.suptitle(suptitle, fontsize=MIN_FONT + 3)
    return fig


def legend_outside(ax, where: str = "right", **kwargs):
    """Draw `ax`'s legend outside the axes, so that it never covers data, in `MIN_FONT`-point text.

    `where="right"` (default) hangs it from the top right corner; `"below"` puts it under the x label, for
    twin-axis plots whose right side holds the second y axis. Other keyword arguments go to `ax.legend`.
    """
    kwargs.setdefault("fontsize", MIN_FONT)
    if where == "right":
        return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)
    if where == "below":
        height = ax.get_position().height * ax.figure.get_size_inches()[1]  # axes height in inches
        kwargs.setdefault("ncol", 2)
        return ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.7 / height), borderaxespad=0.0, **kwargs)
    raise ValueError(f"where must be 'right' or 'below', got {where!r}")


def frame_outside(ax, shape: tuple[int, ...], background) -> None:
    """Keep the first and last rows/columns of an image visible: no spines (a style's frame would cover column 0,
    where sinks are), and a margin of about 2 % in the map's zero colour around the data."""
    rows, cols = shape[-2], shape[-1]
    pad_r, pad_c = max(1.0, 0.02 * rows), max(1.0, 0.02 * cols)
    ax.set_xlim(-0.5 - pad_c, cols - 0.5 + pad_c)
    ax.set_ylim(rows - 0.5 + pad_r, -0.5 - pad_r)
    ax.set_facecolor(background)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def annotate_cells(grid_shape: tuple[int, int]) -> bool:
    """Whether a (layers x heads) heat map is small enough to print a number in every cell."""
    rows, cols = grid_shape
    return cols <= ANNOTATE_MAX_HEADS and rows * cols <= ANNOTATE_MAX_CELLS


def plot_head_heatmap(df, value: str, ax=None, cmap: str = "viridis", fmt: str = ".2f", vmin=None, vmax=None,
                      title: str | None = None, annot: bool | None = None):
    """Heat map of one per-head metric, layers as rows and heads as columns; returns the Figure.

    `annot=None` prints the values only where they stay legible (`annotate_cells`); the default figure size grows
    with the grid up to 14 x 10 inches, so 24 x 14 or 32 x 32 heads stay one readable picture.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    grid = head_grid(df, value)
    annot = annotate_cells(grid.shape) if annot is None else annot
    if ax is None:
        cell_w, cell_h = (0.8, 0.45) if annot else (0.3, 0.3)
        fig, ax = plt.subplots(figsize=(min(14.0, 1.5 + cell_w * grid.shape[1]),
                                        min(10.0, 0.8 + cell_h * grid.shape[0])))
    else:
        fig = ax.figure
    step = max(1, grid.shape[1] // 16)
    sns.heatmap(grid, ax=ax, cmap=cmap, annot=annot, fmt=fmt, vmin=vmin, vmax=vmax, cbar=True,
                annot_kws={"fontsize": 9}, xticklabels=step, yticklabels=max(1, grid.shape[0] // 32))
    ax.set_title(title or value)
    return fig


def layer_summary(df, metrics: Sequence[str]):
    """Per layer and metric: mean, min, max and the 90th percentile over the layer's heads (long format)."""
    import pandas as pd

    for m in metrics:
        if m not in df.columns:
            raise KeyError(f"column {m!r} is not in the table; available: {', '.join(map(str, df.columns))}")
    g = df.groupby("layer")[list(metrics)]
    parts = {"mean": g.mean(), "min": g.min(), "max": g.max(), "q90": g.quantile(0.9)}
    out = [t.reset_index().melt(id_vars="layer", var_name="metric", value_name=stat).set_index(["layer", "metric"])
           for stat, t in parts.items()]
    return pd.concat(out, axis=1).reset_index()


def plot_layer_summary(df, metrics: Sequence[str], title: str | None = None,
                       panel_size: tuple[float, float] = (4.0, 3.0), null=None):
    """One panel per metric: its per-layer mean over heads (line) and min-max range (band); with `null` (a per-head
    table of the random-weight null) the null's mean in grey. Readable at any number of heads."""
    import matplotlib.pyplot as plt

    summ = layer_summary(df, metrics)
    nsum = layer_summary(null, metrics) if null is not None else None
    fig, axes = plt.subplots(1, len(metrics), figsize=(panel_size[0] * len(metrics), panel_size[1]), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        s = summ[summ.metric == m]
        ax.fill_between(s.layer, s["min"], s["max"], alpha=0.25, label="min-max over heads")
        ax.plot(s.layer, s["mean"], marker="o", ms=3, label="mean")
        ax.plot(s.layer, s["q90"], ls=":", lw=1, label="90th percentile")
        if nsum is not None:
            ns = nsum[nsum.metric == m]
            ax.plot(ns.layer, ns["mean"], color="grey", ls="--", lw=1, label="null mean")
        ax.set(xlabel="layer", title=m)
    legend_outside(axes[0, -1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
