"""RoPE as rotations of 2-D channels: the model's frequencies, periods, layout and the per-channel logit.

Hugging Face Llama/Mistral/Qwen use the rotate-half layout: channel m is the pair of dimensions (m, m + d/2),
rotated by the angle `p * theta_m` at position p. With `z = x[m] + i x[m + d/2]`, the logit of query t on key j is

    a[t, j] = s * sum_m |q_t^m| |k_j^m| cos((t - j) theta_m + arg q_t^m - arg k_j^m)

where s = attention scaling (1/sqrt(d)) times the rotary module's `attention_scaling` squared.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def rope_summary(rope_parameters: dict | None) -> str:
    """A config's `rope_parameters` as a reader reads them: the type, the base, then any scaling settings.

    >>> rope_summary({"rope_theta": 100000.0, "rope_type": "default"})
    'default, base 100,000'
    >>> rope_summary({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0})
    'llama3, base 500,000, factor 8, low_freq_factor 1'
    >>> rope_summary(None)
    'none'
    """
    if not rope_parameters:
        return "none"
    rp = dict(rope_parameters)
    kind = rp.pop("rope_type", "default")
    base = rp.pop("rope_theta", None)
    parts = [str(kind)] + ([f"base {base:,.0f}"] if isinstance(base, (int, float)) else [])
    parts += [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in rp.items()]
    return ", ".join(parts)


def rotary_module(model) -> torch.nn.Module:
    """The model's rotary embedding module (`model.model.rotary_emb`)."""
    try:
        return model.model.rotary_emb
    except AttributeError as e:
        from .models import UnsupportedModelError

        raise UnsupportedModelError(f"{type(model).__name__} has no model.rotary_emb: "
                                    "not a supported RoPE model") from e


def channel_frequencies(model) -> np.ndarray:
    """theta_m for m = 0..d/2-1, read from the model's rotary module (honours llama3/yarn/linear scaling)."""
    return rotary_module(model).inv_freq.detach().double().cpu().numpy()


def channel_periods(model) -> np.ndarray:
    """Period in tokens of each channel, 2*pi / theta_m (small m: fast rotation, short period)."""
    return 2 * math.pi / channel_frequencies(model)


def rope_attention_scaling(model) -> float:
    """The factor the rotary module multiplies cos and sin by (1 except for YaRN-like types)."""
    return float(getattr(rotary_module(model), "attention_scaling", 1.0))


def channel_pairs(head_dim: int) -> list[tuple[int, int]]:
    """Rotate-half layout: channel m pairs dimensions (m, m + head_dim // 2)."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    h = head_dim // 2
    return [(m, m + h) for m in range(h)]


def to_complex(x: torch.Tensor) -> torch.Tensor:
    """(..., d) real -> (..., d/2) complex, z_m = x[m] + i x[m + d/2]."""
    h = x.shape[-1] // 2
    return torch.complex(x[..., :h].double(), x[..., h:].double())


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Apply RoPE to pre-RoPE vectors x (..., T, d) at integer `positions` (T,), in float64."""
    theta = torch.as_tensor(theta, dtype=torch.float64, device=x.device)
    ang = positions.double()[:, None] * theta[None, :]
    z = to_complex(x) * torch.polar(torch.ones_like(ang), ang)
    return torch.cat([z.real, z.imag], dim=-1)


def channel_logits(q_pre: torch.Tensor, k_pre: torch.Tensor, t: int | torch.Tensor, j: int | torch.Tensor,
                   theta: np.ndarray | torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Per-channel contributions to a[t, j] from pre-RoPE q_t (..., d) and k_j (..., d): shape (..., d/2).

    Summing over the last axis gives the logit (times `scale`).
    """
    theta = torch.as_tensor(theta, dtype=torch.float64, device=q_pre.device)
    zq, zk = to_complex(q_pre), to_complex(k_pre)
    delta = torch.as_tensor(t, dtype=torch.float64) - torch.as_tensor(j, dtype=torch.float64)
    phase = torch.angle(zq) - torch.angle(zk) + delta[..., None] * theta if torch.is_tensor(delta) else None
    return scale * zq.abs() * zk.abs() * torch.cos(phase)
