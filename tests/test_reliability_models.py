"""Reliability (issue 29): never a silently wrong model. Weights that do not match their config, NaN/inf in weights
or activations, padded batches and malformed inputs each stop with one clear error (library) or exit status 2 with
one line and no output folder (command line), instead of running on random weights or mislabelled numbers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from safetensors.torch import load_file, save_file

from tappa_utils import models as M
from tappa_utils.capture import attention_from_qk, capture
from tappa_utils.metrics import MetricConfig, analyze_heads

LAYERS = 3


def _edit_config(folder: Path, **fields) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(fields)
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_weights(folder: Path, fn) -> None:
    path = folder / "model.safetensors"
    sd = load_file(path)
    fn(sd)
    save_file(sd, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A good tiny Llama folder (3 layers, byte tokenizer) and variants whose weights disagree with the config."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tappa_utils.tiny.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("weights")
    good = root / "good"
    model = make_tiny_model("llama", layers=LAYERS)
    model.config.bos_token_id = 256
    model.save_pretrained(good)
    build_tokenizer().save_pretrained(good)
    d = {"good": good}

    def variant(name: str) -> Path:
        d[name] = shutil.copytree(good, root / name)
        return d[name]

    _edit_config(variant("more_layers"), num_hidden_layers=LAYERS + 2)
    _edit_config(variant("fewer_layers"), num_hidden_layers=LAYERS - 1)
    _edit_weights(variant("missing"), lambda sd: sd.pop("model.layers.1.self_attn.k_proj.weight"))
    _edit_config(variant("shape"), intermediate_size=96)
    _edit_weights(variant("extra"), lambda sd: sd.update({"model.layers.0.self_attn.extra.weight": torch.ones(2)}))

    def nan(sd):
        sd["model.layers.1.self_attn.k_proj.weight"][5, 3] = float("nan")

    _edit_weights(variant("nan"), nan)
    gpt2 = variant("gpt2")  # GPT-2 weights under the Llama config.json and tokenizer
    (gpt2 / "model.safetensors").unlink()
    GPT2LMHeadModel(GPT2Config(n_layer=LAYERS, n_embd=64, n_head=4, vocab_size=300, n_positions=128)).save_pretrained(
        root / "gpt2_src")
    shutil.copy(root / "gpt2_src" / "model.safetensors", gpt2 / "model.safetensors")
    return d


MISMATCHES = {
    "more_layers": f"config.json declares {LAYERS + 2} decoder layers but the weights hold {LAYERS}: "
                   f"layers {LAYERS}..{LAYERS + 1} would run on random weights",
    "fewer_layers": f"config.json declares {LAYERS - 1} decoder layers but the weights hold {LAYERS}: "
                    f"the weights' layers {LAYERS - 1}..{LAYERS - 1} would be dropped",
    "missing": "the weights lack model.layers.1.self_attn.k_proj.weight that config.json declares",
    "shape": "model.layers.0.mlp.gate_proj.weight has shape [128, 64] in the weights but [96, 64] in config.json",
    "extra": "the weights hold model.layers.0.self_attn.extra.weight that config.json's llama model has no place for",
    "gpt2": "not those of the llama model that config.json describes",
}


# ------------------------------------------------------------------------------------------------ weights vs config


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_weights_that_disagree_with_the_config_are_refused_before_building(case, folders, monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*a, **k):
        raise AssertionError("the model was built before its weights were checked against config.json")

    assert M.weights_mismatch(folders[case]).startswith(MISMATCHES[case]) or MISMATCHES[case] in M.weights_mismatch(
        folders[case])
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(M.WeightsMismatchError) as e:
        M.load_model(str(folders[case]))
    assert MISMATCHES[case] in str(e.value) and str(folders[case]) in str(e.value)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("case", ["more_layers", "fewer_layers", "missing"])
def test_loading_info_is_the_second_check(case, folders, monkeypatch):
    monkeypatch.setattr(M, "check_weights_match", lambda folder: None)  # as for weights without safetensors headers
    with pytest.raises(M.WeightsMismatchError, match="config.json and weights disagree"):
        M.load_model(str(folders[case]))


def test_matching_weights_pass_tied_heads_and_stored_rotary_buffers_included(folders, tmp_path):
    assert M.weights_mismatch(folders["good"]) is None
    assert M.weights_mismatch(M.resolve_model_path("tappa-tiny")) is None  # tied LM head: not stored in the file
    assert "lm_head.weight" not in M.checkpoint_shapes(M.resolve_model_path("tappa-tiny"))
    old = shutil.copytree(folders["good"], tmp_path / "old")  # older exports stored rotary inv_freq buffers
    _edit_weights(old, lambda sd: sd.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}))
    assert M.weights_mismatch(old) is None
    model, _ = M.load_model(str(old))
    assert M.num_layers(model) == LAYERS
    assert M.checkpoint_shapes(tmp_path) is None  # no safetensors weights: nothing to check from headers


def test_unreadable_header_is_one_line(folders, tmp_path):
    bad = shutil.copytree(folders["good"], tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(M.WeightsMismatchError, match="cannot read its safetensors header"):
        M.weights_mismatch(bad)


# ------------------------------------------------------------------------------------------------ NaN / inf


def test_nan_in_the_weights_is_named_by_parameter(folders):
    with pytest.raises(M.NonFiniteError) as e:
        M.load_model(str(folders["nan"]))
    msg = str(e.value)
    assert "model.layers.1.self_attn.k_proj.weight holds 1 NaN and 0 infinite values (first at [5, 3])" in msg


def test_check_finite_weights_reads_every_chunk():
    model = make_tiny_model("qwen2")
    M.check_finite_weights(model)  # finite: no error
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[-1, -1] = float("inf")
    with pytest.raises(M.NonFiniteError, match=r"model.layers.2.mlp.down_proj.weight holds 0 NaN and 1 infinite"):
        M.check_finite_weights(model, chunk=100)  # the bad value sits in the last chunk


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_nan_in_activations_names_the_layer_and_head(attn):
    model = make_tiny_model("llama", attn=attn)
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight[16 + 3, 0] = float("nan")  # KV head 1 (head_dim 16)
    ids = torch.randint(3, 300, (1, 24))
    with pytest.raises(M.NonFiniteError, match=r"layer 1: the keys of KV head 1 hold NaN"):
        with torch.no_grad(), capture(model, what=("q_pre", "k_pre")) as cap:
            model(ids)
    assert 0 in cap and 1 not in cap  # layer 0 was fine; nothing past the bad layer was recorded
    with pytest.raises(M.NonFiniteError, match="layer 1"):
        analyze_heads(model, ids, MetricConfig(skip=2, window=4, top_k=2))


def test_overflowing_logits_are_caught_when_read():
    model = make_tiny_model("llama")
    ids = torch.randint(3, 300, (1, 16))
    with torch.no_grad(), capture(model, layers=[0], what=("logits",), dtype=torch.float16) as cap:
        model(ids)
    with torch.no_grad():
        assert torch.isfinite(cap[0].logits.masked_fill(torch.ones(16, 16).triu(1).bool(), 0)).all()
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(3e3)
        model.model.layers[0].self_attn.k_proj.weight.mul_(3e3)
    with torch.no_grad(), capture(model, layers=[0], what=("logits",), dtype=torch.float16) as cap:
        model(ids)
    with pytest.raises(M.NonFiniteError, match="layer 0: the logits of head"):
        cap[0].logits  # noqa: B018 - reading builds the lazy logits


# ------------------------------------------------------------------------------------------------ padding


def _left_padded(pad: int = 5):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(3, 300, (1, 20), generator=g), torch.randint(3, 300, (1, 20 - pad), generator=g)
    ids = torch.cat([a, torch.cat([torch.zeros(1, pad, dtype=torch.long), b], 1)])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    return ids, mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_padded_batch_is_refused_before_the_forward(attn):
    model = make_tiny_model("llama", attn=attn)
    ids, mask = _left_padded()
    calls = []
    h = model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"attention_mask holds padding \(row 1: 5 padded positions\)"):
            with torch.no_grad(), capture(model, what=("probs",)):
                model(ids, attention_mask=mask)
        assert calls == []
        with pytest.raises(ValueError, match="attention_mask of shape .* is not supported"):
            with torch.no_grad(), capture(model, what=("probs",)):
                model(ids, attention_mask=mask[:, None, None, :].bool().expand(2, 1, 20, 20))
    finally:
        h.remove()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_an_unpadded_mask_gives_what_each_sequence_alone_gives(attn):
    model = make_tiny_model("llama", attn=attn)
    ids, _ = _left_padded()
    with torch.no_grad():
        with capture(model, what=("k_post", "probs")) as batch:
            model(ids, attention_mask=torch.ones_like(ids))
        for row in range(2):
            with capture(model, what=("k_post", "probs")) as alone:
                model(ids[row : row + 1])
            for layer in range(3):
                assert torch.allclose(batch[layer].probs[row], alone[layer].probs[0], atol=1e-6)
                assert torch.allclose(batch[layer].k_post[row], alone[layer].k_post[0], atol=1e-6)


# ------------------------------------------------------------------------------------------------ malformed input


@pytest.mark.parametrize("ids, fragment", [
    (torch.rand(1, 8) * 100, "input_ids must hold integer token ids (torch.long), got torch.float32"),
    (torch.full((1, 8), 300), "input_ids holds token id 300, outside the model's vocabulary (0..299)"),
    (torch.full((1, 8), -1), "input_ids holds token id -1"),
    (torch.arange(3, 11), "input_ids must have shape (batch, seq_len)"),
])
def test_malformed_input_ids_are_named_before_the_forward(ids, fragment):
    model = make_tiny_model("llama")
    with pytest.raises(ValueError) as e, torch.no_grad(), capture(model):
        model.model(input_ids=ids)
    assert fragment in str(e.value)
    if ids.dtype == torch.long and ids.dim() == 2:
        with pytest.raises(ValueError, match="outside the model's vocabulary"):
            analyze_heads(model, ids.repeat(1, 4), MetricConfig(skip=2, window=4, top_k=2))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())  # hooks removed


def test_attention_from_qk_names_mismatched_arguments():
    q, k = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16)
    assert attention_from_qk(q, k, 0.25)[1].shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="q_post has 4 heads, not a multiple of the 3 KV heads of k_post"):
        attention_from_qk(q, torch.randn(1, 3, 8, 16), 0.25)
    with pytest.raises(ValueError, match="must agree in batch, T and head_dim"):
        attention_from_qk(q, torch.randn(1, 2, 9, 16), 0.25)
    with pytest.raises(ValueError, match="k_post must be a floating-point tensor of shape"):
        attention_from_qk(q, torch.randn(2, 8, 16), 0.25)


# ------------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("case", [*MISMATCHES, "nan"])
def test_analyze_exits_2_with_one_line_and_no_output(case, folders, tmp_path, capsys):
    from tappa_utils import analysis

    out = tmp_path / "out"
    rc = analysis.main(["--model", str(folders[case]), "--seq-len", "64", "--num-windows", "1", "--out", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("analyze: error: ")
    assert (MISMATCHES[case] if case in MISMATCHES else "k_proj.weight holds 1 NaN") in err[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
