"""Widen a trained tappa-tiny to more query heads without changing what it computes (Net2WiderNet, Chen et al. 2016).

Query head `h` of the narrow model becomes heads `h*r .. h*r + r-1` of the wide one (`r = new / old`): each copy
keeps `h`'s query rows, so it attends exactly as `h` did, and it sits over the same KV head (grouped-query
attention keeps heads `[g * n/kv, (g+1) * n/kv)` on KV head `g`, and the copies stay in `h`'s group). The output
projection's columns of `h` are shared among the copies: each gets `1/r` of them plus a zero-sum perturbation, so
the sum over the copies, and hence every logit, is unchanged, while the copies receive different gradients and can
specialise (without the perturbation they would stay identical forever).
"""
from __future__ import annotations

import torch


def widen_heads(state: dict[str, torch.Tensor], old_heads: int, new_heads: int, head_dim: int,
                noise: float = 0.05, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with `new_heads` query heads per layer from one with `old_heads`; other tensors are shared.

    `noise` is the scale of the zero-sum perturbation of the output columns, relative to their standard deviation.
    """
    if new_heads % old_heads or new_heads < old_heads:
        raise ValueError(f"new_heads must be a multiple of old_heads ({old_heads}), got {new_heads}")
    r = new_heads // old_heads
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for name, w in state.items():
        if name.endswith("self_attn.q_proj.weight"):  # (old_heads * head_dim, hidden): repeat each head's rows
            heads = w.reshape(old_heads, head_dim, -1)
            out[name] = heads.repeat_interleave(r, dim=0).reshape(new_heads * head_dim, -1).clone()
        elif name.endswith("self_attn.o_proj.weight"):  # (hidden, old_heads * head_dim): share each head's columns
            cols = w.reshape(w.shape[0], old_heads, 1, head_dim).float()
            eps = torch.randn(w.shape[0], old_heads, r, head_dim, generator=gen) * noise * cols.std()
            eps = eps - eps.mean(dim=2, keepdim=True)  # zero sum over the copies: the layer's output is unchanged
            out[name] = (cols / r + eps).reshape(w.shape[0], new_heads * head_dim).to(w.dtype)
        elif name.endswith("self_attn.q_proj.bias"):  # (old_heads * head_dim,)
            out[name] = w.reshape(old_heads, head_dim).repeat_interleave(r, dim=0).reshape(-1).clone()
    return out
