"""Running a model on a compressed cache whose layers hold different numbers of tokens (batch size 1 helpers).

Transformers builds ONE attention mask per forward from layer 0's cache length; `attention_patch` (installed when
this module is imported) fits it to every layer, so eager and sdpa both work. RoPE positions must continue from the
ORIGINAL sequence length (`position_ids`), not from the compressed cache length.
"""
from __future__ import annotations

import torch

from .attention_patch import patch_attention_functions

patch_attention_functions()


def _check_single(ids: torch.Tensor) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long:
        raise TypeError("input ids must be a LongTensor")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"batch size 1 only (got shape {tuple(ids.shape)}); run one sequence at a time")
    return ids


@torch.no_grad()
def prefill(model, input_ids: torch.Tensor, press=None):
    """Run the context through the model (inside `press(model)` if given) -> (cache, logits of the last position)."""
    from transformers import DynamicCache

    ids = _check_single(input_ids).to(model.device)
    cache = DynamicCache()
    if press is None:
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    else:
        with press(model):
            out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache, out.logits[0, -1]


@torch.no_grad()
def continue_forward(model, cache, input_ids: torch.Tensor, start: int) -> torch.Tensor:
    """Feed `input_ids` (1, n) after a (possibly compressed) cache at original positions start..start+n-1.

    Returns the logits (n, vocab). The cache grows by n in every layer. A cache with head-wise masks (AdaKV, see
    `keep_head_masks`) is fed one token at a time (the same logits: attention is causal).
    """
    ids = _check_single(input_ids).to(model.device)
    n = ids.shape[1]
    if n > 1 and getattr(cache, _HEAD_MASKS, None) is not None:
        # kvpress masks an entry with a fake key that every fed query must score far below zero: one token's few
        # queries (one per head of a KV group) always admit one; many tokens' queries may not (kvpress then raises)
        return torch.cat([continue_forward(model, cache, ids[:, i:i + 1], start + i) for i in range(n)])
    pos = torch.arange(start, start + n, device=model.device)
    # only position_ids: cache_position is left to the model (layer 0's cache length + arange), which is what its
    # causal mask is built from; original positions there would let the fed tokens see each other's future
    with head_masks(model, cache):
        out = model(ids, past_key_values=cache, position_ids=pos.unsqueeze(0), use_cache=True)
    return out.logits[0]


_HEAD_MASKS = "tappa_masked_key_indices"  # attribute of a replayed cache: {layer: kvpress's masked_key_indices}


def keep_head_masks(cache, layers) -> None:
    """Move the head-wise masks a press left on the attention modules (kvpress's `masked_key_indices`: AdaKV, ...)
    onto `cache`, and clear the modules: a replayed cache carries its own masks, so the next cache is not masked."""
    masks = {i: getattr(layer.self_attn, "masked_key_indices", None) for i, layer in enumerate(layers)}
    for layer in layers:
        if hasattr(layer.self_attn, "masked_key_indices"):
            layer.self_attn.masked_key_indices = None
    if any(m is not None for m in masks.values()):
        setattr(cache, _HEAD_MASKS, masks)


class head_masks:
    """`with head_masks(model, cache):` the attention modules hold the masks `keep_head_masks` stored on `cache` (if
    any), and none again afterwards. A cache without stored masks leaves the modules as they are."""

    def __init__(self, model, cache):
        self.masks = getattr(cache, _HEAD_MASKS, None)
        self.layers = None
        if self.masks is not None:
            from ..models import decoder_layers
            self.layers = decoder_layers(model)

    def __enter__(self):
        for i, mask in (self.masks or {}).items():
            self.layers[i].self_attn.masked_key_indices = mask
        return self

    def __exit__(self, *exc):
        for layer in self.layers or ():
            layer.self_attn.masked_key_indices = None
        return False


@torch.no_grad()
def greedy_decode(model, cache, first_logits: torch.Tensor, start: int, max_new_tokens: int) -> list[int]:
    """Greedy decoding one token at a time after a prefilled cache of original length `start`."""
    tokens = [int(first_logits.argmax())]
    for i in range(max_new_tokens - 1):
        logits = continue_forward(model, cache, torch.tensor([[tokens[-1]]]), start + i)
        tokens.append(int(logits[-1].argmax()))
    return tokens


def cache_lengths(cache) -> list[int]:
    """Number of tokens per layer that attention can see: the cached ones, less (for a replayed cache with head-wise
    masks, e.g. AdaKV) the masked entries averaged over the KV heads, rounded. The memory held is `cache_bytes`."""
    masks = getattr(cache, _HEAD_MASKS, None) or {}
    out = []
    for i, layer in enumerate(cache.layers):
        n = int(layer.keys.shape[-2])
        mask = masks.get(i)
        if mask is not None:
            n -= round(len(mask[0]) / (layer.keys.shape[0] * layer.keys.shape[1]))
        out.append(n)
    return out


def cache_bytes(cache) -> int:
    """Bytes held by the cache's key and value tensors (all layers)."""
    return int(sum(l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size()
                   for l in cache.layers))
