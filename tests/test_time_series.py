"""Attention as a time series: channel contributions sum to the model's logits; trajectories; variant comparisons."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tappa_utils import time_series as ts
from tappa_utils.capture import capture
from tappa_utils.rope import channel_frequencies, rope_attention_scaling


@pytest.mark.parametrize("family", ["llama", "llama3_scaled", "qwen2"])
def test_channel_contributions_sum_to_the_logits(family):
    from conftest import make_tiny_model

    model = make_tiny_model(family)
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), capture(model, layers=[1], what=("q_pre", "k_pre", "logits")) as cap:
        model(ids)
    rec = cap[1]
    theta = channel_frequencies(model)
    scale = rec.scaling * rope_attention_scaling(model) ** 2
    h = 3
    q, k = rec.q_pre[0, h], rec.k_pre[0, h // rec.kv_group]
    col = ts.channel_contributions(q, k, theta, scale, key=5, start=2)
    assert col.shape == (40 - 5, q.shape[-1] // 2)  # queries t = 5..39 (t >= key)
    np.testing.assert_allclose(col.sum(-1), rec.logits[0, h, 5:, 5].double().numpy(), rtol=1e-4, atol=1e-4)
    diag = ts.channel_contributions(q, k, theta, scale, offset=3, start=10)
    np.testing.assert_allclose(diag.sum(-1), np.array([rec.logits[0, h, t, t - 3].item() for t in range(10, 40)]),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="exactly one"):
        ts.channel_contributions(q, k, theta, key=1, offset=1)
    with pytest.raises(IndexError):
        ts.channel_contributions(q, k, theta, key=40)


def test_consecutive_cosine_and_pca():
    q = torch.ones(5, 4)
    np.testing.assert_allclose(ts.consecutive_cosine(q), 1.0)
    alt = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(ts.consecutive_cosine(alt), [-1.0, -1.0])
    with pytest.raises(ValueError):
        ts.consecutive_cosine(torch.ones(1, 4))
    rng = np.random.default_rng(0)
    line = np.outer(np.arange(20.0), rng.normal(size=6)) + 1e-6 * rng.normal(size=(20, 6))
    coords, frac = ts.pca_2d(line)
    assert coords.shape == (20, 2) and frac[0] > 0.999
    assert abs(np.corrcoef(coords[:, 0], np.arange(20))[0, 1]) > 0.999  # the first component is time itself


def test_trajectory_helpers_take_bfloat16_captures():
    """Captures keep the model's dtype; the helpers compute in float64 whatever it is (numpy has no bfloat16)."""
    q = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    k = torch.randn(12, 8, generator=torch.Generator().manual_seed(1))
    theta = 10000.0 ** (-np.arange(4) / 4)
    for got, want in ((ts.pca_2d(q.bfloat16())[1], ts.pca_2d(q.bfloat16().float())[1]),
                      (ts.consecutive_cosine(q.bfloat16()), ts.consecutive_cosine(q.bfloat16().float())),
                      (ts.channel_contributions(q.bfloat16(), k.bfloat16(), theta, key=2),
                       ts.channel_contributions(q.bfloat16().float(), k.bfloat16().float(), theta, key=2))):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _table(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(4):
        for h in range(6):
            p = rng.random()
            rows.append({"layer": layer, "head": h, "predictability": p + layer,
                         "q_sim_consecutive_pre": p + 0.01 * rng.random(),   # tracks predictability
                         "q_sim_consecutive_post": -p,                        # anti-tracks it
                         "q_sim_window_pre": rng.random(), "q_sim_window_post": rng.random()})
    return pd.DataFrame(rows)


def test_variant_agreement_and_separation():
    df = _table()
    agree = ts.variant_agreement(df)
    assert agree.shape == (4, 4) and np.allclose(np.diag(agree), 1.0)
    assert agree.loc["q_sim_consecutive_pre", "q_sim_consecutive_post"] < -0.95
    sep = ts.variant_separation(df, _table(seed=1)).set_index("variant")
    assert sep.loc["q_sim_consecutive_pre", "within_layer"] > 0.95
    assert sep.loc["q_sim_consecutive_post", "within_layer"] < -0.95
    assert "within_layer_null" in sep and np.isclose(sep.loc["q_sim_window_pre", "excess"],
                                                     sep.loc["q_sim_window_pre", "within_layer"]
                                                     - sep.loc["q_sim_window_pre", "within_layer_null"])
    with pytest.raises(KeyError):
        ts.variant_agreement(df.drop(columns="q_sim_window_post"))


def test_pick_heads():
    df = _table()
    l_hi, h_hi, l_lo, h_lo = ts.pick_heads(df, layer=2)
    sub = df[df.layer == 2]
    assert l_hi == l_lo == 2
    assert (h_hi == int(sub.loc[sub.predictability.idxmax(), "head"])
            and h_lo == int(sub.loc[sub.predictability.idxmin(), "head"]))
    with pytest.raises(ValueError, match="no heads in layer 9"):
        ts.pick_heads(df, layer=9)


def test_within_layer_spearman_removes_layer_means():
    # inside each layer y rises with x, but layers with a larger x have a smaller y: raw correlation is negative
    rows = []
    for layer in range(3):
        for h in range(4):
            rows.append({"layer": layer, "x": 10 * layer + h, "y": -10 * layer + h + 0.1 * (h % 2)})
    df = pd.DataFrame(rows)
    assert df["x"].corr(df["y"], method="spearman") < 0
    assert ts.within_layer_spearman(df, "x", "y") > 0.9
    df["y2"] = -df["y"]
    assert ts.within_layer_spearman(df, "x", "y2") < -0.9
    assert math.isnan(ts.within_layer_spearman(df.head(2), "x", "y"))
    with pytest.raises(KeyError, match="nope"):
        ts.within_layer_spearman(df, "x", "nope")


def _heads_with(variant_signal: dict[str, float], n_layers: int = 4, n_heads: int = 6, seed: int = 0):
    """A per-head table where each q-sim variant tracks predictability with the given strength (0: noise)."""
    rng = np.random.default_rng(seed)
    n = n_layers * n_heads
    pred = rng.uniform(0, 1, n)
    df = pd.DataFrame({"layer": np.repeat(np.arange(n_layers), n_heads), "head": np.tile(np.arange(n_heads), n_layers),
                       "predictability": pred})
    for v in ts.QSIM_VARIANTS:
        w = variant_signal.get(v, 0.0)
        df[v] = w * pred + (1 - w) * rng.uniform(0, 1, n)
    return df


def test_choose_qsim_variant_picks_the_variant_that_beats_its_null():
    # window_post tracks predictability on the model but not on the null; consecutive_post tracks it on both
    # (mechanical): the excess criterion must pick window_post, although consecutive_post correlates as well.
    trained = _heads_with({"q_sim_window_post": 0.9, "q_sim_consecutive_post": 0.9}, seed=1)
    null = _heads_with({"q_sim_consecutive_post": 0.9}, seed=2)
    scores = ts.qsim_scores(trained, null)
    assert scores["q_sim_window_post"] > 0.5 and abs(scores["q_sim_consecutive_post"]) < 0.3
    assert ts.choose_qsim_variant(trained, null) == "q_sim_window_post"
    # swapping the roles of model and null changes the choice: the null matters
    assert ts.choose_qsim_variant(null, trained) != "q_sim_window_post"
    # no finite score (one head per layer): the documented default
    one = _heads_with({}, n_layers=5, n_heads=1)
    assert ts.choose_qsim_variant(one, one) == ts.DEFAULT_QSIM


def test_qsim_choice_record_round_trip(tmp_path):
    import json

    trained = _heads_with({"q_sim_window_pre": 0.95}, seed=3)
    null = _heads_with({}, seed=4)
    rec = ts.qsim_choice_record(trained, null, range(4), model="m", seq_len=64)
    assert rec["variant"] == "q_sim_window_pre" and rec["calibration_windows"] == [0, 1, 2, 3]
    assert rec["score"] == rec["scores"]["q_sim_window_pre"] == max(rec["scores"].values())
    (tmp_path / ts.QSIM_CHOICE_FILE).write_text(json.dumps(rec))
    assert ts.load_qsim_choice(tmp_path)["variant"] == "q_sim_window_pre"
    assert ts.load_qsim_choice(tmp_path / "absent") is None
    (tmp_path / "bad.json").write_text(json.dumps({"variant": "cosine"}))
    with pytest.raises(ValueError, match="not a q-sim choice"):
        ts.load_qsim_choice(tmp_path / "bad.json")
