"""TAPPAPress behaves like a kvpress press (kvpress's own test spirit, on local random models) and follows the
official code's budget rule (hand-computed cases); every registered press (`kv.methods.METHODS`) keeps the
invariants that apply to any press: the cache shrinks to the requested fraction, it holds entries of the full cache,
the window stays (where the method keeps one), batches, hooks, decoding and generate work."""
from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_tiny_model
from kvpress import (
    ComposedPress,
    DecodingPress,
    KnormPress,
    KVPressTextGenerationPipeline,
    PrefillDecodingPress,
    SnapKVPress,
)

from tappa_utils.kv.budgets import adjust_budgets, reference_budgets
from tappa_utils.kv.cake_press import CAKEPress
from tappa_utils.kv.cake_score_press import CAKEScorePress
from tappa_utils.kv.decoding import cache_lengths, continue_forward, greedy_decode, prefill
from tappa_utils.kv.methods import METHODS, make_press
from tappa_utils.kv.tappa_press import TAPPAPress

T = 128


def _ids(seed: int = 0, n: int = T, batch: int = 1) -> torch.Tensor:
    return torch.randint(3, 300, (batch, n), generator=torch.Generator().manual_seed(seed))


# ---- the official budget rule, hand-computed --------------------------------------------------------------------
def test_reference_rule_truncates_and_gives_the_remainder_to_the_first_layers():
    # shares 10/3 each -> int 3 3 3 (sum 9), one token short -> to layer 0; then + window 2
    assert reference_budgets([1, 1, 1], total=10 + 3 * 2, seq_len=100, window=2) == [6, 5, 5]
    # exact proportions: 100 non-window tokens as 10 20 30 40, + window 2
    assert reference_budgets([1, 2, 3, 4], total=100 + 4 * 2, seq_len=100, window=2) == [12, 22, 32, 42]


def test_reference_rule_caps_and_redistributes():
    # shares 10, 9.5, 0.5 of 20 with cap 8: int 10 9 0 -> capped 8 8 0, excess 3 -> layer 2 (3), short 1 -> layer 2
    assert adjust_budgets([10, 9.5, 0.5], total=20, cap=8) == [8, 8, 4]
    assert reference_budgets([10, 9.5, 0.5], total=20 + 3 * 4, seq_len=12, window=4) == [12, 12, 8]


def test_reference_rule_overshoot_is_clamped_as_the_reference_does():
    # shares 12 7 1 of 20, cap 8: capped 8 7 1, excess 4 spread evenly over layers 1, 2 -> 8 9 3: layer 1 ends above
    # the cap (the reference does not re-check); the caller clamps it, so one token of the total is lost
    assert adjust_budgets([12, 7, 1], total=20, cap=8) == [8, 9, 3]
    b = reference_budgets([12, 7, 1], total=20 + 3 * 4, seq_len=12, window=4)
    assert b == [12, 12, 7] and sum(b) == 31


def test_reference_rule_errors():
    with pytest.raises(ValueError, match="must lie in"):
        reference_budgets([1, 1], total=3, seq_len=10, window=2)
    with pytest.raises(ValueError, match="finite and >= 0"):
        reference_budgets([1, float("nan")], total=10, seq_len=10, window=2)


def test_press_budgets_are_the_reference_rule_of_its_preferences():
    model = make_tiny_model("llama", layers=6)
    press = TAPPAPress(compression_ratio=0.75)
    prefill(model, _ids(n=256), press)
    total = round(256 * 6 * 0.25)
    assert press.budgets == reference_budgets(press.layer_preference, total, 256, press.window)
    prop = TAPPAPress(compression_ratio=0.75, allocation="proportional")
    prefill(model, _ids(n=256), prop)
    assert prop.layer_preference == press.layer_preference and prop.budgets != press.budgets
    assert sum(prop.budgets) == total


# ---- every ratio, window shrink, kept entries --------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.8, 0.9, 0.99])
@pytest.mark.parametrize("allocation", ["reference", "proportional"])
def test_every_ratio(ratio, allocation):
    model = make_tiny_model("llama")
    press = TAPPAPress(compression_ratio=ratio, allocation=allocation)
    cache, _ = prefill(model, _ids(), press)
    total = max(round(T * 3 * (1 - ratio)), 3)
    assert cache_lengths(cache) == press.budgets and sum(press.budgets) == total
    w = press.protected_window
    assert w == (T if ratio == 0 else min(32, total // 3))  # the window shrinks when the budget cannot hold it
    for kept in press.kept_indices:
        if kept is not None:  # the protected window is always kept
            assert (kept[..., -w:] == torch.arange(T - w, T)).all()
    logits = continue_forward(model, cache, _ids(1, 4), T)
    assert torch.isfinite(logits).all()


def test_default_scorer_keeps_the_top_of_cakes_score():
    """Kept tokens = window + top of CAKE's mean + 200 var (pooled, group-averaged), from eager's own attention."""
    model = make_tiny_model("llama")
    ids = _ids()
    press = TAPPAPress(compression_ratio=0.6)
    prefill(model, ids, press)
    attn = model(ids, output_attentions=True).attentions
    w = press.window
    for layer, (a, kept, budget) in enumerate(zip(attn, press.kept_indices, press.budgets)):
        a = a[:, :, -w:]
        s = a.mean(-2) + 200 * a.var(-2)
        s = torch.nn.functional.avg_pool1d(s[..., :-w], 5, padding=2, stride=1)
        s = s.view(1, 2, 2, -1).mean(2)  # 4 query heads in 2 KV groups
        for h in range(2):
            top = set(s[0, h].topk(budget - w).indices.tolist()) | set(range(T - w, T))
            assert set(kept[0, h].tolist()) == top, (layer, h)


def test_kvpress_scorers_accepted_and_change_the_ranking():
    model = make_tiny_model("llama")
    a, b = TAPPAPress(compression_ratio=0.6), TAPPAPress(compression_ratio=0.6, scorer=SnapKVPress(window_size=32))
    prefill(model, _ids(), a)
    prefill(model, _ids(), b)
    assert a.budgets == b.budgets
    assert any(not torch.equal(x, y) for x, y in zip(a.kept_indices, b.kept_indices))
    c = TAPPAPress(compression_ratio=0.6, scorer=CAKEScorePress(window_size=16))  # generic path, other window
    prefill(model, _ids(), c)
    assert any(not torch.equal(x, y) for x, y in zip(a.kept_indices, c.kept_indices))


def test_cake_press_overrides_only_the_preference():
    model = make_tiny_model("llama")
    cake = CAKEPress(compression_ratio=0.5, tau1=1.6, tau2=0.4)
    mixed = TAPPAPress(compression_ratio=0.5, alpha=0.0, tau1=1.6, tau2=0.4)  # alpha 0: CAKE's preference alone
    prefill(model, _ids(), cake)
    prefill(model, _ids(), mixed)
    assert cake.layer_preference == pytest.approx(mixed.layer_preference) and cake.budgets == mixed.budgets


# ---- batches ------------------------------------------------------------------------------------------------------
def test_batch_shares_layer_lengths_and_chooses_tokens_per_sequence():
    model = make_tiny_model("llama")
    a, b = _ids(0), _ids(1)
    single = TAPPAPress(compression_ratio=0.6)
    prefill(model, a, single)
    twin = TAPPAPress(compression_ratio=0.6)
    with twin(model):
        cache = model(torch.cat([a, a]), use_cache=True).past_key_values
    assert twin.budgets == single.budgets == cache_lengths(cache)
    assert all(torch.equal(k[0], k[1]) and torch.equal(k[:1], s)
               for k, s in zip(twin.kept_indices, single.kept_indices))
    mixed = TAPPAPress(compression_ratio=0.6)
    with mixed(model):
        cache = model(torch.cat([a, b, a]), use_cache=True).past_key_values
    assert cache_lengths(cache) == mixed.budgets
    assert all(torch.equal(k[0], k[2]) for k in mixed.kept_indices)
    assert any(not torch.equal(k[0], k[1]) for k in mixed.kept_indices)  # tokens chosen per sequence
    nxt = torch.tensor([[5], [6], [5]])
    logits = model(nxt, past_key_values=cache, position_ids=torch.full((3, 1), T)).logits
    torch.testing.assert_close(logits[0], logits[2])


def test_padded_batch_refused_in_one_line():
    model = make_tiny_model("llama", attn="sdpa")
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, :3] = 0
    with pytest.raises(ValueError, match="padded batches") as e:
        with TAPPAPress(compression_ratio=0.5)(model):
            model(_ids(batch=2), attention_mask=mask)
    assert "\n" not in str(e.value)


# ---- hooks and wrappers ---------------------------------------------------------------------------------------------
def test_context_manager_adds_and_removes_hooks():
    model = make_tiny_model("llama")
    press = TAPPAPress(compression_ratio=0.5)
    with press(model):
        assert all(len(layer.self_attn._forward_hooks) == 1 for layer in model.model.layers)
    assert all(not layer.self_attn._forward_hooks and not layer.self_attn._forward_pre_hooks
               for layer in model.model.layers)
    assert not model.model._forward_hooks and not model.model._forward_pre_hooks
    cache, _ = prefill(model, _ids())  # outside the block: no compression
    assert cache_lengths(cache) == [T] * 3


@pytest.mark.parametrize("wrap", ["composed", "prefill_decoding"])
def test_wrappers_compress_like_the_press_alone(wrap):
    model = make_tiny_model("llama")
    alone = TAPPAPress(compression_ratio=0.6)
    ref, _ = prefill(model, _ids(), alone)
    inner = TAPPAPress(compression_ratio=0.6)
    press = ComposedPress([inner]) if wrap == "composed" else PrefillDecodingPress(prefilling_press=inner)
    cache, _ = prefill(model, _ids(), press)
    assert cache_lengths(cache) == alone.budgets == inner.budgets and min(inner.budgets) < T
    assert all(torch.equal(x.keys, y.keys) for x, y in zip(cache.layers, ref.layers))


@pytest.mark.parametrize("presses", [lambda: [TAPPAPress(compression_ratio=0.5), KnormPress(compression_ratio=0.5)],
                                     lambda: [KnormPress(compression_ratio=0.5), TAPPAPress(compression_ratio=0.5)]])
def test_composed_with_another_pruning_press_raises(presses):
    model = make_tiny_model("llama")
    with pytest.raises(ValueError, match="only token-pruning press"):
        prefill(model, _ids(), ComposedPress(presses()))


@pytest.mark.parametrize("press", [TAPPAPress, CAKEPress])
def test_key_rerotation_refuses_tappa_in_one_line_and_its_fix_works(press):
    from kvpress import KeyRerotationPress

    with pytest.raises(ValueError, match=f"KeyRerotationPress cannot wrap {press.__name__}.*use the press alone") as e:
        KeyRerotationPress(press(compression_ratio=0.5))
    assert "\n" not in str(e.value)
    cache, last = prefill(make_tiny_model("llama"), _ids(), KeyRerotationPress(CAKEScorePress(compression_ratio=0.5)))
    assert cache_lengths(cache) == [T // 2] * 3 and torch.isfinite(last).all()
    with pytest.raises(AssertionError):  # other presses: kvpress's own check, untouched
        KeyRerotationPress(ComposedPress([KnormPress(compression_ratio=0.5)]))


def test_wrappers_that_need_a_scorer_refuse_it():
    with pytest.raises(AssertionError, match="ScorerPress"):
        DecodingPress(base_press=TAPPAPress(compression_ratio=0.5))
    with pytest.raises(NotImplementedError, match="not a ScorerPress"):
        TAPPAPress().score()
    with pytest.raises(NotImplementedError, match="last layer"):
        TAPPAPress().compress(None, None, None, None, None, {})


# ---- decoding, generate, pipeline -----------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_generate_equals_decoding_on_the_compressed_cache(attn):
    model = make_tiny_model("llama", attn=attn)
    model.generation_config.pad_token_id = 0
    ids = _ids()
    press = TAPPAPress(compression_ratio=0.7)
    with press(model):
        out = model.generate(ids, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    cache, last = prefill(model, ids, TAPPAPress(compression_ratio=0.7))
    tokens = greedy_decode(model, cache, last, T, 6)
    assert out.sequences[0, T:].tolist() == tokens
    torch.testing.assert_close(out.scores[0][0], last, rtol=1e-4, atol=1e-4)
    full = model.generate(ids, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert not torch.allclose(full.scores[-1], out.scores[-1], atol=1e-3)  # the compressed cache mattered


@pytest.fixture(scope="module")
def pipe(default_model):
    model, tok = default_model
    return KVPressTextGenerationPipeline(model=model, tokenizer=tok, device="cpu")


CONTEXT = "def add(a, b):\n    return a + b\n\n\nclass Stack:\n    def __init__(self):\n        self.items = []\n" * 2


def _manual_answer(pipe, question: str, ratio: float, max_new_tokens: int) -> str:
    """Pipeline's recipe by hand: compress bos + context, feed question + newline at original positions, greedy."""
    model, tok = pipe.model, pipe.tokenizer
    ctx = tok.encode(tok.bos_token + CONTEXT, return_tensors="pt", add_special_tokens=False)
    q = tok.encode(question + "\n", return_tensors="pt", add_special_tokens=False)
    cache, _ = prefill(model, ctx, TAPPAPress(compression_ratio=ratio))
    logits = continue_forward(model, cache, q, ctx.shape[1])
    tokens = greedy_decode(model, cache, logits[-1], ctx.shape[1] + q.shape[1], max_new_tokens)
    return tok.decode(tokens, skip_special_tokens=True)


def test_pipeline_one_question_logs_every_layer(pipe, caplog):
    press = TAPPAPress(compression_ratio=0.7)
    with caplog.at_level(logging.DEBUG):
        answer = pipe(CONTEXT, question="    def push", press=press, max_new_tokens=8)["answer"]
    assert answer == _manual_answer(pipe, "    def push", 0.7, 8)
    line = [r.message for r in caplog.records if "per layer" in r.message]
    assert line == [f"Compressed Context Length per layer: {press.budgets}"]
    assert len(press.budgets) == pipe.model.config.num_hidden_layers and len(set(press.budgets)) > 1


def test_pipeline_several_questions_about_one_compressed_context(pipe):
    questions = ["    def push", "def sub(a, b):", ""]
    press = TAPPAPress(compression_ratio=0.7)
    answers = pipe(CONTEXT, questions=questions, press=press, max_new_tokens=8)["answers"]
    assert answers == [_manual_answer(pipe, q, 0.7, 8) for q in questions]
    assert answers == [pipe(CONTEXT, question=q, press=TAPPAPress(compression_ratio=0.7), max_new_tokens=8)["answer"]
                       for q in questions[:2]] + answers[2:]


@pytest.mark.parametrize("make", [lambda: TAPPAPress(compression_ratio=0.4, window=4),
                                  lambda: SnapKVPress(compression_ratio=0.4, window_size=4)], ids=["tappa", "snapkv"])
def test_kvpress_test_generate_recipe_with_a_four_token_window(default_model, make):
    """kvpress's own `test_generate`: the pipeline's answer (context compressed, "\\n" fed after it) equals
    `model.generate` inside the press on context + "\\n" (the press then also sees the newline), at window 4."""
    _, tok = default_model
    model = make_tiny_model("llama")
    model.generation_config.pad_token_id = 0
    pipe = KVPressTextGenerationPipeline(model=model, tokenizer=tok, device="cpu")
    context = "This is a test article. It was written on 2022-01-01. " * 6
    answer = pipe(context, press=make(), max_new_tokens=10)["answer"]
    ids = tok.encode(tok.bos_token + context + "\n", return_tensors="pt", add_special_tokens=False)
    press = make()
    with press(model):
        out = model.generate(ids, max_new_tokens=10, do_sample=False)
    assert answer == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    if isinstance(press, TAPPAPress):
        assert sum(press.budgets) < 0.7 * ids.shape[1] * model.config.num_hidden_layers  # it did compress


# ---- every registered press ----------------------------------------------------------------------------------------
PRESSES = [m for m in METHODS if m != "full"]
EVICTING = [m for m in PRESSES if not METHODS[m].head_masks]  # the cache itself shrinks
MASKING = [m for m in PRESSES if METHODS[m].head_masks]  # the whole cache stays; entries are masked per head
WINDOW = 16


@pytest.mark.parametrize("keep", [0.25, 0.5])
@pytest.mark.parametrize("method", MASKING)
def test_registered_head_mask_press_masks_the_requested_fraction_and_keeps_the_cache(method, keep):
    model = _with_tokenizer(make_tiny_model("llama", attn="sdpa"))  # kvpress's AdaKV refuses eager attention
    n, kv_heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    ids = _ids()
    full, _ = prefill(model, ids)
    cache, last = prefill(model, ids, make_press(method, keep, window=WINDOW))
    for a, b in zip(cache.layers, full.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    masked = sum(len(layer.self_attn.masked_key_indices[0]) for layer in model.model.layers)
    assert abs(masked - (1 - keep) * T * kv_heads * n) <= n * kv_heads, masked
    assert torch.isfinite(last).all()


def _kept_positions(full, compressed) -> list[list[list[int]]]:
    """Per layer and KV head, the positions of the full cache that the compressed cache holds (keys and values both
    equal); fails if an entry is not in the full cache or appears twice."""
    out = []
    for layer, (f, c) in enumerate(zip(full.layers, compressed.layers)):
        heads = []
        for h in range(f.keys.shape[1]):
            same = ((c.keys[0, h, :, None] == f.keys[0, h, None]).all(-1)
                    & (c.values[0, h, :, None] == f.values[0, h, None]).all(-1))  # (kept, T)
            assert (same.sum(-1) == 1).all(), f"layer {layer} head {h}: an entry not (once) in the full cache"
            pos = same.int().argmax(-1).tolist()
            assert len(set(pos)) == len(pos), f"layer {layer} head {h}: a position kept twice"
            heads.append(pos)
        out.append(heads)
    return out


@pytest.mark.parametrize("keep", [0.25, 0.5])
@pytest.mark.parametrize("method", EVICTING)
def test_registered_press_shrinks_the_cache_to_the_requested_fraction(method, keep):
    model = make_tiny_model("llama")
    n = model.config.num_hidden_layers
    cache, last = prefill(model, _ids(), make_press(method, keep, window=WINDOW))
    lengths = cache_lengths(cache)
    assert all(layer.values.shape[2] == k for layer, k in zip(cache.layers, lengths))
    assert max(lengths) < T and abs(sum(lengths) - keep * T * n) <= n, lengths
    assert torch.isfinite(last).all()
    assert make_press(method, 1.0) is None  # nothing to evict: no press


@pytest.mark.parametrize("method", EVICTING)
def test_registered_press_keeps_entries_of_the_full_cache_and_its_window(method):
    model = make_tiny_model("llama")
    ids = _ids()
    full, _ = prefill(model, ids)
    cache, _ = prefill(model, ids, make_press(method, 0.5, window=WINDOW))
    kept = _kept_positions(full, cache)
    assert [len(layer[0]) for layer in kept] == cache_lengths(cache)
    if METHODS[method].keeps_window:
        window = set(range(T - WINDOW, T))
        missing = [(i, h) for i, layer in enumerate(kept) for h, pos in enumerate(layer) if not window <= set(pos)]
        assert not missing, f"{method} dropped part of the last {WINDOW} tokens in (layer, head) {missing}"


@pytest.mark.parametrize("method", EVICTING)
def test_registered_press_hooks_are_removed_and_a_batch_compresses_each_sequence_alone(method):
    model = make_tiny_model("llama")
    ids = _ids()
    single, _ = prefill(model, ids, make_press(method, 0.5, window=WINDOW))
    press = make_press(method, 0.5, window=WINDOW)
    with press(model):
        assert any(layer.self_attn._forward_hooks for layer in model.model.layers)
        cache = model(torch.cat([ids, ids]), use_cache=True).past_key_values
    assert all(not layer.self_attn._forward_hooks and not layer.self_attn._forward_pre_hooks
               for layer in model.model.layers)
    for a, b in zip(cache.layers, single.layers):
        torch.testing.assert_close(a.keys, torch.cat([b.keys, b.keys]))
        torch.testing.assert_close(a.values, torch.cat([b.values, b.values]))


def _with_tokenizer(model):
    """KVzip loads a tokenizer from `model.config.name_or_path` (for its reconstruction prompt): give the random
    model tappa-tiny's byte tokenizer (259 ids, within the test models' 300)."""
    from tappa_utils.models import ASSETS, DEFAULT_MODEL

    model.config.name_or_path = str(ASSETS / DEFAULT_MODEL)
    return model


def test_kvzip_runs_its_own_prefill_and_its_cache_decodes_differently_from_the_full_one():
    """KVzip compresses after the prefill (re-reading the context), so `with press(model): model.generate(...)` would
    decode on the full cache (kvpress's pipeline prefills in the press and generates after it): the registered
    method is marked `own_prefill`, `compressed_caches` gives exactly its real prefill's masks, and its next-token
    logits differ from the full cache's."""
    from tappa_utils.kv.evaluate import compressed_caches
    from tappa_utils.kv.methods import needs_own_prefill

    assert {m for m in PRESSES if METHODS[m].own_prefill} == {m for m in PRESSES
                                                              if needs_own_prefill(make_press(m, 0.5))} == {"kvzip"}
    model = _with_tokenizer(make_tiny_model("llama", attn="sdpa"))
    ids = _ids()
    caches, last = compressed_caches(model, ids, {"kvzip": make_press("kvzip", 0.4), "full": None})
    ref, ref_last = prefill(model, ids, make_press("kvzip", 0.4))
    from tappa_utils.kv.decoding import _HEAD_MASKS, keep_head_masks

    keep_head_masks(ref, model.model.layers)
    got, want = getattr(caches["kvzip"], _HEAD_MASKS), getattr(ref, _HEAD_MASKS)
    assert all(torch.equal(a, b) for i in got for a, b in zip(got[i], want[i]))
    n = model.config.num_hidden_layers
    assert abs(sum(cache_lengths(caches["kvzip"])) / (n * T) - 0.4) < 0.02
    nxt = torch.tensor([[7]])
    assert not torch.allclose(continue_forward(model, caches["kvzip"], nxt, T),
                              continue_forward(model, caches["full"], nxt, T), atol=1e-4)  # the masks mattered


@pytest.mark.parametrize("method", [m for m in PRESSES if not METHODS[m].own_prefill])
def test_registered_press_generate_equals_decoding_on_its_compressed_cache(method):
    model = make_tiny_model("llama", attn="sdpa")
    model.generation_config.pad_token_id = 0
    ids = _ids()
    with make_press(method, 0.3, window=WINDOW)(model):
        out = model.generate(ids, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    cache, last = prefill(model, ids, make_press(method, 0.3, window=WINDOW))
    assert out.sequences[0, T:].tolist() == greedy_decode(model, cache, last, T, 6)
    full = model.generate(ids, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert not torch.allclose(full.scores[-1], out.scores[-1], atol=1e-4)  # the compressed cache mattered
