"""TAPPAPress: real per-layer eviction, budgets, kept entries, decoding on compressed caches, errors."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_model
from kvpress import KnormPress

from tappa_utils.kv.budgets import allocate_budgets
from tappa_utils.kv.decoding import cache_bytes, cache_lengths, continue_forward, prefill
from tappa_utils.kv.preference import qsim_all_pairs, qsim_consecutive
from tappa_utils.kv.tappa_press import TAPPAPress

T = 160


def _ids(seed: int = 0, n: int = T) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (1, n), generator=g)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("ratio", [0.5, 0.8])
@pytest.mark.parametrize("allocation", ["reference", "proportional"])
def test_cache_lengths_equal_budgets_and_memory_shrinks(family, ratio, allocation):
    model = make_tiny_model(family)
    press = TAPPAPress(compression_ratio=ratio, allocation=allocation)
    cache, _ = prefill(model, _ids(), press)
    full, _ = prefill(model, _ids())
    n_layers = len(cache.layers)
    assert cache_lengths(cache) == press.budgets
    assert sum(press.budgets) == round(T * n_layers * (1 - ratio))
    assert all(press.window <= b <= T for b in press.budgets)
    assert cache_bytes(cache) / cache_bytes(full) == pytest.approx(1 - ratio, rel=0.01)


def test_budgets_follow_q_similarity():
    model = make_tiny_model("llama", layers=4)
    press = TAPPAPress(compression_ratio=0.5, allocation="proportional")
    prefill(model, _ids(), press)
    pref = press.layer_preference
    assert pref == pytest.approx([1 - q for q in press.layer_qsim])
    total = sum(press.budgets)
    for b, p in zip(press.budgets, pref):  # B_l = P_l / sum(P) * total (no cap active here), up to rounding
        assert abs(b - total * p / sum(pref)) < 1
    ref = TAPPAPress(compression_ratio=0.5)  # reference: window + share of the non-window tokens
    prefill(model, _ids(), ref)
    w, rest = ref.protected_window, sum(ref.budgets) - 4 * ref.protected_window
    for b, p in zip(ref.budgets, ref.layer_preference):
        assert 0 <= (b - w) - int(rest * p / sum(ref.layer_preference)) <= 1  # truncation + remainder to the first


def test_token_budget_sums_and_caps():
    model = make_tiny_model("llama")
    press = TAPPAPress(token_budget=64)
    cache, _ = prefill(model, _ids(), press)
    assert sum(press.budgets) == 64 * 3 and cache_lengths(cache) == press.budgets
    big = TAPPAPress(token_budget=10_000)  # more than the context: nothing to evict
    cache, _ = prefill(model, _ids(), big)
    assert cache_lengths(cache) == [T] * 3


def test_ratio_zero_changes_nothing():
    model = make_tiny_model("llama")
    ids, cont = _ids(), _ids(1, 6)
    c0, last0 = prefill(model, ids, TAPPAPress(compression_ratio=0.0))
    c1, last1 = prefill(model, ids)
    assert torch.equal(last0, last1)
    assert all(torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) for a, b in zip(c0.layers, c1.layers))
    assert torch.equal(continue_forward(model, c0, cont, T), continue_forward(model, c1, cont, T))


def test_positions_continue_from_original_length():
    model = make_tiny_model("llama")
    ids, cont = _ids(), _ids(1, 6)
    cache, _ = prefill(model, ids)
    logits = continue_forward(model, cache, cont, T)
    ref = model(torch.cat([ids, cont], 1)).logits[0, T:]
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


def test_kept_entries_are_top_scored_plus_window():
    model = make_tiny_model("llama")
    ids = _ids()
    full, _ = prefill(model, ids)
    press = TAPPAPress(compression_ratio=0.7, scorer=KnormPress(), n_sink=2)
    cache, _ = prefill(model, ids, press)
    w = press.window
    for layer, (kept, budget) in enumerate(zip(press.kept_indices, press.budgets)):
        keys = full.layers[layer].keys[0]  # (H_kv, T, D)
        for h in range(keys.shape[0]):
            forced = set(range(T - w, T)) | {0, 1}
            score = -keys[h].norm(dim=-1)  # KnormPress's score
            score[list(forced)] = -math.inf
            top = set(score.topk(budget - len(forced)).indices.tolist())
            assert set(kept[0, h].tolist()) == top | forced
            torch.testing.assert_close(cache.layers[layer].keys[0, h], keys[h, kept[0, h]])
            torch.testing.assert_close(cache.layers[layer].values[0, h], full.layers[layer].values[0, h, kept[0, h]])


def test_layer_qsim_matches_capture():
    from tappa_utils.capture import capture

    model = make_tiny_model("qwen2")
    ids = _ids()
    for rope, kind in (("post", "all_pairs"), ("pre", "consecutive")):
        press = TAPPAPress(compression_ratio=0.5, rope=rope, qsim=kind)
        prefill(model, ids, press)
        with capture(model, what=("q_pre", "q_post")) as cap:
            model(ids)
        fn = qsim_all_pairs if kind == "all_pairs" else qsim_consecutive
        for layer in range(3):
            q = getattr(cap[layer], f"q_{rope}")[..., -press.window:, :]
            assert press.layer_qsim[layer] == pytest.approx(float(fn(q).mean()), abs=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_decoding_on_compressed_cache(attn):
    """Chunked continuation equals token-by-token (the per-layer mask is causal), eager equals sdpa."""
    ids, cont = _ids(), _ids(2, 5)
    outs = {}
    for impl in ("eager", "sdpa"):
        model = make_tiny_model("llama", attn=impl)
        cache, _ = prefill(model, ids, TAPPAPress(compression_ratio=0.6))
        assert len(set(cache_lengths(cache))) > 1  # really different lengths per layer
        outs[impl] = continue_forward(model, cache, cont, T)
    model = make_tiny_model("llama", attn=attn)
    cache, _ = prefill(model, ids, TAPPAPress(compression_ratio=0.6))
    steps = torch.cat([continue_forward(model, cache, cont[:, i:i + 1], T + i) for i in range(5)])
    torch.testing.assert_close(outs[attn], steps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs["eager"], outs["sdpa"], rtol=1e-4, atol=1e-4)
    full, _ = prefill(model, ids)
    assert not torch.allclose(outs[attn], continue_forward(model, full, cont, T))  # eviction matters


def test_cake_preference_and_alpha():
    """P = D^(1/tau1) V^(1/tau2) + alpha (1 - qsim), D and V from eager's own attention weights, window keys out."""
    model = make_tiny_model("llama")
    press = TAPPAPress(compression_ratio=0.5, alpha=2.0, tau1=1.6, tau2=0.4)
    cache, _ = prefill(model, _ids(), press)
    w = press.window
    with torch.no_grad():
        attn = model(_ids(), output_attentions=True).attentions
    for layer, a in enumerate(attn):
        a = a[0, :, -w:, :-w].double()  # (H, W, T - W)
        d = -(a * torch.log(a + 1e-10)).sum()
        v = a.var(dim=-2, unbiased=True).sum()
        expected = float(d ** (1 / 1.6) * v ** (1 / 0.4)) + 2.0 * (1 - press.layer_qsim[layer])
        assert press.layer_preference[layer] == pytest.approx(expected, rel=1e-3)
    assert sum(press.budgets) == round(T * 3 * 0.5) and cache_lengths(cache) == press.budgets


def test_kvpress_pipeline(default_model):
    from transformers import pipeline

    model, tok = default_model
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tok, device="cpu")
    ctx = "import os\n" * 30
    ref = pipe(ctx, question="def f(x):", max_new_tokens=6)["answer"]
    assert pipe(ctx, question="def f(x):", press=TAPPAPress(compression_ratio=0.0), max_new_tokens=6)["answer"] == ref
    press = TAPPAPress(compression_ratio=0.5)
    out = pipe(ctx, question="def f(x):", press=press, max_new_tokens=6)["answer"]
    assert isinstance(out, str) and sum(press.budgets) == round(press.seq_len * len(press.budgets) * 0.5)


def test_allocate_budgets():
    b = allocate_budgets([1, 1, 2], total=100, cap=1000)
    assert sum(b) == 100 and b[2] == 50
    b = allocate_budgets([10, 1, 1], total=150, cap=100, floor=10)
    assert sum(b) == 150 and b[0] == 100 and b[1] == b[2] == 25  # capped, excess redistributed
    b = allocate_budgets([100, 1, 0], total=60, cap=50, floor=5)
    assert sum(b) == 60 and min(b) >= 5 and max(b) <= 50
    assert allocate_budgets([0, 0], total=7, cap=10) in ([4, 3], [3, 4])
    with pytest.raises(ValueError, match="cannot be split"):
        allocate_budgets([1, 1], total=300, cap=100)
    with pytest.raises(ValueError, match="finite and >= 0"):
        allocate_budgets([1, -1], total=10, cap=100)


@pytest.mark.parametrize("kwargs, match", [
    (dict(compression_ratio=1.0), "compression_ratio"), (dict(window=1), "window"), (dict(rope="mid"), "rope"),
    (dict(qsim="cosine"), "qsim"), (dict(alpha=-1.0), "alpha"), (dict(token_budget=0), "token_budget"),
    (dict(n_sink=-1), "n_sink")])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TAPPAPress(**kwargs)


def test_bad_inputs_and_hooks_removed():
    model = make_tiny_model("llama")
    with pytest.raises(TypeError, match="ScorerPress"):
        TAPPAPress(scorer=object())
    press = TAPPAPress(compression_ratio=0.5)
    ids = torch.randint(3, 300, (2, 64))
    mask = torch.ones(2, 64, dtype=torch.long)
    mask[1, :5] = 0
    with pytest.raises(ValueError, match="padded batches"):
        with press(model):
            model(ids, attention_mask=mask)
    attn = model.model.layers[0].self_attn
    assert not attn._forward_hooks and not attn._forward_pre_hooks and not model.model._forward_hooks
