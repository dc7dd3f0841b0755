"""RoPE channel periods of well-known models, computed from locally built configs (nothing is downloaded).

The frequencies come from transformers' own rotary modules (which call its rope init functions, llama3 scaling
included), instantiated on a config that carries only the RoPE-relevant fields of the published model.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RopeSpec:
    """The RoPE-relevant part of a published model's config: family, head size, base and scaling."""

    label: str
    model_type: str
    head_dim: int
    rope_parameters: dict
    max_position_embeddings: int
    num_attention_heads: int = 32
    extra: dict = field(default_factory=dict)

    def config(self):
        """A transformers config of this family with these RoPE fields (hidden size = heads x head_dim)."""
        from transformers import AutoConfig

        return AutoConfig.for_model(
            self.model_type, hidden_size=self.num_attention_heads * self.head_dim, head_dim=self.head_dim,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_attention_heads,
            max_position_embeddings=self.max_position_embeddings, rope_parameters=dict(self.rope_parameters),
            **self.extra,
        )


REFERENCE_ROPE = {
    "llama2-7b": RopeSpec("Llama-2-7B (base 1e4)", "llama", 128, {"rope_type": "default", "rope_theta": 10000.0}, 4096),
    "llama3.1-8b": RopeSpec(
        "Llama-3.1-8B (base 5e5, llama3 scaling)", "llama", 128,
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, 131072),
    "qwen2.5-7b": RopeSpec("Qwen2.5-7B (base 1e6)", "qwen2", 128, {"rope_type": "default", "rope_theta": 1000000.0},
                           32768, num_attention_heads=28),
}


def rotary_frequencies(config) -> np.ndarray:
    """theta_m (m = 0..d/2-1) of a config, from the `<Family>RotaryEmbedding` of its modeling module."""
    model_type = getattr(config, "model_type", None)
    try:
        modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    except ImportError as e:
        raise ValueError(f"transformers has no modeling module for model_type {model_type!r}") from e
    classes = [v for k, v in vars(modeling).items() if k.endswith("RotaryEmbedding") and isinstance(v, type)]
    if not classes:
        raise ValueError(f"model_type {model_type!r} has no *RotaryEmbedding class: not a RoPE model")
    return classes[0](config).inv_freq.detach().double().cpu().numpy()


def reference_periods(names: list[str] | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """{label: 2*pi/theta_m} for the named reference models (keys of REFERENCE_ROPE; all by default)."""
    names = list(REFERENCE_ROPE) if names is None else list(names)
    unknown = [n for n in names if n not in REFERENCE_ROPE]
    if unknown:
        raise ValueError(f"unknown reference model(s) {unknown}; choose from {sorted(REFERENCE_ROPE)}")
    return {REFERENCE_ROPE[n].label: 2 * math.pi / rotary_frequencies(REFERENCE_ROPE[n].config()) for n in names}


def periods_frame(periods: dict[str, np.ndarray]):
    """Long table (model, channel, relative_channel = m / (d/2), period) for plotting several models together."""
    import pandas as pd

    rows = []
    for label, p in periods.items():
        half = len(p)
        rows += [{"model": label, "channel": m, "relative_channel": m / half, "period": float(p[m])}
                 for m in range(half)]
    return pd.DataFrame(rows)


def period_summary(periods: dict[str, np.ndarray], window: int):
    """Per model: channels, shortest/longest period and the share of channels that turn less than once in `window`.

    A channel whose period exceeds the window barely rotates across it: the "low-frequency" channels that TAPPA's
    re-access (vertical) case relies on.
    """
    import pandas as pd

    if window <= 0:
        raise ValueError(f"window must be a positive number of tokens, got {window}")
    return pd.DataFrame([
        {"model": label, "channels": len(p), "shortest_period": float(p.min()), "longest_period": float(p.max()),
         "channels_period_gt_window": int((p > window).sum()), "share_period_gt_window": float((p > window).mean())}
        for label, p in periods.items()
    ])
