"""Baselines that isolate one ingredient of TAPPA: uniform budgets with TAPPA's own scorer, and PyramidKV's pyramid.

- `UniformCAKEPress`: TAPPAPress with every layer's preference equal, so the budgets are uniform and everything
  else (CAKE token score, protected window, total, eviction) is TAPPA's: TAPPA minus this press is the effect of
  the q-similarity budgets alone.
- `PyramidKVPress`: PyramidKV with its authors' allocation. kvpress 0.5.5's `PyramidKVPress.get_layer_budget`
  puts `kept * (2 - 1/beta)` tokens in layer 0 and `kept / beta` in the last (kept = the average budget), capping
  layer 0 at `q_len - window` and then raising the last layer to `2 * kept - (q_len - window)`, and returns SnapKV's
  uniform budget whenever that last-layer budget is below the window. With beta 20, window 32 and a 6-layer model
  at 512-1024 tokens this means: at 10 % and 25 % kept it *is* SnapKV (uniform), and at 50 % it jumps to the
  steepest pyramid, layer 0 nearly full and the last layer holding only the window (32 tokens, nothing of the
  context before it), so it loses what a copy needs in the last layer: "worse with more cache". The original rule
  (KVCache-Factory, pyramidkv/pyramidkv_utils.py, `PyramidKVCluster.update_kv`) keeps the window in every layer on
  top of a linear ramp of the rest, from `max_num` (layer 0) to `min_num = rest / beta` (last layer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from kvpress import PyramidKVPress as _KvpressPyramidKV

from .tappa_press import TAPPAPress


@dataclass
class UniformCAKEPress(TAPPAPress):
    """Uniform per-layer budgets with TAPPA's machinery (CAKE token score, protected window, exact total).

    The control for TAPPA's budgets: same scorer, same total, same window; only the split over layers differs
    (equal shares, up to one token of rounding). All parameters as `TAPPAPress`; `alpha` is ignored.
    """

    def preference(self, qsim: float, attn: torch.Tensor) -> float:
        """Every layer weighs the same."""
        return 1.0


@dataclass
class PyramidKVPress(_KvpressPyramidKV):
    """PyramidKV (Cai et al., 2024, https://arxiv.org/abs/2406.02069) with the original per-layer budgets.

    Layer l keeps `window + round(max_num - l * (max_num - min_num) / (L - 1))` tokens, where
    `rest = q_len * (1 - compression_ratio) - window`, `min_num = rest / beta`, `max_num = 2 * rest - min_num`
    (capped at `q_len - window`, `min_num` then raised to keep the total): the layers sum to the uniform total
    up to rounding. Falls back to the uniform budget only when the budget cannot hold the window.

    Parameters
    ----------
    compression_ratio : float, default=0.0
        Fraction of the cache removed, over all layers together.
    window_size : int, default=64
        Observation window (SnapKV scores), kept in every layer.
    kernel_size : int, default=5
        Pooling kernel of SnapKV's score.
    beta : int, default=20
        Steepness: the last layer keeps `1 / beta` of the average non-window share.
    """

    def get_layer_budget(self, module: torch.nn.Module, q_len: int) -> int:
        """Kept tokens of `module`'s layer for a context of `q_len` tokens."""
        w = min(self.window_size, q_len)
        kept = q_len * (1 - self.compression_ratio)
        rest = kept - w
        if rest <= 0:
            return max(1, round(kept))
        n_layers = module.config.num_hidden_layers
        min_num = rest / self.beta
        max_num = 2 * rest - min_num
        if max_num > q_len - w:
            max_num = q_len - w
            min_num = 2 * rest - max_num
        steps = (max_num - min_num) / (n_layers - 1) if n_layers > 1 else 0.0
        return min(q_len, w + round(max_num - module.layer_idx * steps))
