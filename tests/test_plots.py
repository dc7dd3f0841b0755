"""Plotting helpers: the data they gather (attention maps, grids, titles) and the layout they draw."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from tappa_utils import plots


def test_attention_maps_match_the_models_own_attentions(tiny_llama):
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (2, 24))
    maps = plots.attention_maps(tiny_llama, ids, window=1)
    n_layers, n_heads = tiny_llama.config.num_hidden_layers, tiny_llama.config.num_attention_heads
    assert sorted(maps) == [(l, h) for l in range(n_layers) for h in range(n_heads)]
    with torch.no_grad():
        ref = tiny_llama(ids[1:2], output_attentions=True).attentions
    for (l, h), m in maps.items():
        assert m.shape == (24, 24)
        np.testing.assert_allclose(m, ref[l][0, h].numpy(), atol=1e-5)
        np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)
        assert np.triu(m, 1).max() == 0.0  # causal


def test_attention_maps_layer_subset_and_errors(tiny_llama):
    ids = torch.randint(0, 300, (1, 16))
    assert {l for l, _ in plots.attention_maps(tiny_llama, ids, layers=[-1])} == {2}
    with pytest.raises(IndexError, match="out of range"):
        plots.attention_maps(tiny_llama, ids, window=3)
    with pytest.raises(ValueError, match="batch, T"):
        plots.attention_maps(tiny_llama, ids[0])


def _heads():
    return pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "sink_mass": [0.1, 0.2, 0.7, 0.05],
                         "diag_offset": [1, 3, 1, 2], "diag_mass": [0.6, 0.1, 0.0, 0.2],
                         "predictability": [0.8, 0.3, 0.9, 0.2], "pattern": ["diagonal", "mixed", "vertical", "mixed"]})


def test_head_grid_places_values_by_layer_and_head():
    g = plots.head_grid(_heads(), "sink_mass")
    assert g.shape == (2, 2)
    assert g.loc[1, 0] == 0.7 and g.loc[0, 1] == 0.2
    with pytest.raises(KeyError, match="not in the table"):
        plots.head_grid(_heads(), "missing")


def test_head_title_names_head_pattern_and_metrics():
    t = plots.head_title(_heads().iloc[1])
    assert t.startswith("L0 H1 mixed") and "diag@3 0.10" in t and "sink 0.20" in t and "pred 0.30" in t


@pytest.mark.parametrize("n, ncols, shape", [(24, None, (5, 5)), (24, 4, (6, 4)), (1, None, (1, 1)), (5, 2, (3, 2))])
def test_gallery_shape(n, ncols, shape):
    assert plots.gallery_shape(n, ncols) == shape


def _panels(fig):
    return [ax for ax in fig.axes if ax.axison and ax.get_label() != "<colorbar>"]


def test_gallery_draws_one_titled_panel_per_map():
    maps = [np.tril(np.ones((8, 8))) / np.arange(1, 9)[:, None] for _ in range(5)]
    titles = [f"map {i}" for i in range(5)]
    fig = plots.plot_attention_gallery(maps, titles, ncols=3, max_tokens=6)
    visible = _panels(fig)
    assert len(fig.axes) == 7 and len(visible) == 5  # 2 x 3 grid (one blank) + the colourbar
    assert [ax.get_title() for ax in visible] == titles
    assert visible[0].images[0].get_array().shape == (6, 6)
    with pytest.raises(ValueError, match="titles"):
        plots.plot_attention_gallery(maps, titles[:2])
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_attention_gallery([np.ones(4)])
    with pytest.raises(ValueError, match="at least one"):
        plots.plot_attention_gallery([])


def test_head_heatmap_has_a_row_per_layer_and_a_column_per_head():
    fig = plots.plot_head_heatmap(_heads(), "predictability", title="pred")
    ax = fig.axes[0]
    assert ax.get_title() == "pred"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2f}" for v in _heads()["predictability"])


# ---------------------------------------------------------------------------------------------------------------
# readable at hundreds of heads


def _many_heads(layers=24, heads=14, seed=0):
    rng = np.random.default_rng(seed)
    n = layers * heads
    return pd.DataFrame({"layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads), layers),
                         "sink_mass": rng.random(n), "predictability": rng.random(n)})


def test_attention_maps_max_tokens_equal_the_crop_of_the_full_maps(tiny_llama):
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(3))
    full = plots.attention_maps(tiny_llama, ids)
    crop = plots.attention_maps(tiny_llama, ids, max_tokens=16)
    for key, m in crop.items():
        assert m.shape == (16, 16)
        np.testing.assert_allclose(m, full[key][:16, :16], atol=1e-6)


def test_top_heads_orders_and_validates():
    df = _many_heads()
    top = plots.top_heads(df, "sink_mass", 5)
    assert list(top["sink_mass"]) == sorted(df["sink_mass"], reverse=True)[:5]
    assert list(plots.top_heads(df, "sink_mass", 3, ascending=True)["sink_mass"]) == sorted(df["sink_mass"])[:3]
    with pytest.raises(KeyError, match="not in the table"):
        plots.top_heads(df, "nope")


def test_gallery_is_capped_and_says_so():
    maps = [np.eye(6) for _ in range(336)]
    titles = [f"h{i}" for i in range(336)]
    fig = plots.plot_attention_gallery(maps, titles)
    visible = _panels(fig)
    assert len(visible) == plots.MAX_MAPS and visible[-1].get_title() == f"h{plots.MAX_MAPS - 1}"
    assert f"first {plots.MAX_MAPS} of 336 maps" in fig._suptitle.get_text()
    fig48 = plots.plot_attention_gallery(maps[:48], titles[:48], ncols=8)  # tappa-tiny's 48 heads: all drawn
    assert len(_panels(fig48)) == 48 and fig48._suptitle is None
    assert fig48.get_size_inches()[0] <= plots.MAX_WIDTH + 1.5  # 8 asked columns wrap to more rows


def test_head_heatmap_drops_cell_labels_and_bounds_its_size_at_scale():
    fig = plots.plot_head_heatmap(_many_heads(), "sink_mass")
    ax = fig.axes[0]
    assert len(ax.texts) == 0 and fig.get_size_inches()[0] <= 14 and fig.get_size_inches()[1] <= 10
    assert plots.annotate_cells((6, 4)) and not plots.annotate_cells((24, 14)) and not plots.annotate_cells((32, 32))
    small = plots.plot_head_heatmap(_many_heads(6, 4), "sink_mass")
    assert len(small.axes[0].texts) == 24  # tappa-tiny's grid keeps its numbers


def test_layer_summary_values_and_plot():
    df = _many_heads(3, 5)
    s = plots.layer_summary(df, ["sink_mass"]).set_index(["layer", "metric"])
    for layer in range(3):
        v = df[df.layer == layer]["sink_mass"]
        row = s.loc[(layer, "sink_mass")]
        assert row["mean"] == pytest.approx(v.mean()) and row["max"] == v.max() and row["min"] == v.min()
        assert row["q90"] == pytest.approx(v.quantile(0.9))
    fig = plots.plot_layer_summary(df, ["sink_mass", "predictability"], null=_many_heads(3, 5, seed=1))
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "sink_mass"
    with pytest.raises(KeyError):
        plots.layer_summary(df, ["missing"])


def test_gallery_leaves_key_zero_clear_of_the_frame():
    """A sink stripe (key 0) must not sit under the axes frame: the drawn map has a margin on the left and top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tappa_utils.plots import plot_attention_gallery

    m = np.tril(np.full((64, 64), 0.01))
    m[:, 0] = 1.0
    fig = plot_attention_gallery([m, m], ["a", "b"])
    ax = fig.axes[0]
    assert ax.get_xlim()[0] < -1.0 and ax.get_ylim()[1] < -1.0  # column 0 / row 0 start inside the frame
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
    bbox = ax.get_window_extent()
    x0 = int(bbox.x0) + 1 + int((1.0 + 0.5) / (ax.get_xlim()[1] - ax.get_xlim()[0]) * bbox.width)  # inside key 0
    row = img[img.shape[0] - int((bbox.y0 + bbox.y1) / 2), x0]
    assert row.mean() > 150  # key 0 is drawn bright (magma at p = 1), not the frame's colour
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# readable on the page: max-pooled maps, labelled axes, one colourbar, no small text


def test_max_pool_keeps_a_one_key_sink_in_every_row():
    T = 1024
    m = np.zeros((T, T))
    m[:, 0] = 1.0
    m[np.arange(1, T), np.arange(1, T)] = 0.3  # a weaker diagonal beside it
    pooled = plots.max_pool_map(m, 128)
    assert pooled.shape == (128, 128)
    assert (pooled[:, 0] == m.max()).all()  # key 0's column is at the maximum in every display row
    assert pooled[:, 1:].max() == pytest.approx(0.3)  # nothing else borrows the sink's value
    mean = m.reshape(128, 8, 128, 8).mean(axis=(1, 3))
    assert mean[:, 0].max() < 0.2  # what averaging would have drawn instead: the sink dimmed 8-fold


def test_max_pool_uneven_lengths_and_small_maps():
    m = np.arange(300 * 200, dtype=float).reshape(300, 200)
    pooled = plots.max_pool_map(m, 128)
    assert pooled.shape == (100, 100)  # blocks of 3 queries and 2 keys
    assert pooled[0, 0] == m[:3, :2].max() and pooled[-1, -1] == m.max()
    small = np.random.default_rng(0).random((40, 40))
    assert np.array_equal(plots.max_pool_map(small, 128), small)
    with pytest.raises(ValueError, match="2-D"):
        plots.max_pool_map(np.ones(5))
    with pytest.raises(ValueError, match="size"):
        plots.max_pool_map(small, 0)


def test_position_ticks_are_few_and_inside():
    for n in (6, 64, 128, 256, 1000, 4096):
        ticks = plots.position_ticks(n)
        assert ticks[0] == 0 and ticks[-1] < n and 2 <= len(ticks) <= 5
    assert plots.position_ticks(128) == [0, 50, 100]


def _texts(fig):
    """Every visible text of a drawn figure: titles, axis and tick labels, colourbar, suptitle."""
    import matplotlib.text

    fig.canvas.draw()
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]


def test_long_gallery_has_axes_a_colourbar_a_visible_sink_and_no_small_text():
    import matplotlib.pyplot as plt

    T = 1024
    m = np.tril(np.full((T, T), 1e-4))
    m[:, 0] = 1.0
    fig = plots.plot_attention_gallery([m] * 5, [f"L0 H{i} vertical\nsink 1.00 diag 0.00" for i in range(5)],
                                       suptitle="five sink heads")
    panels = _panels(fig)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1  # one colourbar for the whole gallery
    assert "max over 8 x 8 tokens" in bars[0].get_ylabel()
    assert panels[0].get_xlabel() == "" or panels[0].get_xlabel() == "key position j"
    assert all(ax.get_ylabel() == "query position t" for ax in panels if ax.get_subplotspec().is_first_col())
    assert all(ax.get_xlabel() == "key position j" for ax in panels[-2:])
    assert len(panels[0].get_xticks()) >= 2 and panels[0].get_xlim()[1] > T - 1  # ticks in token positions
    img = panels[0].images[0].get_array()
    assert img.shape == (128, 128) and (img[:, 0] == 1.0).all()
    small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() < plots.MIN_FONT]
    assert small == []
    assert fig.get_size_inches()[0] <= plots.MAX_WIDTH + 1.5
    plt.close(fig)


def test_layer_summary_legend_sits_outside_the_axes():
    import matplotlib.pyplot as plt

    fig = plots.plot_layer_summary(_many_heads(3, 5), ["sink_mass", "predictability"])
    fig.canvas.draw()
    legend = fig.axes[-1].get_legend()
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= fig.axes[-1].get_window_extent(renderer).x1
    assert min(t.get_fontsize() for t in legend.get_texts()) >= plots.MIN_FONT
    plt.close(fig)


@pytest.mark.parametrize("where", ["right", "below"])
def test_legend_outside_never_overlaps_the_axes(where):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax in axes:
        x = np.linspace(0, 1, 50)
        ax.plot(x, x, label="rising")
        ax.plot(x, 1 - x, label="falling")
        ax.set(xlabel="x label", ylabel="y")
    legend = plots.legend_outside(axes[0], where=where)
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in axes:  # neither its own panel nor the neighbour
        assert not box.overlaps(ax.get_window_extent(renderer))
    assert box.overlaps(fig.bbox) or where == "below"  # below may hang off the canvas: savefig(bbox_inches="tight")
    label = axes[0].xaxis.label.get_window_extent(renderer)
    assert not box.overlaps(label)
    assert min(t.get_fontsize() for t in legend.get_texts()) >= plots.MIN_FONT
    with pytest.raises(ValueError, match="where"):
        plots.legend_outside(axes[0], where="inside")
    plt.close(fig)
