"""The random-weight null as a distribution (`tappa_utils.nulls`) and the positive controls of chapters 4 and 5's
claims: a planted sink (diagonal) head is found against the random-weight draws, which the same selection on random
weights is not."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_model

from tappa_utils import nulls as N
from tappa_utils import patterns as P
from tappa_utils.controls import plant_previous_token_head, plant_sink_head
from tappa_utils.stats import null_seed


def test_null_seeds_start_with_the_single_null_and_never_repeat_the_model_seed():
    s = N.null_seeds(7, 20)
    assert s[0] == null_seed(7) and len(set(s)) == 20 and 7 not in s
    assert N.null_seeds(7, 20) == s  # reproducible
    assert N.null_seeds(8, 20)[0] != s[0]
    with pytest.raises(ValueError, match="draws"):
        N.null_seeds(7, 0)


def test_rank_p_and_the_smallest_reachable_value():
    null = np.arange(20.0)
    assert N.rank_p(100.0, null) == pytest.approx(1 / 21)  # above every draw: the smallest p, 0.048 < 0.05
    assert N.rank_p(-1.0, null) == 1.0
    assert N.rank_p(19.0, null) == pytest.approx(2 / 21)  # ties count against the observation
    assert N.rank_p(-1.0, null, "less") == pytest.approx(1 / 21)
    assert np.isnan(N.rank_p(float("nan"), null)) and np.isnan(N.rank_p(1.0, [np.nan]))
    with pytest.raises(ValueError, match="alternative"):
        N.rank_p(1.0, null, "two-sided")
    assert N.top_k_mean([1, 5, 3, np.nan], 2) == 4.0 and N.top_k_mean([2.0], 3) == 2.0


def test_null_distribution_test_ranks_the_observed_value_and_subtracts_the_upper_quantile():
    d = N.NullDistribution.from_values(np.arange(20, dtype=float) / 20, range(20))
    assert d.seeds == tuple(range(20)) and d.statistics == ["value"]
    r = d.test(2.0, ci=(1.5, 2.5))
    assert r.p_value == pytest.approx(1 / 21) and r.reachable_p == pytest.approx(1 / 21)
    assert r.estimate == pytest.approx(2.0 - np.quantile(d.column(), 0.95))
    assert r.ci[0] == pytest.approx(1.5 - d.upper())
    inside = d.test(0.5)
    assert inside.p_value == pytest.approx((1 + 10) / 21) and inside.estimate < 0 and math.isnan(inside.ci[0])
    low = d.test(-1.0, alternative="less")
    assert low.p_value == pytest.approx(1 / 21) and low.estimate == pytest.approx(d.upper(alternative="less") + 1.0)
    sp = d.spread()
    assert sp["draws"] == 20 and sp["min"] == 0 and sp["max"] == pytest.approx(0.95)
    few = N.NullDistribution.from_values(np.array([0.1, np.nan, 0.2]), (1, 2, 3))
    assert few.draws() == 2 and few.test(1.0).reachable_p == pytest.approx(1 / 3)  # 2 draws: never below 0.05
    with pytest.raises(ValueError, match="one seed per value"):
        N.NullDistribution.from_values([0.1, 0.2], (1,))
    with pytest.raises(ValueError, match="seed"):
        N.NullDistribution(pd.DataFrame({"value": [0.1]}))


def test_null_distribution_of_a_number_runs_it_on_distinct_random_copies(tiny_llama):
    seen = []

    def stat(m):
        w = next(m.parameters()).detach()
        seen.append(float(w.float().abs().sum()))
        return float(w.float().mean())

    before = [p.detach().clone() for p in tiny_llama.parameters()]
    d = N.null_distribution(tiny_llama, stat, draws=3, seed=1)
    assert d.seeds == tuple(N.null_seeds(1, 3)) and d.column().shape == (3,) and len(set(seen)) == 3
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, tiny_llama.parameters()))  # the model is untouched
    with pytest.raises(TypeError, match="callable"):
        N.null_distribution(tiny_llama, 3.0)
    with pytest.raises(ValueError, match="quantile"):
        N.null_distribution(tiny_llama, stat, quantile=0.2)


def test_null_distribution_of_a_mapping_keeps_one_column_per_statistic():
    model = make_tiny_model()
    own = float(model.model.layers[0].self_attn.q_proj.weight.detach().norm())

    def measure(net):
        return {"q_norm": float(net.model.layers[0].self_attn.q_proj.weight.detach().norm()),
                "embed_mean": float(net.model.embed_tokens.weight.detach().mean())}

    d = N.null_distribution(model, measure, draws=4, seed=1)
    assert list(d.values.columns) == ["seed", "q_norm", "embed_mean"] and len(d.values) == 4
    assert d.values.seed.tolist() == N.null_seeds(1, 4)
    assert d.values.q_norm.nunique() == 4 and own not in d.values.q_norm.tolist()
    assert float(model.model.layers[0].self_attn.q_proj.weight.detach().norm()) == own  # the model itself is untouched
    again = N.null_distribution(model, lambda net: measure(net)["q_norm"], draws=4, seed=1)
    assert np.allclose(again.column("value"), d.column("q_norm"))
    s = d.spread("q_norm")
    assert s["min"] <= s["median"] <= s["q95"] <= s["max"] and s["draws"] == 4
    assert "4 draws" in d.describe("q_norm")
    assert d.test(s["max"] + 1, name="q_norm").p_value == pytest.approx(1 / 5)
    with pytest.raises(KeyError, match="no statistic"):
        d.column("nope")


def test_planted_sink_is_supported_against_the_null_and_the_argmax_selection_is_not():
    model = make_tiny_model()
    ids = torch.randint(3, 300, (2, 64), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 1
    args = dict(skip=8, threshold=0.3, k=1, m=1, n_baseline_keys=8)
    plant_sink_head(model)
    planted = P.sink_statistics(model, ids, **args)
    nulls = N.null_distribution(model, lambda net: P.sink_statistics(net, ids, **args), draws=5, seed=0)
    # existence: the planted head beats the strongest head of every draw (the smallest rank p with 5 draws)
    assert planted["top_fixed_key"] > 0.9 > nulls.spread("top_fixed_key")["max"]
    assert nulls.rank_p("top_fixed_key", planted["top_fixed_key"]) == pytest.approx(1 / 6)
    assert planted["share_vertical"] > nulls.spread("share_vertical")["max"]
    # the argmax selection alone makes the chosen key look aligned on random weights: why the control is needed
    assert nulls.spread("alignment_gap")["median"] > 0
    assert planted["alignment_gap"] > nulls.spread("alignment_gap")["max"]
    # with m = 0 (no vertical head) the alignment statistic is undefined, not a pass
    assert np.isnan(P.sink_statistics(model, ids, **{**args, "m": 0})["alignment_gap"])


def test_planted_diagonal_head_is_supported_against_the_null():
    model = make_tiny_model()
    ids = torch.randint(3, 300, (1, 64), generator=torch.Generator().manual_seed(2))
    plant_previous_token_head(model)
    args = dict(skip=8, k=1, max_distance=24)
    planted = P.diagonal_statistics(model, ids, **args)
    masses = P.head_masses(model, ids, skip=8)
    top = masses.sort_values("diag_mass").iloc[-1]
    assert (int(top.layer), int(top["head"]), int(top.diag_offset)) == (0, 0, 1)
    nulls = N.null_distribution(model, lambda net: P.diagonal_statistics(net, ids, **args), draws=5, seed=0)
    assert planted["top_diag"] > 0.5 > nulls.spread("top_diag")["max"]
    assert nulls.rank_p("top_diag", planted["top_diag"]) == pytest.approx(1 / 6)
    cheap = P.diagonal_statistics(model, ids, **args, periodic=False)
    assert cheap["top_diag"] == pytest.approx(planted["top_diag"]) and np.isnan(cheap["periodic_r2"])


def test_planting_refuses_heads_and_channels_the_model_does_not_have():
    model = make_tiny_model()
    with pytest.raises(ValueError, match="layer 5 is out of range: the model has 3 layers"):
        plant_sink_head(model, layer=5)
    with pytest.raises(ValueError, match="head 4 is out of range"):
        plant_previous_token_head(model, head=4)
    with pytest.raises(ValueError, match=r"channels must be in 0\.\.7"):
        plant_previous_token_head(model, channels=(8,))
