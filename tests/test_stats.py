"""tappa_utils.stats on data where the answer is known: independent data (p roughly uniform, intervals cover 0),
strong effects (p < 0.01), depth confounds removed by within-group tests, fixed seeds."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from tappa_utils import stats as S


def test_spearman_matches_scipy_and_is_deterministic():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(25), rng.standard_normal(25)
    y[:5] = y[0]  # ties
    r = S.spearman_test(x, y)
    assert r.estimate == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert S.spearman(x, y) == pytest.approx(r.estimate, abs=1e-12)
    assert r == S.spearman_test(x, y)  # same seed, same answer
    assert r.p_value != S.spearman_test(x, y, seed=1).p_value
    assert r.n == 25 and r.n_resamples == S.N_RESAMPLES and r.ci[0] <= r.estimate <= r.ci[1]


def test_spearman_p_roughly_uniform_on_independent_data_and_ci_covers_zero():
    ps, covers = [], []
    for seed in range(60):
        rng = np.random.default_rng(100 + seed)
        r = S.spearman_test(rng.standard_normal(30), rng.standard_normal(30), n_resamples=500, seed=seed)
        ps.append(r.p_value)
        covers.append(r.ci[0] <= 0 <= r.ci[1])
    ps = np.array(ps)
    assert 0.35 < ps.mean() < 0.65
    assert (ps < 0.05).mean() <= 0.15 and (ps < 0.5).mean() == pytest.approx(0.5, abs=0.2)
    assert np.mean(covers) >= 0.85


def test_spearman_strong_correlation_is_significant():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(30)
    r = S.spearman_test(x, x + 0.3 * rng.standard_normal(30))
    assert r.p_value < 0.01 and r.ci[0] > 0.5
    neg = S.spearman_test(x, -x + 0.3 * rng.standard_normal(30))
    assert neg.p_value > 0.99  # "greater" on a negative correlation
    assert S.spearman_test(x, -x + 0.3 * rng.standard_normal(30), alternative="less").p_value < 0.01
    assert S.spearman_test(x, -x, alternative="two-sided").p_value < 0.01
    assert S.permutation_p(10.0, np.zeros(2000)) == pytest.approx(1 / 2001)  # never 0


def test_within_group_test_removes_a_depth_confound():
    """x and y both grow with the layer but are independent inside each layer: the pooled correlation is
    significant, the within-layer one is not; and a real within-layer relation is found."""
    rng = np.random.default_rng(2)
    layer = np.repeat(np.arange(6), 8)
    x = layer + 0.3 * rng.standard_normal(48)
    y = layer + 0.3 * rng.standard_normal(48)
    assert S.spearman_test(x, y).p_value < 0.01
    within = S.spearman_test(x, y, groups=layer)
    assert within.p_value > 0.05 and within.ci[0] < 0 < within.ci[1]
    y2 = layer + (x - layer) + 0.1 * rng.standard_normal(48)
    assert S.spearman_test(x, y2, groups=layer).p_value < 0.01
    # permutations really stay inside groups: a group label per pair is required
    with pytest.raises(ValueError, match="groups"):
        S.spearman_test(x, y, groups=layer[:10])
    idx = S._within_group_permutations(layer, 50, np.random.default_rng(0))
    assert (layer[idx] == layer[None, :]).all() and (np.sort(idx, 1) == np.arange(48)).all()


def test_spearman_difference_trained_vs_null():
    rng = np.random.default_rng(3)
    layer = np.repeat(np.arange(4), 6)
    x = rng.standard_normal(24)
    trained_y = x + 0.3 * rng.standard_normal(24)
    null_x, null_y = rng.standard_normal(24), rng.standard_normal(24)
    d = S.spearman_difference(x, trained_y, null_x, null_y, layer, layer)
    assert d.estimate == pytest.approx(S.spearman(x, trained_y, layer) - S.spearman(null_x, null_y, layer))
    assert d.p_value < 0.01 and d.ci[0] > 0
    same = S.spearman_difference(x, trained_y, x, trained_y, layer, layer)
    assert same.estimate == 0 and same.ci[0] < 0 < same.ci[1] and same.p_value > 0.2


def test_paired_and_two_sample_differences():
    rng = np.random.default_rng(4)
    a = rng.standard_normal(40)
    noise = S.paired_difference(a + 0.5 * rng.standard_normal(40), a)
    assert noise.p_value > 0.05 and noise.ci[0] < 0 < noise.ci[1]
    shifted = S.paired_difference(a + 0.3 + 0.2 * rng.standard_normal(40), a)
    assert shifted.p_value < 0.01 and 0.15 < shifted.ci[0] < 0.3 < shifted.ci[1] < 0.45
    assert S.paired_difference(a, a + 0.3, alternative="less").p_value < 0.01
    x, y = rng.normal(1.0, 1, 30), rng.normal(0.0, 1, 30)
    r = S.two_sample(x, y)
    assert r.estimate == pytest.approx(x.mean() - y.mean()) and r.p_value < 0.01 and r.ci[0] > 0
    same = S.two_sample(rng.standard_normal(30), rng.standard_normal(30))
    assert same.ci[0] < 0 < same.ci[1] and same.p_value > 0.05
    with pytest.raises(ValueError, match="same length"):
        S.paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="alternative"):
        S.two_sample(x, y, alternative="bigger")


def test_bootstrap_ci_and_sign_test():
    rng = np.random.default_rng(5)
    v = rng.normal(2.0, 1.0, 200)
    lo, hi = S.bootstrap_ci(v, lambda b: b.mean(1))
    assert lo < 2.0 < hi and hi - lo == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.25)
    assert S.sign_test([0.1] * 10) < 0.01 and S.sign_test([0.1, -0.1] * 5) > 0.5
    with pytest.raises(ValueError, match="at least 2"):
        S.bootstrap_ci([1.0], lambda b: b.mean(1))


def test_null_seed_never_equals_the_seed():
    seeds = range(2000)
    derived = [S.null_seed(s) for s in seeds]
    assert all(d != s for d, s in zip(derived, seeds))
    assert derived == [S.null_seed(s) for s in seeds]  # deterministic
    assert len(set(derived)) == len(derived) and all(0 <= d < 2**31 for d in derived)
    with pytest.raises(ValueError, match="non-negative"):
        S.null_seed(-1)


def test_partial_spearman_removes_a_shared_driver_and_keeps_a_real_relation():
    rng = np.random.default_rng(3)
    z = rng.uniform(0, 1, 80)
    own = rng.standard_normal(80)
    x_driven, y = z + 0.05 * rng.standard_normal(80), z + 0.1 * own
    r0 = S.partial_spearman_test(x_driven, y, z, seed=1)
    assert S.spearman(x_driven, y) > 0.8 and abs(r0.estimate) < 0.3 and r0.p_value > 0.01
    r1 = S.partial_spearman_test(z + 0.1 * own + 0.02 * rng.standard_normal(80), y, z, seed=1)
    assert r1.estimate > 0.8 and r1.p_value < 0.01 and r1.ci[0] > 0.6
    # equal to Pearson of the residual ranks
    ex, ey = S.partial_ranks(x_driven, y, z)
    assert r0.estimate == pytest.approx(np.corrcoef(ex, ey)[0, 1])
    with pytest.raises(ValueError, match="same length"):
        S.partial_spearman_test(x_driven, y, z[:-1])
    with pytest.raises(ValueError, match="at least 5"):
        S.partial_spearman_test([1, 2, 3], [1, 2, 3], [1, 2, 3])


def test_partial_spearman_type_one_rate_is_near_alpha():
    rng = np.random.default_rng(4)
    hits = 0
    for i in range(200):
        z = rng.standard_normal(30)
        hits += S.partial_spearman_test(z + rng.standard_normal(30), z + rng.standard_normal(30), z,
                                        groups=np.repeat(np.arange(3), 10), n_resamples=200, seed=i).p_value < 0.05
    assert hits / 200 < 0.1


def test_reachable_p_is_the_smallest_p_the_units_allow():
    assert S.reachable_p(2 * math.log(2)) == pytest.approx(0.25)
    assert S.reachable_p(math.inf, 1999) == pytest.approx(1 / 2000)
    assert S.reachable_p(math.log(8), two_sided=True) == pytest.approx(0.25)
    # sign flips of 2 units: the observed p can never go below it
    r = S.paired_difference([1.0, 2.0], [0.0, 0.0], seed=0)
    assert r.reachable_p == pytest.approx(0.25) and r.p_value >= r.reachable_p - 0.02
    r = S.paired_difference(np.arange(1.0, 21.0), np.zeros(20), seed=0)
    assert r.reachable_p == pytest.approx(1 / 2001) and r.p_value == pytest.approx(r.reachable_p)
    # within-layer permutations of 2 layers x 2 heads: 2! * 2! = 4 arrangements
    g = S.spearman_test([1, 2, 3, 4], [1, 2, 3, 4], groups=[0, 0, 1, 1])
    assert g.reachable_p == pytest.approx(0.25) and g.p_value >= 0.2
    t = S.two_sample([1.0, 2.0], [0.0, 0.1])
    assert t.reachable_p == pytest.approx(1 / 6)


def test_holm_controls_in_order_and_is_monotone():
    p = [0.001, 0.02, 0.04, 0.5]
    assert S.holm(p) == pytest.approx([0.004, 0.06, 0.08, 0.5])
    shuffled = [0.04, 0.5, 0.001, 0.02]
    assert S.holm(shuffled) == pytest.approx([0.08, 0.5, 0.004, 0.06])
    p = [0.01, 0.04, 0.03, 0.2]
    assert S.holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert S.holm([]) == []
    assert S.holm([0.01, float("nan"), 0.03]) == [0.03, 1.0, 0.06]  # NaN sorts last and gets 1


def test_wilson_interval_matches_the_formula_and_its_edges():
    lo, hi = S.wilson_interval(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17  # Wilson's upper bound for 0/20 is 0.161
    lo, hi = S.wilson_interval(20, 20)
    assert hi == 1.0 and 0.83 < lo < 0.85
    assert all(math.isnan(x) for x in S.wilson_interval(0, 0))
    assert [round(x, 3) for x in S.wilson_interval(0, 4)] == [0.0, 0.49]
    # coverage on a known proportion: about 95 % of intervals contain p (binomial draws, exact enumeration)
    n, p = 30, 0.3
    cover = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k)
                for k in range(n + 1) if S.wilson_interval(k, n)[0] <= p <= S.wilson_interval(k, n)[1])
    assert 0.92 < cover < 0.98  # Wilson coverage oscillates around 0.95 (0.930 here)
