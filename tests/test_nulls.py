"""The random-weight null as a distribution (tappa_utils.nulls)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tappa_utils import nulls
from tappa_utils.stats import null_seed


def test_null_seeds_start_with_the_single_null_and_never_repeat_the_model_seed():
    s = nulls.null_seeds(7, 20)
    assert s[0] == null_seed(7) and len(set(s)) == 20 and 7 not in s
    assert nulls.null_seeds(7, 20) == s  # reproducible
    with pytest.raises(ValueError, match="draws"):
        nulls.null_seeds(7, 0)


def test_null_distribution_test_ranks_the_observed_value_and_subtracts_the_upper_quantile():
    d = nulls.NullDistribution(np.arange(20, dtype=float) / 20, tuple(range(20)))
    r = d.test(2.0, ci=(1.5, 2.5))
    assert r.p_value == pytest.approx(1 / 21) and r.reachable_p == pytest.approx(1 / 21)
    assert r.estimate == pytest.approx(2.0 - np.quantile(d.values, 0.95)) and r.ci[0] == pytest.approx(1.5 - d.upper())
    inside = d.test(0.5)
    assert inside.p_value == pytest.approx((1 + 10) / 21) and inside.estimate < 0 and math.isnan(inside.ci[0])
    low = d.test(-1.0, alternative="less")
    assert low.p_value == pytest.approx(1 / 21) and low.estimate == pytest.approx(d.upper("less") + 1.0)
    sp = d.spread()
    assert sp["draws"] == 20 and sp["min"] == 0 and sp["max"] == pytest.approx(0.95)
    few = nulls.NullDistribution(np.array([0.1, np.nan, 0.2]), (1, 2, 3))
    assert few.draws == 2 and few.test(1.0).reachable_p == pytest.approx(1 / 3)  # 2 draws: never below 0.05


def test_null_distribution_runs_the_statistic_on_distinct_random_copies(tiny_llama):
    seen = []

    def stat(m):
        w = next(m.parameters()).detach()
        seen.append(float(w.float().abs().sum()))
        return float(w.float().mean())

    before = [p.detach().clone() for p in tiny_llama.parameters()]
    d = nulls.null_distribution(tiny_llama, stat, draws=3, seed=1)
    assert d.seeds == tuple(nulls.null_seeds(1, 3)) and d.values.shape == (3,) and len(set(seen)) == 3
    assert all(torch_equal(a, b) for a, b in zip(before, tiny_llama.parameters()))  # the model is untouched
    with pytest.raises(TypeError, match="callable"):
        nulls.null_distribution(tiny_llama, 3.0)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b.detach()))
