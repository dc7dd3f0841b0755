"""Metrics against brute-force loops, pattern labels on synthetic attention, streaming analysis, null calibration."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import FAMILIES, make_tiny_model
from tappa_utils.capture import LayerRecord, capture
from tappa_utils.metrics import (HEAD_COLUMNS, PATTERNS, MetricConfig, analyze_heads, column_mass,
                                 diagonal_offset_mass, distance_profile, head_metrics, layer_table, null_heads,
                                 period_strength, predictability, q_similarity_consecutive, q_similarity_window,
                                 sink_mass)


def _random_probs(shape, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, T, T, generator=g, dtype=torch.float64) * 2
    logits = logits.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return logits.softmax(-1)


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_q_similarity_against_loops():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 30, 8, generator=g, dtype=torch.float64) + 0.5
    cons, win = q_similarity_consecutive(q, skip=5), q_similarity_window(q, window=7)
    assert cons.shape == win.shape == (2, 3)
    for b in range(2):
        for h in range(3):
            x = q[b, h]
            want_c = np.mean([_cos(x[t], x[t + 1]) for t in range(5, 29)])
            last = x[-7:]
            want_w = np.mean([_cos(last[i], last[j]) for i in range(7) for j in range(7) if i != j])
            assert float(cons[b, h]) == pytest.approx(want_c, abs=1e-12)
            assert float(win[b, h]) == pytest.approx(want_w, abs=1e-12)
    # window longer than the sequence: all queries
    assert float(q_similarity_window(q[0, 0, :4], 32)) == pytest.approx(
        np.mean([_cos(q[0, 0, i], q[0, 0, j]) for i in range(4) for j in range(4) if i != j]), abs=1e-12)


def test_attention_metrics_against_loops():
    T, skip = 24, 5
    P = _random_probs((2, 3), T)
    sink = sink_mass(P, skip)
    off, mass = diagonal_offset_mass(P, skip, max_offset=4)
    prof = distance_profile(P, skip, max_distance=10)
    col = column_mass(P, skip)
    pred = predictability(P, skip, top_k=3)
    for b in range(2):
        for h in range(3):
            A = P[b, h].numpy()
            assert float(sink[b, h]) == pytest.approx(A[skip:, 0].mean(), abs=1e-12)
            loop_prof = [np.mean([A[t, t - d] for t in range(max(skip, d), T)]) for d in range(11)]
            np.testing.assert_allclose(prof[b, h].numpy(), loop_prof, atol=1e-12)
            best = max(range(1, 5), key=lambda d: loop_prof[d])
            assert int(off[b, h]) == best and float(mass[b, h]) == pytest.approx(loop_prof[best], abs=1e-12)
            cols = [np.mean([A[t, j] for t in range(max(skip, j), T)]) for j in range((T + skip) // 2 + 1)]
            assert float(col[b, h]) == pytest.approx(max(cols), abs=1e-12)
            start = max(skip, 3 - 1)
            jac = []
            for t in range(start, T - 1):
                s1 = set(np.argsort(-A[t])[:3])
                s2 = set(np.argsort(-A[t + 1])[:3])
                jac.append(len(s1 & s2) / len(s1 | s2))
            assert float(pred[b, h]) == pytest.approx(np.mean(jac), abs=1e-12)


def test_period_strength_finds_periods_and_ignores_smooth_and_noise():
    n = 200
    d = torch.arange(n, dtype=torch.float64)
    comb = 0.01 + (d % 7 == 0).double()
    sine = 1 + 0.8 * torch.cos(2 * math.pi * d / 12)
    smooth = 1 / (d + 3)
    noise = 1 + 0.05 * torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    per, st = period_strength(torch.stack([comb, sine, smooth, noise]))
    assert per[0] == 7 and per[1] == 12
    assert st[0] > 0.9 and st[1] > 0.9
    assert st[2] < 0.1 and st[3] < 0.1
    # too short to say anything
    per, st = period_strength(torch.ones(5, dtype=torch.float64))
    assert math.isnan(float(per)) and float(st) == 0


def _record(probs: torch.Tensor, seed: int = 0, smooth_queries: bool = False) -> LayerRecord:
    """A record around synthetic probabilities (1, H, T, T) with random queries (kv_group 2)."""
    H, T = probs.shape[1], probs.shape[-1]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, 8, generator=g)
    if smooth_queries:
        q = q.cumsum(-2)
    return LayerRecord(layer=0, q_pre=q, q_post=q, probs=probs, kv_group=2)


def _normalise(a: torch.Tensor) -> torch.Tensor:
    a = a.expand(a.shape[-1], a.shape[-1]) * torch.ones(a.shape[-1], a.shape[-1], dtype=a.dtype).tril()
    return a / a.sum(-1, keepdim=True)


def test_pattern_labels_on_synthetic_attention():
    T = 256
    t = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    eps = 1e-4
    sink = _normalise(eps + (j == 0).double())
    diag = _normalise(eps + (j == (t - 3).clamp(min=0)).double())
    periodic = _normalise(eps + ((t - j) % 8 == 0).double())
    random = _random_probs((), T, seed=3)
    probs = torch.stack([sink, diag, periodic, random])[None].float()
    rows = head_metrics(_record(probs), MetricConfig())
    assert [r["pattern"] for r in rows] == ["vertical", "diagonal", "periodic", "unpredictable"]
    assert [r["kv_head"] for r in rows] == [0, 0, 1, 1]
    assert rows[0]["sink_mass"] > 0.9
    assert rows[1]["diag_offset"] == 3 and rows[1]["diag_mass"] > 0.9
    assert rows[2]["period"] == 8 and rows[2]["period_strength"] > 0.9
    assert rows[3]["predictability"] < 0.3
    assert set(rows[0]) == set(HEAD_COLUMNS)


def test_fixed_column_other_than_zero_is_vertical_and_two_patterns_are_mixed():
    T = 128
    t = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    col = _normalise(1e-4 + (j == t.clamp(max=10)).double())  # key 10 (the newest key before it is visible)
    both = _normalise(1e-4 + (j == 0).double() + (j == (t - 1).clamp(min=0)).double())
    rows = head_metrics(_record(torch.stack([col, both])[None].float()), MetricConfig())
    assert rows[0]["sink_mass"] < 0.1 and rows[0]["pattern"] == "vertical"
    assert rows[1]["pattern"] == "mixed"


def test_analyze_heads_streams_windows_and_matches_batched_record(tiny_llama):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (3, 64), generator=g)
    cfg = MetricConfig(skip=8, top_k=4, max_distance=40)
    df = analyze_heads(tiny_llama, ids, cfg)
    assert list(df.columns) == list(HEAD_COLUMNS)
    assert len(df) == 3 * 4 and list(df["kv_head"]) == [h // 2 for h in range(4)] * 3
    assert set(df["pattern"]) <= set(PATTERNS)
    # averaging over windows inside analyze_heads = head_metrics on the batched record
    with torch.no_grad(), capture(tiny_llama, layers=[1], what=("q_pre", "q_post", "probs")) as cap:
        tiny_llama(ids)
    want = head_metrics(cap[1], cfg)
    got = df[df.layer == 1].to_dict("records")
    for w, r in zip(want, got):
        for k, v in w.items():
            if isinstance(v, float):
                assert r[k] == pytest.approx(v, abs=1e-6, nan_ok=True), k
            else:
                assert r[k] == v, k
    sub = analyze_heads(tiny_llama, ids[:1], cfg, layers=[-1])
    assert list(sub["layer"].unique()) == [2]


def test_layer_table_and_null(tiny_llama):
    ids = torch.randint(3, 300, (2, 48), generator=torch.Generator().manual_seed(2))
    df = analyze_heads(tiny_llama, ids)
    lt = layer_table(df)
    assert list(lt["layer"]) == [0, 1, 2] and (lt["n_heads"] == 4).all()
    assert (lt[[f"n_{p}" for p in PATTERNS]].sum(1) == 4).all()
    assert lt["sink_mass"].to_numpy() == pytest.approx(df.groupby("layer")["sink_mass"].mean().to_numpy())
    null = null_heads(tiny_llama, ids, seed=1)
    assert list(null.columns) == list(HEAD_COLUMNS)
    assert not np.allclose(null["q_sim_window_pre"], df["q_sim_window_pre"])  # really other weights


def test_period_threshold_above_null():
    # random-weight tiny models of every family: the null's 99th percentile stays below the threshold
    cfg = MetricConfig()
    ids = torch.randint(3, 256, (2, 160), generator=torch.Generator().manual_seed(4))
    ids[:, 0] = 1
    vals = []
    for fam in FAMILIES:
        for seed in (0, 1):
            vals += list(analyze_heads(make_tiny_model(fam, seed=seed), ids, cfg)["period_strength"])
    assert len(vals) == len(FAMILIES) * 2 * 12
    assert np.quantile(vals, 0.99) < cfg.period_threshold


def test_bad_inputs_are_rejected(tiny_llama):
    with pytest.raises(ValueError, match="too short"):
        q_similarity_consecutive(torch.randn(1, 10, 4), skip=16)
    with pytest.raises(ValueError, match="window"):
        MetricConfig(window=1)
    with pytest.raises(ValueError, match="LongTensor"):
        analyze_heads(tiny_llama, torch.zeros(2, 30))
    with pytest.raises(ValueError, match="lacks probs"):
        head_metrics(LayerRecord(layer=0, q_pre=torch.randn(1, 2, 30, 4), q_post=torch.randn(1, 2, 30, 4)))
