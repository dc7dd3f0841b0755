"""Measuring helpers of tappa_utils.patterns on synthetic inputs and tiny random models."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_model

from tappa_utils import patterns as P
from tappa_utils import stats as S
from tappa_utils import theory as T
from tappa_utils.metrics import MetricConfig, analyze_heads
from tappa_utils.rope import channel_frequencies

THETA = 10000.0 ** (-np.arange(16) * 2 / 32)


def synthetic_headdata(q, k, theta=THETA, scale=0.25):
    """HeadData from numpy q, k (T, d) with logits computed from them."""
    hd = P.HeadData(0, 0, q[None], k[None], None, None, np.asarray(theta), scale)
    A = hd.relative_logits(0)
    A = np.where(np.tril(np.ones_like(A, bool)), A, -np.inf)
    hd.logits = A[None]
    return hd


@pytest.mark.parametrize("channel", [0, 1, 2, 3])
def test_intervention_reproduces_interval_on_synthetic_head(channel):
    q, k = P.synthetic_dominant_head(256, THETA, channel, factor=6.0, noise=0.3, seed=channel)
    hd = synthetic_headdata(q, k)
    prof = P.logit_distance_profile(hd.logits, 160)
    pred = T.predicted_diagonal_interval(THETA[channel])
    assert abs(P.dominant_period(prof) - pred) / pred < 0.10
    assert abs(P.autocorr_period(prof) - pred) / pred < 0.10


def test_dominant_period_of_a_pure_cosine_and_errors():
    n = np.arange(200)
    assert P.dominant_period(np.cos(2 * np.pi * n / 13.7) + 0.01 * n) == pytest.approx(13.7, rel=0.02)
    with pytest.raises(ValueError):
        P.dominant_period(np.ones(5))
    assert np.isnan(P.autocorr_period(np.linspace(0, 1, 50) ** 2))  # a pure trend has no period


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_capture_head_logits_match_model(family):
    model = make_tiny_model(family)
    ids = torch.randint(3, 300, (2, 40))
    for head in (0, 3):
        hd = P.capture_head(model, ids, 1, head)
        A = hd.relative_logits(1)
        low = np.tril(np.ones_like(A, bool))
        assert np.abs(A[low] - hd.logits[1][low]).max() < 1e-4
        # the captured probabilities are the causal softmax of the captured logits (the head the model ran)
        z = np.where(low, hd.logits[1], -np.inf)
        z = np.exp(z - z.max(-1, keepdims=True))
        np.testing.assert_allclose(hd.probs[1], z / z.sum(-1, keepdims=True), atol=1e-5)
        assert np.all(hd.probs[1][~low] == 0)


def test_capture_head_and_interventions_validate_input(tiny_llama):
    ids = torch.randint(3, 300, (1, 10))
    with pytest.raises(IndexError, match="query heads"):
        P.capture_head(tiny_llama, ids, 0, 4)
    with pytest.raises(IndexError, match="layers"):
        P.capture_head(tiny_llama, ids, 7, 0)
    with pytest.raises(IndexError, match="channels"):
        with P.with_dominant_channel(tiny_llama, 0, 0, 8, 2.0):
            pass
    with pytest.raises(ValueError, match="base"):
        with P.with_rope_base(tiny_llama, 0.5):
            pass


def test_with_dominant_channel_scales_only_that_channel_and_restores(tiny_llama):
    d, m, head = 16, 2, 3
    attn = tiny_llama.model.layers[1].self_attn
    wq0, wk0 = attn.q_proj.weight.detach().clone(), attn.k_proj.weight.detach().clone()
    with P.with_dominant_channel(tiny_llama, 1, head, m, 5.0) as net:
        assert net is tiny_llama
        wq1, wk1 = attn.q_proj.weight.detach().clone(), attn.k_proj.weight.detach().clone()
    rows_q = [head * d + m, head * d + m + d // 2]
    rows_k = [(head // 2) * d + m, (head // 2) * d + m + d // 2]
    assert torch.allclose(wq1[rows_q], 5 * wq0[rows_q]) and torch.allclose(wk1[rows_k], 5 * wk0[rows_k])
    other_q = [r for r in range(wq0.shape[0]) if r not in rows_q]
    other_k = [r for r in range(wk0.shape[0]) if r not in rows_k]
    assert torch.equal(wq1[other_q], wq0[other_q]) and torch.equal(wk1[other_k], wk0[other_k])
    assert torch.equal(attn.q_proj.weight, wq0) and torch.equal(attn.k_proj.weight, wk0)


def test_with_rope_base_changes_frequencies_inside_only(tiny_llama):
    before = channel_frequencies(tiny_llama).copy()
    ids = torch.randint(3, 300, (1, 20))
    with P.with_rope_base(tiny_llama, 100.0):
        np.testing.assert_allclose(channel_frequencies(tiny_llama), 100.0 ** (-np.arange(8) * 2 / 16), rtol=1e-6)
        assert tiny_llama.config.rope_parameters["rope_theta"] == 100.0
        hd = P.capture_head(tiny_llama, ids, 0, 0)
    np.testing.assert_array_equal(channel_frequencies(tiny_llama), before)
    assert tiny_llama.config.rope_parameters["rope_theta"] == 10000.0
    low = np.tril(np.ones((20, 20), bool))
    assert np.abs(hd.relative_logits(0)[low] - hd.logits[0][low]).max() < 1e-4  # the model really uses the new base


def test_logit_jump_steps_satisfy_the_proposition_exactly():
    rng = np.random.default_rng(1)
    q = np.cumsum(rng.standard_normal((80, 32)) * 0.3, 0)
    k = rng.standard_normal((80, 32))
    steps = P.logit_jump_steps(synthetic_headdata(q, k), skip=4)
    assert len(steps) == 80 - 1 - 4
    assert np.all(steps.logit_jump >= steps.alignment * steps.query_jump - steps.rotation - 1e-9)
    assert np.all(steps.rotation <= steps.rotation_paper + 1e-9)
    fit = P.fit_jump_bound(steps, quantile=0.2)
    # in-sample the fitted bound holds on at least the predicted share by construction (sanity, not a test of
    # the proposition); what must be right is that c1 is the 0.2-quantile and c2 the largest RoPE term
    assert fit.c1 == pytest.approx(np.quantile(steps.alignment, 0.2)) and fit.c2 == steps.rotation.max()
    assert fit.predicted == pytest.approx(0.8, abs=1.5 / len(steps))
    assert fit.measured >= fit.predicted - 1e-12
    assert fit.nonvacuous <= fit.nonvacuous_per_step  # per-step constants are never weaker than the fitted ones
    big = steps.assign(query_jump=steps.query_jump * 1e6)
    assert P.fit_jump_bound(big, 0.2).nonvacuous > 0.7  # huge query jumps: the bound bites
    with pytest.raises(ValueError):
        P.fit_jump_bound(steps, quantile=1.0)


def test_jump_bound_calibrated_then_held_out():
    """c1, c2 fixed on calibration steps, tested on held-out steps: met when the held-out queries move like the
    calibration ones, broken when they move orthogonally to the rotated keys (the premise fails)."""
    rng = np.random.default_rng(7)
    T_, d = 30, 32  # 30 keys in 32 dimensions: directions orthogonal to every rotated key exist
    k = rng.standard_normal((T_, d))
    slow = THETA * 1e-3  # slow channels: the RoPE term c2 stays small next to c1 |dq|

    def held_out_share(fit, steps):
        return float((steps.logit_jump >= fit.c1 * steps.query_jump - fit.c2 - 1e-9).mean())

    def steps_of(q):
        return P.logit_jump_steps(synthetic_headdata(q, k, theta=slow), skip=2)

    calib = pd.concat([steps_of(np.cumsum(rng.standard_normal((T_, d)), 0)) for _ in range(4)])
    fit = P.fit_jump_bound(calib, quantile=0.1)
    same = pd.concat([steps_of(np.cumsum(rng.standard_normal((T_, d)), 0)) for _ in range(4)])
    assert held_out_share(fit, same) >= fit.predicted - 0.1
    # held-out queries whose steps are orthogonal to every rotated key: large query jumps, small logit jumps
    q = [rng.standard_normal(d)]
    for t in range(T_ - 1):
        n = t + 1 - np.arange(T_)
        V = T.relative_logit(np.eye(d)[:, None, :], k[None, :, :], n[None, :], slow)[:, : t + 1]
        ortho = np.linalg.svd(V.T)[2][-1]
        q.append(q[-1] + 5 * np.sqrt(d) * ortho)
    bad = steps_of(np.array(q))
    assert bad.alignment.max() < 1e-6 * bad.query_jump.min()
    assert (fit.c1 * bad.query_jump - fit.c2 > bad.logit_jump).mean() > 0.5  # the bound would claim a jump
    assert held_out_share(fit, bad) < 0.5


def test_column_steps_bounds_and_low_frequency_share():
    rng = np.random.default_rng(2)
    q = rng.standard_normal(32) + 0.05 * rng.standard_normal((100, 32))
    k = rng.standard_normal((100, 32))
    hd = synthetic_headdata(q, k)
    cs = P.column_steps(hd, 0, skip=1)
    assert np.all(cs.change <= cs.bound_chord + 1e-9) and np.all(cs.bound_chord <= cs.bound_arc + 1e-9)
    assert np.all(cs.rotation_term <= cs.rotation_bound_chord + 1e-9)
    # a key living only in low-frequency channels: the share is 1; only in high-frequency ones: 0
    k2 = np.zeros_like(k)
    k2[:, [15, 31]] = 1.0
    assert P.low_frequency_share(synthetic_headdata(q, k2), 0, P.low_frequency_mask(THETA, 100)) == pytest.approx(1.0)
    k2[:] = 0
    k2[:, [0, 16]] = 1.0
    assert P.low_frequency_share(synthetic_headdata(q, k2), 0, P.low_frequency_mask(THETA, 100)) == pytest.approx(0.0)
    same = np.tile(q[0], (100, 1))
    assert P.key_alignment(synthetic_headdata(same, same, theta=np.zeros(16)), 0) == pytest.approx(1.0)
    assert P.key_alignment(synthetic_headdata(same, -same, theta=np.zeros(16)), 0) == pytest.approx(-1.0)
    assert abs(P.key_alignment(synthetic_headdata(q, rng.standard_normal((100, 32))), 0, skip=1)) < 0.5
    cc = P.column_change(hd, skip=1)
    assert np.isnan(cc[-1]) and cc[0] == pytest.approx(cs.change.mean())


def test_diagonal_steps_zero_for_constant_inputs_and_bound_holds():
    rng = np.random.default_rng(3)
    q, k = np.tile(rng.standard_normal(32), (60, 1)), np.tile(rng.standard_normal(32), (60, 1))
    ds = P.diagonal_steps(synthetic_headdata(q, k), 2, skip=2)
    assert ds.change.max() < 1e-10 and ds.bound.max() == 0 and ds.column_change.max() > 1e-3
    q2 = q + 0.1 * rng.standard_normal(q.shape)
    ds2 = P.diagonal_steps(synthetic_headdata(q2, k), 2, skip=2)
    assert np.all(ds2.change <= ds2.bound + 1e-9) and ds2.change.max() > 0


def test_qsim_predictability_removes_depth():
    layer = np.repeat(np.arange(4), 4)
    within = np.tile([0.3, 0.2, 0.1, 0.0], 4)
    df = pd.DataFrame({"layer": layer, "q_sim_consecutive_pre": layer + within,
                       "predictability": layer - within})
    r = P.qsim_predictability(df)
    assert r["all"] > 0.5 and r["within_layer"] < -0.9  # ties from float rounding
    with pytest.raises(KeyError, match="missing"):
        P.qsim_predictability(df, qsim="nope")


def test_continuity_and_spearman():
    x = np.ones((10, 4))
    assert P.continuity(x) == 0
    assert P.continuity(np.random.default_rng(0).standard_normal((50, 4))) > 0.5
    from tappa_utils.stats import spearman  # the one Spearman (patterns uses it too)

    assert spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


class _Tok:
    bos_token_id = 0

    def __call__(self, text, add_special_tokens=False, verbose=True):
        return {"input_ids": [ord(c) for c in text]}


def test_periodic_ids_and_seasonal_pairs():
    ids = P.periodic_ids(_Tok(), "abcdefghijklmnopqrstuvwxyz" * 3, 7, 50, num_windows=2, stride=5)
    assert ids.shape == (2, 50) and (ids[:, 0] == 0).all()
    assert torch.equal(ids[:, 8:], ids[:, 1:-7]) and ids[1, 1].item() == ord("f")
    with pytest.raises(ValueError, match="too short"):
        P.periodic_ids(_Tok(), "abc", 7, 50)
    rng = np.random.default_rng(4)
    L = 20
    base = rng.standard_normal((L, 32))
    q = np.tile(base, (4, 1)) + 0.01 * rng.standard_normal((4 * L, 32))
    k = np.tile(rng.standard_normal((L, 32)), (4, 1))
    pairs = P.seasonal_pairs(synthetic_headdata(q, k), L, dominant=2)
    assert (pairs.i <= pairs.t).all() and (pairs.t + L < 4 * L).all()
    assert np.all(pairs.change <= pairs.bound + 1e-9)
    assert np.all(pairs.bound_paper <= pairs.bound + 1e-12)
    assert P.resonant_periods(0.3, 20, count=5) == [10, 15, 19, 20, 21, 25, 30]


def test_assumption_summary_reaccessed_key_and_phase_demo():
    rng = np.random.default_rng(5)
    q = np.tile(rng.standard_normal(32), (64, 1))
    k = rng.standard_normal((64, 32))
    k[:, [3, 19]] *= 30
    hd = synthetic_headdata(q, k)
    z = np.exp(hd.logits[0] - hd.logits[0].max(-1, keepdims=True))
    hd.probs = (z / z.sum(-1, keepdims=True))[None]
    s = P.assumption_summary(hd, skip=4, max_period=15.0)
    assert s["q_continuity"] == 0 and s["dominant"] == 3 and s["share_fit"] <= s["dominant_share"]
    assert 2 * np.pi / THETA[s["dominant_fit"]] <= 15.0
    hd.probs[0, :, 7] += 10.0
    assert P.reaccessed_key(hd, skip=4) == 7
    demo = P.phase_term_demo(THETA, L=35, dominant=3)
    assert demo["violates_full"] == 0 and demo["violates_paper"] > 0


# ---------------------------------------------------------------------------------------------------------------
# in-place interventions and the shared capture (issue 16)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.clone()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "llama3_scaled"])
def test_interventions_restore_logits_bit_exactly(family):
    model = make_tiny_model(family)
    ids = torch.randint(3, 300, (1, 48))
    before = _logits(model, ids)
    with P.with_dominant_channel(model, 1, 2, 1, 8.0):
        inside = _logits(model, ids)
    assert not torch.equal(inside, before)
    assert torch.equal(_logits(model, ids), before)
    with P.with_rope_base(model, 50.0):
        inside = _logits(model, ids)
    assert not torch.equal(inside, before)
    assert torch.equal(_logits(model, ids), before)


def test_interventions_restore_after_an_exception(tiny_llama):
    ids = torch.randint(3, 300, (1, 24))
    before = _logits(tiny_llama, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with P.with_rope_base(tiny_llama, 30.0), P.with_dominant_channel(tiny_llama, 0, 1, 0, 4.0):
            raise RuntimeError("boom")
    assert torch.equal(_logits(tiny_llama, ids), before)


def test_with_rope_base_on_llama3_scaling_uses_the_models_own_rule():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    model = make_tiny_model("llama3_scaled")
    import copy

    cfg = copy.deepcopy(model.config)
    cfg.rope_parameters = {**cfg.rope_parameters, "rope_theta": 1000.0}
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, None)
    plain = 1000.0 ** (-np.arange(8) * 2 / 16)
    with P.with_rope_base(model, 1000.0):
        got = channel_frequencies(model)
        hd = P.capture_head(model, torch.randint(3, 300, (1, 30)), 1, 0)
    np.testing.assert_allclose(got, expected.double().numpy(), rtol=1e-6)
    assert np.abs(got - plain).max() > 1e-3  # the llama3 smoothing really changed some channels
    low = np.tril(np.ones((30, 30), bool))
    assert np.abs(hd.relative_logits(0)[low] - hd.logits[0][low]).max() < 1e-4


def test_capture_head_one_forward_serves_every_head(tiny_llama):
    ids = torch.randint(3, 300, (2, 32))
    calls = []
    hook = tiny_llama.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        P.clear_qk_capture()
        hds = [P.capture_head(tiny_llama, ids, layer, head) for layer in range(3) for head in range(4)]
        assert len(calls) == 1
        with P.with_dominant_channel(tiny_llama, 0, 0, 0, 3.0):  # changed weights: a new capture
            P.capture_head(tiny_llama, ids, 0, 0)
        assert len(calls) == 2
        again = P.capture_head(tiny_llama, ids, 2, 3)  # restored weights have a new version: captured again
        assert len(calls) == 3
    finally:
        hook.remove()
    # the same numbers as a capture of that one layer
    from tappa_utils.capture import capture

    with torch.no_grad(), capture(tiny_llama, 2, what=("q_pre", "k_pre", "logits")) as cap:
        tiny_llama(ids)
    rec = cap[2]
    np.testing.assert_allclose(again.q, rec.q_pre[:, 3].double().numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(again.k, rec.k_pre[:, 1].double().numpy(), rtol=0, atol=0)
    low = np.tril(np.ones((32, 32), bool))
    np.testing.assert_allclose(again.logits[:, low], rec.logits[:, 3].double().numpy()[:, low], atol=1e-5)
    assert np.array_equal(hds[-1].q, again.q)


# ---------------------------------------------------------------------------------------------------------------
# chapter 3 / 4 claims (c0304)


def _heads_table(rng, n_layers=4, n_heads=8, relation=1.0, offset=0.0):
    layer = np.repeat(np.arange(n_layers), n_heads)
    x = rng.standard_normal(layer.size)
    df = pd.DataFrame({"layer": layer, "head": np.tile(np.arange(n_heads), n_layers)})
    for v in P.QSIM_VARIANTS:
        df[v] = rng.standard_normal(layer.size) + layer * 3.0  # depth drift, no relation
    df["q_sim_window_post"] = x + layer * 3.0
    df["predictability"] = 0.5 + 0.01 * rng.standard_normal(layer.size)
    df["concentration"] = np.clip(0.4 + 0.1 * (relation * x + rng.standard_normal(layer.size) * 0.3) + offset, 0, 1)
    return P.with_patterned(df)


def test_patterned_predictability_separates_uniform_from_patterns():
    df = pd.DataFrame({"predictability": [1.0, 0.9, 0.06, 0.63], "concentration": [0.0, 0.8, 0.8, 0.05]})
    pp = P.with_patterned(df)[P.PATTERNED].to_numpy()
    assert pp[0] == 0.0 and pp[1] > 0.7 and pp[2] < 0.1 and pp[3] < 0.05  # uniform, sink, jumping, noise
    with pytest.raises(KeyError, match="concentration"):
        P.with_patterned(df.drop(columns="concentration"))


def _partial_table(rng, n_layers=4, n_heads=10, sign=1.0):
    """Heads whose predictability follows concentration, plus (q_sim_window_post) a relation with q-sim of `sign`
    beyond concentration; the other variants follow concentration only."""
    layer = np.repeat(np.arange(n_layers), n_heads)
    conc = rng.uniform(0.25, 0.9, layer.size)
    extra = rng.standard_normal(layer.size)
    df = pd.DataFrame({"layer": layer, "head": np.tile(np.arange(n_heads), n_layers), "concentration": conc})
    df["predictability"] = conc + 0.1 * extra
    for v in P.QSIM_VARIANTS:
        df[v] = conc + 0.05 * rng.standard_normal(layer.size) + layer  # concentration and depth, nothing else
    df["q_sim_window_post"] = conc + sign * 0.1 * extra + layer
    return df


def test_choose_qsim_never_picks_a_wrong_sign_and_partials_concentration_out():
    rng = np.random.default_rng(0)
    v, table = P.choose_qsim(_partial_table(rng))
    assert v == "q_sim_window_post" and table.set_index("variant").loc[v, "partial_rho"] > 0.5
    # the relation beyond concentration is negative: that variant is never chosen, however large |rho|
    v2, t2 = P.choose_qsim(_partial_table(rng, sign=-1.0))
    assert v2 != "q_sim_window_post" and t2.set_index("variant").loc["q_sim_window_post", "partial_rho"] < -0.5
    assert t2.set_index("variant").loc[v2, "eligible"] or v2 == P.DEFAULT_QSIM
    # nothing positive (every variant's relation beyond concentration negative or absent): the paper's default
    df = _partial_table(rng)
    for q in P.QSIM_VARIANTS:
        df[q] = -df["q_sim_window_post"]
    df["q_sim_window_post"] = df["concentration"]
    v3, t3 = P.choose_qsim(df)
    assert v3 == P.DEFAULT_QSIM and not t3.eligible.any()
    with pytest.raises(KeyError, match="lacks"):
        P.choose_qsim(df.drop(columns="layer"))


def test_qsim_partial_removes_what_concentration_produces_and_gates_on_patterned_heads():
    rng = np.random.default_rng(2)
    df = _partial_table(rng)
    # q_sim_consecutive_pre follows concentration only: raw within-layer rho is large, partial about 0
    assert S.spearman(df["q_sim_consecutive_pre"], df["predictability"], df["layer"]) > 0.5
    r0 = P.qsim_partial(df, "q_sim_consecutive_pre")
    assert abs(r0.estimate) < 0.35 and r0.p_value > 0.01
    r1 = P.qsim_partial(df, "q_sim_window_post")
    assert r1.estimate > 0.5 and r1.p_value < 0.01 and r1.reachable_p < 0.001
    # random weights: no head has a pattern, so the headline has no units (NaN, inconclusive)
    diffuse = df.assign(concentration=df.concentration * 1e-3)
    assert len(P.patterned_heads(diffuse)) == 0
    assert np.isnan(P.qsim_partial(P.patterned_heads(diffuse), "q_sim_window_post").estimate)
    assert "Among heads with a pattern" in P.qsim_claim_name("q_sim_window_post")
    assert "window" in P.qsim_claim_name("q_sim_window_post") and "`q_sim_window_post`" in P.qsim_claim_name(
        "q_sim_window_post")


def test_read_qsim_choice_checks_variant_and_model(tmp_path):
    import json

    f = tmp_path / "qsim_choice.json"
    assert P.read_qsim_choice(f, "m") is None
    f.write_text(json.dumps({"variant": "q_sim_window_post"}))
    assert P.read_qsim_choice(f, "m") == "q_sim_window_post"
    (tmp_path / "run_info.json").write_text(json.dumps({"params": {"model": "other"}}))
    assert P.read_qsim_choice(f, "m") is None  # made for another model
    (tmp_path / "run_info.json").write_text(json.dumps({"params": {"model": "m"}}))
    assert P.read_qsim_choice(f, "m") == "q_sim_window_post"
    f.write_text(json.dumps({"variant": "q_sim_bogus"}))
    assert P.read_qsim_choice(f, "m") is None


def test_necessity_test_detects_a_relation_within_layers_and_not_depth():
    rng = np.random.default_rng(1)
    df = _heads_table(rng, n_layers=6, n_heads=12)
    r = P.necessity_test(df["q_sim_window_post"], df[P.PATTERNED], df["layer"])
    assert r.estimate > 0.8 and r.p_value < 0.01 and r.ci[0] > 0.6 and r.reachable_p < 0.001
    # depth alone (q-sim and target both grow with the layer, nothing within layers): near 0.5, not significant
    r0 = P.necessity_test(df["q_sim_consecutive_pre"], df["layer"] + 0.01 * rng.standard_normal(len(df)),
                          df["layer"])
    assert r0.p_value > 0.05 and r0.ci[0] < 0.5 < r0.ci[1]
    # without removing depth the same data would look like necessity
    assert P.necessity_test(df["q_sim_consecutive_pre"], df["layer"] + 0.01 * rng.standard_normal(len(df))
                            ).estimate == pytest.approx(1.0)
    assert np.isnan(P.necessity_test([1, 2], [1, 2]).estimate)


def test_mean_test_on_the_original_scale():
    r = P.mean_test([0.9, 1.1, 0.95, 1.05, 1.0] * 4, null_value=1.5, alternative="less")
    assert r.estimate == pytest.approx(1.0) and r.ci[1] < 1.5 and r.p_value < 0.01
    assert P.mean_test([1.0, 2.0, 3.0], null_value=2.5).p_value > 0.3
    assert np.isnan(P.mean_test([0.3]).p_value)


def test_held_out_jump_calibrates_on_some_windows_and_tests_on_others():
    rng = np.random.default_rng(7)
    T_, d = 30, 32
    k = rng.standard_normal((T_, d))
    slow = THETA * 1e-3
    q = np.stack([np.cumsum(rng.standard_normal((T_, d)), 0) for _ in range(6)])
    hd = P.HeadData(0, 0, q, np.tile(k, (6, 1, 1)), None, None, slow, 0.25)
    res, steps = P.held_out_jump(hd, [0, 1, 2], [3, 4, 5], skip=2, quantile=0.1)
    cal = steps[steps.split == "calibration"]
    assert res.c1 == pytest.approx(np.quantile(cal.alignment, 0.1)) and res.c2 == cal.rotation.max()
    assert res.calibrated >= res.predicted - 1e-12  # in-sample: by construction
    assert res.effect == pytest.approx(res.held_out_nonvacuous - res.predicted) and res.effect > -0.1
    assert res.exact_slack >= -1e-9 and 0 < res.c1_rel <= 1 + 1e-9 and res.nonvacuous > 0.5
    # held-out queries 100x slower: the bound is vacuous there (c1 |dq| < c2 never bites)
    q2 = q.copy()
    q2[3:] = q[3:, :1] + 1e-6 * (q[3:] - q[3:, :1])
    res2, _ = P.held_out_jump(P.HeadData(0, 0, q2, hd.k, None, None, slow, 0.25), [0, 1, 2], [3, 4, 5], skip=2)
    assert res2.nonvacuous == 0 and res2.held_out == 1 and np.isnan(res2.effect)  # vacuous: cannot pass
    with pytest.raises(ValueError, match="disjoint"):
        P.held_out_jump(hd, [0, 1], [1, 2])


def test_vertical_windows_find_the_sink_and_its_low_frequency_carrier():
    rng = np.random.default_rng(3)
    T_, d = 64, 32
    q = np.tile(rng.standard_normal(d), (T_, 1)) + 0.05 * rng.standard_normal((T_, d))
    q[:, 15] += 3.0
    k = rng.standard_normal((T_, d)) * 0.3
    k[0] = 0.0
    k[0, 15] = 4.0  # key 0 lives in the slowest channel and points at the queries there
    hd = synthetic_headdata(q, k)
    A = hd.logits[0]
    p = np.exp(A - A.max(1, keepdims=True))
    hd.probs = (p / p.sum(1, keepdims=True))[None]
    rows, steps, c_key, c_base = P.vertical_windows(hd, P.slowest_channels(THETA, 1), skip=8, n_baseline_keys=8)
    r = rows.iloc[0]
    assert r.key == 0 and r.low_freq_share > 0.9 > r.baseline_share and r.alignment > r.baseline_alignment
    assert r.holds_chord == 1.0 and 0 < r.looseness <= 1 and r.column_ratio < 1
    assert c_key.shape == (16,) and c_key.argmax() == 15
    assert set(steps.key) == {0}
    hd.probs = None
    with pytest.raises(ValueError, match="probs"):
        P.vertical_windows(hd, P.slowest_channels(THETA, 2))


def test_first_key_label_from_the_tokenizer():
    class Tok:
        bos_token_id, bos_token = 1, "<s>"

    class NoBos:
        bos_token_id = None

    ids = np.array([[1, 5, 6], [1, 7, 8]])
    assert "BOS token `<s>`" in P.first_key_label(Tok(), ids)
    assert "no BOS" in P.first_key_label(NoBos(), ids)
    assert "not BOS" in P.first_key_label(Tok(), ids[:, 1:])


def test_vertical_strength_is_the_larger_column():
    df = pd.DataFrame({"sink_mass": [0.5, 0.01], "column_mass": [0.5, 0.4]})
    assert P.vertical_strength(df).tolist() == [0.5, 0.4]


def test_gallery_keeps_column_zero_visible():
    import matplotlib

    matplotlib.use("Agg")
    from tappa_utils.plots import plot_attention_gallery

    m = np.zeros((32, 32))
    m[:, 0] = 1.0
    fig = plot_attention_gallery([m])
    ax = fig.axes[0]
    assert ax.get_xlim()[0] < -0.5 and not any(s.get_visible() for s in ax.spines.values())


def test_logit_jump_steps_equal_the_direct_formula():
    rng = np.random.default_rng(4)
    q, k = rng.standard_normal((40, 32)), rng.standard_normal((40, 32))
    hd = synthetic_headdata(q, k)
    steps = P.logit_jump_steps(hd, skip=3)
    A = hd.relative_logits(0)
    for t in (3, 17, 38):
        row = steps[steps.t == t].iloc[0]
        terms = T.logit_jump_terms(q[t], q[t + 1], k[: t + 1], t, THETA)
        assert row.logit_jump == pytest.approx(np.abs(A[t + 1, : t + 1] - A[t, : t + 1]).max(), rel=1e-9)
        assert row.alignment * row.query_jump == pytest.approx(0.25 * np.abs(terms["query"]).max(), rel=1e-9)


def test_read_qsim_choice_refuses_a_choice_calibrated_on_the_held_out_windows(tmp_path):
    import json

    f = tmp_path / "qsim_choice.json"
    f.write_text(json.dumps({"variant": "q_sim_window_pre", "calibration_windows": [0, 1, 2, 3], "seq_len": 256,
                             "text_file": None}))
    assert P.read_qsim_choice(f, "m", held_out=[1, 2], seq_len=256) is None  # chosen on rows it would be tested on
    assert P.read_qsim_choice(f, "m", held_out=[4, 5], seq_len=256) == "q_sim_window_pre"
    assert P.read_qsim_choice(f, "m", held_out=[1, 2], seq_len=512) == "q_sim_window_pre"  # other windows


def test_head_masses_agree_with_analyze_heads():
    model = make_tiny_model()
    ids = torch.randint(3, 300, (2, 64), generator=torch.Generator().manual_seed(0))
    fast = P.head_masses(model, ids, skip=8)
    full = analyze_heads(model, ids, MetricConfig(skip=8))
    assert np.allclose(fast.sink_mass, full.sink_mass, atol=1e-6)
    assert np.allclose(fast.column_mass, full.column_mass, atol=1e-6)
    assert np.allclose(fast.fixed_key_mass, P.vertical_strength(full), atol=1e-6)


def test_slowest_channels_mean_the_same_on_any_base():
    for base in (1e4, 1e5, 1e6):
        theta = base ** (-np.arange(32) * 2 / 64)
        assert np.flatnonzero(P.slowest_channels(theta, 2)).tolist() == [30, 31]
    # whereas a cut at the context length takes more channels the larger the base
    counts = [int(P.low_frequency_mask(b ** (-np.arange(32) / 32), 512).sum()) for b in (1e4, 1e5)]
    assert counts[0] < counts[1]
    with pytest.raises(ValueError, match="low_freq_channels"):
        P.slowest_channels(np.ones(8), 8)
