"""`CAKEScorePress`: CAKE's token score, mean + gamma * variance of the observation window's attention, pooled."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kvpress import ScorerPress
from kvpress.utils import get_prerope_query_states
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half


def window_attention(module, hidden_states: torch.Tensor, keys: torch.Tensor, window: int,
                     position_embeddings) -> torch.Tensor:
    """Attention of the last `window` queries over ALL keys, causal inside the window: (B, H, window, T).

    As the official code computes it (KVCache/tappa/model/llama_forward.py): post-RoPE queries, logits / sqrt(d),
    softmax in float32, cast back to the query dtype. kvpress's `SnapKVPress.compute_window_attention` returns only
    the keys before the window; TAPPAPress also needs the window's own keys when its protected window shrinks.
    """
    q = get_prerope_query_states(module, hidden_states[:, -window:])
    cos, sin = position_embeddings
    cos, sin = cos[:, -window:].unsqueeze(1), sin[:, -window:].unsqueeze(1)
    q = q * cos + rotate_half(q) * sin
    k = repeat_kv(keys, q.shape[1] // keys.shape[1])
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    t = keys.shape[2]
    future = torch.ones(window, t, dtype=torch.bool, device=keys.device).triu(t - window + 1)
    logits = logits.masked_fill(future, float("-inf"))
    return logits.softmax(-1, dtype=torch.float32).to(q.dtype)


def cake_token_scores(attn: torch.Tensor, n_kv_heads: int, n_scored: int, gamma: float = 200.0,
                      kernel_size: int = 5) -> torch.Tensor:
    """CAKE's eviction score of the first `n_scored` keys: attn (B, H, W, T) -> (B, H_kv, n_scored).

    `mean + gamma * var` over the W window rows (unbiased variance), average-pooled along the keys (kernel 5,
    zero padding, as `F.avg_pool1d`), then averaged over the query heads of each KV group; as the official
    prefill path (KVCache/tappa/model/llama_forward.py), where `n_scored = T - window`.
    """
    a = attn[..., :n_scored]
    mean = a.mean(-2, keepdim=True)
    dev = (a - mean).square_()  # unbiased variance by hand: torch.var over dim -2 is ~2.5x slower on CPU
    s = mean.squeeze(-2) + gamma * dev.sum(-2) / (a.shape[-2] - 1)
    s = F.avg_pool1d(s, kernel_size=kernel_size, padding=kernel_size // 2, stride=1)
    b, h, _ = s.shape
    return s.view(b, n_kv_heads, h // n_kv_heads, n_scored).mean(2)


@dataclass
class CAKEScorePress(ScorerPress):
    """CAKE score: keep the tokens with the highest mean + gamma * variance of the window's attention.

    The token ranking of CAKE (Qin et al., ICLR 2025, https://arxiv.org/abs/2503.12491) and of the official TAPPA
    code; the last `window_size` tokens are always kept. TAPPAPress's default scorer.

    Parameters
    ----------
    compression_ratio : float, default=0.0
        Fraction of key-value pairs to remove (used when run as a press on its own).
    window_size : int, default=32
        Observation window: the last queries whose attention scores the keys; these tokens are always kept.
    gamma : float, default=200.0
        Weight of the variance over the window rows (the reference's `--gamma`).
    kernel_size : int, default=5
        Average-pooling kernel along the keys.
    """

    compression_ratio: float = 0.0
    window_size: int = 32
    gamma: float = 200.0
    kernel_size: int = 5

    def score(self, module, hidden_states, keys, values, attentions, kwargs) -> torch.Tensor:
        """(B, H_kv, T) scores; the window gets the maximum + 1 so that it is never pruned."""
        t = keys.shape[2]
        if hidden_states.shape[1] <= self.window_size:
            raise ValueError(f"context of {hidden_states.shape[1]} tokens must be longer than window_size "
                             f"({self.window_size})")
        attn = window_attention(module, hidden_states, keys, self.window_size, kwargs["position_embeddings"])
        s = cake_token_scores(attn, keys.shape[1], t - self.window_size, self.gamma, self.kernel_size)
        return F.pad(s, (0, self.window_size), value=s.max().item() + 1)
