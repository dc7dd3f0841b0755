"""Channel periods of the reference RoPE configs, checked against the closed-form formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tappa_utils import rope_reference as rr
from tappa_utils.rope import channel_periods


def _formula(base: float, d: int) -> np.ndarray:
    return 2 * math.pi * base ** (np.arange(0, d, 2) / d)


@pytest.mark.parametrize("name, base", [("llama2-7b", 1e4), ("qwen2.5-7b", 1e6)])
def test_default_rope_matches_formula(name, base):
    (periods,) = rr.reference_periods([name]).values()
    np.testing.assert_allclose(periods, _formula(base, 128), rtol=1e-5)


def test_llama3_scaling_keeps_fast_channels_and_stretches_slow_ones():
    spec = rr.REFERENCE_ROPE["llama3.1-8b"]
    p = spec.rope_parameters
    (scaled,) = rr.reference_periods(["llama3.1-8b"]).values()
    plain = _formula(p["rope_theta"], spec.head_dim)
    fast = plain < p["original_max_position_embeddings"] / p["high_freq_factor"]
    slow = plain > p["original_max_position_embeddings"] / p["low_freq_factor"]
    assert fast.any() and slow.any()
    np.testing.assert_allclose(scaled[fast], plain[fast], rtol=1e-5)
    np.testing.assert_allclose(scaled[slow], plain[slow] * p["factor"], rtol=1e-5)
    assert np.all(np.diff(scaled) > 0)


def test_config_periods_equal_the_models_rotary_periods(tiny_model):
    np.testing.assert_allclose(2 * math.pi / rr.rotary_frequencies(tiny_model.config), channel_periods(tiny_model))


def test_summary_and_frame():
    periods = {"a": np.array([2.0, 10.0, 100.0, 1000.0])}
    s = rr.period_summary(periods, 50).iloc[0]
    assert s.channels == 4 and s.channels_period_gt_window == 2 and s.share_period_gt_window == 0.5
    frame = rr.periods_frame(periods)
    assert list(frame.relative_channel) == [0, 0.25, 0.5, 0.75] and list(frame.period) == [2, 10, 100, 1000]
    with pytest.raises(ValueError, match="positive"):
        rr.period_summary(periods, 0)


def test_unknown_reference_model():
    with pytest.raises(ValueError, match="choose from"):
        rr.reference_periods(["gpt-5"])
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="RoPE"):
        rr.rotary_frequencies(GPT2Config())
