"""Attention masks for caches whose layers hold different numbers of tokens (per-layer eviction).

Transformers builds ONE attention mask per forward, sized from layer 0's cache. After per-layer eviction (TAPPAPress,
PyramidKV) the other layers hold other lengths, so eager attention and sdpa reject the mask with a shape error as
soon as a mask is built (eager always, sdpa when more than one token is fed, e.g. a question after the context).
kvpress patches the attention functions globally for its per-head presses (`kvpress.attention_patch`); we do the
same for per-layer lengths: `patch_attention_functions()` wraps the "sdpa" and "eager" entries of transformers'
`ALL_ATTENTION_FUNCTIONS` so that a 4-D mask whose key length differs from the layer's keys is rebuilt for this
layer: causal, aligned bottom-right (the fed tokens are the last keys). The wrapper changes nothing when the mask
fits (every ordinary forward), and it refuses, with one line, a mismatched mask that holds padding or a sliding
window, which it cannot re-align. Flash attention needs no patch (no mask without padding).
"""
from __future__ import annotations

import sys

import torch

_MARK = "_tappa_per_layer_mask"


def causal_mask_like(mask: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """Causal mask (B, 1, q_len, k_len), bottom-right aligned, in `mask`'s convention (bool: True = attend; float:
    0 = attend, dtype minimum = blocked)."""
    i = torch.arange(q_len, device=mask.device).unsqueeze(1)
    j = torch.arange(k_len, device=mask.device).unsqueeze(0)
    allowed = (j <= k_len - q_len + i).expand(mask.shape[0], 1, q_len, k_len)
    if mask.dtype == torch.bool:
        return allowed
    out = torch.zeros(allowed.shape, dtype=mask.dtype, device=mask.device)
    return out.masked_fill_(~allowed, torch.finfo(mask.dtype).min)


def fit_mask(mask, key: torch.Tensor):
    """`mask` unchanged when it fits `key` (B, H, K, D); else the causal mask for this layer's K keys."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[-1] == key.shape[-2]:
        return mask
    q_len, k0 = mask.shape[-2], mask.shape[-1]
    allowed = mask if mask.dtype == torch.bool else mask == 0
    if not torch.equal(allowed[:, :1], causal_mask_like(allowed[:, :1], q_len, k0)):
        raise ValueError(f"this layer caches {key.shape[-2] - q_len} tokens and layer 0 {k0 - q_len}, and the mask "
                         "holds padding or a sliding window: per-layer compressed caches support unpadded "
                         "full-attention batches only")
    return causal_mask_like(mask, q_len, key.shape[-2])


def _wrap(func):
    def wrapper(module, query, key, value, attention_mask, *args, **kwargs):
        mask = fit_mask(attention_mask, key)
        if func is not None:
            return func(module, query, key, value, mask, *args, **kwargs)
        if args:  # interface convention (..., attention_mask, dropout, **kwargs); model eager: (..., scaling, dropout)
            kwargs["dropout"], args = args[0], args[1:]
        eager = sys.modules[type(module).__module__].eager_attention_forward
        return eager(module, query, key, value, mask, *args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def patch_attention_functions() -> None:
    """Wrap "sdpa" and "eager" in `ALL_ATTENTION_FUNCTIONS` with the per-layer mask fit (idempotent).

    "eager" is not registered in transformers (each model file calls its own `eager_attention_forward` as the
    default); the wrapper registered under that name calls the model file's own function, so eager models keep
    their exact eager code.
    """
    import kvpress  # noqa: F401  (kvpress patches on import; importing it first puts our fit outermost)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    for name in ("sdpa", "eager"):
        current = ALL_ATTENTION_FUNCTIONS.get(name)
        if current is not None and getattr(current, _MARK, False):
            continue
        ALL_ATTENTION_FUNCTIONS[name] = _wrap(current)
