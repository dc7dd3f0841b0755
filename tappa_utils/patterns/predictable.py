"""Chapter 3: q-similarity against predictability, logit jump against query jump."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import theory
from .head import HeadData, spearman


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


def logit_jump_steps(hd: HeadData, b: int = 0, skip: int = 16) -> pd.DataFrame:
    """Per step t (skip <= t < T-1) of window b: `query_jump` |q_{t+1} - q_t|, `logit_jump` max_{j<=t}
    |a[t+1,j] - a[t,j]|, `alignment` max_j |dq^T R(t+1-j) k_j| / |dq| (times scale; the c1 of that step) and
    `rotation` max_j of the per-channel bound on the RoPE term (the c2 of that step), so that exactly
    `logit_jump >= alignment * query_jump - rotation`."""
    q, k, th = hd.q[b], hd.k[b], hd.theta
    T = q.shape[0]
    if T - 1 <= skip:
        raise ValueError(f"skip={skip} leaves no steps in a window of {T} tokens")
    A = hd.relative_logits(b)
    ts = np.arange(skip, T - 1)
    dq = q[ts + 1] - q[ts]
    xq = np.linalg.norm(dq, axis=-1)
    jmask = np.arange(T)[None, :] <= ts[:, None]
    dA = np.abs(A[ts + 1] - A[ts])
    logit_jump = np.where(jmask, dA, -np.inf).max(1)
    n = (ts + 1)[:, None] - np.arange(T)[None, :]
    qt = theory.relative_logit(dq[:, None, :], k[None, :, :], n, th) * hd.scale
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


