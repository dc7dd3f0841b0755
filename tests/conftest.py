"""Shared fixtures: tiny random-weight models of the four supported families (built, never downloaded)."""
from __future__ import annotations

import pytest
import torch

FAMILIES = ("llama", "llama3_scaled", "mistral", "qwen2", "qwen3")


def make_tiny_model(family: str = "llama", attn: str = "eager", seed: int = 0, layers: int = 3):
    """A small random model: GQA (4 query heads, 2 KV heads), head_dim 16, vocab 300."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                  bos_token_id=1, eos_token_id=2)
    if family == "llama":
        cfg, cls = (LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
                    LlamaForCausalLM)
    elif family == "llama3_scaled":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        cfg, cls = LlamaConfig(**common, rope_parameters=rope), LlamaForCausalLM
    elif family == "mistral":
        cfg, cls = MistralConfig(**common, sliding_window=None), MistralForCausalLM
    elif family == "qwen2":
        cfg, cls = Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6}), Qwen2ForCausalLM
    elif family == "qwen3":
        cfg, cls = Qwen3Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6}), Qwen3ForCausalLM
    else:
        raise ValueError(family)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    if family in ("qwen2",):  # make the q/k biases non-zero so that "bias included" is actually tested
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
    if family == "qwen3":
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    return model



def save_tiny_llama(folder, layers: int = 2):
    """A complete local model folder: a tiny random Llama (BOS 256) with the shipped byte tokenizer."""
    from tappa_utils.tiny.tokenizer import build_tokenizer

    model = make_tiny_model("llama", layers=layers)
    model.config.bos_token_id = 256
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder

@pytest.fixture(params=FAMILIES)
def tiny_model(request):
    return make_tiny_model(request.param)


@pytest.fixture
def tiny_llama():
    return make_tiny_model("llama")


@pytest.fixture(scope="session")
def default_model():
    """The shipped tappa-tiny model and tokenizer (loaded once per test session)."""
    from tappa_utils import load_model

    return load_model("tappa-tiny")
