"""capture(): every captured tensor against an independent float64 computation, on all tiny families, eager and sdpa."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import FAMILIES, make_tiny_model

from tappa_utils.capture import WHAT, capture, resolve_layers
from tappa_utils.models import UnsupportedModelError
from tappa_utils.rope import channel_frequencies, channel_logits

T = 40


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w.double()


def _inv_freq(cfg, d: int) -> torch.Tensor:
    """theta_m recomputed from the config alone (default and llama3 scaling), float64."""
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    base = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    if rope.get("rope_type", "default") == "llama3":
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        low_wl, high_wl = old / lo, old / hi
        out = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * inv / factor + smooth * inv
        is_mid = (wavelen >= high_wl) & (wavelen <= low_wl)
        inv = torch.where(is_mid, mid, out)
    return inv


def _rotate(x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(x.shape[-2], dtype=torch.float64)
    ang = pos[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], -1)
    return x * cos + rot * sin


def manual_layer(model, hidden: torch.Tensor, layer: int) -> dict[str, torch.Tensor]:
    """q/k pre and post RoPE, masked logits and probs of one layer from its input hidden states, all in float64."""
    cfg = model.config
    blk = model.model.layers[layer]
    attn = blk.self_attn
    d = cfg.head_dim
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    x = _rms(hidden.double(), blk.input_layernorm.weight, cfg.rms_norm_eps)

    def proj(lin, n):
        y = x @ lin.weight.double().T
        if lin.bias is not None:
            y = y + lin.bias.double()
        return y.reshape(x.shape[0], x.shape[1], n, d).transpose(1, 2)

    q, k = proj(attn.q_proj, H), proj(attn.k_proj, Hkv)
    if getattr(attn, "q_norm", None) is not None:
        q = _rms(q, attn.q_norm.weight, cfg.rms_norm_eps)
        k = _rms(k, attn.k_norm.weight, cfg.rms_norm_eps)
    inv = _inv_freq(cfg, d)
    qp, kp = _rotate(q, inv), _rotate(k, inv)
    kk = kp.repeat_interleave(H // Hkv, dim=1)
    logits = qp @ kk.transpose(-1, -2) / math.sqrt(d)
    n = x.shape[1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    logits = logits.masked_fill(~mask, float("-inf"))
    return {"q_pre": q, "k_pre": k, "q_post": qp, "k_post": kp, "logits": logits, "probs": logits.softmax(-1)}


def _ids(seed: int = 0, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (batch, T), generator=g)
    ids[:, 0] = 1
    return ids


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_captured_tensors_match_manual_float64(family, attn):
    model = make_tiny_model(family, attn=attn)
    ids = _ids()
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
        with capture(model, what=WHAT) as cap:
            model(ids)
    assert cap.layers() == list(range(model.config.num_hidden_layers))
    for layer in cap.layers():
        ref = manual_layer(model, hs[layer], layer)
        rec = cap[layer]
        assert rec.kv_group == 2
        for name, want in ref.items():
            got = getattr(rec, name)
            assert got is not None and got.shape == want.shape, name
            if name == "logits":
                finite = torch.isfinite(want)
                assert torch.equal(torch.isfinite(got), finite), "masked logits must be -inf exactly where masked"
                got, want = got[finite], want[finite]
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5, msg=f"{family}/{attn} L{layer} {name}")


def test_llama3_scaling_really_changes_frequencies():
    # guards the test above: the scaled family must not silently use plain base^(-2m/d) frequencies
    model = make_tiny_model("llama3_scaled")
    d = model.config.head_dim
    plain = 500000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ours = _inv_freq(model.config, d)
    assert not torch.allclose(plain, ours)
    torch.testing.assert_close(torch.as_tensor(channel_frequencies(model)), ours, rtol=1e-6, atol=0)


def test_model_outputs_bit_identical_with_and_without_capture(tiny_model):
    ids = _ids(1)
    with torch.no_grad():
        plain = model_out = tiny_model(ids).logits
        with capture(tiny_model, what=WHAT):
            model_out = tiny_model(ids).logits
    assert torch.equal(plain, model_out)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_after_exit_and_after_errors(tiny_llama):
    before = _hook_count(tiny_llama)
    with capture(tiny_llama, what=WHAT) as cap:
        assert _hook_count(tiny_llama) > before
        with torch.no_grad():
            tiny_llama(_ids())
    assert _hook_count(tiny_llama) == before and len(cap.layers()) == 3
    bad = torch.full((1, 5), 10_000)  # out of the vocabulary: refused before the forward
    with pytest.raises(ValueError, match="token id 10000, outside the model's vocabulary"):
        with capture(tiny_llama):
            tiny_llama(bad)
    assert _hook_count(tiny_llama) == before
    with pytest.raises(RuntimeError, match="boom"):
        with capture(tiny_llama, layers=[1]):
            raise RuntimeError("boom")
    assert _hook_count(tiny_llama) == before


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=64)).eval()
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        with capture(gpt2):
            pass


def test_layer_indices_are_validated(tiny_llama):
    assert resolve_layers(tiny_llama, [-1, 0]) == [0, 2]
    with pytest.raises(IndexError, match="3 layers"):
        with capture(tiny_llama, layers=[3]):
            pass
    with pytest.raises(TypeError):
        resolve_layers(tiny_llama, ["0"])
    with pytest.raises(ValueError, match="unknown capture fields"):
        with capture(tiny_llama, what=("attn",)):
            pass


def test_reducer_keeps_only_its_result(tiny_llama):
    seen = []

    def reducer(rec):
        seen.append(rec.layer)
        return float(rec.probs.sum())

    with torch.no_grad(), capture(tiny_llama, what=("probs",), reducer=reducer) as cap:
        tiny_llama(_ids(batch=1))
    assert seen == [0, 1, 2]
    for layer in range(3):  # each row of probabilities sums to one: T rows per head, 4 heads
        assert cap[layer] == pytest.approx(4 * T, rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "llama3_scaled", "qwen2"])
def test_channel_logits_sum_back_to_the_logit(family):
    model = make_tiny_model(family)
    with torch.no_grad(), capture(model, layers=[1], what=("q_pre", "k_pre", "logits")) as cap:
        model(_ids(batch=1))
    rec = cap[1]
    theta = channel_frequencies(model)
    for h, t, j in [(0, 5, 2), (3, T - 1, 0), (2, 20, 20), (1, 33, 7)]:
        parts = channel_logits(rec.q_pre[0, h, t], rec.k_pre[0, h // rec.kv_group, j], t, j, theta, rec.scaling)
        assert parts.shape == (model.config.head_dim // 2,)
        assert float(parts.sum()) == pytest.approx(float(rec.logits[0, h, t, j]), abs=1e-5)


def test_logits_are_lazy_and_absent_unless_asked(tiny_llama):
    ids = _ids(batch=1)
    with torch.no_grad(), capture(tiny_llama, layers=[0], what=("probs",)) as cap:
        tiny_llama(ids)
    assert cap[0].logits is None and cap[0].probs is not None
    with torch.no_grad(), capture(tiny_llama, layers=[0], what=("logits",)) as cap:
        tiny_llama(ids)
    rec = cap[0]
    assert rec._logits is None and rec.probs is None  # not built until read
    torch.testing.assert_close(rec.logits.softmax(-1), manual_layer(tiny_llama, tiny_llama.model.embed_tokens(ids), 0)
                               ["probs"].float(), atol=1e-5, rtol=1e-5)
    assert rec._logits is not None


# ---------------------------------------------------------------------------------------------------------------
# the streaming path of analyze: query blocks equal the full T x T computation


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "llama3_scaled"])
def test_block_stats_equal_the_full_path(family):
    from tappa_utils.metrics import MetricConfig, _record_stats, record_block_stats

    model = make_tiny_model(family, layers=2)
    ids = torch.randint(3, 300, (2, 256), generator=torch.Generator().manual_seed(5))
    cfg = MetricConfig()
    with torch.no_grad(), capture(model, what=("q_pre", "q_post", "k_post", "probs")) as cap:
        model(ids)
    for layer in cap.layers():
        full = _record_stats(cap[layer], cfg)
        blocks = record_block_stats(cap[layer], cfg, rows=64)
        odd = record_block_stats(cap[layer], cfg, rows=37)  # blocks that do not divide T - skip
        assert full.keys() == blocks.keys()
        for k in full:
            assert full[k].shape == blocks[k].shape, k
            for got in (blocks, odd):
                if k == "pred_gain":
                    # float32 sums over ~T^2 terms, and above-average masks (p >= 1 / (t + 1)) that flip where a
                    # probability sits within rounding of its row's level (near-uniform heads): compared at the
                    # scale of what predictability divides them by, the norm
                    assert float(((got[k] - full[k]) / full["pred_norm"]).abs().max()) < 1e-5, k
                else:
                    tol = dict(rtol=1e-5, atol=1e-5) if k == "pred_norm" else dict(rtol=0, atol=1e-6)
                    torch.testing.assert_close(got[k], full[k], msg=k, **tol)
        assert float(full["sink_mass"].max()) > 1e-3  # the statistics are not trivially zero


def test_block_rows_bounds_the_block():
    from tappa_utils.metrics import block_rows

    assert block_rows(14, 8192) == 2**26 // (4 * 14 * 8192)
    assert 4 * 14 * block_rows(14, 8192) * 8192 <= 2**26
    assert block_rows(4, 100) == 100 and block_rows(10**6, 10**6) == 1


def test_analyze_heads_block_size_does_not_change_the_table(tiny_llama):
    from tappa_utils.metrics import MetricConfig, analyze_heads

    ids = torch.randint(3, 300, (2, 200), generator=torch.Generator().manual_seed(6))
    cfg = MetricConfig(max_distance=100)
    a = analyze_heads(tiny_llama, ids, cfg)
    b = analyze_heads(tiny_llama, ids, cfg, rows=50)
    num = a.select_dtypes("number").columns
    assert (a[num] - b[num]).abs().max().max() < 1e-6 or a[num].equals(b[num])
    assert list(a["pattern"]) == list(b["pattern"])
    assert tiny_llama.config._attn_implementation == "eager"  # the sdpa switch is undone
