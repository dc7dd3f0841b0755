"""Positive controls: heads with a known pattern planted by hand into a model's weights.

A claim about trained structure is worth something only if it can come out both ways: random weights must fail it
(its specificity, `benchmarks/specificity_chapters.py`) and a model that has the structure must pass it (its power).
These functions give a model the structure, in place, on one query head of one layer, through the embedding and
that head's q/k projections only (every other head keeps its weights):

- `plant_sink_head`: a constant query and a key only the first token (BOS) has, in the slowest RoPE channel, so
  every query of the head attends to position 0 (chapter 4's vertical head);
- `plant_previous_token_head`: query and key read a feature every token has, with the query's channels turned by
  -theta_m against the key's, so the logit sum_m cos((t - j - 1) theta_m) peaks at offset 1 (chapter 5's diagonal).

`benchmarks/positive_controls.py` runs chapters 4 and 5's statistics on planted random draws against the null
distribution; `tests/test_nulls.py` asserts the same at small sizes.
"""
from __future__ import annotations

import numpy as np
import torch

from .rope import channel_frequencies

SHARED_FEATURE = 0  # embedding dimension set on every token (the planted query reads it)
BOS_FEATURE = 1  # embedding dimension set only on the BOS token (the planted sink key reads it)


def _head(model, layer: int, head: int):
    """(attention module, head_dim, the query head's KV head) with the indices checked in one line each."""
    layers = model.model.layers
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range: the model has {len(layers)} layers (0..{len(layers) - 1})")
    attn = layers[layer].self_attn
    n_q, n_kv = attn.config.num_attention_heads, attn.config.num_key_value_heads
    if not 0 <= head < n_q:
        raise ValueError(f"head {head} is out of range: the model has {n_q} query heads per layer (0..{n_q - 1})")
    return attn, attn.head_dim, head // (n_q // n_kv)


def plant_sink_head(model, layer: int = 0, head: int = 0, bos_id: int | None = None, amp: float = 3.0) -> None:
    """Make query head `head` of `layer` attend to the BOS token (`bos_id`, default the config's) from every query:
    a feature every token has feeds the query and a feature only BOS has feeds the key, both in the slowest RoPE
    channel (index head_dim / 2 - 1), so the logit on BOS stays high at every distance. In place."""
    bos = model.config.bos_token_id if bos_id is None else bos_id
    if bos is None:
        raise ValueError("the model's config has no bos_token_id: pass bos_id=<the id of the first token>")
    attn, d, kv = _head(model, layer, head)
    slow = d // 2 - 1
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, SHARED_FEATURE] = 5.0
        emb[:, BOS_FEATURE] = 0.0
        emb[bos, BOS_FEATURE] = 8.0
        attn.k_proj.weight[kv * d:(kv + 1) * d, SHARED_FEATURE] = 0.0  # keys do not read the shared feature
        attn.q_proj.weight[head * d + slow, SHARED_FEATURE] = amp
        attn.k_proj.weight[kv * d + slow, BOS_FEATURE] = amp


def plant_previous_token_head(model, layer: int = 0, head: int = 0, channels=(0, 1), amp: float = 3.0) -> None:
    """Make query head `head` of `layer` attend one token back: query and key read a feature every token has, the
    query's RoPE channels `channels` rotated by -theta_m against the key's, so the logit peaks at offset 1. In
    place."""
    attn, d, kv = _head(model, layer, head)
    if any(not 0 <= m < d // 2 for m in channels):
        raise ValueError(f"channels must be in 0..{d // 2 - 1} (head_dim {d}), got {list(channels)}")
    theta = channel_frequencies(model)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, SHARED_FEATURE] = 5.0
        attn.k_proj.weight[kv * d:(kv + 1) * d, SHARED_FEATURE] = 0.0
        attn.q_proj.weight[head * d:(head + 1) * d, SHARED_FEATURE] = 0.0
        for m in channels:
            attn.k_proj.weight[kv * d + m, SHARED_FEATURE] = amp
            attn.q_proj.weight[head * d + m, SHARED_FEATURE] = amp * float(np.cos(theta[m]))
            attn.q_proj.weight[head * d + m + d // 2, SHARED_FEATURE] = -amp * float(np.sin(theta[m]))
