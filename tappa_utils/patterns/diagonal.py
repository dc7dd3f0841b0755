"""Chapter 5: diagonals: Toeplitz deviation, the dominant-channel intervention, interval of periodic diagonals."""
from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from .. import theory
from ..capture import resolve_layers
from ..rope import rotary_module
from .head import HeadData, _check_head, capture_head

# ---------------------------------------------------------------------------------------------------------------
# chapter 5: diagonals
# ---------------------------------------------------------------------------------------------------------------


def diagonal_steps(hd: HeadData, offset: int, b: int = 0, skip: int = 16) -> pd.DataFrame:
    """Along the diagonal i = t - offset: measured |a[t+1,i+1] - a[t,i]| (Toeplitz deviation), the bound
    |dq||k_{i+1}| + |q_t||dk|, and the column change |a[t+1,i] - a[t,i]| for comparison."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    q, k, th = hd.q[b], hd.k[b], hd.theta
    ts = np.arange(max(offset, skip), q.shape[0] - 1)
    i = ts - offset
    a0 = theory.relative_logit(q[ts], k[i], offset, th)
    a1 = theory.relative_logit(q[ts + 1], k[i + 1], offset, th)
    col = theory.relative_logit(q[ts + 1], k[i], offset + 1, th)
    s = hd.scale
    return pd.DataFrame({"t": ts, "change": s * np.abs(a1 - a0), "logit": s * a0,
                         "bound": s * theory.diagonal_step_bound(q[ts], q[ts + 1], k[i], k[i + 1]),
                         "column_change": s * np.abs(col - a0)})


@contextmanager
def with_dominant_channel(model, layer: int, head: int, channel: int, factor: float) -> Iterator:
    """Inside the block, RoPE channel `channel` of (layer, head) is scaled by `factor` in both the query and the key;
    on exit (also after an exception) the touched weights are restored bit for bit. No copy of the model.

    Scaled in place: rows m and m + d/2 of that head's block of q_proj and of its KV head's block of k_proj, biases
    included (4 rows, 2 bias pairs). The KV head is shared by its group, so the key side affects the group's other
    query heads. For models with q_norm/k_norm (Qwen3) the norm weights are scaled instead (shared by all heads of
    the layer). Yields the model.

        with with_dominant_channel(model, 3, 1, channel=2, factor=8.0):
            hd = capture_head(model, ids, 3, 1)
    """
    layer = resolve_layers(model, int(layer))[0]
    _check_head(model, layer, head)
    attn = model.model.layers[layer].self_attn
    d = attn.head_dim
    if not 0 <= channel < d // 2:
        raise IndexError(f"channel {channel} is out of range: head_dim {d} has {d // 2} RoPE channels")
    group = model.config.num_attention_heads // model.config.num_key_value_heads
    targets: list[tuple[torch.Tensor, list[int]]] = []
    for proj, norm, h in ((attn.q_proj, getattr(attn, "q_norm", None), head),
                          (attn.k_proj, getattr(attn, "k_norm", None), head // group)):
        if norm is not None:
            targets.append((norm.weight, [channel, channel + d // 2]))
            continue
        rows = [h * d + channel, h * d + channel + d // 2]
        targets += [(proj.weight, rows)] + ([(proj.bias, rows)] if proj.bias is not None else [])
    saved = [(t, rows, t.detach()[rows].clone()) for t, rows in targets]
    try:
        with torch.no_grad():
            for t, rows in targets:
                t[rows] *= factor
        yield model
    finally:
        with torch.no_grad():
            for t, rows, orig in saved:
                t[rows] = orig


@contextmanager
def with_rope_base(model, base: float) -> Iterator:
    """Inside the block, the model's RoPE uses `rope_theta = base`; on exit (also after an exception) its rotary
    frequencies and config are restored bit for bit. No copy of the model.

    What changes: the rotary module's `inv_freq` (and `original_inv_freq`) buffers are overwritten in place with the
    frequencies the model's own RoPE init function (`transformers.modeling_rope_utils`, by `rope_type`) computes
    from a copy of its config whose `rope_theta` is `base`; `config.rope_parameters` carries the new base meanwhile.
    Every scaling rule of the model is kept: for llama3-scaled RoPE the new base's frequencies go through the same
    wavelength-dependent smoothing (factor, low/high frequency factors, original context). Yields the model.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if not base > 1:
        raise ValueError(f"the RoPE base must be > 1, got {base}")
    rot = rotary_module(model)
    rope_type = getattr(rot, "rope_type", "default")
    fn = rot.compute_default_rope_parameters if rope_type == "default" else ROPE_INIT_FUNCTIONS[rope_type]
    cfg = copy.deepcopy(rot.config)
    rp = dict(cfg.rope_parameters)
    rp["rope_theta"] = float(base)
    cfg.rope_parameters = rp
    inv, att = fn(cfg, rot.inv_freq.device)
    bufs = [b for b in (rot.inv_freq, getattr(rot, "original_inv_freq", None)) if b is not None]
    saved = [(b, b.detach().clone()) for b in bufs]
    old_att, old_rp = rot.attention_scaling, model.config.rope_parameters
    try:
        with torch.no_grad():
            for b in bufs:
                b.copy_(inv)
        rot.attention_scaling = att
        model.config.rope_parameters = rp
        yield model
    finally:
        with torch.no_grad():
            for b, orig in saved:
                b.copy_(orig)
        rot.attention_scaling = old_att
        model.config.rope_parameters = old_rp


def logit_distance_profile(A: np.ndarray, max_distance: int, skip: int = 16) -> np.ndarray:
    """Mean of A[..., t, t-n] over queries t >= max(skip, n) and the leading axes, for n = 0..max_distance."""
    A = np.asarray(A, dtype=np.float64)
    T = A.shape[-1]
    if max_distance >= T - skip:
        raise ValueError(f"max_distance {max_distance} too large for T={T} and skip={skip}")
    out = []
    for n in range(max_distance + 1):
        t = np.arange(max(skip, n), T)
        out.append(A[..., t, t - n].mean())
    return np.array(out)


def dominant_period(profile: np.ndarray, min_period: float = 2.0, max_period: float | None = None,
                    start: int = 1) -> float:
    """Period (tokens) of the strongest oscillation of `profile[start:]`: peak of the periodogram on a fine
    frequency grid after removing a quadratic trend."""
    y = np.asarray(profile, dtype=np.float64)[start:]
    n = np.arange(len(y), dtype=np.float64)
    if len(y) < 8:
        raise ValueError("the profile is too short to estimate a period (need >= 8 points)")
    y = y - np.polyval(np.polyfit(n, y, 2), n)
    max_period = max_period or len(y) / 2
    w = np.linspace(2 * np.pi / max_period, 2 * np.pi / min_period, 4000)
    power = np.abs(np.exp(-1j * w[:, None] * n[None, :]) @ y) ** 2
    return float(2 * np.pi / w[np.argmax(power)])


def autocorr_period(profile: np.ndarray, start: int = 1) -> float:
    """Period (tokens) from the autocorrelation of `profile[start:]` (quadratic trend removed): the lag of its
    first local maximum after the first zero crossing (NaN when there is none)."""
    y = np.asarray(profile, dtype=np.float64)[start:]
    n = np.arange(len(y), dtype=np.float64)
    y = y - np.polyval(np.polyfit(n, y, 2), n)
    ac = np.correlate(y, y, "full")[len(y) - 1:] / (np.arange(len(y), 0, -1))
    ac = ac[: len(y) // 2 + 1]
    neg = np.where(ac < 0)[0]
    if len(neg) == 0:
        return float("nan")
    lag = np.arange(len(ac))
    peaks = [i for i in range(neg[0], len(ac) - 1) if ac[i] > ac[i - 1] and ac[i] >= ac[i + 1]]
    if not peaks:
        return float("nan")
    i = peaks[0]
    # parabolic refinement of the peak
    den = ac[i - 1] - 2 * ac[i] + ac[i + 1]
    return float(lag[i] + (0.5 * (ac[i - 1] - ac[i + 1]) / den if den != 0 else 0.0))


def synthetic_dominant_head(T: int, theta: np.ndarray, channel: int, factor: float = 8.0, noise: float = 0.1,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stable synthetic q, k (T, d): a fixed random vector plus `noise`, with channel `channel` scaled by `factor`."""
    rng = np.random.default_rng(seed)
    d = 2 * len(theta)
    q0, k0 = rng.standard_normal(d), rng.standard_normal(d)
    q = q0 + noise * rng.standard_normal((T, d))
    k = k0 + noise * rng.standard_normal((T, d))
    for x in (q, k):
        x[:, [channel, channel + d // 2]] *= factor
    return q, k


def interval_experiment(model, input_ids: torch.Tensor, layer: int, head: int, channels, bases, factor: float = 8.0,
                        max_distance: int = 128, skip: int = 16) -> pd.DataFrame:
    """For each RoPE base and channel: make the channel dominant in (layer, head), measure the spacing of the
    parallel diagonals from the logit-by-distance profile, compare with 2 pi / theta_m.

    Columns: base, channel, theta, predicted, measured (periodogram), autocorr (autocorrelation), rel_error,
    dominant_share.
    """
    rows = []
    for base in bases:
        for m in channels:
            with with_rope_base(model, base), with_dominant_channel(model, layer, head, m, factor):
                hd = capture_head(model, input_ids, layer, head)
            pred = theory.predicted_diagonal_interval(hd.theta[m])
            prof = logit_distance_profile(hd.logits, max_distance, skip)
            meas = dominant_period(prof)
            _, share = theory.dominant_channel_share(hd.q, hd.k)
            rows.append({"base": base, "channel": m, "theta": hd.theta[m], "predicted": pred, "measured": meas,
                         "autocorr": autocorr_period(prof), "rel_error": abs(meas - pred) / pred,
                         "dominant_share": float(share)})
    return pd.DataFrame(rows)




def rope_base(model) -> float:
    """The model's own RoPE base (`rope_theta` of its config's `rope_parameters`)."""
    from ..rope import rotary_module

    cfg = rotary_module(model).config
    rp = getattr(cfg, "rope_parameters", None) or {}
    base = rp.get("rope_theta", getattr(cfg, "rope_theta", None))
    if base is None:
        raise ValueError(f"{type(model).__name__}: no rope_theta in its config")
    return float(base)


def default_bases(model, shrink: float = 20.0) -> list[float]:
    """Bases of the interval experiment when none are given: the model's own base, then one `shrink` times smaller
    (shorter periods for every channel m > 0)."""
    b = rope_base(model)
    return [b, max(b / shrink, 2.0)]


def step_blocks(steps: pd.DataFrame, columns, block: int = 32) -> np.ndarray:
    """(n_units, len(columns)) sums of `columns` over blocks of `block` consecutive steps of each window (column
    `window`, default one window): the resampling units of a ratio of means, since neighbouring steps are not
    independent."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    win = steps["window"] if "window" in steps else pd.Series(0, index=steps.index)
    key = [win.to_numpy(), (steps["t"].to_numpy() - steps["t"].min()) // block]
    return steps.groupby(key)[list(columns)].sum().to_numpy(dtype=np.float64)


def ratio_of_sums(units: np.ndarray, seed: int = 0, n_resamples: int = 2000) -> tuple[float, tuple[float, float]]:
    """sum(units[:, 0]) / sum(units[:, 1]) and its bootstrap interval over the units (rows)."""
    from ..stats import bootstrap_ci

    units = np.asarray(units, dtype=np.float64)
    est = float(units[:, 0].sum() / units[:, 1].sum())
    ci = bootstrap_ci(units, lambda b: b[..., 0].sum(1) / b[..., 1].sum(1), n_resamples=n_resamples, seed=seed)
    return est, ci


# ---------------------------------------------------------------------------------------------------------------
# natural periodic diagonals (untouched weights)
# ---------------------------------------------------------------------------------------------------------------


def channel_distance_profiles(q: np.ndarray, k: np.ndarray, theta: np.ndarray, max_distance: int,
                              skip: int = 16) -> np.ndarray:
    """(..., max_distance + 1, C): channel m's part of the mean pre-scale logit at distance n = t - i,
    `mean_t Re(q_t^m conj(k_{t-n}^m) e^{i n theta_m})` over queries t >= max(skip, n) and windows.

    q, k: pre-RoPE (B, ..., T, d) with the window axis first (k broadcast against q, e.g. one KV head for several
    query heads). Summed over channels and multiplied by the head's scale it is `logit_distance_profile` of the logits.
    """
    cq, ck = theory._c(q), theory._c(k)
    T = cq.shape[-2]
    if max_distance >= T - skip:
        raise ValueError(f"max_distance {max_distance} too large for T={T} and skip={skip}")
    theta = np.asarray(theta, dtype=np.float64)
    out = []
    for n in range(max_distance + 1):
        t0 = max(skip, n)
        prod = (cq[..., t0:, :] * np.conj(ck[..., t0 - n : T - n, :])).mean(-2).mean(0)
        out.append(np.real(prod * np.exp(1j * n * theta)))
    return np.stack(out, axis=-2)


def periodic_fit(profile: np.ndarray, theta_m: float, start: int = 1) -> float:
    """Share of the detrended variance of `profile[start:]` explained by a sinusoid of frequency `theta_m`
    (partial R^2 of cos/sin(n theta_m) over a quadratic trend in n): 1 = the profile repeats every 2 pi / theta_m
    tokens, 0 = nothing at that period. NaN when the profile is flat after the trend."""
    y = np.asarray(profile, dtype=np.float64)[start:]
    if len(y) < 8:
        raise ValueError("the profile is too short to fit a period (need >= 8 points)")
    n = np.arange(start, start + len(y), dtype=np.float64)
    u = n / n[-1]
    trend = np.stack([np.ones_like(u), u, u ** 2], 1)
    full = np.concatenate([trend, np.stack([np.cos(theta_m * n), np.sin(theta_m * n)], 1)], 1)
    rss = [float(((y - X @ np.linalg.lstsq(X, y, rcond=None)[0]) ** 2).sum()) for X in (trend, full)]
    if rss[0] <= 1e-12 * max(1.0, float((y ** 2).sum())):
        return float("nan")
    return float(max(0.0, (rss[0] - rss[1]) / rss[0]))


def natural_periodicity(model, input_ids: torch.Tensor, layers=None, max_distance: int = 128,
                        skip: int = 16) -> pd.DataFrame:
    """Per head of `layers` (default all), on the model's weights as they are (no intervention): does the logit-by-
    distance profile repeat with the period of the head's dominant RoPE channel?

    Columns: layer, head; `dominant` (m*, the channel with the largest mean |q^m| x mean |k^m|), `share` (its share
    of the sum over channels), `period` (2 pi / theta_m*), `fits` (period <= max_distance / 2: two repeats fit in
    the profile); `r2_dominant` (`periodic_fit` of the profile at theta_m*); the control: `control` (the strongest
    other channel whose period fits) and `r2_control`; `measured_period` (`dominant_period` of the profile) and
    `rel_error` against `period`. One forward serves every head (`qk_capture`).
    """
    from ..rope import channel_frequencies
    from .head import qk_capture

    layer_list = resolve_layers(model, layers)
    cap = qk_capture(model, input_ids)
    theta = channel_frequencies(model)
    periods = 2 * np.pi / theta
    fits = periods <= max_distance / 2
    rows = []
    for layer in layer_list:
        rec = cap[layer]
        q = rec.q_pre.double().cpu().numpy()  # (B, H, T, D)
        k = np.repeat(rec.k_pre.double().cpu().numpy(), rec.kv_group, axis=1)
        cq, ck = np.abs(theory._c(q[:, :, skip:])), np.abs(theory._c(k[:, :, skip:]))
        amp = cq.mean((0, 2)) * ck.mean((0, 2))  # (H, C)
        prof_c = channel_distance_profiles(q, k, theta, max_distance, skip)  # (H, N + 1, C)
        for h in range(q.shape[1]):
            m = int(np.argmax(amp[h]))
            others = np.where(fits & (np.arange(len(theta)) != m))[0]
            c = int(others[np.argmax(amp[h, others])]) if len(others) else -1
            prof = prof_c[h].sum(-1)
            meas = dominant_period(prof, max_period=max_distance / 2)
            rows.append({"layer": layer, "head": h, "dominant": m, "share": float(amp[h, m] / amp[h].sum()),
                         "period": float(periods[m]), "fits": bool(fits[m]),
                         "r2_dominant": periodic_fit(prof, theta[m]),
                         "control": c, "r2_control": periodic_fit(prof, theta[c]) if c >= 0 else float("nan"),
                         "measured_period": meas, "rel_error": abs(meas - periods[m]) / periods[m]})
    return pd.DataFrame(rows)


def interval_control(model, input_ids: torch.Tensor, layer: int, head: int, channels, max_distance: int = 128,
                     skip: int = 16) -> pd.DataFrame:
    """The intervention's control: the same head without intervention, its measured interval (periodogram of the
    logit-by-distance profile) against 2 pi / theta_m for each channel of the experiment. Same columns as
    `interval_experiment` (base: the model's own)."""
    hd = capture_head(model, input_ids, layer, head)
    prof = logit_distance_profile(hd.logits, max_distance, skip)
    meas = dominant_period(prof)
    _, share = theory.dominant_channel_share(hd.q, hd.k)
    rows = []
    for m in channels:
        pred = theory.predicted_diagonal_interval(hd.theta[m])
        rows.append({"base": rope_base(model), "channel": m, "theta": hd.theta[m], "predicted": pred,
                     "measured": meas, "autocorr": autocorr_period(prof), "rel_error": abs(meas - pred) / pred,
                     "dominant_share": float(share)})
    return pd.DataFrame(rows)


def diagonal_statistics(model, input_ids: torch.Tensor, skip: int, k: int, max_distance: int = 128,
                        layers=None, threshold: float = 0.3, periodic: bool = True) -> dict[str, float]:
    """The head statistics of chapter 5's claims about trained structure on one model, the same on a trained model
    and on each random-weight draw (`nulls.null_distribution`):

    - `top_diag`: mean diagonal mass (`head.head_masses`) of the `k` strongest diagonal heads (existence);
    - `share_diag`: share of heads with diagonal mass >= `threshold` (prevalence);
    - `periodic_r2`: mean `natural_periodicity` R^2 at the dominant period over the heads whose dominant channel's
      period fits the profile (NaN when none), and `n_fit`, how many they are; with `periodic=False` both are NaN
      and `natural_periodicity` is skipped (it is the costly part: on the null draws when the model itself has no
      head to compare)."""
    from .head import clear_qk_capture, head_masses

    heads = head_masses(model, input_ids, skip, layers=layers)
    dm = np.sort(heads.diag_mass.to_numpy())
    out = {"top_diag": float(dm[-k:].mean()), "share_diag": float((dm >= threshold).mean()),
           "periodic_r2": float("nan"), "n_fit": float("nan")}
    if periodic:
        nat = natural_periodicity(model, input_ids, layers, max_distance, skip)
        fit = nat[nat.fits].r2_dominant.dropna()
        out.update(periodic_r2=float(fit.mean()) if len(fit) else float("nan"), n_fit=float(len(fit)))
    clear_qk_capture()
    return out
