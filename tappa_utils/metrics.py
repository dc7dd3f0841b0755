"""Per-head metrics of attention patterns: q-similarity, sinks and fixed columns, diagonals, periods, predictability.

Every metric looks at the *analysed queries*, positions `skip..T-1` (default skip=16: the first queries see too few
keys to say anything). For one head with attention probabilities A (T x T, causal) and queries q_t:

- `q_sim_consecutive_{pre,post}`: mean cos(q_t, q_t+1) over consecutive analysed queries, before / after RoPE.
- `q_sim_window_{pre,post}`: the reference code's definition, the mean off-diagonal cosine among the last `window`
  (32) queries.
- `sink_mass`: mean A[t, 0]. `column_mass`: the largest mean A[t, j] over a fixed key
  j (j <= (T + skip) / 2, so that at least half of the analysed queries see it), key 0 included.
- distance profile p(d): mean A[t, t - d] over the analysed queries t >= d (d = 0..max_distance).
  `diag_offset`, `diag_mass`: the d in 1..max_offset with the largest p(d), and p(d) (max_offset 256: a diagonal
  at any offset the profile holds, up to min(max_distance, T - 1 - skip)).
- `period`, `period_strength`: the profile from d = 2 on is detrended (minus its centred moving average of width
  2 * max_period + 1); for every candidate period P in min_period..max_period (and at most a third of the profile's
  length) the adjusted R^2 of a period-P seasonal component (the residual folded modulo P, one mean per phase)
  is `1 - (1 - R^2) (n - 1) / (n - P)`. The period is the smallest P whose adjusted R^2 reaches 90 % of the best
  (the fundamental, not a multiple). The strength is the best adjusted R^2 (clipped at 0) times the relative
  amplitude min(1, (max - min of the P phase means) / mean profile level): how cleanly the profile repeats and how
  much attention the repetition moves, times the split-half consistency (`half_consistency`: the correlation of the
  detrended profiles of the early and the late half of the queries, clipped at 0): a periodic pattern is seen by
  every query, while the ripple of a peak drifting at a rational rate (key t // 3: the profile's even distances
  are hit twice as often) comes from different queries at different distances. A comb of parallel diagonals scores
  near 1 (a noiseless one 0.88: the consistency); a smooth decay, one spike (a single diagonal), noise, a drifting
  peak, or the small RoPE ripples of near-uniform random-weight attention score low. A NaN or infinite profile
  gives NaN period and strength.
- `predictability`: how well the keys each row attends to are predicted by an earlier row moved by a fixed rule
  (TAPPA's predictable families), beyond a random guess: row t from row t - l (l = 1..max_lag) with its
  above-average keys kept (vertical: sink, fixed key; l = 2 an alternation; l = L a seasonal map), moved l keys on
  (sequential: a diagonal at any offset, parallel diagonals, a local window; l = P a restart every P queries) or
  both; the gain of the predicted key set on row t over a random key set of the same size, summed over rows and
  divided by the rows' distance from uniform (at least `structure_floor`); the best of the 3 max_lag predictors.
  Uniform attention scores 0, i.i.d. noise and a jumping peak about 0 (maths: `predictability`).
- `concentration`: mean over t >= skip of 1 - H(A[t]) / log(t + 1) (H the entropy): 0 for uniform attention, 1 for
  one key.
- `pattern`: vertical if sink_mass or column_mass >= `vertical_threshold`; diagonal if diag_mass >=
  `diagonal_threshold`; periodic if period_strength >= `period_threshold`; `mixed` if several of them hold. If none
  holds: `diffuse` when concentration < `concentration_threshold` (spread attention, no pattern to predict);
  otherwise `mixed` when predictability >= `predictable_threshold` (a stable pattern that is none of the pure ones,
  e.g. a local window) and `unpredictable` below it. A NaN among the metrics gives `INVALID` ("invalid"), which is
  not a pattern and is counted in no column of `layer_table`.

Calibration of `period_threshold` (0.5): `calibrate_period_threshold` runs `analyze_heads` on random-weight copies
(`random_weight_copy`, seeds 0..4, before `stats.null_seed` existed) of the default model (then v2: 6 layers x 4
heads) and of the five tiny test families of `tests/conftest.py` (3 layers x 4 heads each), on 4 windows of 512
held-out tokens: 420 null heads. Their
period_strength had a 99th percentile of 0.11 and a maximum of 0.49; the default model's copies and the Llama,
Mistral and Qwen2 families stayed below 0.01, while Qwen3's copies (q_norm/k_norm make queries and keys unit-scale,
so RoPE's fastest channels ripple the attention-by-distance profile) reached 0.37 (99th percentile) to 0.49. The
threshold 0.5 is above every null head measured; `tests/test_metrics.py` re-checks the 99th percentile on null
copies of the tiny families. The vertical and diagonal thresholds (0.3) are far above random weights' sink and
previous-token mass (about 1/T).

Calibration of `concentration_threshold` (0.2): on random-weight copies (`random_weight_copy`, seeds 0..4) of the
default model and of the five test families (420 heads, 4 windows of 256 held-out tokens), concentration had a 99th
percentile of 0.127 and a maximum of 0.147 (Qwen3: q_norm/k_norm give logits of spread about 1; the others stay
below 0.016), so 0.2 labels every null head `diffuse` when it has no pure pattern (`tests/test_metrics.py`
re-checks this on the tiny families). `predictable_threshold` 0.5 is a definition (the predictor gets at least half
of the structure); i.i.d. noise and a jumping peak score about 0 whatever their spread (expected gain 0), so they are
`diffuse` or `unpredictable`, never `mixed` (tested). `structure_floor` 0.5: i.i.d. N(0, 1) logits are 0.38 from
uniform (TV), so the faint structure of near-uniform attention counts at most TV / 0.5.

Synthetic maps: predictability before (the former {stay, +1} transport, and the former patterned predictability
= predictability x concentration of `patterns.with_patterned`) and now, T = 128 / 512, skip 16; logits i.i.d.
N(0, 1) plus 8 on the pattern's keys, mean of seeds 0..2 (`tests/test_metrics.py`, `_synthetic_map`), and the
noiseless maps of the audit (issue 26). Labels changed only where marked.

    map                                old pred     old pred x conc   new pred      label (old -> new)
    sink (key 0)                       0.94 / 0.86  0.86 / 0.68       1.00 / 0.97   vertical
    diagonal offset 1, 3               0.94 / 0.86  0.86 / 0.68       1.00 / 0.97   diagonal
    diagonal offset 10                 0.94 / 0.87  0.85 / 0.69       1.00 / 0.97   mixed -> diagonal
    diagonal offset 40 (sink before)   0.95 / 0.86  0.87 / 0.68       0.98 / 0.94   mixed -> diagonal
    comb: t - j = 1 mod 8              0.54 / 0.50  0.31 / 0.24       0.99 / 0.99   periodic
    restart every 4 (block's 1st key)  0.71 / 0.66  0.64 / 0.52       1.00 / 0.97   mixed
    restart every 16                   0.89 / 0.81  0.80 / 0.64       1.00 / 0.97   mixed
    two-key alternation (keys 3, 11)   0.03 / 0.07  0.02 / 0.06       1.00 / 0.97   vertical
    jump (random earlier key)          0.05 / 0.09  0.05 / 0.07       0.03 / 0.02   unpredictable
    noise only                         0.64 / 0.63  0.07 / 0.06       0.04 / 0.01   diffuse
    jitter between offsets 2 and 3     0.70 / 0.66  0.63 / 0.53       0.71 / 0.70   diagonal
    drift (key t // 3)                 0.94 / 0.86  0.84 / 0.68       0.97 / 0.94   mixed
    local window of 8                  0.70 / 0.68  0.40 / 0.44       0.96 / 0.99   mixed
    noiseless: uniform                 1.00 / 1.00  0.00 / 0.00       0.00 / 0.00   diffuse
    noiseless: local window of 8       1.00 / 1.00  0.49 / 0.60       1.00 / 1.00   mixed
    noiseless: sink + 50 % uniform     1.00 / 1.00  0.34 / 0.37       0.99 / 0.99   vertical
    noiseless: two-key alternation     0.00 / 0.00  0.00 / 0.00       1.00 / 1.00   vertical
    noiseless: drift (key t // 3)      1.00 / 1.00  1.00 / 1.00       0.98 / 0.99   mixed; T = 512: periodic -> mixed
    noiseless: jitter 2 / 3            0.77 / 0.75  0.77 / 0.75       0.75 / 0.75   diagonal

A jitter between two offsets stays below 0.8: the kept-or-moved key set of row t - 1 holds row t's key 3 times in 4.

GQA: query head h reads KV head h // (H / H_kv) (column `kv_head`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .capture import causal_mask

PATTERNS = ("vertical", "diagonal", "periodic", "mixed", "unpredictable", "diffuse")
INVALID = "invalid"  # the label of a head with a NaN metric: not a pattern, never counted in PATTERNS' columns
QSIM_VARIANTS = ("q_sim_consecutive_pre", "q_sim_consecutive_post", "q_sim_window_pre", "q_sim_window_post")
METRIC_COLUMNS = (
    *QSIM_VARIANTS, "sink_mass",
    "column_mass", "diag_offset", "diag_mass", "period", "period_strength", "predictability", "concentration",
    "pattern",
)
HEAD_COLUMNS = ("layer", "head", "kv_head", *METRIC_COLUMNS)


@dataclass
class MetricConfig:
    """MetricConfig: the windows of the per-head metrics and the thresholds of the pattern labels.

    Definitions of the metrics: module docstring. Every field is checked on construction (a clear ValueError).

    Parameters
    ----------
    skip : int, default 16
        First query positions left out of every metric (they see too few keys to say anything).
    window : int, default 32
        The last `window` queries, whose mean off-diagonal cosine is `q_sim_window_*`; at least 2.
    top_k : int, default 16
        Unused (the former top-k Jaccard predictability); kept so that existing configs and `--top-k` still work.
    max_offset : int, default 256
        Largest diagonal offset searched for the best diagonal (also bounded by max_distance and T - 1 - skip).
    max_lag : int, default 16
        Largest lag l of the predictors of `predictability` (row t from row t - l, keys kept or moved l on).
    structure_floor : float, default 0.5
        Least distance from uniform that `predictability` normalises a row by (in (0, 1]): rows closer to uniform
        count as less predictable.
    max_distance : int, default 256
        Largest query-key distance d of the distance profile p(d) (diagonals, periods).
    min_period, max_period : int, default 2 and 64
        Range of periods searched in the profile; `min_period >= 2`, `max_period >= min_period`.
    vertical_threshold, diagonal_threshold : float, default 0.3
        Sink (or fixed-column) mass and diagonal mass from which a head is labelled vertical, diagonal.
    period_threshold : float, default 0.5
        `period_strength` from which a head is labelled periodic (calibration: module docstring).
    predictable_threshold : float, default 0.5
        `predictability` from which a head with no pure pattern is labelled mixed rather than unpredictable.
    concentration_threshold : float, default 0.2
        `concentration` below which a head with no pure pattern is labelled diffuse.

    Examples
    --------
    >>> MetricConfig(window=64).window
    64
    >>> MetricConfig(min_period=8, max_period=4)
    Traceback (most recent call last):
    ...
    ValueError: max_period (4) must be >= min_period (8)
    >>> MetricConfig(vertical_threshold=float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: MetricConfig.vertical_threshold must be a number in [0, 1], got nan
    """

    skip: int = 16
    window: int = 32
    top_k: int = 16
    max_offset: int = 256
    max_lag: int = 16
    max_distance: int = 256
    min_period: int = 2
    max_period: int = 64
    vertical_threshold: float = 0.3
    diagonal_threshold: float = 0.3
    period_threshold: float = 0.5
    predictable_threshold: float = 0.5
    concentration_threshold: float = 0.2
    structure_floor: float = 0.5

    def __post_init__(self) -> None:
        for name in ("skip", "window", "top_k", "max_offset", "max_lag", "max_distance", "min_period", "max_period"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"MetricConfig.{name} must be a non-negative integer, got {v!r}")
        if self.window < 2 or self.top_k < 1 or self.max_offset < 1 or self.max_lag < 1 or self.min_period < 2:
            raise ValueError("MetricConfig needs window >= 2, top_k >= 1, max_offset >= 1, max_lag >= 1 and "
                             "min_period >= 2")
        for name in ("vertical_threshold", "diagonal_threshold", "period_threshold", "predictable_threshold",
                     "concentration_threshold", "structure_floor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not 0 <= float(v) <= 1:  # NaN fails both comparisons
                raise ValueError(f"MetricConfig.{name} must be a number in [0, 1], got {v!r}")
        if self.structure_floor <= 0:
            raise ValueError(f"MetricConfig.structure_floor must be > 0, got {self.structure_floor!r}")
        if self.max_period < self.min_period:
            raise ValueError(f"max_period ({self.max_period}) must be >= min_period ({self.min_period})")


# ----------------------------------------------------------------------------------------------------------------
# q-similarity


def _check_probs(probs: torch.Tensor) -> None:
    """ValueError unless `probs` is (..., T, T) attention probabilities (at least 2-D, square, with a query)."""
    if not torch.is_tensor(probs) or probs.dim() < 2 or probs.shape[-1] != probs.shape[-2] or probs.shape[-1] == 0:
        shape = tuple(probs.shape) if torch.is_tensor(probs) else type(probs).__name__
        raise ValueError(f"probs must be attention probabilities of shape (..., T, T) with T >= 1, got {shape}")


def _check_len(T: int, skip: int, need: int = 2) -> None:
    if T - skip < need:
        raise ValueError(f"sequence too short: {T} positions with skip={skip} leave fewer than {need} analysed "
                         f"queries; use a longer sequence or a smaller skip")


def q_similarity_consecutive(q: torch.Tensor, skip: int = 16) -> torch.Tensor:
    """Mean cos(q_t, q_t+1) over consecutive queries t >= skip: q (..., T, D) -> (...), float64."""
    _check_len(q.shape[-2], skip)
    qn = torch.nn.functional.normalize(q[..., skip:, :].double(), dim=-1)
    return (qn[..., 1:, :] * qn[..., :-1, :]).sum(-1).mean(-1)


def q_similarity_window(q: torch.Tensor, window: int = 32) -> torch.Tensor:
    """Mean off-diagonal cosine among the last `window` queries (all of them if fewer): q (..., T, D) -> (...)."""
    w = min(window, q.shape[-2])
    if w < 2:
        raise ValueError(f"q-similarity needs at least 2 queries, got {q.shape[-2]}")
    qn = torch.nn.functional.normalize(q[..., -w:, :].double(), dim=-1)
    # sum over i != j of cos(q_i, q_j) = |sum_i q_i/|q_i||^2 - sum_i |q_i/|q_i||^2: exact and O(w D), not O(w^2 D)
    s = qn.sum(-2)
    return ((s * s).sum(-1) - (qn * qn).sum((-1, -2))) / (w * (w - 1))


# ----------------------------------------------------------------------------------------------------------------
# attention metrics


def sink_mass(probs: torch.Tensor, skip: int = 16) -> torch.Tensor:
    """Mean attention probability on key position 0 over queries t >= skip: probs (..., T, T) -> (...)."""
    _check_probs(probs)
    _check_len(probs.shape[-2], skip, 1)
    return probs[..., skip:, 0].double().mean(-1)


def column_mass(probs: torch.Tensor, skip: int = 16) -> torch.Tensor:
    """Largest mean probability on one fixed key j (over queries t >= max(skip, j)), for j <= (T + skip) // 2."""
    _check_probs(probs)
    T = probs.shape[-1]
    _check_len(probs.shape[-2], skip, 1)
    jmax = (T + skip) // 2
    cols = probs[..., skip:, : jmax + 1].double().sum(-2)
    counts = T - torch.clamp(torch.arange(jmax + 1, device=probs.device), min=skip)
    return (cols / counts).amax(-1)


def profile_length(T: int, skip: int, max_distance: int) -> int:
    """Distances d = 0..D in the profile: D = min(max_distance, T - 1 - skip, (T + skip) // 2), so every p(d) is a
    mean over at least half of the queries t >= skip (a diagonal far from the main one, seen on a few rows only,
    would otherwise win the offset search by chance).

    >>> profile_length(128, 16, 256), profile_length(1024, 16, 256)
    (73, 257)
    """
    return max(0, min(max_distance, T - 1 - skip, (T + skip) // 2)) + 1


def distance_profile(probs: torch.Tensor, skip: int = 16, max_distance: int = 256) -> torch.Tensor:
    """p(d) = mean A[t, t - d] over queries t >= max(skip, d), d = 0..`profile_length` - 1: (..., n)."""
    _check_probs(probs)
    T = probs.shape[-1]
    _check_len(probs.shape[-2], skip, 1)
    return _profile_to(probs, skip, profile_length(T, skip, max_distance) - 1)


def _profile_to(probs: torch.Tensor, skip: int, D: int) -> torch.Tensor:
    """p(d) for d = 0..D (D <= T - 1 - skip), without `profile_length`'s cap."""
    T = probs.shape[-1]
    t = torch.arange(skip, T, device=probs.device)[:, None]
    d = torch.arange(D + 1, device=probs.device)[None, :]
    j = t - d
    valid = j >= 0
    rows = probs[..., skip:, :]
    idx = j.clamp(min=0).expand(*rows.shape[:-1], D + 1)
    vals = torch.gather(rows, -1, idx).double() * valid
    return vals.sum(-2) / valid.sum(0)


def _half_split(T: int, skip: int, max_distance: int) -> tuple[int, int]:
    """The first late query `mid` (early queries skip..mid-1, late mid..T-1) and the largest distance De of the
    half profiles (every early query range still has a query at distance De)."""
    mid = skip + (T - skip) // 2
    return mid, max(0, min(max_distance, mid - 1 - skip))


def half_profiles(probs: torch.Tensor, skip: int = 16, max_distance: int = 256) -> torch.Tensor:
    """The distance profile of the early queries (skip..mid-1) and of the late ones (mid..T-1), d = 0..De
    (`_half_split`): probs (..., T, T) -> (..., 2, De + 1)."""
    _check_probs(probs)
    T = probs.shape[-1]
    _check_len(probs.shape[-2], skip)
    mid, De = _half_split(T, skip, max_distance)
    early = _profile_to(probs[..., :mid, :mid], skip, De)
    late_rows = probs[..., mid:, :]
    t = torch.arange(mid, T, device=probs.device)[:, None]
    d = torch.arange(De + 1, device=probs.device)[None, :]
    vals = torch.gather(late_rows, -1, (t - d).expand(*late_rows.shape[:-1], De + 1)).double()
    return torch.stack([early, vals.mean(-2)], -2)


def half_consistency(halves: torch.Tensor, max_period: int = 64, start: int = 2) -> torch.Tensor:
    """Pearson correlation over d >= start of the detrended (as in `period_strength`) early and late half
    profiles (..., 2, n) -> (...): near 1 when every query sees the same ripple (a comb), near 0 when the ripple
    comes from different queries at different distances (a peak drifting at a rational rate); 0 when undefined."""
    x = halves[..., start:].double()
    if x.shape[-1] < 3:
        return torch.zeros(x.shape[:-2], dtype=torch.float64, device=x.device)
    y = x - _moving_average(x, 2 * max_period + 1)
    y = y - y.mean(-1, keepdim=True)
    cov = (y[..., 0, :] * y[..., 1, :]).sum(-1)
    var = (y * y).sum(-1).prod(-1)
    ok = var > 0
    return torch.where(ok, cov / var.clamp_min(1e-300).sqrt(), torch.where(torch.isnan(var), var, 0.0))


def diagonal_offset_mass(probs: torch.Tensor, skip: int = 16, max_offset: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The offset d in 1..max_offset with the largest mean A[t, t - d] (t >= max(skip, d)), and that mean."""
    prof = distance_profile(probs, skip, max_offset)
    return _diag_from_profile(prof, max_offset)


def _diag_from_profile(prof: torch.Tensor, max_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    part = prof[..., 1 : max_offset + 1]
    if part.shape[-1] == 0:
        raise ValueError("the sequence is too short for any diagonal offset")
    mass, arg = part.max(-1)
    return arg + 1, mass


def predictability(probs: torch.Tensor, skip: int = 16, max_lag: int = 16, floor: float = 0.5) -> torch.Tensor:
    r"""How well the keys each row attends to are predicted by an earlier row moved by a fixed rule, beyond a
    random guess: probs (..., T, T) -> (...), float64 in [0, 1].

    Predicted keys. Row t has t + 1 keys and uniform level 1 / (t + 1); M_t = {j : A[t, j] >= 1 / (t + 1)} are its
    above-average keys. For a lag l = 1..L (L = `max_lag`) the predictors of row t are row t - l's keys
    kept (H = M_{t-l}: vertical, a sink, a fixed key; with l = 2 an alternation between keys, with l = L a
    seasonal map a[t, i] ~ a[t - L, i]), moved l keys on (H = M_{t-l} + l: sequential, a diagonal t - j = c at
    *any* offset c, parallel diagonals (a comb), a local window; with l = P a map that restarts every P queries,
    row t ~ row t - P moved P keys), and at l = 1 both (H = M_{t-1} | (M_{t-1} + 1): a sink and a diagonal at once,
    a head that switches between them, a peak that stays or moves one key). A map that restarts every P > L queries is
    still predicted by l = 1 on all but one row in P.

    Score. The gain of a key set H on row t is the mass row t puts on H minus what a random set of |H| keys gets,
    g_t(H) = sum_{j in H} (A[t, j] - 1 / (t + 1)). Its largest value, reached by H = M_t, is
    TV_t = sum_j (A[t, j] - 1 / (t + 1))_+, the total-variation distance of row t from uniform attention. So

        G(predictor) = sum_t g_t(H_t) / sum_t max(TV_t, floor),   t = skip + l .. T - 1,
        predictability = max(0, max over the 2L + 1 predictors of G).

    G <= 1. The denominator is the row's distance from uniform (the mass there is to predict), but at least
    `floor` (0.5): a row with less than half of its mass off the uniform level counts as that much less
    predictable. Uniform attention scores 0 (every gain is 0); for i.i.d. noise and for a peak jumping to unrelated
    keys the expected gain is 0 (row t's mass is as likely on any key); a sink, a diagonal, a comb, a local window
    or an alternation scores about 1 whatever the noise on the weights of its keys (only which keys are above
    average matters); faint structure on near-uniform attention scores at most TV / floor. Old and new values on
    synthetic maps: module docstring. Cost: 2L matrix-product diagonals and one masked sum over the T x T map.
    """
    return _pred_from_sums(*predictor_sums(probs, skip, max_lag, floor))


def _row_level(first_row: int, n: int, device) -> torch.Tensor:
    """1 / (t + 1) for rows t = first_row..first_row + n - 1, float64 (n, 1)."""
    return 1 / (torch.arange(first_row, first_row + n, dtype=torch.float64, device=device) + 1)[:, None]


def _pred_terms(p: torch.Tensor, first_row: int, dtype: torch.dtype = torch.float64
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows t = first_row, ... of p (..., n, K): the excess A[t, j] - 1 / (t + 1) on causal keys (0 beyond t),
    in `dtype`, and the above-average mask A[t, j] >= 1 / (t + 1)."""
    n, K = p.shape[-2:]
    level = _row_level(first_row, n, p.device)
    rows = torch.arange(first_row, first_row + n, device=p.device)[:, None]
    causal = torch.arange(K, device=p.device)[None, :] <= rows
    pd = p.double()
    return torch.where(causal, pd - level, 0.0).to(dtype), pd >= level


def _distance_coords(x: torch.Tensor, first_row: int) -> torch.Tensor:
    """x (..., n, K) over keys j -> (..., n, K) over distances d = t - j (0 where j < 0), rows t = first_row, ..."""
    n, K = x.shape[-2:]
    j = torch.arange(first_row, first_row + n, device=x.device)[:, None] - torch.arange(K, device=x.device)[None, :]
    return torch.gather(x, -1, j.clamp(min=0).expand(*x.shape[:-2], n, K)) * (j >= 0)


PRED_CHUNK = 64  # query rows per matrix product in `_block_gains`


def _block_gains(excess: torch.Tensor, masks: torch.Tensor, first_row: int, lags: int) -> torch.Tensor:
    """Gains of the kept, moved and both key sets for lags 1..`lags`, summed over the n rows of `excess`:
    (..., 3 * lags) in the order (lag 1: kept, moved, both), (lag 2: ...), ...

    excess (..., n, K) holds rows t = first_row..first_row + n - 1 (`_pred_terms`); masks (..., lags + n, K) the
    above-average masks of rows first_row - lags..first_row + n - 1 (zero rows where a row has no predictor). The kept
    gain sum_j E[t, j] M[t - l, j] and the moved gain sum_j E[t, j] M[t - l, j - l] (= the kept gain in distance
    coordinates d = t - j) are diagonals of matrix products over chunks of rows. The union (both) is used at lag 1
    only, kept + moved - the gain of their intersection (one masked sum): a sink with a diagonal, or a peak that stays
    or moves one key. At longer lags its slot repeats the kept set (a sink is kept at any lag, a diagonal moved at
    any lag, so longer unions add little and would cost one pass over the map each).
    """
    n, K = excess.shape[-2:]
    L = lags
    m = masks.to(excess.dtype)
    ed, md = _distance_coords(excess, first_row), _distance_coords(m, first_row - L)
    i = torch.arange(min(PRED_CHUNK, n), device=excess.device)[:, None]
    lag = torch.arange(1, L + 1, device=excess.device)[None, :]
    kept = excess.new_zeros(*excess.shape[:-2], L)
    moved = excess.new_zeros(*excess.shape[:-2], L)
    for r in range(0, n, PRED_CHUNK):
        c = min(PRED_CHUNK, n - r)
        idx = (i[:c] + L - lag).expand(*excess.shape[:-2], c, L)  # row r + i's predictor, lag l, in the window
        kept += torch.gather(excess[..., r:r + c, :] @ m[..., r:r + c + L, :].transpose(-1, -2), -1, idx).sum(-2)
        moved += torch.gather(ed[..., r:r + c, :] @ md[..., r:r + c + L, :].transpose(-1, -2), -1, idx).sum(-2)
    prev = masks[..., L - 1:L - 1 + n, :]  # the rows one before
    inter = (excess * (prev & torch.nn.functional.pad(prev, (1, 0))[..., :K])).sum((-2, -1))
    both = kept.clone()
    both[..., 0] = kept[..., 0] + moved[..., 0] - inter
    return torch.stack([kept, moved, both], -1).flatten(-2).double()


def predictor_sums(probs: torch.Tensor, skip: int = 16, max_lag: int = 16, floor: float = 0.5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums behind `predictability`: for each lag l = 1..L and key set (kept, moved, both), in that order,
    the gain sum_t g_t(H_t) and the norm sum_t max(TV_t, floor), t = skip + l..T-1: two (..., 3L) float64 tensors.
    `predictability` is max over predictors of gain / norm, clipped at 0."""
    _check_probs(probs)
    T = probs.shape[-1]
    _check_len(probs.shape[-2], skip)
    excess, mask = _pred_terms(probs[..., skip:, :], skip)
    norm_rows = excess.clamp(min=0).sum(-1).clamp(min=floor)
    L = min(max_lag, T - 1 - skip)
    masks = torch.cat([mask.new_zeros(*mask.shape[:-2], L, T), mask], -2)
    gains = _block_gains(excess, masks, skip, L)
    norms = torch.stack([norm_rows[..., lag:].sum(-1) for lag in range(1, L + 1)], -1).repeat_interleave(3, -1)
    return gains, norms


def _pred_from_sums(gain: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    return (gain / norm).amax(-1).clamp(min=0)


def concentration(probs: torch.Tensor, skip: int = 16) -> torch.Tensor:
    """Mean over queries t >= skip of 1 - H(A[t]) / log(t + 1): 0 for uniform attention over the t + 1 visible
    keys, 1 for all mass on one key: probs (..., T, T) -> (...), float64. Query t = 0 (one key) is skipped."""
    _check_probs(probs)
    _check_len(probs.shape[-2], skip, 1)
    start = max(skip, 1)
    return row_concentration(probs[..., start:, :], start).mean(-1)


def row_concentration(p: torch.Tensor, first_row: int) -> torch.Tensor:
    """1 - H(row) / log(t + 1) of rows t = first_row, first_row + 1, ...: p (..., n, K) -> (..., n) float64."""
    p = p.double()
    h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    n = torch.arange(first_row, first_row + p.shape[-2], dtype=torch.float64, device=p.device) + 1
    return 1 - h / torch.log(n)


def _moving_average(x: torch.Tensor, width: int) -> torch.Tensor:
    """Centred moving average along the last axis; windows shrink at the edges."""
    n = x.shape[-1]
    h = width // 2
    c = torch.nn.functional.pad(x.cumsum(-1), (1, 0))
    i = torch.arange(n, device=x.device)
    lo, hi = (i - h).clamp(min=0), (i + h + 1).clamp(max=n)
    return (c[..., hi] - c[..., lo]) / (hi - lo)


def period_strength(profile: torch.Tensor, min_period: int = 2, max_period: int = 64, start: int = 2
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dominant period of a distance profile (..., n) and its strength (adjusted seasonal R^2, see module doc).

    Returns (period, strength), float64 of shape (...); period is NaN when the profile is too short or flat, or
    when no period explains anything (strength 0); both are NaN when the profile holds a NaN or an infinity.
    """
    x = profile[..., start:].double()
    bad = ~torch.isfinite(x).all(-1)
    x = torch.where(bad[..., None], 0.0, x)
    n = x.shape[-1]
    pmax = min(max_period, n // 3)
    shape = x.shape[:-1]
    if pmax < min_period:
        return torch.full(shape, float("nan"), dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    y = x - _moving_average(x, 2 * max_period + 1)
    y = y - y.mean(-1, keepdim=True)
    total = (y * y).sum(-1)
    flat = total <= 1e-30 * (x * x).sum(-1).clamp_min(1e-300)
    periods = list(range(min_period, pmax + 1))
    adj, ptp = [], []
    for P in periods:
        phase = torch.arange(n, device=x.device) % P
        sums = torch.zeros(*shape, P, dtype=torch.float64, device=x.device).index_add_(-1, phase, y)
        counts = torch.bincount(phase, minlength=P).double()
        ss = (sums * sums / counts).sum(-1)
        r2 = ss / total.clamp_min(1e-300)
        adj.append(1 - (1 - r2) * (n - 1) / (n - P))
        means = sums / counts
        ptp.append(means.amax(-1) - means.amin(-1))
    adj, ptp = torch.stack(adj, -1), torch.stack(ptp, -1)
    best = adj.max(-1).values
    ok = adj >= 0.9 * best[..., None]
    first = ok.double().argmax(-1)
    period = torch.tensor(periods, dtype=torch.float64, device=x.device)[first]
    level = x.mean(-1).abs().clamp_min(1e-300)
    rel_amp = torch.gather(ptp, -1, first[..., None])[..., 0] / level
    strength = best.clamp(min=0) * rel_amp.clamp(max=1.0)
    none = flat | (strength <= 0)
    period = torch.where(none | bad, torch.full_like(period, float("nan")), period)
    strength = torch.where(none, torch.zeros_like(strength), strength)
    return period, torch.where(bad, torch.full_like(strength, float("nan")), strength)


def label_pattern(sink: float, column: float, diag: float, strength: float, pred: float, cfg: MetricConfig,
                  concentration: float | None = None) -> str:
    """The pattern label from the thresholds in `cfg` (rules in the module docstring); without `concentration`
    the `diffuse` rule is skipped. A NaN metric (NaN attention) gives `INVALID`, which is not in `PATTERNS`, so
    `layer_table`'s counts never include it.

    >>> label_pattern(float("nan"), 0, 0, 0, 0.9, MetricConfig())
    'invalid'
    """
    values = [sink, column, diag, strength, pred] + ([] if concentration is None else [concentration])
    if any(math.isnan(float(v)) for v in values):
        return INVALID
    hits = [max(sink, column) >= cfg.vertical_threshold, diag >= cfg.diagonal_threshold,
            strength >= cfg.period_threshold]
    if sum(hits) > 1:
        return "mixed"
    if sum(hits) == 1:
        return ("vertical", "diagonal", "periodic")[hits.index(True)]
    if concentration is not None and concentration < cfg.concentration_threshold:
        return "diffuse"
    return "mixed" if pred >= cfg.predictable_threshold else "unpredictable"


# ----------------------------------------------------------------------------------------------------------------
# per head, per layer


def _record_stats(record, cfg: MetricConfig) -> dict[str, torch.Tensor]:
    """Per-window statistics of one layer record: scalars (B, H) and the distance profile (B, H, n)."""
    for name in ("q_pre", "q_post", "probs"):
        if getattr(record, name, None) is None:
            raise ValueError(f"the layer record lacks {name}; capture with what=('q_pre', 'q_post', 'probs')")
    probs = record.probs
    _check_probs(probs)
    if probs.dim() != 4 or probs.shape[0] == 0:
        raise ValueError(f"the layer record's probs must be (batch >= 1, heads, T, T), got {tuple(probs.shape)}")
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()
    return {
        "q_sim_consecutive_pre": q_similarity_consecutive(record.q_pre, cfg.skip),
        "q_sim_consecutive_post": q_similarity_consecutive(record.q_post, cfg.skip),
        "q_sim_window_pre": q_similarity_window(record.q_pre, cfg.window),
        "q_sim_window_post": q_similarity_window(record.q_post, cfg.window),
        "sink_mass": sink_mass(probs, cfg.skip),
        "column_mass": column_mass(probs, cfg.skip),
        **dict(zip(("pred_gain", "pred_norm"), predictor_sums(probs, cfg.skip, cfg.max_lag, cfg.structure_floor))),
        "concentration": concentration(probs, cfg.skip),
        "profile": distance_profile(probs, cfg.skip, cfg.max_distance),
        "halves": half_profiles(probs, cfg.skip, cfg.max_distance),
    }


def _finalize(layer: int, kv_group: int, means: dict[str, torch.Tensor], cfg: MetricConfig) -> list[dict[str, Any]]:
    """Per-head rows from window-averaged scalars (H,) and profile (H, n)."""
    prof = means["profile"]
    offset, mass = _diag_from_profile(prof, cfg.max_offset)
    period, strength = period_strength(prof, cfg.min_period, cfg.max_period)
    strength = strength * half_consistency(means["halves"], cfg.max_period).clamp(min=0, max=1)
    period = torch.where(strength > 0, period, torch.where(torch.isnan(strength), strength, float("nan")))
    pred = _pred_from_sums(means["pred_gain"], means["pred_norm"])
    rows = []
    for h in range(prof.shape[0]):
        row: dict[str, Any] = {"layer": int(layer), "head": h, "kv_head": h // kv_group}
        for name in ("q_sim_consecutive_pre", "q_sim_consecutive_post", "q_sim_window_pre", "q_sim_window_post",
                     "sink_mass", "column_mass"):
            row[name] = float(means[name][h])
        row["diag_offset"] = int(offset[h])
        row["diag_mass"] = float(mass[h])
        row["period"] = float(period[h])
        row["period_strength"] = float(strength[h])
        row["predictability"] = float(pred[h])
        row["concentration"] = float(means["concentration"][h])
        row["pattern"] = label_pattern(row["sink_mass"], row["column_mass"], row["diag_mass"],
                                       row["period_strength"], row["predictability"], cfg, row["concentration"])
        rows.append(row)
    return rows


def head_metrics(record, cfg: MetricConfig | None = None) -> list[dict[str, Any]]:
    """One dict per query head of a `LayerRecord` (needs q_pre, q_post, probs), averaged over its batch rows."""
    cfg = cfg or MetricConfig()
    stats = _record_stats(record, cfg)
    means = {k: v.mean(0) for k, v in stats.items()}
    return _finalize(record.layer, record.kv_group, means, cfg)


# ----------------------------------------------------------------------------------------------------------------
# the streaming path: per-head statistics through query blocks, never a full T x T map

BLOCK_BYTES = 2**26  # float32 logits of one query block (all heads): 64 MB


def block_rows(num_heads: int, T: int, batch: int = 1, block_bytes: int = BLOCK_BYTES) -> int:
    """Queries per block so that one block's float32 logits (batch x heads x rows x T) fit in `block_bytes`."""
    return max(1, min(T, block_bytes // max(1, 4 * batch * num_heads * T)))


def block_stats(q_pre: torch.Tensor, q_post: torch.Tensor, k_post: torch.Tensor, scaling: float,
                cfg: MetricConfig, sliding_window: int | None = None, rows: int | None = None
                ) -> dict[str, torch.Tensor]:
    """The statistics of `_record_stats` (scalars (B, H), profile (B, H, n)) from q (B, H, T, D) and post-RoPE
    k (B, H_kv, T, D), working through blocks of `rows` queries (default: `block_rows`).

    Every attention metric is a sum over query rows, and a row's softmax needs only that row's logits, so each block
    computes its rows' probabilities (float32, like the model's eager attention), adds its rows to the sums, and is
    dropped: peak memory is one block (B x H x rows x T), never the layer's T x T maps. Equal to the full path on
    the same q/k (tests/test_capture.py). Predictability keeps the above-average key masks of the last `max_lag`
    rows of the previous block: they predict this block's first rows.
    """
    B, H, T, D = q_post.shape
    Hkv = k_post.shape[1]
    group = H // Hkv
    skip = cfg.skip
    _check_len(T, max(skip, 1))
    rows = rows or block_rows(H, T, B)
    dev = q_post.device
    jmax = (T + skip) // 2
    Dmax = profile_length(T, skip, cfg.max_distance) - 1
    dd = torch.arange(Dmax + 1, device=dev)
    L = min(cfg.max_lag, T - 1 - skip)
    gain = torch.zeros(B, H, 3 * L, dtype=torch.float64, device=dev)
    norm = torch.zeros(B, H, 3 * L, dtype=torch.float64, device=dev)
    hist = None  # above-average masks of the up to L rows before this block (predictors of its first rows)
    conc = torch.zeros(B, H, dtype=torch.float64, device=dev)
    sink = torch.zeros(B, H, dtype=torch.float64, device=dev)
    cols = torch.zeros(B, H, jmax + 1, dtype=torch.float64, device=dev)
    prof = torch.zeros(B, H, Dmax + 1, dtype=torch.float64, device=dev)
    mid, De = _half_split(T, skip, cfg.max_distance)
    halves = torch.zeros(B, H, 2, De + 1, dtype=torch.float64, device=dev)
    kT = k_post.float().transpose(-1, -2)  # (B, Hkv, D, T)
    qg = q_post.float().reshape(B, Hkv, group, T, D)
    for t0 in range(skip, T, rows):
        t1 = min(T, t0 + rows)
        b = t1 - t0
        logits = torch.matmul(qg[..., t0:t1, :].reshape(B, Hkv, group * b, D), kT[..., :t1]).reshape(B, H, b, t1)
        logits.mul_(scaling)
        logits.masked_fill_(~causal_mask(b, dev, sliding_window, offset=t0), float("-inf"))
        p = torch.softmax(logits, dim=-1)
        del logits
        sink += p[..., 0].sum(-1, dtype=torch.float64)
        c = min(t1, jmax + 1)
        cols[..., :c] += p[..., :c].sum(-2, dtype=torch.float64)
        t = torch.arange(t0, t1, device=dev)[:, None]
        j = t - dd[None, :]
        valid = j >= 0
        vals = torch.gather(p, -1, j.clamp(min=0).expand(B, H, b, Dmax + 1)).double() * valid
        prof += vals.sum(-2)
        early = (t < mid).double()[None, None]
        halves[..., 0, :] += (vals[..., : De + 1] * early).sum(-2)
        halves[..., 1, :] += (vals[..., : De + 1] * (1 - early)).sum(-2)
        c0 = max(0, 1 - t0)  # concentration skips query 0 (one key)
        conc += row_concentration(p[..., c0:, :], t0 + c0).sum(-1)
        excess, mask = _pred_terms(p, t0, torch.float32)
        norm_rows = excess.double().clamp(min=0).sum(-1).clamp(min=cfg.structure_floor)
        if hist is None:  # rows before skip predict nothing
            hist = mask.new_zeros(*mask.shape[:-2], L, t1)
        masks = torch.cat([torch.nn.functional.pad(hist, (0, t1 - hist.shape[-1])), mask], -2)
        gain += _block_gains(excess, masks, t0, L)
        for lag in range(1, L + 1):
            r0 = max(t0, skip + lag) - t0  # first row of the block with a predictor row (t - lag >= skip)
            if r0 < b:
                norm[..., 3 * lag - 3 : 3 * lag] += norm_rows[..., r0:].sum(-1)[..., None]
        hist = masks[..., -L:, :]
        del p, excess, mask, masks
    counts = T - torch.clamp(torch.arange(jmax + 1, device=dev), min=skip)
    tt = torch.arange(skip, T, device=dev)[:, None]
    nvalid = ((tt - dd[None, :]) >= 0).sum(0)
    return {
        "q_sim_consecutive_pre": q_similarity_consecutive(q_pre, skip),
        "q_sim_consecutive_post": q_similarity_consecutive(q_post, skip),
        "q_sim_window_pre": q_similarity_window(q_pre, cfg.window),
        "q_sim_window_post": q_similarity_window(q_post, cfg.window),
        "sink_mass": sink / (T - skip),
        "column_mass": (cols / counts).amax(-1),
        "pred_gain": gain,
        "pred_norm": norm,
        "concentration": conc / (T - max(skip, 1)),
        "profile": prof / nvalid,
        "halves": halves / torch.stack([((tt < mid) & (tt >= dd[None, : De + 1])).sum(0),
                                        ((tt >= mid) & (tt >= dd[None, : De + 1])).sum(0)]),
    }


def record_block_stats(record, cfg: MetricConfig, rows: int | None = None) -> dict[str, torch.Tensor]:
    """`block_stats` of a `LayerRecord` captured with q_pre, q_post and k_post."""
    for name in ("q_pre", "q_post", "k_post"):
        if getattr(record, name, None) is None:
            raise ValueError(f"the layer record lacks {name}; capture with what=('q_pre', 'q_post', 'k_post')")
    return block_stats(record.q_pre, record.q_post, record.k_post, record.scaling, cfg, record.sliding_window, rows)


@contextmanager
def attention_implementation(model, name: str) -> Iterator:
    """Inside the block the model runs with attention implementation `name` (e.g. "sdpa"); restored on exit."""
    old = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(old)


def analyze_heads(model, input_ids: torch.Tensor, cfg: MetricConfig | None = None,
                  layers: Iterable[int] | int | None = None, progress: bool = False, rows: int | None = None):
    """Per-head metrics table (one row per layer and head, averaged over the rows of `input_ids`).

    Bounded memory: one forward per window through the decoder only (no LM head: its T x vocab logits are not
    needed), with the model's attention switched to sdpa for that forward so the model never materialises a layer's
    attention either; a `capture` reducer turns each layer's q/k into statistics through query blocks of `rows`
    queries (`block_stats`) as soon as the layer is done. Peak extra memory: one layer's q/k plus one block
    (default 64 MB of logits), not T x T. Metrics are computed in float32/float64 whatever the model's dtype.
    """
    import pandas as pd

    from .capture import capture

    cfg = cfg or MetricConfig()
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError("input_ids must be a LongTensor of shape (num_windows, seq_len)")
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids holds no windows (shape (0, seq_len)); give at least one window")
    T = input_ids.shape[1]
    _check_len(T, cfg.skip)
    device = next(model.parameters()).device
    sums: dict[int, dict[str, torch.Tensor]] = {}
    groups: dict[int, int] = {}

    def reducer(rec):
        groups[rec.layer] = rec.kv_group
        return {k: v.sum(0).cpu() for k, v in record_block_stats(rec, cfg, rows).items()}

    windows = range(input_ids.shape[0])
    if progress:
        from tqdm.auto import tqdm

        windows = tqdm(windows, desc="windows", leave=False)
    what = ("q_pre", "q_post", "k_post")
    with torch.no_grad(), attention_implementation(model, "sdpa"), \
            capture(model, layers, what=what, reducer=reducer) as cap:
        for w in windows:
            model.model(input_ids=input_ids[w : w + 1].to(device), use_cache=False)
            for layer in cap.layers():
                stats = cap.records.pop(layer)
                acc = sums.setdefault(layer, {k: torch.zeros_like(v) for k, v in stats.items()})
                for k, v in stats.items():
                    acc[k] += v
    n = input_ids.shape[0]
    rows_out = []
    for layer in sorted(sums):
        rows_out += _finalize(layer, groups[layer], {k: v / n for k, v in sums[layer].items()}, cfg)
    return pd.DataFrame(rows_out, columns=list(HEAD_COLUMNS))


def layer_table(heads_df):
    """Per-layer means of the numeric metrics, plus the number of heads and of each pattern label."""
    import pandas as pd

    numeric = [c for c in METRIC_COLUMNS if c not in ("pattern", "diag_offset", "period")]
    out = heads_df.groupby("layer")[numeric].mean()
    out.insert(0, "n_heads", heads_df.groupby("layer").size())
    counts = pd.crosstab(heads_df["layer"], heads_df["pattern"]).reindex(columns=list(PATTERNS), fill_value=0)
    for p in PATTERNS:
        out[f"n_{p}"] = counts[p].reindex(out.index, fill_value=0).astype(int)
    return out.reset_index()


def null_heads(model, input_ids: torch.Tensor, cfg: MetricConfig | None = None, seed: int = 0,
               layers: Iterable[int] | int | None = None, progress: bool = False):
    """`analyze_heads` on the random-weight null of `model` (same architecture).

    No second model: `models.random_weights` draws random weights into the model and restores its own on exit
    (they wait in a temporary file; cost one random draw of the parameters and one write and read of the weights).
    The null is drawn with `stats.null_seed(seed)`, never with `seed` itself, so the null of a random-weight model
    built with seed `seed` is not that very model.
    """
    from .models import random_weights
    from .stats import null_seed

    with random_weights(model, null_seed(seed)):
        return analyze_heads(model, input_ids, cfg, layers, progress)


def null_quantile(models, input_ids_list, column: str, cfg: MetricConfig | None = None,
                  seeds: Iterable[int] = range(5), quantile: float = 0.99) -> dict[str, float]:
    """`column` over all heads of random-weight copies (`null_heads`, each seed) of each model: quantile, max, count.

    `models` and `input_ids_list` are parallel lists (each model with its own token ids). This is how
    `period_threshold` and `concentration_threshold` were calibrated (module docstring).
    """
    if column not in METRIC_COLUMNS or column in ("pattern",):
        raise KeyError(f"{column!r} is not a numeric metric column; choose from {', '.join(METRIC_COLUMNS)}")
    vals = []
    for model, ids in zip(models, input_ids_list):
        for s in seeds:
            vals.append(null_heads(model, ids, cfg, seed=s)[column].to_numpy())
    v = np.concatenate(vals).astype(np.float64)
    return {"quantile": float(np.quantile(v, quantile)), "max": float(v.max()), "n_heads": int(v.size),
            "q": quantile}


def calibrate_period_threshold(models, input_ids_list, cfg: MetricConfig | None = None, seeds: Iterable[int] = range(5),
                               quantile: float = 0.99) -> dict[str, float]:
    """`null_quantile` of period_strength (kept for the chapters that call it)."""
    return null_quantile(models, input_ids_list, "period_strength", cfg, seeds, quantile)


def config_dict(cfg: MetricConfig) -> dict[str, Any]:
    """The config as a plain dict (for summary files)."""
    return asdict(cfg)
