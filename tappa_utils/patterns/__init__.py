"""Measuring TAPPA's assumptions and bounds on a model's heads (chapters 3-6): logit jump vs query jump, column
stability of re-accessed keys, Toeplitz deviation of diagonals, the dominant-channel intervention, periodic inputs.

Everything works on one head's pre-RoPE queries/keys in float64 (`HeadData`, from `capture_head`); the logit of
query t on key j is `scale * q_t^T R(t-j) k_j` with the model's own theta (`rope.channel_frequencies`).
"""
from __future__ import annotations

from .assumptions import assumption_summary, assumption_table, phase_term_demo, reaccessed_key
from .diagonal import (
    autocorr_period,
    channel_distance_profiles,
    default_bases,
    diagonal_statistics,
    diagonal_steps,
    dominant_period,
    interval_control,
    interval_experiment,
    logit_distance_profile,
    natural_periodicity,
    periodic_fit,
    ratio_of_sums,
    rope_base,
    step_blocks,
    synthetic_dominant_head,
    with_dominant_channel,
    with_rope_base,
)
from .head import (
    HeadData,
    QKCapture,
    _check_head,
    capture_head,
    clear_qk_capture,
    continuity,
    head_masses,
    qk_capture,
)
from .predictable import (
    CONTROL,
    DEFAULT_QSIM,
    MIN_HEADS,
    PATTERNED,
    QSIM_VARIANTS,
    QSIM_WORDS,
    TARGET,
    HeldOutJump,
    JumpFit,
    choose_qsim,
    fit_jump_bound,
    held_out_jump,
    logit_jump_steps,
    mean_test,
    necessity_test,
    patterned_heads,
    qsim_claim_name,
    qsim_partial,
    qsim_predictability,
    read_qsim_choice,
    rotated,
    with_patterned,
)
from .seasonal import (
    SeasonalRuns,
    candidate_layers,
    channel_share,
    per_head_seasonal,
    periodic_ids,
    periodicity_error,
    resonance_groups,
    resonance_test,
    resonant_periods,
    seasonal_pairs,
    seasonal_runs,
    seasonal_runs_heads,
    seasonal_sweep,
)
from .vertical import (
    alignment_gap,
    column_change,
    column_channel_contributions,
    column_steps,
    first_key_label,
    key_alignment,
    low_frequency_mask,
    low_frequency_share,
    sink_statistics,
    slowest_channels,
    vertical_strength,
    vertical_windows,
)

__all__ = [
    "alignment_gap", "head_masses", "sink_statistics", "slowest_channels", "diagonal_statistics",
    "channel_share", "per_head_seasonal", "seasonal_runs_heads",
    "_check_head", "assumption_summary", "assumption_table", "autocorr_period", "candidate_layers", "capture_head",
    "channel_distance_profiles", "choose_qsim", "CONTROL", "DEFAULT_QSIM", "MIN_HEADS", "patterned_heads", "TARGET",
    "qsim_claim_name", "qsim_partial", "QSIM_WORDS", "clear_qk_capture", "column_change",
    "column_channel_contributions", "column_steps", "continuity", "default_bases", "diagonal_steps",
    "dominant_period", "first_key_label", "fit_jump_bound", "HeadData", "held_out_jump", "HeldOutJump",
    "interval_control", "interval_experiment", "JumpFit", "key_alignment", "logit_distance_profile",
    "logit_jump_steps", "low_frequency_mask", "low_frequency_share", "mean_test", "natural_periodicity",
    "necessity_test", "PATTERNED", "periodic_fit", "periodic_ids", "periodicity_error", "phase_term_demo",
    "qk_capture", "QKCapture", "qsim_predictability", "QSIM_VARIANTS", "ratio_of_sums", "reaccessed_key",
    "read_qsim_choice", "resonance_groups", "resonance_test", "resonant_periods", "rope_base", "rotated",
    "seasonal_pairs", "seasonal_runs", "seasonal_sweep", "SeasonalRuns", "step_blocks", "synthetic_dominant_head",
    "vertical_strength", "vertical_windows", "with_dominant_channel", "with_patterned", "with_rope_base",
]
