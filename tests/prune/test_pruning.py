"""tappa_utils.prune (scores, removal): scores against independent float64 loops, orders, layer removal consistency,
bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import FAMILIES, make_tiny_model

from tappa_utils import prune as P


def _ids(seed=0, n=2, T=20, vocab=300):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, T), generator=g)


def _manual_bi(model, ids, angular=False):
    """Plain loops in float64 over output_hidden_states (the last layer's output read before the final norm)."""
    model = model.double()
    norm = model.model.norm
    model.model.norm = torch.nn.Identity()  # so that hidden_states[-1] is the raw output of the last block
    try:
        with torch.no_grad():
            hs = model(ids, output_hidden_states=True).hidden_states
    finally:
        model.model.norm = norm
        model.float()
    L = len(hs) - 1
    out = []
    for layer in range(L):
        vals = []
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                x, y = hs[layer][b, t], hs[layer + 1][b, t]
                c = float(torch.dot(x, y) / (x.norm() * y.norm()))
                vals.append(math.acos(max(-1.0, min(1.0, c))) / math.pi if angular else 1 - c)
        out.append(sum(vals) / len(vals))
    return np.array(out)


def _manual_qsim(model, ids, mode="all_pairs"):
    """Queries recomputed by hand from q_proj (and q_norm for Qwen3), float64, loops over heads and token pairs."""
    model = model.double()
    inputs = {}
    hooks = [layer.self_attn.q_proj.register_forward_hook(
        lambda m, a, o, i=i: inputs.__setitem__(i, a[0].detach())) for i, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    res = []
    with torch.no_grad():
        res = [_layer_qsim(layer.self_attn, inputs[i], ids.shape[0], mode)
               for i, layer in enumerate(model.model.layers)]
    model.float()
    return np.array(res)


def _layer_qsim(attn, inputs, n_chunks, mode):
    """One layer's q-similarity from its q_proj inputs (float64 loops)."""
    d = attn.head_dim
    W = attn.q_proj.weight.double()
    bias = attn.q_proj.bias
    per_chunk = []
    for b in range(n_chunks):
        heads = []
        x = inputs[b]  # (T, hidden)
        q = x @ W.T + (bias.double() if bias is not None else 0)
        q = q.reshape(q.shape[0], -1, d)
        if getattr(attn, "q_norm", None) is not None:
            q = attn.q_norm(q)
        T = q.shape[0]
        for h in range(q.shape[1]):
            cs = []
            pairs = [(s, t) for s in range(T) for t in range(T) if s != t] if mode == "all_pairs" else \
                [(t, t + 1) for t in range(T - 1)]
            for s, t in pairs:
                u, v = q[s, h], q[t, h]
                cs.append(float(torch.dot(u, v) / (u.norm() * v.norm())))
            heads.append(sum(cs) / len(cs))
        per_chunk.append(sum(heads) / len(heads))
    return sum(per_chunk) / len(per_chunk)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_scores_match_independent_loops(family):
    model = make_tiny_model(family, layers=3)
    ids = _ids(T=12)
    s = P.layer_scores(model, ids, batch_size=1)
    np.testing.assert_allclose(s.bi, _manual_bi(model, ids), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s.qsim, _manual_qsim(model, ids), rtol=1e-4, atol=1e-6)
    assert len(set(np.round(s.bi, 6))) > 1  # distinct per layer, so the comparison is not trivial


def test_variants_match_loops_and_differ():
    model = make_tiny_model("qwen2", layers=2)
    ids = _ids(T=12)
    np.testing.assert_allclose(P.block_influence(model, ids, angular=True), _manual_bi(model, ids, angular=True),
                               rtol=1e-4, atol=1e-6)
    cons = P.query_similarity(model, ids, mode="consecutive")
    np.testing.assert_allclose(cons, _manual_qsim(model, ids, mode="consecutive"), rtol=1e-4, atol=1e-6)
    pre, post = P.query_similarity(model, ids, rope="pre"), P.query_similarity(model, ids, rope="post")
    assert not np.allclose(pre, post)  # RoPE changes the query directions
    together = P.query_similarity_variants(model, ids, batch_size=2)  # one pass gives each variant's own pass
    assert sorted(together) == ["post/all_pairs", "post/consecutive", "pre/all_pairs", "pre/consecutive"]
    np.testing.assert_allclose(together["pre/consecutive"], cons, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(together["pre/all_pairs"], pre, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(together["post/all_pairs"], post, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(together["post/consecutive"], P.query_similarity(model, ids, "post", "consecutive"),
                               rtol=1e-6, atol=1e-9)
    # the bias is included: without it the pre-RoPE similarity changes
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.zero_()
    assert not np.allclose(pre, P.query_similarity(model, ids, rope="pre"))


def test_batching_does_not_change_scores(tiny_llama):
    ids = _ids(n=3, T=16)
    a = P.layer_scores(tiny_llama, ids, batch_size=1)
    b = P.layer_scores(tiny_llama, ids, batch_size=3)
    np.testing.assert_allclose(a.bi, b.bi, rtol=1e-5)
    np.testing.assert_allclose(a.qsim, b.qsim, rtol=1e-5)


def test_query_similarity_of_known_cases():
    q = torch.ones(1, 5, 4)
    assert torch.allclose(P.query_similarity_of(q), torch.tensor([1.0], dtype=torch.float64))
    alt = torch.tensor([[1.0, 0], [-1.0, 0], [1.0, 0], [-1.0, 0]])[None]
    assert torch.allclose(P.query_similarity_of(alt, "consecutive"), torch.tensor([-1.0], dtype=torch.float64))
    # all pairs of 4 alternating vectors: 2 equal pairs (x2 orders) of 12 ordered pairs -> (4 - 8) / 12
    assert torch.allclose(P.query_similarity_of(alt), torch.tensor([-1 / 3], dtype=torch.float64))


def test_minmax_and_tappa_scores():
    bi = np.array([0.3, 0.1, 0.2, 0.5])
    qs = np.array([0.9, 0.2, 0.8, 0.4])
    n = P.minmax(bi)
    assert n.min() == 0 and n.max() == 1 and np.argmin(n) == 1
    assert np.all(P.minmax([2.0, 2.0, 2.0]) == 0)
    s = P.tappa_scores(bi, qs, 0.5)
    np.testing.assert_allclose(s, P.minmax(bi) + 0.5 * (1 - P.minmax(qs)))
    assert P.tappa_order(bi, qs, 0.0) == P.shortgpt_order(bi) == [1, 2, 0, 3]
    # a large beta makes the order follow q-similarity (highest first = removed first)
    assert P.tappa_order(bi, qs, 100.0) == list(np.argsort(-qs, kind="stable"))


def test_order_change_betas():
    rng = np.random.default_rng(3)
    bi, qs = rng.random(6), rng.random(6)
    cuts = P.order_change_betas(bi, qs)
    assert cuts == sorted(cuts) and all(c > 0 for c in cuts)
    assert P.tappa_order(bi, qs, cuts[0] * 0.99) == P.shortgpt_order(bi)
    assert P.tappa_order(bi, qs, cuts[0] * 1.01) != P.shortgpt_order(bi)
    # constant between consecutive change points, different across each one
    mids = [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + [cuts[-1] * 2]
    orders = [P.tappa_order(bi, qs, m) for m in mids]
    assert all(o1 != o2 for o1, o2 in zip(orders, orders[1:]))
    assert all(P.tappa_order(bi, qs, c * 1.001) == P.tappa_order(bi, qs, (c + n) / 2 if n else c * 1.5)
               for c, n in zip(cuts, cuts[1:] + [0]))


def test_orders_deterministic_with_ties():
    scores = [0.5, 0.1, 0.5, 0.1]
    assert P.prune_order(scores) == [1, 3, 0, 2]
    model = make_tiny_model("llama", layers=3)
    ids = _ids()
    a, b = P.layer_scores(model, ids), P.layer_scores(model, ids)
    assert P.tappa_order(a.bi, a.qsim, 0.2) == P.tappa_order(b.bi, b.qsim, 0.2)
    assert sorted(P.shortgpt_order(a.bi)) == [0, 1, 2]


def test_score_record_round_trip(tmp_path):
    rec = P.score_record("bi", "tiny", "train split", {"chunk_len": 8, "stride": 4, "n_chunks": 2, "x": 1},
                         [0.2, 0.1, 0.3])
    assert rec["prune_order"] == [1, 0, 2] and set(rec["chunking"]) == {"chunk_len", "stride", "n_chunks"}
    P.save_score_record(tmp_path / "bi.json", rec)
    back = P.load_score_record(tmp_path / "bi.json")
    assert back["scores"] == {0: 0.2, 1: 0.1, 2: 0.3} and back["prune_order"] == [1, 0, 2]
    (tmp_path / "bad.json").write_text('{"scores": {}}')
    with pytest.raises(ValueError, match="missing fields"):
        P.load_score_record(tmp_path / "bad.json")


@pytest.mark.parametrize("family, attn", [(f, "eager") for f in FAMILIES] + [("llama", "sdpa")])
def test_remove_layers_consistent_generation_and_original_untouched(family, attn):
    model = make_tiny_model(family, attn=attn, layers=4)
    ids = _ids(n=1, T=6)
    before = model(ids).logits.detach().clone()
    pruned = P.remove_layers(model, [1, 2])
    # original untouched
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    assert torch.equal(model(ids).logits, before)
    # pruned model is consistent
    assert pruned.config.num_hidden_layers == 2 and len(pruned.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    if getattr(pruned.config, "layer_types", None) is not None:
        assert len(pruned.config.layer_types) == 2
    assert pruned.config.tappa_removed_layers == [1, 2] and pruned.config.tappa_kept_layers == [0, 3]
    assert pruned.model.layers[1].mlp.up_proj.weight.data_ptr() != model.model.layers[3].mlp.up_proj.weight.data_ptr()
    assert torch.equal(pruned.model.layers[1].mlp.up_proj.weight, model.model.layers[3].mlp.up_proj.weight)
    # cached generation == manual full forward each step
    n_new = 8
    gen = pruned.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False,
                          pad_token_id=0, min_new_tokens=n_new)
    x = ids
    with torch.no_grad():
        for _ in range(n_new):
            x = torch.cat([x, pruned(x).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(gen, x)
    # and the pruned logits differ from the full model's (something was really removed)
    assert not torch.allclose(pruned(ids).logits, before)


def test_remove_layers_save_load_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_tiny_model("qwen2", layers=4)
    pruned = P.remove_layers(model, [0, 3])
    pruned.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = _ids(n=2, T=10)
    assert back.config.num_hidden_layers == 2 and back.config.tappa_removed_layers == [0, 3]
    with torch.no_grad():
        assert torch.equal(back(ids).logits, pruned(ids).logits)
    # pruning a pruned model keeps track of the original indices
    again = P.remove_layers(back, [1])
    assert again.config.tappa_removed_layers == [0, 2, 3] and again.config.tappa_kept_layers == [1]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_layers_removed_context_restores_exactly(family):
    model = make_tiny_model(family, layers=4)
    ids = _ids(n=1, T=8)
    before = model(ids).logits.detach().clone()
    cfg_before = model.config.to_dict()
    copy_pruned = P.remove_layers(model, [0, 2])
    with P.layers_removed(model, [0, 2]) as pruned:
        assert pruned is model and len(model.model.layers) == 2
        assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
        assert torch.equal(model(ids).logits, copy_pruned(ids).logits)
    assert torch.equal(model(ids).logits, before)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    assert model.config.to_dict() == cfg_before
    with pytest.raises(RuntimeError, match="boom"):
        with P.layers_removed(model, [3]):
            raise RuntimeError("boom")
    assert len(model.model.layers) == 4 and model.config.to_dict() == cfg_before
    with pytest.raises(ValueError, match="duplicate"):
        with P.layers_removed(model, [1, 1]):
            pass
    assert len(model.model.layers) == 4


def test_remove_layers_inplace():
    model = make_tiny_model("llama", layers=3)
    out = P.remove_layers(model, [0], inplace=True)
    assert out is model and len(model.model.layers) == 2 and model.config.num_hidden_layers == 2


@pytest.mark.parametrize("layers, exc, match", [
    ([0, 1, 2], ValueError, "cannot remove all"),
    ([3], IndexError, "out of range"),
    ([-1], IndexError, "out of range"),
    ([1, 1], ValueError, "duplicate"),
    ("12", TypeError, "list of layer indices"),
    (1, TypeError, "list of layer indices"),
    ([1.0], TypeError, "integers"),
    ([True], TypeError, "integers"),
])
def test_remove_layers_bad_requests(layers, exc, match):
    model = make_tiny_model("llama", layers=3)
    with pytest.raises(exc, match=match):
        P.remove_layers(model, layers)
    assert len(model.model.layers) == 3


@pytest.mark.parametrize("beta, exc", [(-0.1, ValueError), (float("nan"), ValueError), ("0.2", TypeError),
                                       (None, TypeError), (True, TypeError)])
def test_bad_beta(beta, exc):
    with pytest.raises(exc, match="beta"):
        P.tappa_scores([0.1, 0.2], [0.3, 0.4], beta)


def test_bad_score_inputs(tiny_llama):
    with pytest.raises(ValueError, match="one value per layer"):
        P.tappa_scores([0.1, 0.2], [0.3], 0.1)
    with pytest.raises(ValueError, match="NaN"):
        P.minmax([0.1, float("nan")])
    with pytest.raises(TypeError, match="input_ids"):
        P.layer_scores(tiny_llama, [[1, 2, 3]])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        P.layer_scores(tiny_llama, torch.ones(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="rope"):
        P.query_similarity(tiny_llama, _ids(), rope="middle")
    with pytest.raises(ValueError, match="mode"):
        P.query_similarity(tiny_llama, _ids(), mode="pairs")


def test_calibration_ids_from_training_split(default_model):
    _, tok = default_model
    a = P.calibration_ids(tok, seq_len=64, n_chunks=3, stride=32, seed=0)
    b = P.calibration_ids(tok, seq_len=64, n_chunks=3, stride=32, seed=0)
    c = P.calibration_ids(tok, seq_len=64, n_chunks=3, stride=32, seed=1)
    assert a.shape == (3, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.all(a[:, 0] == tok.bos_token_id)
    assert torch.equal(a[0, 33:], a[1, 1:32])  # chunks overlap by seq_len - 1 - stride tokens
    from tappa_utils.data import load_text

    held = load_text()
    calib = P.calibration_text(n_bytes=2000, seed=0)
    assert calib[:200] not in held
