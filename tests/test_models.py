"""Random-weight shapes of public models and the in-place random-weight null."""
from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from tappa_utils import models as M


@pytest.mark.parametrize("name", list(M.SHAPES))
def test_shapes_have_the_public_architecture_and_parameter_count(name):
    model = M.random_model(name, device="meta")  # shape only: no memory, instant even for 8B
    cfg, pub = model.config, M.SHAPES[name]["config"]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings", "rms_norm_eps"):
        assert getattr(cfg, key) == pub[key], key
    assert cfg.rope_parameters["rope_theta"] == pub["rope_theta"]
    assert sum(p.numel() for p in model.parameters()) == M.SHAPES[name]["params"]
    attn = model.model.layers[0].self_attn
    assert attn.head_dim == pub.get("head_dim", pub["hidden_size"] // pub["num_attention_heads"])
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == pub["tie_word_embeddings"]


def test_shape_specific_features():
    llama = M.random_model("llama3.2-1b", device="meta")
    assert llama.config.rope_parameters["rope_type"] == "llama3" and llama.config.rope_parameters["factor"] == 32.0
    assert (llama.config.num_attention_heads, llama.config.num_key_value_heads, llama.config.head_dim) == (32, 8, 64)
    qwen2 = M.random_model("qwen2.5-0.5b", device="meta").model.layers[0].self_attn
    assert qwen2.q_proj.bias is not None and qwen2.k_proj.bias is not None and qwen2.v_proj.bias is not None
    assert qwen2.o_proj.bias is None
    qwen3 = M.random_model("qwen3-0.6b", device="meta")
    assert qwen3.model.layers[0].self_attn.q_norm is not None and qwen3.config.head_dim == 128
    assert M.shape_name("Qwen/Qwen2.5-0.5B") == M.shape_name("random:QWEN2.5-0.5B") == "qwen2.5-0.5b"
    with pytest.raises(ValueError, match="available"):
        M.shape_name("random:gpt2")


def test_load_model_random_name_builds_a_working_model_with_the_byte_tokenizer(monkeypatch):
    # qwen2.5-0.5b would cost ~2 GB; the path is the same for every shape, so check it on a small shape
    small = dict(M.SHAPES["qwen2.5-0.5b"], config={**M.SHAPES["qwen2.5-0.5b"]["config"], "num_hidden_layers": 2,
                                                   "vocab_size": 512, "hidden_size": 64, "intermediate_size": 96,
                                                   "num_attention_heads": 4, "num_key_value_heads": 2})
    monkeypatch.setitem(M.SHAPES, "tiny-qwen2", small)
    model, tok = M.load_model("random:tiny-qwen2", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as the config says
    ids = tok("hello", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id == model.config.bos_token_id
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    again, _ = M.load_model("random:tiny-qwen2", dtype="bfloat16")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # seeded
    w = model.model.layers[0].mlp.up_proj.weight.float()
    assert abs(w.std().item() - 0.02) < 0.002 and model.model.layers[0].self_attn.q_proj.bias.abs().max() == 0
    assert torch.allclose(model.model.rotary_emb.inv_freq, 1e6 ** (-torch.arange(0, 16, 2) / 16.0))


@pytest.mark.parametrize("mode", M.NULL_MODES)
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "llama3_scaled"])
def test_random_weights_in_place_equals_the_copy_and_restores_exactly(family, mode):
    model = make_tiny_model(family)
    ids = torch.randint(3, 300, (2, 24))
    with torch.no_grad():
        before = model(ids).logits.clone()
        copy_logits = M.random_weight_copy(model, seed=3)(ids).logits
        with M.random_weights(model, seed=3, mode=mode) as null:
            assert null is model
            inside = model(ids).logits.clone()
        after = model(ids).logits
    assert torch.equal(inside, copy_logits)  # same null, built in place or as a second model
    assert not torch.allclose(inside, before)
    assert torch.equal(after, before)
    with torch.no_grad(), M.random_weights(model, seed=4, mode=mode):
        other = model(ids).logits
    assert not torch.allclose(other, inside)  # the seed matters


def test_random_weights_swap_in_bfloat16_matches_per_forward_and_restores_exactly():
    model = make_tiny_model("qwen2").to(torch.bfloat16)  # the swap file holds raw bytes of any dtype
    ids = torch.randint(3, 300, (1, 20))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        with M.random_weights(model, seed=5, mode="swap"):
            swap = model(ids).logits.clone()
        with M.random_weights(model, seed=5, mode="per_forward"):
            per_forward = model(ids).logits.clone()
    assert torch.equal(swap, per_forward)
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


def test_random_weights_swap_restores_after_an_exception_and_checks_its_folder(tiny_llama, tmp_path):
    params = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"), M.random_weights(tiny_llama, seed=1, spill_dir=tmp_path):
        assert not torch.equal(tiny_llama.model.layers[0].self_attn.q_proj.weight,
                               params["model.layers.0.self_attn.q_proj.weight"])
        raise RuntimeError("inside")
    assert all(torch.equal(p, params[n]) for n, p in tiny_llama.named_parameters())
    assert list(tmp_path.iterdir()) == []  # the swap file is gone
    with pytest.raises(ValueError, match="spill_dir .* is not a folder"):
        with M.random_weights(tiny_llama, seed=1, spill_dir=tmp_path / "missing"):
            pass
    with pytest.raises(ValueError, match="mode must be one of swap, per_forward"):
        with M.random_weights(tiny_llama, seed=1, mode="copy"):
            pass
    assert all(torch.equal(p, params[n]) for n, p in tiny_llama.named_parameters())


def test_random_weights_restore_after_an_exception_mid_forward(tiny_llama):
    ids = torch.randint(3, 300, (1, 16))
    params = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}

    def boom(*_):
        raise RuntimeError("boom")

    h = tiny_llama.model.layers[1].mlp.register_forward_hook(boom)  # layer 1's attention is swapped when it fires
    try:
        with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), \
                M.random_weights(tiny_llama, seed=1, mode="per_forward"):
            tiny_llama(ids)
    finally:
        h.remove()
    assert all(torch.equal(p, params[n]) for n, p in tiny_llama.named_parameters())
    with pytest.raises(TypeError, match="seed"):
        with M.random_weights(tiny_llama, seed=None):
            pass


def test_shape_and_null_never_share_weights():
    small = make_tiny_model("llama")
    M._randomize(small, 0, "model")
    null = M.random_weight_copy(small, seed=0)
    assert not torch.equal(small.model.layers[0].self_attn.q_proj.weight, null.model.layers[0].self_attn.q_proj.weight)


def test_random_default_model_is_the_default_architecture_with_random_weights():
    from tappa_utils import load_model

    net, tok = load_model("random:tappa-tiny")
    trained, _ = load_model("tappa-tiny")
    assert net.config.to_dict()["num_hidden_layers"] == trained.config.num_hidden_layers
    assert [p.shape for p in net.parameters()] == [p.shape for p in trained.parameters()]
    w, v = net.model.layers[0].self_attn.q_proj.weight, trained.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(w, v)
    ids = tok("def f(x):\n    return x\n", return_tensors="pt").input_ids
    assert trained(ids).logits.std() > 5 * net(ids).logits.std()  # trained logits are confident, random ones flat


def test_random_draws_are_named_by_seed():
    """`random:tappa-tiny@N` is draw N of the architecture (`@0` is the plain name), reproducible, distinct from the
    other draws, read as code like tappa-tiny; a malformed draw is refused in one line before anything loads."""
    import torch

    from tappa_utils.data import default_text_kind
    from tappa_utils.models import load_model
    from tappa_utils.preflight import UsageError, check_model

    a, _ = load_model("random:tappa-tiny@3")
    b, _ = load_model("random:tappa-tiny@3")
    c, _ = load_model("random:tappa-tiny@4")
    z, _ = load_model("random:tappa-tiny")
    z0, _ = load_model("random:tappa-tiny@0")
    w = "model.layers.0.self_attn.q_proj.weight"
    sd = {k: m.state_dict()[w] for k, m in (("a", a), ("b", b), ("c", c), ("z", z), ("z0", z0))}
    assert torch.equal(sd["a"], sd["b"]) and not torch.equal(sd["a"], sd["c"]) and torch.equal(sd["z"], sd["z0"])
    assert default_text_kind("random:tappa-tiny@3") == "code"
    for bad in ("random:tappa-tiny@x", "random:tappa-tiny@-1"):
        with pytest.raises(UsageError, match="after '@' must be a non-negative integer"):
            check_model(bad)
