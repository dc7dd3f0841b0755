"""Chapters 5-6 helpers: natural periodic diagonals, block ratios, seasonal runs and the resonance test, the layer-0
rule, broken display of long derivations, and the capture inside a random-weight null."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_model
from test_patterns import _Tok, synthetic_headdata

from tappa_utils import patterns as P
from tappa_utils import theory as T
from tappa_utils.book.html_check import COLUMN_PX, MATH_PX_PER_CHAR, _math_lines, visible_math_chars
from tappa_utils.models import random_weights


def test_periodic_fit_finds_the_period_and_only_it():
    n = np.arange(129.0)
    y = np.cos(0.5 * n + 1.0) + 0.002 * (n - 60) ** 2  # a repeat every 4 pi tokens on a quadratic trend
    assert P.periodic_fit(y, 0.5) > 0.99
    assert P.periodic_fit(y, 0.9) < 0.05
    noise = np.random.default_rng(0).standard_normal(129)
    assert P.periodic_fit(noise, 0.5) < 0.2
    assert np.isnan(P.periodic_fit(0.3 * n + 2.0, 0.5))  # nothing left after the trend
    with pytest.raises(ValueError, match="too short"):
        P.periodic_fit(np.ones(5), 0.5)


def test_channel_profiles_sum_to_the_logit_profile():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((96, 32)), rng.standard_normal((96, 32))
    hd = synthetic_headdata(q, k)
    per_channel = P.channel_distance_profiles(hd.q, hd.k, hd.theta, 40, skip=8)
    assert per_channel.shape == (41, 16)
    np.testing.assert_allclose(hd.scale * per_channel.sum(-1), P.logit_distance_profile(hd.logits, 40, skip=8),
                               rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="too large"):
        P.channel_distance_profiles(hd.q, hd.k, hd.theta, 90, skip=8)


def test_natural_periodicity_sees_a_dominant_channel_and_the_null_is_captured_anew():
    model = make_tiny_model("llama", layers=2)
    ids = torch.full((1, 96), 7)  # one token repeated: q and k are the same at every position (stable phases)
    with P.with_dominant_channel(model, 1, 2, channel=1, factor=12.0):
        nat = P.natural_periodicity(model, ids, layers=[1], max_distance=40, skip=8)
    row = nat.set_index("head").loc[2]
    theta = P.capture_head(model, ids, 1, 2, probs=False).theta
    assert row.dominant == 1 and row.fits and row.period == pytest.approx(2 * np.pi / theta[1])
    assert row.r2_dominant > 0.8 and row.rel_error < 0.1 and row.r2_control < row.r2_dominant
    assert row.share > nat.share.drop(index=2, errors="ignore").max()
    # the capture inside random_weights is the null's, not the model's cached one
    own = P.natural_periodicity(model, ids, layers=[1], max_distance=40, skip=8)
    with random_weights(model, 12345):
        null = P.natural_periodicity(model, ids, layers=[1], max_distance=40, skip=8)
    assert not np.allclose(own.share, null.share)
    again = P.natural_periodicity(model, ids, layers=[1], max_distance=40, skip=8)
    pd.testing.assert_frame_equal(own, again)


def test_step_blocks_and_ratio_of_sums():
    steps = pd.DataFrame({"t": np.tile(np.arange(10, 74), 2), "window": np.repeat([0, 1], 64),
                          "a": 1.0, "b": 2.0})
    u = P.step_blocks(steps, ["a", "b"], block=32)
    assert u.shape == (4, 2) and np.all(u == [32.0, 64.0])
    est, ci = P.ratio_of_sums(u)
    assert est == 0.5 and ci == (0.5, 0.5)
    rng = np.random.default_rng(2)
    u2 = np.stack([rng.uniform(0, 1, 40), rng.uniform(1, 2, 40)], 1)
    est2, (lo, hi) = P.ratio_of_sums(u2)
    assert lo < est2 < hi and hi - lo < 0.3
    with pytest.raises(ValueError, match="block"):
        P.step_blocks(steps, ["a"], block=0)


def test_default_bases_start_with_the_models_own():
    for family, own in (("llama", 10000.0), ("qwen2", 1e6), ("llama3_scaled", 500000.0)):
        model = make_tiny_model(family, layers=1)
        assert P.rope_base(model) == own
        assert P.default_bases(model) == [own, own / 20]


def test_periodicity_error_groups_and_resonance_test():
    rng = np.random.default_rng(3)
    x = np.tile(rng.standard_normal((7, 8)), (6, 1))
    assert P.periodicity_error(x, 7) == 0 and P.periodicity_error(x, 5) > 0.5
    with pytest.raises(ValueError, match="period"):
        P.periodicity_error(x, 0)
    g = P.resonance_groups([0.1, -0.5, 1.0, 2.0, -3.0])
    assert g.tolist() == ["resonant", "resonant", "", "control", "control"]
    delta = np.array([0.0, 0.2, -0.3, 2.0, 2.5, -2.8, 3.0, 1.7])
    runs = pd.DataFrame({"delta": delta, "rel_change": np.where(np.abs(delta) < 1, 0.5, 1.0)})
    r = P.resonance_test(runs)
    assert r.estimate == pytest.approx(np.log(2)) and r.p_value < 0.05
    flat = runs.assign(rel_change=1.0)
    assert P.resonance_test(flat).estimate == 0
    with pytest.raises(ValueError, match="resonant"):
        P.resonance_test(runs.iloc[3:])


def test_candidate_layers_never_layer_zero():
    assert P.candidate_layers(4) == [1, 2, 3]
    assert P.candidate_layers(4, [2, 3]) == [2, 3]
    with pytest.raises(ValueError, match="layer 0"):
        P.candidate_layers(4, [0, 2])
    with pytest.raises(ValueError, match="no layer"):
        P.candidate_layers(1)


def test_seasonal_runs_on_a_tiny_model():
    model = make_tiny_model("llama", layers=2)
    text = "".join(chr(40 + (i * 7) % 80) for i in range(1200))
    runs = P.seasonal_runs(model, _Tok(), text, 1, 0, [6, 9], 60, dominant=0, num_windows=2)
    assert len(runs.runs) == 4 and set(runs.units.L) == {6, 9}
    assert (runs.runs.holds_full == 1).all()  # the complete bound is a theorem
    assert (runs.runs.holds_paper <= runs.runs.holds_full).all()
    per = runs.units.groupby(["L", "window"]).holds_paper.sum() / runs.units.groupby(["L", "window"]).pairs.sum()
    np.testing.assert_allclose(per.to_numpy(), runs.runs.sort_values(["L", "window"]).holds_paper.to_numpy())
    assert runs.by_period().shape[0] == 2 and (runs.runs.eps_q >= 0).all()


def test_latex_lines_fit_the_page_and_leave_short_formulas_alone():
    for d in (T.diagonal_shift_identity(), T.diagonal_change_decomposition()):
        assert visible_math_chars(d.latex()) * MATH_PX_PER_CHAR > COLUMN_PX  # too wide on one line
        tex = T.latex_lines(d)
        assert tex.startswith(r"\begin{aligned}")
        assert max(visible_math_chars(x) for x in _math_lines(tex)) * MATH_PX_PER_CHAR <= COLUMN_PX
    short = T.seasonal_step_identity()
    assert T.latex_lines(short) == short.latex()


@pytest.mark.parametrize("period", [6.283, 11.2, 35.3, 54.4])
def test_sweep_has_resonant_and_control_periods_in_one_window(period):
    theta = 2 * np.pi / period
    Ls = P.resonant_periods(theta, period, count=9, spread=0.5)
    g = P.resonance_groups(T.resonance_mismatch(np.array(Ls), theta))
    assert (g == "resonant").sum() >= 2 and (g == "control").sum() >= 2
