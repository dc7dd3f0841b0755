"""Chapter 6: seasonal patterns: periodic inputs, resonance with the dominant frequency."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import theory
from .head import HeadData, capture_head

# ---------------------------------------------------------------------------------------------------------------
# chapter 6: seasonal
# ---------------------------------------------------------------------------------------------------------------


def periodic_ids(tokenizer, text: str, period: int, seq_len: int, num_windows: int = 1, stride: int = 997
                 ) -> torch.Tensor:
    """(num_windows, seq_len) ids: BOS then a `period`-token segment of `text` repeated (window w starts at
    token w * stride of the text)."""
    if period < 1 or seq_len < 2:
        raise ValueError(f"need period >= 1 and seq_len >= 2, got period={period}, seq_len={seq_len}")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    need = (num_windows - 1) * stride + period
    if len(ids) < need:
        raise ValueError(f"text too short: {len(ids)} tokens, {num_windows} windows need {need}")
    bos = tokenizer.bos_token_id
    body = seq_len - (1 if bos is not None else 0)
    rows = []
    for w in range(num_windows):
        seg = ids[w * stride : w * stride + period]
        rep = (seg * (body // period + 1))[:body]
        rows.append(([bos] if bos is not None else []) + rep)
    return torch.tensor(rows, dtype=torch.long)


def seasonal_pairs(hd: HeadData, L: int, dominant: int, b: int = 0, start: int | None = None) -> pd.DataFrame:
    """All pairs (t, i), i <= t, t >= start (default: the second period, L + 1), t + L < T: the logit a[t,i],
    measured |a[t+L,i] - a[t,i]| and the bound's terms (`theory.seasonal_bound`), scaled like the logits."""
    q, k, th = hd.q[b], hd.k[b], hd.theta
    T = q.shape[0]
    start = L + 1 if start is None else start
    ts = np.arange(start, T - L)
    if len(ts) == 0:
        raise ValueError(f"no query t with start={start} and t + L < T (L={L}, T={T}); use a longer seq_len")
    tt, ii = np.meshgrid(ts, np.arange(T), indexing="ij")
    keep = ii <= tt
    tt, ii = tt[keep], ii[keep]
    a0 = theory.relative_logit(q[tt], k[ii], tt - ii, th)
    a1 = theory.relative_logit(q[tt + L], k[ii], tt + L - ii, th)
    sb = theory.seasonal_bound(q[tt], q[tt + L], k[ii], L, th, dominant)
    s = hd.scale
    return pd.DataFrame({"t": tt, "i": ii, "logit": s * a0, "change": s * np.abs(a1 - a0), "bound": s * sb.full,
                         "bound_paper": s * sb.paper, "query": s * sb.query, "resonant": s * sb.resonant,
                         "phase": s * sb.phase})


def periodicity_error(x: np.ndarray, L: int) -> float:
    """Relative periodicity error of vectors x (T, d): mean |x_{t+L} - x_t| / mean |x_t| over t >= 1 (position 0,
    BOS or the first token, is left out)."""
    x = np.asarray(x, dtype=np.float64)
    if not 1 <= L < x.shape[0] - 1:
        raise ValueError(f"period L={L} must be in 1..T-2 (T={x.shape[0]})")
    return float(np.linalg.norm(x[L + 1:] - x[1:-L], axis=-1).mean() / np.linalg.norm(x, axis=-1).mean())


@dataclass
class SeasonalRuns:
    """The model on periodic inputs, one row per (L, window) in `runs` and per (L, window, query t) in `units`.

    `runs`: L, window, delta (mismatch of the dominant channel), eps_q, eps_k (`periodicity_error` at the head),
    change, bound, bound_paper, phase (means over pairs), rel_change (mean change / mean |a[t,i]|), holds_full,
    holds_paper (fractions of pairs). `units`: L, window, t, pairs, holds_full, holds_paper (counts): the
    resampling units of the pooled fractions (all pairs of one query together).
    """

    runs: pd.DataFrame
    units: pd.DataFrame

    def by_period(self) -> pd.DataFrame:
        """Means over windows, one row per L."""
        return self.runs.groupby("L", as_index=False).mean().drop(columns="window")


def seasonal_runs(model, tokenizer, text: str, layer: int, head: int, periods, seq_len: int, dominant: int,
                  num_windows: int = 1) -> SeasonalRuns:
    """For each period L: periodic input (`periodic_ids`), the pairs of `seasonal_pairs` at (layer, head), summarised
    per (L, window) and per query (see `SeasonalRuns`)."""
    runs, units = [], []
    for L in periods:
        L = int(L)
        ids = periodic_ids(tokenizer, text, L, seq_len, num_windows)
        hd = capture_head(model, ids, layer, head, probs=False)
        for b in range(ids.shape[0]):
            p = seasonal_pairs(hd, L, dominant, b)
            hf, hp = p["change"] <= p["bound"] + 1e-9, p["change"] <= p["bound_paper"] + 1e-9
            runs.append({"L": L, "window": b, "delta": float(theory.resonance_mismatch(L, hd.theta[dominant])),
                         "eps_q": periodicity_error(hd.q[b], L), "eps_k": periodicity_error(hd.k[b], L),
                         "change": p["change"].mean(), "bound": p["bound"].mean(),
                         "bound_paper": p["bound_paper"].mean(), "phase": p["phase"].mean(),
                         "rel_change": p["change"].mean() / p["logit"].abs().mean(),
                         "holds_full": float(hf.mean()), "holds_paper": float(hp.mean())})
            u = p.assign(holds_full=hf, holds_paper=hp).groupby("t").agg(
                pairs=("i", "size"), holds_full=("holds_full", "sum"), holds_paper=("holds_paper", "sum"))
            units.append(u.reset_index().assign(L=L, window=b))
    return SeasonalRuns(pd.DataFrame(runs), pd.concat(units, ignore_index=True))


def seasonal_sweep(model, tokenizer, text: str, layer: int, head: int, periods, seq_len: int, dominant: int,
                   num_windows: int = 1) -> pd.DataFrame:
    """`seasonal_runs(...).by_period()`: per L the mean measured change, mean bounds, the fraction of pairs where
    the full / paper bound holds, eps_q and eps_k, and the mismatch delta of the dominant channel."""
    return seasonal_runs(model, tokenizer, text, layer, head, periods, seq_len, dominant, num_windows).by_period()


def resonance_groups(delta, resonant: float = math.pi / 4, control: float = math.pi / 2) -> np.ndarray:
    """'resonant' where |delta| <= `resonant`, 'control' where |delta| >= `control`, '' in between."""
    a = np.abs(np.asarray(delta, dtype=np.float64))
    return np.where(a <= resonant, "resonant", np.where(a >= control, "control", ""))


def resonance_test(runs: pd.DataFrame, seed: int = 0, n_resamples: int = 2000):
    """Mean log relative change at the control periods minus at the resonant ones (`resonance_groups`), over the
    (L, window) rows of `SeasonalRuns.runs`: `stats.two_sample` (label-permutation p, bootstrap ci). Raises when a
    group has fewer than 2 rows (sweep more periods or windows)."""
    from ..stats import two_sample

    g = resonance_groups(runs["delta"])
    x = np.log(runs["rel_change"].to_numpy(dtype=np.float64))
    n_c, n_r = int((g == "control").sum()), int((g == "resonant").sum())
    if n_c < 2 or n_r < 2:
        raise ValueError(f"the sweep has {n_r} resonant and {n_c} control (L, window) rows; need >= 2 each: raise "
                         "n_periods, spread or num_windows")
    return two_sample(x[g == "control"], x[g == "resonant"], seed=seed, n_resamples=n_resamples)


def candidate_layers(num_layers: int, layers=None) -> list[int]:
    """Layers searched for the seasonal head: `layers` (default all) without layer 0, whose queries are a function
    of the current token alone (so on a periodic input they repeat exactly and S1 would hold by construction)."""
    out = list(range(num_layers)) if layers is None else [int(x) % num_layers for x in layers]
    if 0 in out:
        if layers is not None:
            raise ValueError("layers includes layer 0, whose queries depend on the current token alone (periodic "
                             "by construction on a periodic input); choose layers >= 1")
        out.remove(0)
    if not out:
        raise ValueError(f"no layer >= 1 to search: the model has {num_layers} layer(s)")
    return out


def resonant_periods(theta_m: float, around: int, count: int = 9, spread: float = 0.5) -> list[int]:
    """`count` integer periods around `around` (within +-spread of it), always including round(around) and the
    periods round(around * (1 +- 1/16)), inside the resonant band |delta| <= pi/4 (`resonance_groups`), so that a
    sweep of one window has resonant periods to compare with the control periods."""
    if around < 2:
        raise ValueError(f"around must be >= 2, got {around}")
    lo, hi = max(2, int(math.floor(around * (1 - spread)))), int(math.ceil(around * (1 + spread)))
    near = {int(round(around * f)) for f in (1 - 1 / 16, 1.0, 1 + 1 / 16)}
    vals = sorted(set(np.linspace(lo, hi, count).round().astype(int).tolist()) | near)
    return vals




def seasonal_runs_heads(model, tokenizer, text: str, heads, periods, seq_len: int, dominant: int,
                        num_windows: int = 1) -> SeasonalRuns:
    """`seasonal_runs` at several heads (`heads`: (layer, head) pairs) for the same channel `dominant`, with `layer`
    and `head` columns; one forward per period serves every head (the periods are the outer loop)."""
    runs, units = [], []
    for L in periods:
        for layer, head in heads:
            r = seasonal_runs(model, tokenizer, text, int(layer), int(head), [int(L)], seq_len, dominant, num_windows)
            runs.append(r.runs.assign(layer=int(layer), head=int(head)))
            units.append(r.units.assign(layer=int(layer), head=int(head)))
    return SeasonalRuns(pd.concat(runs, ignore_index=True), pd.concat(units, ignore_index=True))


def channel_share(hd: HeadData, channel: int, skip: int = 16) -> float:
    """Share of channel `channel` in mean |q^m| x mean |k^m| over the channels (queries and keys t >= skip)."""
    amp = (np.abs(theory._c(hd.q[:, skip:])).mean((0, 1)) * np.abs(theory._c(hd.k[:, skip:])).mean((0, 1)))
    return float(amp[channel] / amp.sum())


def per_head_seasonal(runs: SeasonalRuns) -> pd.DataFrame:
    """One row per (layer, head) of `seasonal_runs_heads`: `resonance_effect` (mean log relative change at the
    control periods minus at the resonant ones, `resonance_groups`; NaN without both groups), `holds_paper` and
    `holds_full` (fractions of the head's pairs), `eps_q`, `eps_k` (medians over its periods): the head is the unit
    of the chapter's tests, periods and windows nested inside."""
    rows = []
    for (layer, head), g in runs.runs.groupby(["layer", "head"], sort=False):
        grp = resonance_groups(g["delta"])
        x = np.log(g["rel_change"].to_numpy(dtype=np.float64))
        eff = (x[grp == "control"].mean() - x[grp == "resonant"].mean()
               if (grp == "control").any() and (grp == "resonant").any() else float("nan"))
        u = runs.units[(runs.units["layer"] == layer) & (runs.units["head"] == head)]
        rows.append({"layer": layer, "head": head, "resonance_effect": float(eff),
                     "holds_paper": float(u.holds_paper.sum() / u.pairs.sum()),
                     "holds_full": float(u.holds_full.sum() / u.pairs.sum()),
                     "eps_q": float(g.eps_q.median()), "eps_k": float(g.eps_k.median())})
    return pd.DataFrame(rows)
