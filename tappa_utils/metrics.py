"""Per-head metrics of attention patterns: q-similarity, sinks and fixed columns, diagonals, periods, predictability.

Every metric looks at the *analysed queries*, positions `skip..T-1` (default skip=16: the first queries see too few
keys to say anything). For one head with attention probabilities A (T x T, causal) and queries q_t:

- `q_sim_consecutive_{pre,post}`: mean cos(q_t, q_t+1) over consecutive analysed queries, before / after RoPE.
- `q_sim_window_{pre,post}`: the reference code's definition, the mean off-diagonal cosine among the last `window`
  (32) queries.
- `sink_mass`: mean A[t, 0]. `column_mass`: the largest mean A[t, j] over a fixed key
  j (j <= (T + skip) / 2, so that at least half of the analysed queries see it), key 0 included.
- distance profile p(d): mean A[t, t - d] over the analysed queries t >= d (d = 0..max_distance).
  `diag_offset`, `diag_mass`: the d in 1..max_offset with the largest p(d), and p(d).
- `period`, `period_strength`: the profile from d = 2 on is detrended (minus its centred moving average of width
  2 * max_period + 1); for every candidate period P in min_period..max_period (and at most a third of the profile's
  length) the adjusted R^2 of a period-P seasonal component (the residual folded modulo P, one mean per phase)
  is `1 - (1 - R^2) (n - 1) / (n - P)`. The period is the smallest P whose adjusted R^2 reaches 90 % of the best
  (the fundamental, not a multiple). The strength is the best adjusted R^2 (clipped at 0) times the relative
  amplitude min(1, (max - min of the P phase means) / mean profile level): how cleanly the profile repeats and how
  much attention the repetition moves. A comb of parallel diagonals scores near 1; a smooth decay, one spike (a
  single diagonal), noise, or the small RoPE ripples of near-uniform random-weight attention score low.
- `predictability`: the share of row t+1's attention mass that is row t's mass staying on its key (a column:
  sink, re-accessed key) or moving one key on (a diagonal), averaged over t >= skip (an optimal transport with moves
  {0, +1}; see `predictability`). Sinks and diagonals score about 0.9 on noisy synthetic maps, a head whose peak
  jumps about 0.06. Uniform attention never moves and scores 1: predictability alone does not tell a pattern from
  diffuse attention, hence `concentration`.
- `concentration`: mean over t >= skip of 1 - H(A[t]) / log(t + 1) (H the entropy): 0 for uniform attention, 1 for
  one key.
- `pattern`: vertical if sink_mass or column_mass >= `vertical_threshold`; diagonal if diag_mass >=
  `diagonal_threshold`; periodic if period_strength >= `period_threshold`; `mixed` if several of them hold. If none
  holds: `diffuse` when concentration < `concentration_threshold` (spread attention, no pattern to predict);
  otherwise `mixed` when predictability >= `predictable_threshold` (a stable pattern that is none of the pure ones,
  e.g. a local window) and `unpredictable` below it.

Calibration of `period_threshold` (0.5): `calibrate_period_threshold` runs `analyze_heads` on random-weight copies
(`random_weight_copy`, seeds 0..4, before `stats.null_seed` existed) of the default model (then v2: 6 layers x 4 heads) and
of the five tiny test families of `tests/conftest.py` (3 layers x 4 heads each), on 4 windows of 512 held-out
tokens: 420 null heads. Their
period_strength had a 99th percentile of 0.11 and a maximum of 0.49; the default model's copies and the Llama,
Mistral and Qwen2 families stayed below 0.01, while Qwen3's copies (q_norm/k_norm make queries and keys unit-scale,
so RoPE's fastest channels ripple the attention-by-distance profile) reached 0.37 (99th percentile) to 0.49. The
threshold 0.5 is above every null head measured; `tests/test_metrics.py` re-checks the 99th percentile on null
copies of the tiny families. The vertical and diagonal thresholds (0.3) are far above random weights' sink and
previous-token mass (about 1/T).

Calibration of `concentration_threshold` (0.2) and `predictable_threshold` (0.5): random-weight heads cannot set the
predictability threshold (their attention is uniform, which never moves: predictability 0.995-0.999 on copies of the
default model and of the Llama, Mistral and Qwen2 test families); they set the concentration threshold instead
(`null_quantile(..., "concentration")`). On random-weight copies (seeds 0..4) of the default model and of the
five test families (420 heads, 4 windows of 256 held-out tokens), concentration had a 99th percentile of 0.127 and a maximum of 0.147 (Qwen3: q_norm/k_norm give
logits of spread about 1; the others stay below 0.016), so 0.2 labels every null head `diffuse` when it has no pure
pattern (`tests/test_metrics.py` re-checks this on the tiny families). `predictable_threshold` 0.5 is a definition
(most of each row's mass carried over from the previous row); it is consistent with the concentration threshold on
i.i.d. Gaussian logits of spread s (T = 256): predictability falls below 0.5 at s ~ 1.33, concentration reaches 0.2
only at s ~ 1.45, so noise of any spread is `diffuse` or `unpredictable`, never `mixed` (tested).
On the default model v3 (4 windows of 256 held-out tokens) the diagonal head L1H6 scores 0.96 and the sink head L1H5
0.84; on v2 the diagonal head L4H2 scored 0.90 (top-16 Jaccard, the former definition: 0.37) and the sink head L5H3
0.70 (former: 0.28).

GQA: query head h reads KV head h // (H / H_kv) (column `kv_head`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .capture import causal_mask

PATTERNS = ("vertical", "diagonal", "periodic", "mixed", "unpredictable", "diffuse")
METRIC_COLUMNS = (
    "q_sim_consecutive_pre", "q_sim_consecutive_post", "q_sim_window_pre", "q_sim_window_post", "sink_mass",
    "column_mass", "diag_offset", "diag_mass", "period", "period_strength", "predictability", "concentration",
    "pattern",
)
HEAD_COLUMNS = ("layer", "head", "kv_head", *METRIC_COLUMNS)
_SCALARS = ("q_sim_consecutive_pre", "q_sim_consecutive_post", "q_sim_window_pre", "q_sim_window_post",
            "sink_mass", "column_mass", "predictability", "concentration")


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
        Keys per query whose overlap between consecutive queries is `predictability`.
    max_offset : int, default 8
        Largest diagonal offset searched for the best diagonal.
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

    Examples
    --------
    >>> MetricConfig(window=64).window
    64
    >>> MetricConfig(min_period=8, max_period=4)
    Traceback (most recent call last):
    ...
    ValueError: max_period (4) must be >= min_period (8)
    """

    skip: int = 16
    window: int = 32
    top_k: int = 16
    max_offset: int = 8
    max_distance: int = 256
    min_period: int = 2
    max_period: int = 64
    vertical_threshold: float = 0.3
    diagonal_threshold: float = 0.3
    period_threshold: float = 0.5
    predictable_threshold: float = 0.5
    concentration_threshold: float = 0.2

    def __post_init__(self) -> None:
        for name in ("skip", "window", "top_k", "max_offset", "max_distance", "min_period", "max_period"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"MetricConfig.{name} must be a non-negative integer, got {v!r}")
        if self.window < 2 or self.top_k < 1 or self.max_offset < 1 or self.min_period < 2:
            raise ValueError("MetricConfig needs window >= 2, top_k >= 1, max_offset >= 1 and min_period >= 2")
        if self.max_period < self.min_period:
            raise ValueError(f"max_period ({self.max_period}) must be >= min_period ({self.min_period})")


# ----------------------------------------------------------------------------------------------------------------
# q-similarity


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
    _check_len(probs.shape[-2], skip, 1)
    return probs[..., skip:, 0].double().mean(-1)


def column_mass(probs: torch.Tensor, skip: int = 16) -> torch.Tensor:
    """Largest mean probability on one fixed key j (over queries t >= max(skip, j)), for j <= (T + skip) // 2."""
    T = probs.shape[-1]
    _check_len(probs.shape[-2], skip, 1)
    jmax = (T + skip) // 2
    cols = probs[..., skip:, : jmax + 1].double().sum(-2)
    counts = T - torch.clamp(torch.arange(jmax + 1, device=probs.device), min=skip)
    return (cols / counts).amax(-1)


def distance_profile(probs: torch.Tensor, skip: int = 16, max_distance: int = 256) -> torch.Tensor:
    """p(d) = mean A[t, t - d] over queries t >= max(skip, d), d = 0..min(max_distance, T - 1 - skip): (..., n)."""
    T = probs.shape[-1]
    _check_len(probs.shape[-2], skip, 1)
    D = max(0, min(max_distance, T - 1 - skip))
    t = torch.arange(skip, T, device=probs.device)[:, None]
    d = torch.arange(D + 1, device=probs.device)[None, :]
    j = t - d
    valid = j >= 0
    rows = probs[..., skip:, :]
    idx = j.clamp(min=0).expand(*rows.shape[:-1], D + 1)
    vals = torch.gather(rows, -1, idx).double() * valid
    return vals.sum(-2) / valid.sum(0)


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


def predictability(probs: torch.Tensor, skip: int = 16, top_k: int = 16) -> torch.Tensor:
    """Share of each row's attention mass that is the previous row's mass kept on its key or moved one key on,
    averaged over consecutive queries t, t+1 with t >= skip: probs (..., T, T) -> (...), float64.

    For a pair of rows a = A[t], b = A[t+1] it is the largest mass that can be carried from a to b when each unit
    of a's mass may stay on its key j (a fixed column: sink, re-accessed key) or move to key j + 1 (a diagonal:
    the attended key advances with the query), each unit used once: an optimal transport with moves {0, +1},
    divided by b's total mass (1 for probabilities). Both moves are allowed at once, so a head that is a sink and a
    diagonal together is predictable too; a head whose peak jumps elsewhere keeps only its background. Computed
    exactly by a greedy left-to-right pass (targets in key order, the mass of key j - 1, which can serve no later
    key, used first), vectorised over rows and heads, O(T) steps.

    Reference values on synthetic causal maps (T = 256, logits i.i.d. N(0, 1) plus +8 on the pattern's keys,
    skip 16): sink 0.90, offset-3 diagonal 0.90, sink and diagonal (+7 each) 0.66, a peak jumping to a random
    earlier key every step 0.06, noise only (diffuse) 0.63; uniform attention 1 (it never moves). For rows of
    i.i.d. weights the value lies between E[min(X, Y)] / E[X] (only "stay" moves) and E[min(X, Y + Z)] / E[X]
    (tests/test_metrics.py checks the diffuse map against both). `top_k` is unused (kept for compatibility with
    the former top-k Jaccard definition).
    """
    T = probs.shape[-1]
    _check_len(probs.shape[-2], skip)
    matched, total = carried_mass(probs[..., skip : T - 1, :], probs[..., skip + 1 : T, :])
    return (matched / torch.where(total > 0, total, torch.ones_like(total))).mean(-1)


def carried_mass(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For row pairs a (..., n, K) -> b (..., n, K): the mass of b carried over from a with moves {0, +1} (the
    greedy transport of `predictability`) and b's total mass, both (..., n) float64."""
    a, b = a.double(), b.double()
    carry = torch.zeros(a.shape[:-1], dtype=torch.float64, device=a.device)  # mass of key j - 1 still unused
    matched = torch.zeros_like(carry)
    for j in range(a.shape[-1]):
        bj = b[..., j]
        u = torch.minimum(bj, carry)  # from key j - 1 (diagonal move): it can serve no later key
        aj = a[..., j]
        v = torch.minimum(bj - u, aj)  # from key j (stays)
        matched += u + v
        carry = aj - v
    return matched, b.sum(-1)


def concentration(probs: torch.Tensor, skip: int = 16) -> torch.Tensor:
    """Mean over queries t >= skip of 1 - H(A[t]) / log(t + 1): 0 for uniform attention over the t + 1 visible
    keys, 1 for all mass on one key: probs (..., T, T) -> (...), float64. Query t = 0 (one key) is skipped."""
    T = probs.shape[-1]
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
    when no period explains anything (strength 0).
    """
    x = profile[..., start:].double()
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
    period = torch.where(none, torch.full_like(period, float("nan")), period)
    strength = torch.where(none, torch.zeros_like(strength), strength)
    return period, strength


def label_pattern(sink: float, column: float, diag: float, strength: float, pred: float, cfg: MetricConfig,
                  concentration: float | None = None) -> str:
    """The pattern label from the thresholds in `cfg` (rules in the module docstring); without `concentration`
    the `diffuse` rule is skipped."""
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
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()
    return {
        "q_sim_consecutive_pre": q_similarity_consecutive(record.q_pre, cfg.skip),
        "q_sim_consecutive_post": q_similarity_consecutive(record.q_post, cfg.skip),
        "q_sim_window_pre": q_similarity_window(record.q_pre, cfg.window),
        "q_sim_window_post": q_similarity_window(record.q_post, cfg.window),
        "sink_mass": sink_mass(probs, cfg.skip),
        "column_mass": column_mass(probs, cfg.skip),
        "predictability": predictability(probs, cfg.skip, cfg.top_k),
        "concentration": concentration(probs, cfg.skip),
        "profile": distance_profile(probs, cfg.skip, cfg.max_distance),
    }


def _finalize(layer: int, kv_group: int, means: dict[str, torch.Tensor], cfg: MetricConfig) -> list[dict[str, Any]]:
    """Per-head rows from window-averaged scalars (H,) and profile (H, n)."""
    prof = means["profile"]
    offset, mass = _diag_from_profile(prof, cfg.max_offset)
    period, strength = period_strength(prof, cfg.min_period, cfg.max_period)
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
        row["predictability"] = float(means["predictability"][h])
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
    the same q/k (tests/test_capture.py). Predictability pairs each block's first row with the previous block's last.
    """
    B, H, T, D = q_post.shape
    Hkv = k_post.shape[1]
    group = H // Hkv
    skip = cfg.skip
    _check_len(T, max(skip, 1))
    rows = rows or block_rows(H, T, B)
    dev = q_post.device
    jmax = (T + skip) // 2
    Dmax = max(0, min(cfg.max_distance, T - 1 - skip))
    dd = torch.arange(Dmax + 1, device=dev)
    pred = torch.zeros(B, H, dtype=torch.float64, device=dev)
    conc = torch.zeros(B, H, dtype=torch.float64, device=dev)
    last = None  # the previous block's last row: its pair with this block's first row
    sink = torch.zeros(B, H, dtype=torch.float64, device=dev)
    cols = torch.zeros(B, H, jmax + 1, dtype=torch.float64, device=dev)
    prof = torch.zeros(B, H, Dmax + 1, dtype=torch.float64, device=dev)
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
        c0 = max(0, 1 - t0)  # concentration skips query 0 (one key)
        conc += row_concentration(p[..., c0:, :], t0 + c0).sum(-1)
        if last is None:
            a, nb = p[..., :-1, :], p[..., 1:, :]
        else:
            prev = torch.nn.functional.pad(last, (0, t1 - last.shape[-1]))
            a, nb = torch.cat([prev, p[..., :-1, :]], dim=-2), p
        if nb.shape[-2]:
            m, tot = carried_mass(a, nb)
            pred += (m / torch.where(tot > 0, tot, torch.ones_like(tot))).sum(-1)
        last = p[..., -1:, :]
        del p
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
        "predictability": pred / max(1, T - 1 - skip),
        "concentration": conc / (T - max(skip, 1)),
        "profile": prof / nvalid,
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
    (they wait in a temporary file; cost one random draw of the parameters and one write and read of the weights). The null is drawn with
    `stats.null_seed(seed)`, never with `seed` itself, so the null of a random-weight model built with seed `seed`
    is not that very model.
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
