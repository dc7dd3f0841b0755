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
# chapter 3 claims: patterned predictability, the q-sim variant chosen on calibration windows, necessity, the jump
# proposition calibrated then held out
# ---------------------------------------------------------------------------------------------------------------

PATTERNED = "patterned_predictability"


def with_patterned(heads: pd.DataFrame) -> pd.DataFrame:
    """The head table with `patterned_predictability` = predictability x concentration: 0 for uniform attention
    (which never moves, so its predictability is 1), high for a concentrated pattern that stays or moves one key
    on (sink, diagonal), low for a jumping peak. Chapter 3's claims use it (see `claims`, the `predictable.` block)."""
    for c in ("predictability", "concentration"):
        if c not in heads.columns:
            raise KeyError(f"column {c!r} missing from the head table (use metrics.analyze_heads)")
    return heads.assign(**{PATTERNED: heads["predictability"] * heads["concentration"]})


def choose_patterned_qsim(heads_calib: pd.DataFrame, null_calib: pd.DataFrame, target: str = PATTERNED,
                          variants=QSIM_VARIANTS) -> tuple[str, pd.DataFrame]:
    """The q-sim variant whose within-layer Spearman with `target` minus the null's is largest, on calibration
    windows: (variant, table with one row per variant: `within_layer`, `within_layer_null`, `excess`).

    Variants whose excess is NaN (a constant column) are skipped; when every excess is NaN the largest trained
    within-layer correlation decides, and when that is NaN too, the first variant."""
    for df, name in ((heads_calib, "heads_calib"), (null_calib, "null_calib")):
        missing = [c for c in (*variants, target, "layer") if c not in df.columns]
        if missing:
            raise KeyError(f"{name} lacks columns {missing}")
    rows = [{"variant": v, "within_layer": spearman(heads_calib[v], heads_calib[target], heads_calib["layer"]),
             "within_layer_null": spearman(null_calib[v], null_calib[target], null_calib["layer"])}
            for v in variants]
    table = pd.DataFrame(rows)
    table["excess"] = table.within_layer - table.within_layer_null
    for col in ("excess", "within_layer"):
        if table[col].notna().any():
            return str(table.loc[table[col].idxmax(), "variant"]), table
    return str(variants[0]), table


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
        _percentile_ci,
        _within_group_bootstrap,
        _within_group_permutations,
        permutation_p,
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
                      "necessity share; within-group permutation p, within-group bootstrap ci", "greater")


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
