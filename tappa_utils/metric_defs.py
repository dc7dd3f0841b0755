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

The table. Every column of the per-head table comes from one entry of `METRICS` (a `Metric`): its columns, where it
reads (the window's queries, or its attention through query blocks: a `Block`), its per-window statistics as
additive shares (`update`: what one block of query rows adds; the streaming path adds the shares of the blocks, the
reference functions give the whole map as one block) and its `final` step (window-averaged statistics -> the
columns). `metrics.analyze_heads`, `metrics.head_metrics` and the reference functions (`sink_mass`,
`predictability`, ...) all run these entries, so a metric is written once.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import torch

PATTERNS = ("vertical", "diagonal", "periodic", "mixed", "unpredictable", "diffuse")
INVALID = "invalid"  # the label of a head with a NaN metric: not a pattern, never counted in PATTERNS' columns
QSIM_VARIANTS = ("q_sim_consecutive_pre", "q_sim_consecutive_post", "q_sim_window_pre", "q_sim_window_post")


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
# what the metrics read: the window's queries, or blocks of its attention rows


class Queries(NamedTuple):
    """One window's queries before and after RoPE, (..., T, D) each."""

    pre: torch.Tensor
    post: torch.Tensor


class Block:
    """Query rows t0..t0 + n - 1 of a window of T positions: their attention probabilities p (..., n, K) over keys
    0..K-1 (K >= t0 + n; keys after a row's own position hold 0), and what several metrics derive from them, each
    computed once on first use (in p's dtype: float32 when streaming, float64 for float64 maps).

    `entropy`: the rows' entropies (..., n) when the caller has them cheaper than from p (the streaming path: from
    the logits, `attention_blocks`); otherwise computed from p.
    """

    def __init__(self, p: torch.Tensor, t0: int, T: int, entropy: torch.Tensor | None = None) -> None:
        self.p, self.t0, self.T = p, t0, T
        self.n, self.K = p.shape[-2:]
        if entropy is not None:
            self.entropy = entropy  # fills the cached property

    @cached_property
    def positions(self) -> torch.Tensor:
        """The rows' query positions t, (n, 1)."""
        return torch.arange(self.t0, self.t0 + self.n, device=self.p.device)[:, None]

    @cached_property
    def level(self) -> torch.Tensor:
        """The uniform level 1 / (t + 1) of each row, (n, 1)."""
        return 1 / (self.positions + 1).to(self.p.dtype)

    @cached_property
    def excess(self) -> torch.Tensor:
        """A[t, j] - 1 / (t + 1) on the causal keys j <= t, 0 after them: (..., n, K)."""
        causal = torch.arange(self.K, device=self.p.device)[None, :] <= self.positions
        return self.p - self.level * causal

    @cached_property
    def mask(self) -> torch.Tensor:
        """The above-average keys A[t, j] >= 1 / (t + 1), bool (..., n, K)."""
        return self.p >= self.level

    @cached_property
    def excess_by_distance(self) -> torch.Tensor:
        """`excess` over distances d = t - j instead of keys j, in reverse (`distance_coords`): (..., n, K)."""
        return distance_coords(self.excess, self.t0)

    @cached_property
    def entropy(self) -> torch.Tensor:
        """H(A[t]) of each row, (..., n)."""
        return -(self.p * self.p.clamp_min(torch.finfo(self.p.dtype).tiny).log()).sum(-1)


def distance_coords(x: torch.Tensor, first_row: int) -> torch.Tensor:
    """x (..., n, K) over keys j, rows t = first_row, ..., first_row + n - 1 <= K - 1 -> (..., n, K) over distances
    d = t - j in reverse: column K - 1 - d holds x[t, t - d], 0 where t - d < 0.

    A strided view of a zero-padded copy (no gather: a row's distances are its keys read backwards from t). Reversed
    so the view's columns run forwards; a product of two such views over their columns equals the product over
    distances, and `x.flip(-1)[..., :D + 1]` of a row sum is its d = 0..D."""
    n, K = x.shape[-2:]
    if first_row + n > K:
        raise ValueError(f"distance_coords needs rows before key {K}, got rows {first_row}..{first_row + n - 1}")
    s = max(0, -first_row)  # rows before position 0 (no keys): read only padding
    W = 2 * K + s
    padded = x.new_zeros(*x.shape[:-1], W)
    padded[..., K + s:] = x
    # column e of row i: key t - (K - 1 - e), at padded column K + s + key = s + first_row + 1 + i + e
    return padded.as_strided((*x.shape[:-1], K), (*padded.stride()[:-2], W + 1, 1),
                             padded.storage_offset() + s + first_row + 1)


def _first_distances(sums: torch.Tensor, D: int) -> torch.Tensor:
    """d = 0..D of a sum over rows of `distance_coords` (..., K): reversed back, zero beyond K - 1."""
    out = sums[..., max(0, sums.shape[-1] - 1 - D):].flip(-1)
    return torch.nn.functional.pad(out, (0, D + 1 - out.shape[-1]))


def _full_block(probs: torch.Tensor, skip: int, need: int = 1) -> Block:
    """The analysed rows skip..T-1 of whole attention maps (..., T, T) as one block (checked)."""
    _check_probs(probs)
    _check_len(probs.shape[-2], skip, need)
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()
    return Block(probs[..., skip:, :], skip, probs.shape[-1])


def _reference(name: str, probs: torch.Tensor, cfg: MetricConfig, need: int = 1) -> dict[str, torch.Tensor]:
    """The statistics of metric `name` on whole maps (one block holding every analysed row), float64."""
    stats = METRICS[name].update(_full_block(probs, cfg.skip, need), cfg, {})
    return {k: v.double() for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------------------------
# q-similarity


def _qsim_consecutive_update(q: Queries, cfg: MetricConfig, carry: dict) -> dict[str, torch.Tensor]:
    return {"q_sim_consecutive_pre": q_similarity_consecutive(q.pre, cfg.skip),
            "q_sim_consecutive_post": q_similarity_consecutive(q.post, cfg.skip)}


def _qsim_window_update(q: Queries, cfg: MetricConfig, carry: dict) -> dict[str, torch.Tensor]:
    return {"q_sim_window_pre": q_similarity_window(q.pre, cfg.window),
            "q_sim_window_post": q_similarity_window(q.post, cfg.window)}


def _same(means: dict[str, torch.Tensor], cfg: MetricConfig) -> dict[str, torch.Tensor]:
    """The final step of a metric whose window means are its columns (the caller picks its columns by name)."""
    return means


# ----------------------------------------------------------------------------------------------------------------
# sinks and fixed columns


def _sink_update(b: Block, cfg: MetricConfig, carry: dict) -> dict[str, torch.Tensor]:
    return {"sink_mass": b.p[..., 0].sum(-1, dtype=torch.float64) / (b.T - cfg.skip)}


def sink_mass(probs: torch.Tensor, skip: int = 16) -> torch.Tensor:
    """Mean attention probability on key position 0 over queries t >= skip: probs (..., T, T) -> (...)."""
    return _reference("sink_mass", probs, MetricConfig(skip=skip))["sink_mass"]


def _column_counts(T: int, skip: int, device) -> torch.Tensor:
    """Queries t >= max(skip, j) that see key j, for j = 0..(T + skip) // 2."""
    return T - torch.clamp(torch.arange((T + skip) // 2 + 1, device=device), min=skip)


def _column_update(b: Block, cfg: MetricConfig, carry: dict) -> dict[str, torch.Tensor]:
    counts = _column_counts(b.T, cfg.skip, b.p.device)
    c = min(b.K, counts.numel())
    cols = torch.nn.functional.pad(b.p[..., :c].sum(-2, dtype=torch.float64), (0, counts.numel() - c))
    return {"columns": cols / counts}


def _column_final(means: dict[str, torch.Tensor], cfg: MetricConfig) -> dict[str, torch.Tensor]:
    return {"column_mass": means["columns"].amax(-1)}


def column_mass(probs: torch.Tensor, skip: int = 16) -> torch.Tensor:
    """Largest mean probability on one fixed key j (over queries t >= max(skip, j)), for j <= (T + skip) // 2."""
    cfg = MetricConfig(skip=skip)
    return _column_final(_reference("column_mass", probs, cfg), cfg)["column_mass"]


# ----------------------------------------------------------------------------------------------------------------
# the distance profile: diagonals and periods


def profile_length(T: int, skip: int, max_distance: int) -> int:
    """Distances d = 0..D in the profile: D = min(max_distance, T - 1 - skip, (T + skip) // 2), so every p(d) is a
    mean over at least half of the queries t >= skip (a diagonal far from the main one, seen on a few rows only,
    would otherwise win the offset search by chance).

    >>> profile_length(128, 16, 256), profile_length(1024, 16, 256)
    (73, 257)
    """
    return max(0, min(max_distance, T - 1 - skip, (T + skip) // 2)) + 1


def _half_split(T: int, skip: int, max_distance: int) -> tuple[int, int]:
    """The first late query `mid` (early queries skip..mid-1, late mid..T-1) and the largest distance De of the
    half profiles (every early query range still has a query at distance De)."""
    mid = skip + (T - skip) // 2
    return mid, max(0, min(max_distance, mid - 1 - skip))


def _profile_update(b: Block, cfg: MetricConfig, carry: dict) -> dict[str, torch.Tensor]:
    """Shares of p(d) (the whole profile, d = 0..D) and of the early and late half profiles (d = 0..De).

    A[t, t - d] = excess + 1 / (t + 1) where t - d >= 0: the distance coordinates of `excess` (shared with
    predictability) summed over rows, plus the rows' levels, so no gather of its own."""
    T, skip, dev = b.T, cfg.skip, b.p.device
    D = profile_length(T, skip, cfg.max_distance) - 1
    mid, De = _half_split(T, skip, cfg.max_distance)
    ed = b.excess_by_distance
    split = min(max(mid - b.t0, 0), b.n)
    d = torch.arange(D + 1, device=dev)[None, :]
    levels = (b.positions >= d) * b.level.double()  # (n, D + 1): the level on every valid (t, d)
    early = _first_distances(ed[..., :split, :].sum(-2), D).double() + levels[:split].sum(0)
    late = _first_distances(ed[..., split:, :].sum(-2), D).double() + levels[split:].sum(0)
    tt = torch.arange(skip, T, device=dev)[:, None]
    valid = tt >= d
    halves = torch.stack([early[..., : De + 1] / (valid & (tt < mid))[:, : De + 1].sum(0),
                          late[..., : De + 1] / (valid & (tt >= mid))[:, : De + 1].sum(0)], -2)
    return {"profile": (early + late) / valid.sum(0), "halves": halves}


def _profile_final(means: dict[str, torch.Tensor], cfg: MetricConfig) -> dict[str, torch.Tensor]:
    prof = means["profile"]
    offset, mass = _diag_from_profile(prof, cfg.max_offset)
    period, strength = period_strength(prof, cfg.min_period, cfg.max_period)
    strength = strength * half_consistency(means["halves"], cfg.max_period).clamp(min=0, max=1)
    period = torch.where(strength > 0, period, torch.where(torch.isnan(strength), strength, float("nan")))
    return {"diag_offset": offset, "diag_mass": mass, "period": period, "period_strength": strength}


def distance_profile(probs: torch.Tensor, skip: int = 16, max_distance: int = 256) -> torch.Tensor:
    """p(d) = mean A[t, t - d] over queries t >= max(skip, d), d = 0..`profile_length` - 1: (..., n)."""
    return _reference("profile", probs, MetricConfig(skip=skip, max_distance=max_distance))["profile"]


def half_profiles(probs: torch.Tensor, skip: int = 16, max_distance: int = 256) -> torch.Tensor:
    """The distance profile of the early queries (skip..mid-1) and of the late ones (mid..T-1), d = 0..De
    (`_half_split`): probs (..., T, T) -> (..., 2, De + 1)."""
    return _reference("profile", probs, MetricConfig(skip=skip, max_distance=max_distance), need=2)["halves"]


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



# ----------------------------------------------------------------------------------------------------------------
# predictability

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

    cfg = MetricConfig(skip=skip, max_lag=max_lag, structure_floor=floor)
    return _pred_final(_reference("predictability", probs, cfg, need=2), cfg)["predictability"]


def predictor_sums(probs: torch.Tensor, skip: int = 16, max_lag: int = 16, floor: float = 0.5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums behind `predictability`: for each lag l = 1..L and key set (kept, moved, both), in that order,
    the gain sum_t g_t(H_t) and the norm sum_t max(TV_t, floor), t = skip + l..T-1: two (..., 3L) float64 tensors.
    `predictability` is max over predictors of gain / norm, clipped at 0."""
    stats = _reference("predictability", probs, MetricConfig(skip=skip, max_lag=max_lag, structure_floor=floor), 2)
    return stats["pred_gain"], stats["pred_norm"]


def _pred_update(b: Block, cfg: MetricConfig, carry: dict) -> dict[str, torch.Tensor]:
    """Gain and norm sums of the block's rows. The above-average masks of the last L rows of the previous block
    (`carry`) predict this block's first rows; rows before skip predict nothing (zero masks)."""
    L = min(cfg.max_lag, b.T - 1 - cfg.skip)
    hist = carry.get("masks")
    if hist is None:
        hist = b.mask.new_zeros(*b.mask.shape[:-2], L, b.K)
    masks = torch.cat([torch.nn.functional.pad(hist, (0, b.K - hist.shape[-1])), b.mask], -2)
    carry["masks"] = masks[..., -L:, :]
    gain = _block_gains(b, masks, L)
    norm_rows = b.excess.clamp(min=0).sum(-1).clamp(min=cfg.structure_floor).double()
    # rows t >= skip + lag have a predictor at lag `lag`: sums of the rows from each lag's first row on
    tail = norm_rows.flip(-1).cumsum(-1).flip(-1)  # tail[i] = sum of rows i..n-1
    first = (torch.arange(1, L + 1, device=b.p.device) + cfg.skip - b.t0).clamp(min=0)
    norm = torch.where(first < b.n, tail[..., first.clamp(max=b.n - 1)], 0.0)
    return {"pred_gain": gain.double(), "pred_norm": norm.repeat_interleave(3, -1)}


def _pred_final(means: dict[str, torch.Tensor], cfg: MetricConfig) -> dict[str, torch.Tensor]:
    return {"predictability": (means["pred_gain"] / means["pred_norm"]).amax(-1).clamp(min=0)}


PRED_CHUNK = 32  # query rows per matrix product in `_block_gains`


def _block_gains(b: Block, masks: torch.Tensor, lags: int) -> torch.Tensor:
    """Gains of the kept, moved and both key sets for lags 1..`lags`, summed over the block's rows:
    (..., 3 * lags) in the order (lag 1: kept, moved, both), (lag 2: ...), ...

    masks (..., lags + n, K): the above-average masks of rows t0 - lags..t0 + n - 1 (zero rows where a row has no
    predictor). The kept gain sum_j E[t, j] M[t - l, j] and the moved gain sum_j E[t, j] M[t - l, j - l] (= the kept
    gain in distance coordinates d = t - j, `distance_coords`) are diagonals of matrix products over chunks of rows.
    The union (both) is
    used at lag 1 only, kept + moved - the gain of their intersection (one masked sum): a sink with a diagonal, or a
    peak that stays or moves one key. At longer lags its slot repeats the kept set (a sink is kept at any lag, a
    diagonal moved at any lag, so longer unions add little and would cost one pass over the map each).
    """
    excess, ed = b.excess, b.excess_by_distance
    n = b.n
    L = lags
    m = masks.to(excess.dtype)
    md = distance_coords(m, b.t0 - L)
    i = torch.arange(min(PRED_CHUNK, n), device=excess.device)[:, None]
    lag = torch.arange(1, L + 1, device=excess.device)[None, :]
    kept = excess.new_zeros(*excess.shape[:-2], L)
    moved = excess.new_zeros(*excess.shape[:-2], L)
    for r in range(0, n, PRED_CHUNK):
        c = min(PRED_CHUNK, n - r)
        idx = (i[:c] + L - lag).expand(*excess.shape[:-2], c, L)  # row r + i's predictor, lag l, in the window
        kept += torch.gather(excess[..., r:r + c, :] @ m[..., r:r + c + L, :].transpose(-1, -2), -1, idx).sum(-2)
        moved += torch.gather(ed[..., r:r + c, :] @ md[..., r:r + c + L, :].transpose(-1, -2), -1, idx).sum(-2)
    prev = masks[..., L - 1:L - 1 + n, :]  # the rows one before: key j kept and key j - 1 moved on
    inter = (excess[..., 1:] * (prev[..., 1:] & prev[..., :-1])).sum((-2, -1))
    both = kept.clone()
    both[..., 0] = kept[..., 0] + moved[..., 0] - inter
    return torch.stack([kept, moved, both], -1).flatten(-2)


# ----------------------------------------------------------------------------------------------------------------
# concentration


def _concentration_update(b: Block, cfg: MetricConfig, carry: dict) -> dict[str, torch.Tensor]:
    start = max(0, 1 - b.t0)  # query 0 (one key) is skipped
    conc = 1 - b.entropy[..., start:] / (b.positions[start:, 0] + 1).to(b.p.dtype).log()
    return {"concentration": conc.sum(-1, dtype=torch.float64) / (b.T - max(cfg.skip, 1))}


def concentration(probs: torch.Tensor, skip: int = 16) -> torch.Tensor:
    """Mean over queries t >= skip of 1 - H(A[t]) / log(t + 1): 0 for uniform attention over the t + 1 visible
    keys, 1 for all mass on one key: probs (..., T, T) -> (...), float64. Query t = 0 (one key) is skipped."""
    return _reference("concentration", probs, MetricConfig(skip=skip))["concentration"]


def row_concentration(p: torch.Tensor, first_row: int) -> torch.Tensor:
    """1 - H(row) / log(t + 1) of rows t = first_row, first_row + 1, ...: p (..., n, K) -> (..., n) float64."""
    b = Block(p.double(), first_row, p.shape[-1])
    return 1 - b.entropy / (b.positions[:, 0] + 1).double().log()


# ----------------------------------------------------------------------------------------------------------------
# pattern labels

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
# the table


@dataclass(frozen=True)
class Metric:
    """One entry of `METRICS`: a group of columns of the per-head table and how they are computed.

    Parameters
    ----------
    columns : tuple of str
        Its columns of the per-head table, in order (`final` returns each of them).
    source : {"attention", "queries"}
        What `update` reads: a `Block` of attention rows (called once per block), or the window's `Queries`
        (called once per window).
    update : callable (block or queries, cfg, carry) -> dict of tensors
        The block's additive shares of the per-window statistics (leading dims (..., H)): the window's statistics
        are the sums of its blocks' shares, then averaged over windows. `carry` is this metric's dict for the
        window, kept from block to block (e.g. the rows a later block needs).
    final : callable (means, cfg) -> dict of tensors
        The columns from the window-averaged statistics, one value per head.
    positions : tuple of str, default ()
        Columns that are positions (an offset, a period): `layer_table` does not average them.
    """

    columns: tuple[str, ...]
    source: str
    update: Callable[[Any, MetricConfig, dict], dict[str, torch.Tensor]]
    final: Callable[[dict[str, torch.Tensor], MetricConfig], dict[str, torch.Tensor]]
    positions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.source not in ("attention", "queries"):
            raise ValueError(f"Metric.source must be 'attention' or 'queries', got {self.source!r}")


METRICS: dict[str, Metric] = {
    "q_sim_consecutive": Metric(QSIM_VARIANTS[:2], "queries", _qsim_consecutive_update, _same),
    "q_sim_window": Metric(QSIM_VARIANTS[2:], "queries", _qsim_window_update, _same),
    "sink_mass": Metric(("sink_mass",), "attention", _sink_update, _same),
    "column_mass": Metric(("column_mass",), "attention", _column_update, _column_final),
    "profile": Metric(("diag_offset", "diag_mass", "period", "period_strength"), "attention", _profile_update,
                      _profile_final, positions=("diag_offset", "period")),
    "predictability": Metric(("predictability",), "attention", _pred_update, _pred_final),
    "concentration": Metric(("concentration",), "attention", _concentration_update, _same),
}


def metric_columns() -> tuple[str, ...]:
    """The metric columns of the per-head table, from `METRICS` as it is now, then `pattern`."""
    return (*(c for m in METRICS.values() for c in m.columns), "pattern")


METRIC_COLUMNS = metric_columns()  # the built-in table's columns (`metric_columns()` also sees added entries)
HEAD_COLUMNS = ("layer", "head", "kv_head", *METRIC_COLUMNS)
