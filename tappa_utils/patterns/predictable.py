"""Chapter 3: q-similarity against predictability, logit jump against query jump."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import theory
from ..metrics import QSIM_VARIANTS
from ..stats import spearman
from .head import HeadData

# ---------------------------------------------------------------------------------------------------------------
# chapter 3: q-similarity vs predictability, logit jump vs query jump
# ---------------------------------------------------------------------------------------------------------------


def qsim_predictability(heads: pd.DataFrame, qsim: str = "q_sim_consecutive_pre",
                        target: str = "predictability") -> dict[str, float]:
    """Spearman of `qsim` vs `target` over all heads (`all`) and within layers (`within_layer`: each layer's mean
    subtracted from both, so depth alone cannot produce it)."""
    for c in (qsim, target, "layer"):
        if c not in heads.columns:
            raise KeyError(f"column {c!r} missing from the head table; available: {', '.join(heads.columns)}")
    dm = heads[[qsim, target]] - heads.groupby("layer")[[qsim, target]].transform("mean")
    return {"all": spearman(heads[qsim], heads[target]), "within_layer": spearman(dm[qsim], dm[target])}


def rotated(x: np.ndarray, positions: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Pre-RoPE vectors x (n, d) rotated to their positions (n,), as real (n, d) arrays [Re, Im] of the channels
    z^m e^{i p theta_m}, so that `rotated(q, t) @ rotated(k, j).T` = q_t^T R(t - j) k_j (`theory.relative_logit`):
    the logits of all pairs as one matrix product instead of a (T, T, d/2) tensor."""
    z = theory._c(x) * np.exp(1j * np.asarray(positions, np.float64)[:, None] * np.asarray(theta, np.float64))
    return np.concatenate([z.real, z.imag], axis=-1)


def logit_jump_steps(hd: HeadData, b: int = 0, skip: int = 16) -> pd.DataFrame:
    """Per step t (skip <= t < T-1) of window b: `query_jump` |q_{t+1} - q_t|, `logit_jump` max_{j<=t}
    |a[t+1,j] - a[t,j]|, `alignment` max_j |dq^T R(t+1-j) k_j| / |dq| (times scale; the c1 of that step) and
    `rotation` max_j of the per-channel bound on the RoPE term (the c2 of that step), so that exactly
    `logit_jump >= alignment * query_jump - rotation`. Matrix products of rotated vectors (`rotated`): O(T^2 d)."""
    q, k, th = hd.q[b], hd.k[b], hd.theta
    T = q.shape[0]
    if T - 1 <= skip:
        raise ValueError(f"skip={skip} leaves no steps in a window of {T} tokens")
    pos = np.arange(T)
    ts = np.arange(skip, T - 1)
    kr = rotated(k, pos, th)
    qr = rotated(q, pos, th)
    A = hd.scale * qr @ kr.T
    dq = q[ts + 1] - q[ts]
    xq = np.linalg.norm(dq, axis=-1)
    jmask = pos[None, :] <= ts[:, None]
    logit_jump = np.where(jmask, np.abs(A[ts + 1] - A[ts]), -np.inf).max(1)
    qt = hd.scale * rotated(dq, ts + 1, th) @ kr.T
    align = np.where(jmask, np.abs(qt), -np.inf).max(1) / np.maximum(xq, 1e-300)
    chord = theory.rotation_step_factor(th)
    rot = hd.scale * (np.abs(theory._c(q[ts])) * chord) @ np.abs(theory._c(k)).T
    rot = np.where(jmask, rot, -np.inf).max(1)
    coarse = hd.scale * np.linalg.norm(q[ts], axis=-1) * np.linalg.norm(k, axis=-1).max() * th.max()
    return pd.DataFrame({"t": ts, "query_jump": xq, "logit_jump": logit_jump, "alignment": align,
                         "rotation": rot, "rotation_paper": coarse})


@dataclass
class JumpFit:
    """The proposition's constants fitted on one head's steps: `c1` = the `quantile` of the per-step alignment
    (the assumption "the query change is not orthogonal to the rotated keys" holds with c1 on `predicted`
    of the steps), `c2` = the largest per-step RoPE term. Then `logit_jump >= c1 query_jump - c2` must hold on at
    least `predicted` of the steps; `measured` is the fraction where it does, `nonvacuous` the fraction where the
    right side is positive, `nonvacuous_per_step` the same with each step's own constants (the sharpest form),
    `rho` the Spearman of logit jump vs query jump."""

    c1: float
    c2: float
    predicted: float
    measured: float
    nonvacuous: float
    nonvacuous_per_step: float
    rho: float


def fit_jump_bound(steps: pd.DataFrame, quantile: float = 0.1) -> JumpFit:
    """Fit `JumpFit` on a `logit_jump_steps` table."""
    if not 0 <= quantile < 1:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}")
    c1 = float(np.quantile(steps["alignment"], quantile))
    c2 = float(steps["rotation"].max())
    rhs = c1 * steps["query_jump"] - c2
    return JumpFit(c1=c1, c2=c2, predicted=float((steps["alignment"] >= c1).mean()),
                   measured=float((steps["logit_jump"] >= rhs - 1e-9).mean()), nonvacuous=float((rhs > 0).mean()),
                   nonvacuous_per_step=float((steps["alignment"] * steps["query_jump"] > steps["rotation"]).mean()),
                   rho=spearman(steps["query_jump"], steps["logit_jump"]))




# ---------------------------------------------------------------------------------------------------------------
# chapter 3 claims: predictability beyond concentration, the q-sim variant chosen on calibration windows, necessity,
# the jump proposition calibrated then held out (a sanity row: it holds for any weights)
# ---------------------------------------------------------------------------------------------------------------

PATTERNED = "patterned_predictability"


def with_patterned(heads: pd.DataFrame) -> pd.DataFrame:
    """The head table with `patterned_predictability` = predictability x concentration: 0 for uniform attention
    (which never moves, so its predictability is 1), high for a concentrated pattern that stays or moves one key
    on (sink, diagonal), low for a jumping peak. Shown in chapter 3 beside its claims, which partial concentration
    out instead (`qsim_partial`): the product ranks heads like concentration (within-layer Spearman 0.98 on
    tappa-tiny, 1.00 on random weights)."""
    for c in ("predictability", "concentration"):
        if c not in heads.columns:
            raise KeyError(f"column {c!r} missing from the head table (use metrics.analyze_heads)")
    return heads.assign(**{PATTERNED: heads["predictability"] * heads["concentration"]})


QSIM_WORDS = {
    "q_sim_consecutive_pre": "consecutive queries, before RoPE",
    "q_sim_consecutive_post": "consecutive queries, after RoPE",
    "q_sim_window_pre": "queries within a 32-token window, before RoPE",
    "q_sim_window_post": "queries within a 32-token window, after RoPE",
}
DEFAULT_QSIM = "q_sim_consecutive_pre"  # the paper's definition: used when no variant correlates positively
TARGET, CONTROL = "predictability", "concentration"


MIN_HEADS = 8  # fewest patterned heads the headline is tested on (else NaN: inconclusive)


def patterned_heads(heads: pd.DataFrame, threshold: float = 0.2) -> pd.DataFrame:
    """The heads with a pattern: concentration >= `threshold` (`MetricConfig.concentration_threshold`, calibrated
    above every head of random-weight copies), the units of chapter 3's headline. Random weights have none."""
    if CONTROL not in heads.columns:
        raise KeyError(f"column {CONTROL!r} missing from the head table (use metrics.analyze_heads)")
    return heads[heads[CONTROL] >= threshold]


def qsim_partial(heads: pd.DataFrame, qsim: str, target: str = TARGET, control: str = CONTROL, seed: int = 0,
                 n_resamples: int | None = None, min_heads: int = MIN_HEADS):
    """Within-layer Spearman of `qsim` with `target` after regressing both on `control`'s ranks
    (`stats.partial_spearman_test`, groups = layer), so that concentration, which drives both on random weights,
    cannot produce it; a `stats.StatResult` (permutation p, bootstrap ci over heads). Chapter 3 passes the
    `patterned_heads` (the headline) or every head (the statistic compared with the random-weight null). NaN
    estimate, p and ci with fewer than `min_heads` heads."""
    from ..stats import N_RESAMPLES, partial_spearman_test

    for c in (qsim, target, control, "layer"):
        if c not in heads.columns:
            raise KeyError(f"column {c!r} missing from the head table; available: {', '.join(heads.columns)}")
    n = int((heads[[qsim, target, control]].notna().all(axis=1)).sum())
    if n < max(min_heads, 5):
        return _nan_result(n, f"partial Spearman: {n} heads, fewer than {max(min_heads, 5)}")
    return partial_spearman_test(heads[qsim], heads[target], heads[control], groups=heads["layer"], seed=seed,
                                 n_resamples=n_resamples or N_RESAMPLES)


def qsim_claim_name(variant: str) -> str:
    """The headline claim's wording with the variant used named in it."""
    return (f"Among heads with a pattern, those with more similar {QSIM_WORDS.get(variant, variant)} (`{variant}`) "
            "have more predictable attention than their concentration explains (within layers).")


def choose_qsim(heads_calib: pd.DataFrame, variants=QSIM_VARIANTS, target: str = TARGET, control: str = CONTROL,
                default: str = DEFAULT_QSIM) -> tuple[str, pd.DataFrame]:
    """The q-sim variant for chapter 3, chosen on calibration windows (never the windows tested): the variant
    with the largest positive concentration-partialled within-layer Spearman with `target` (`qsim_partial`'s
    statistic) over the `patterned_heads` of `heads_calib` (every head when fewer than `MIN_HEADS` have a pattern);
    `default` (the paper's consecutive pre-RoPE q-sim) when none is positive. A variant whose
    correlation has the wrong sign is never chosen. Returns (variant, table: `variant`, `partial_rho`,
    `eligible`)."""
    from ..stats import partial_ranks

    missing = [c for c in (*variants, target, control, "layer") if c not in heads_calib.columns]
    if missing:
        raise KeyError(f"heads_calib lacks columns {missing}")
    if default not in variants:
        raise ValueError(f"default {default!r} is not one of the variants {list(variants)}")
    if len(patterned_heads(heads_calib)) >= MIN_HEADS:
        heads_calib = patterned_heads(heads_calib)
    rows = []
    for v in variants:
        ex, ey = partial_ranks(heads_calib[v], heads_calib[target], heads_calib[control], heads_calib["layer"])
        rho = spearman(ex, ey) if ex.size >= 3 else float("nan")
        rows.append({"variant": v, "partial_rho": rho, "eligible": bool(np.isfinite(rho) and rho > 0)})
    table = pd.DataFrame(rows)
    ok = table[table.eligible]
    return (str(ok.loc[ok.partial_rho.idxmax(), "variant"]) if len(ok) else default), table


def read_qsim_choice(path, model: str, held_out: Iterable[int] | None = None, seq_len: int | None = None,
                     text_file: str | None = None) -> str | None:
    """Chapter 2's q-sim choice (`qsim_choice.json`: {"variant": ...}) if it exists, names a known variant and was
    made for `model` (checked against the `run_info.json` beside it when there is one); else None.

    With `held_out` (the rows of `token_windows(tokenizer, load_text(text_file), seq_len, n)` this chapter tests on),
    a choice calibrated on any of those same rows (same text and seq_len) is refused: a variant is never tested on
    the windows that chose it."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        variant = record.get("variant")
    except (ValueError, AttributeError):
        return None
    if variant not in QSIM_VARIANTS:
        return None
    if held_out is not None:
        same_rows = record.get("seq_len") == seq_len and record.get("text_file") == text_file
        if same_rows and set(record.get("calibration_windows") or []) & set(held_out):
            return None
    info = path.parent / "run_info.json"
    if info.is_file():
        try:
            made_for = json.loads(info.read_text()).get("params", {}).get("model")
        except ValueError:
            return None
        if made_for is not None and made_for != model:
            return None
    return str(variant)


def _nan_result(n: int, method: str, alternative: str = "greater"):
    from ..stats import N_RESAMPLES, StatResult

    nan = float("nan")
    return StatResult(nan, nan, (nan, nan), n, N_RESAMPLES, f"{method}: too few units", alternative)


def mean_test(values, null_value: float = 0.0, alternative: str = "greater", seed: int = 0):
    """Mean of `values` (independent units) against `null_value`: sign-flip p of values - null_value, bootstrap ci
    of the mean, on the original scale (`stats.StatResult`); NaN estimate, p and ci with fewer than 2 units."""
    from ..stats import paired_difference

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return _nan_result(int(v.size), "mean test", alternative)
    r = paired_difference(v, np.full(v.size, float(null_value)), alternative=alternative, seed=seed)
    return type(r)(r.estimate + null_value, r.p_value, (r.ci[0] + null_value, r.ci[1] + null_value), r.n,
                   r.n_resamples, r.method, r.alternative)


def _necessity_share(x: np.ndarray, y: np.ndarray, quantile: float) -> np.ndarray:
    """Rows of (B, n): share of the units with y >= its `quantile` whose x is >= x's median."""
    top = y >= np.quantile(y, quantile, axis=-1, keepdims=True)
    high = x >= np.median(x, axis=-1, keepdims=True)
    return (top & high).sum(-1) / top.sum(-1)


def necessity_test(qsim, target, groups=None, quantile: float = 0.75, n_resamples: int = 2000, seed: int = 0):
    """Share of the top-`quantile` heads by `target` whose `qsim` is above the median (0.5 without any relation),
    after removing each group's (layer's) mean from both: `stats.StatResult` with a one-sided permutation p (qsim
    shuffled within groups) and a bootstrap ci over heads (resampled within groups)."""
    from ..stats import (
        StatResult,
        _demean,
        _group_codes,
        _log_within_group_perms,
        _percentile_ci,
        _within_group_bootstrap,
        _within_group_permutations,
        permutation_p,
        reachable_p,
    )

    x, y = np.asarray(qsim, dtype=np.float64).ravel(), np.asarray(target, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"qsim and target must have the same length, got {x.size} and {y.size}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    g = None if groups is None else np.asarray(groups).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, g = x[keep], y[keep], (None if g is None else g[keep])
    if x.size < 4:
        return _nan_result(int(x.size), "necessity share")
    codes = _group_codes(g, x.size)
    xd, yd = (_demean(x, codes), _demean(y, codes)) if g is not None else (x, y)
    est = float(_necessity_share(xd, yd, quantile))
    rng = np.random.default_rng(seed)
    perm = _within_group_permutations(codes, n_resamples, rng)
    p = permutation_p(est, _necessity_share(xd[perm], np.broadcast_to(yd, perm.shape), quantile))
    idx = _within_group_bootstrap(codes, n_resamples, rng)
    xb, yb = x[idx], y[idx]
    if g is not None:
        xb, yb = _demean(xb, codes), _demean(yb, codes)
    ci = _percentile_ci(_necessity_share(xb, yb, quantile), 0.95)
    return StatResult(est, p, ci, int(x.size), n_resamples,
                      "necessity share; within-group permutation p, within-group bootstrap ci", "greater",
                      reachable_p(_log_within_group_perms(codes), n_resamples))


@dataclass
class HeldOutJump:
    """The jump proposition for one head, constants fitted on calibration windows and tested on held-out ones.

    `c1`, `c2`: as in `JumpFit`, on the calibration steps; `c1_rel` = c1 / (scale max_j |k_j|) (1: the query change
    points at a key, 0: orthogonal); `calibrated`: fraction of calibration steps where the inequality holds (at
    least `predicted` by construction); `predicted`: fraction of calibration steps with alignment >= c1 (1 minus
    the quantile); `held_out`: fraction of held-out steps where it holds (vacuous steps, c1 |dq| - c2 <= 0, hold
    trivially); `held_out_nonvacuous`: the same among the non-vacuous held-out steps only (NaN when there are none);
    `effect` = held_out_nonvacuous - predicted (so a bound that never bites cannot pass);
    `nonvacuous`: fraction of held-out steps with c1 |dq| - c2 > 0; `nonvacuous_per_step`: the same with each
    step's own constants; `rho`: Spearman(query jump, logit jump) on held-out steps; `exact_slack`: smallest
    logit_jump - (alignment query_jump - rotation) over all steps (>= 0 up to rounding: the triangle inequality)."""

    c1: float
    c2: float
    c1_rel: float
    calibrated: float
    predicted: float
    held_out: float
    held_out_nonvacuous: float
    effect: float
    nonvacuous: float
    nonvacuous_per_step: float
    rho: float
    exact_slack: float


def held_out_jump(hd: HeadData, calib_windows, held_windows, skip: int = 16,
                  quantile: float = 0.1) -> tuple[HeldOutJump, pd.DataFrame]:
    """`HeldOutJump` of one head and its steps table (`logit_jump_steps` of every window, with `window` and
    `split` = "calibration" / "held-out")."""
    calib_windows, held_windows = list(calib_windows), list(held_windows)
    if not calib_windows or not held_windows or set(calib_windows) & set(held_windows):
        raise ValueError(f"need disjoint, non-empty calibration {calib_windows} and held-out {held_windows} windows")
    steps = pd.concat([logit_jump_steps(hd, b, skip).assign(window=b, split=split)
                       for split, ws in (("calibration", calib_windows), ("held-out", held_windows)) for b in ws],
                      ignore_index=True)
    cal, held = steps[steps.split == "calibration"], steps[steps.split == "held-out"]
    fit = fit_jump_bound(cal, quantile)
    rhs = fit.c1 * held["query_jump"] - fit.c2
    kmax = float(np.linalg.norm(hd.k[calib_windows], axis=-1).max())
    holds = held["logit_jump"] >= rhs - 1e-9
    held_share = float(holds.mean())
    bites = rhs > 0
    held_nv = float(holds[bites].mean()) if bites.any() else float("nan")
    slack = steps["logit_jump"] - (steps["alignment"] * steps["query_jump"] - steps["rotation"])
    return HeldOutJump(
        c1=fit.c1, c2=fit.c2, c1_rel=fit.c1 / (hd.scale * kmax) if kmax > 0 else float("nan"),
        calibrated=fit.measured, predicted=fit.predicted, held_out=held_share, held_out_nonvacuous=held_nv,
        effect=held_nv - fit.predicted, nonvacuous=float(bites.mean()),
        nonvacuous_per_step=float((held["alignment"] * held["query_jump"] > held["rotation"]).mean()),
        rho=spearman(held["query_jump"], held["logit_jump"]),
        exact_slack=float(slack.min() / max(1.0, float(steps["logit_jump"].abs().max())))), steps
