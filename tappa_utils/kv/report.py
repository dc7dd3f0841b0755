"""Reporting a kv-eval run: summaries, paired comparisons, the chapter's claims, figures, generated sentences, files.

Inputs are the per-sample tables of `evaluate.run_kv_eval` (columns task, method, keep, sample, nll, accuracy,
kept_fraction, cache_bytes, press_ms, layer_lengths). Better = lower NLL (nats/token) or higher accuracy; every
comparison is paired over samples (every method sees the same samples) with `stats.paired_difference`.
"""
from __future__ import annotations

import math

import numpy as np

from .. import claims as C
from .. import stats as S
from .methods import palette

USABLE_ID = "kv_cache.A_long_context_usable"
# claim id -> the method TAPPA is compared with (positive effect = TAPPA better)
CLAIM_BASELINES = {"kv_cache.probe_tappa_vs_uniform_budgets": "uniform_cake",
                   "kv_cache.probe_tappa_vs_expected_attention": "expected_attention"}


def _ci(x: np.ndarray) -> float:
    return float(1.96 * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def summarize(samples):
    """Mean and 95 % CI per (task, method, keep); the full cache is repeated at every keep for plotting."""
    import pandas as pd

    rows = []
    keeps = sorted(samples.loc[samples.method != "full", "keep"].unique()) or [1.0]
    for (task, method, keep), g in samples.groupby(["task", "method", "keep"]):
        for k in (keeps if method == "full" else [keep]):
            rows.append({"task": task, "method": method, "keep": k, "n": len(g),
                         "nll": g.nll.mean(), "nll_ci95": _ci(g.nll.values),
                         "accuracy": g.accuracy.mean(), "accuracy_ci95": _ci(g.accuracy.values),
                         "kept_fraction": g.kept_fraction.mean(), "cache_bytes": g.cache_bytes.mean(),
                         **({"press_ms": g.press_ms.mean()} if "press_ms" in g else {})})
    return pd.DataFrame(rows)


def layer_lengths(samples):
    """Every layer's cached tokens per (task, method, keep, sample): long table with columns layer, length."""
    import pandas as pd

    rows = [{"task": r.task, "method": r.method, "keep": r.keep, "sample": r.sample, "layer": layer, "length": int(n)}
            for r in samples.itertuples() for layer, n in enumerate(str(r.layer_lengths).split())]
    return pd.DataFrame(rows)


def compression_cost(samples, baseline: str = "snapkv"):
    """Mean time to compress one recorded prefill (scores, budgets, eviction) per (method, keep), and its ratio
    to `baseline`'s at the same keep (NaN when the baseline was not run)."""
    g = samples[samples.method != "full"].groupby(["method", "keep"]).press_ms.agg(["mean", "std", "count"])
    g = g.rename(columns={"mean": "press_ms", "std": "press_ms_std", "count": "n"}).reset_index()
    base = g[g.method == baseline].set_index("keep").press_ms
    g[f"x_{baseline}"] = g.press_ms / g.keep.map(base)
    return g


def paired(samples, task: str, keep: float, a: str, b: str, metric: str):
    """(values of a, values of b) on the samples both have, for one task and keep (the full cache at any keep)."""
    def values(m):
        g = samples[(samples.task == task) & (samples.method == m) & ((samples.keep == keep) | (m == "full"))]
        return g.set_index("sample")[metric]

    x, y = values(a), values(b)
    common = x.index.intersection(y.index)
    return x.loc[common].to_numpy(float), y.loc[common].to_numpy(float)


COMPARE_COLUMNS = ["task", "keep", "metric", "method", "versus", "advantage", "ci_low", "ci_high", "p_value", "verdict"]


def compare(samples, method: str = "tappa", seed: int = 0):
    """`method` vs every other method, paired by sample: mean advantage, bootstrap 95 % CI, one-sided p, verdict.

    advantage = other - mine for NLL (loss task), mine - other for accuracy (retrieval task), so positive = `method`
    better; win / lose when the interval excludes 0, tie otherwise. Pairs with fewer than 2 samples are left out
    (no interval): one sample per method gives an empty table."""
    import pandas as pd

    rows = []
    for (task, keep), g in samples[samples.method != "full"].groupby(["task", "keep"]):
        metric = "nll" if task == "loss" else "accuracy"
        if method not in set(g.method):
            continue
        for other in [m for m in dict.fromkeys(g.method) if m != method] + ["full"]:
            mine, theirs = paired(samples, task, keep, method, other, metric)
            if len(mine) < 2:
                continue
            a, b = (theirs, mine) if metric == "nll" else (mine, theirs)
            r = S.paired_difference(a, b, seed=seed)
            lo, hi = r.ci
            verdict = "win" if lo > 0 else ("lose" if hi < 0 else "tie")
            rows.append({"task": task, "keep": keep, "metric": metric, "method": method, "versus": other,
                         "advantage": r.estimate, "ci_low": lo, "ci_high": hi, "p_value": r.p_value,
                         "verdict": verdict})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)  # the columns even when no pair has 2 samples


def verdicts_vs_null(comp, comp_null):
    """Trained and random-weight verdicts side by side per (task, keep, versus); `reading` says whether a win or a
    loss can be evidence (it must not also appear on random weights)."""
    cols = ["task", "keep", "versus"]
    m = comp[cols + ["advantage", "verdict"]].merge(comp_null[cols + ["advantage", "verdict"]], on=cols,
                                                    suffixes=("", "_null"))

    def reading(r):
        if r.verdict == "tie":
            return "tie"
        if r.verdict_null == r.verdict:
            return f"{r.verdict} on random weights too: not evidence"
        return f"{r.verdict} on the trained model only"

    m["reading"] = [reading(r) for r in m.itertuples()]
    return m


def full_cache_accuracy(samples, task: str = "retrieval") -> float:
    """Full-cache top-1 accuracy of `task` (NaN when it was not run): is the context usable at all?"""
    g = samples[(samples.method == "full") & (samples.task == task)]
    return float(g.accuracy.mean()) if len(g) else float("nan")


def usable(samples) -> bool:
    """The registered gate: full-cache retrieval accuracy at seq_len >= the threshold of
    `kv_cache.A_long_context_usable`."""
    acc = full_cache_accuracy(samples)
    return bool(acc >= C.spec(USABLE_ID).threshold)


def _pct(k: float) -> str:
    return f"{100 * k:.3g} %"


def _one_sample(cid: str, diff, name: str):
    """A claim measured on fewer than 2 paired samples: its effect is shown, it is inconclusive (no interval)."""
    effect = float(np.mean(diff)) if len(diff) else math.nan
    return C.claim(cid, effect, p_value=math.nan, name=name,
                   note=f"{len(diff)} paired sample(s): no interval; run with --samples >= 2")


def kv_checks(samples, seed: int = 0) -> list:
    """The probes' checks: the usability assumption, the registered probe claims per (task, keep) on NLL (p-values
    Holm-corrected within each claim, `claims.holm_adjust`), the budget sanity row, and measurements (reference vs
    proportional allocation, compression cost vs SnapKV). The random-weight null is a side-by-side table
    (`verdicts_vs_null`), not a claim: its gain is ~0, so a "trained minus null" claim would repeat its parent.

    When the full cache cannot do the retrieval task (`usable` is False), every claim keeps its effect and interval
    but gets p = NaN, so its status is "inconclusive" (the rule registered with `kv_cache.A_long_context_usable`).
    """
    checks = [C.assumption(USABLE_ID, full_cache_accuracy(samples))]
    ok = usable(samples)
    gate = "" if ok else "not informative: the full cache fails the retrieval task at this length"
    methods = set(samples.method)
    keeps = sorted(samples.loc[samples.method != "full", "keep"].unique())
    tasks = list(dict.fromkeys(samples.task))
    for cid, base in CLAIM_BASELINES.items():
        if {"tappa", base} <= methods:
            for task in tasks:
                for k in keeps:
                    t, b = paired(samples, task, k, "tappa", base, "nll")
                    name = f"TAPPA vs {base}, {task} NLL, {_pct(k)} kept"
                    if len(t) < 2:
                        checks.append(_one_sample(cid, b - t, name))
                        continue
                    r = S.paired_difference(b, t, seed=seed)
                    checks.append(C.claim(cid, r.estimate, ci=r.ci, p_value=r.p_value if ok else math.nan,
                                          name=name, note=gate))
    C.holm_adjust(checks)
    comp = samples[samples.method != "full"]
    if len(comp):
        dev = float((comp.kept_fraction - comp.keep).abs().max())
        checks.append(C.sanity("every method keeps its budget: max |kept fraction - keep|", 0.0, dev, 0.02, "le"))
    if {"tappa", "tappa_proportional"} <= methods:
        for task in tasks:
            for k in keeps:
                t, p = paired(samples, task, k, "tappa", "tappa_proportional", "nll")
                if len(t) >= 2:
                    r = S.paired_difference(p, t, seed=seed, alternative="two-sided")
                    checks.append(C.measurement(f"reference minus proportional allocation (NLL gain), {task}, "
                                                f"{_pct(k)} kept", r.estimate, ci=r.ci, p_value=r.p_value))
    if {"tappa", "snapkv"} <= methods and "press_ms" in samples:
        t = samples[(samples.method == "tappa")].sort_values(["task", "keep", "sample"]).press_ms.to_numpy(float)
        s = samples[(samples.method == "snapkv")].sort_values(["task", "keep", "sample"]).press_ms.to_numpy(float)
        if len(t) == len(s) >= 2:
            pair = np.stack([t, s], axis=1)
            ci = S.bootstrap_ci(pair, lambda x: x[..., 0].mean(1) / x[..., 1].mean(1), seed=seed)
            checks.append(C.measurement("compression time of TAPPA / SnapKV (one prefill, all layers)",
                                        t.mean() / s.mean(), ci=ci))
    return checks


# ---------------------------------------------------------------------------------------------------------------
# figures


def _keep_axis(ax, keeps) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())  # no minor labels (they overlapped "25 %")
    ax.set_xticks(keeps, [_pct(k) for k in keeps])
    ax.set_xlabel("cache kept (fraction of the context)")


def plot_quality(summary):
    """Quality vs kept fraction, one panel per task (loss: NLL, lower is better; retrieval: accuracy)."""
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(summary.task))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks), 4.4), squeeze=False)
    colours = palette()
    keeps = sorted(summary.keep.unique())
    for ax, task in zip(axes[0], tasks):
        metric = "nll" if task == "loss" else "accuracy"
        for method, g in summary[summary.task == task].groupby("method", sort=False):
            g = g.sort_values("keep")
            style = dict(lw=2.5, marker="o") if method.startswith("tappa") else dict(lw=1.3, marker=".")
            if method == "full":
                style = dict(lw=1.5, ls="--")
            ax.errorbar(g.keep, g[metric], yerr=g[f"{metric}_ci95"], label=method, capsize=3,
                        color=colours.get(method), **style)
        _keep_axis(ax, keeps)
        ax.set_ylabel("NLL of the continuation (nats/token)" if metric == "nll" else "copy accuracy (top-1)")
        ax.set_title(f"{task}: {'lower' if metric == 'nll' else 'higher'} is better")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def mean_layer_lengths(lengths, keep: float, task: str | None = None):
    """Mean cached tokens per (layer, method) at one keep (over samples, of one task or all): layers x methods."""
    g = lengths[(lengths.keep == keep) & (lengths.method != "full")]
    if task is not None:
        g = g[g.task == task]
    return g.groupby(["layer", "method"]).length.mean().unstack("method")


def plot_layer_lengths(lengths, keep: float, task: str | None = None):
    """Per-layer cache length of every method at one keep fraction (mean over samples)."""
    import matplotlib.pyplot as plt

    table = mean_layer_lengths(lengths, keep, task)
    colours = palette()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for method in table.columns:
        style = dict(lw=2.5, marker="o") if method.startswith("tappa") else dict(lw=1.3, marker=".")
        ax.plot(table.index, table[method], label=method, color=colours.get(method), **style)
    ax.set_xlabel("layer")
    ax.set_ylabel("cached tokens (mean over samples)")
    ax.set_title(f"per-layer cache at {_pct(keep)} kept")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def plot_length_profile(profile, seq_len: int):
    """Full-cache NLL (loss task) and retrieval accuracy vs context length; the usability threshold and seq_len."""
    import matplotlib.pyplot as plt

    thr = C.spec(USABLE_ID).threshold
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, task, metric, label in ((axes[0], "loss", "nll", "NLL of the continuation (nats/token)"),
                                    (axes[1], "retrieval", "accuracy", "copy accuracy (top-1)")):
        g = profile[profile.task == task]
        yerr = g.accuracy_ci95 if metric == "accuracy" else None
        ax.errorbar(g.context_len, g[metric], yerr=yerr, marker="o", capsize=3)
        ax.axvline(seq_len, color="grey", ls=":", label=f"seq_len = {seq_len}")
        if metric == "accuracy":
            ax.axhline(thr, color="crimson", ls="--", lw=1, label=f"usable: accuracy >= {thr:g}")
            ax.set_ylim(-0.02, 1.02)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(profile.context_len.unique()), [str(v) for v in sorted(profile.context_len.unique())])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.set_title(f"{task}, full cache")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# generated sentences (the chapter's model-dependent prose)


def usability_text(samples, profile, seq_len: int) -> str:
    """Whether the model can use a context of seq_len at all, from the full cache's retrieval accuracy."""
    thr = C.spec(USABLE_ID).threshold
    acc = full_cache_accuracy(samples)
    r = profile[profile.task == "retrieval"]
    ok_lengths = r[r.accuracy >= thr].context_len.tolist()
    reach = (f"the longest profiled context where it copies at least {thr:g} of the segment is {max(ok_lengths)} "
             "tokens" if ok_lengths else f"it copies less than {thr:g} of the segment at every profiled length")
    if math.isnan(acc):
        return "The retrieval task was not run, so whether the model uses the whole context is unknown."
    if acc >= thr:
        return (f"With the full cache the model copies {acc:.2f} of the planted segment at `seq_len` = {seq_len} "
                f"(threshold {thr:g}; {reach}): the context is usable, so the comparisons below are informative.")
    return (f"With the full cache the model copies only {acc:.2f} of the planted segment at `seq_len` = {seq_len} "
            f"(threshold {thr:g}; {reach}). It does not use a context this long, so the comparisons below are "
            "**uninformative at this length** and every claim is reported *inconclusive*; re-run with a `seq_len` "
            "the profile shows usable (`-p seq_len ...`).")


def verdict_counts_text(comp, versus: tuple[str, ...]) -> str:
    """'against uniform_cake: 1 win, 4 ties, 1 loss; ...' over the (task, keep) cells."""
    parts = []
    for v in versus:
        c = comp[comp.versus == v].verdict.value_counts()
        if c.sum():
            n = [int(c.get(k, 0)) for k in ("win", "tie", "lose")]
            parts.append(f"against {v}: {n[0]} win{'s' * (n[0] != 1)}, {n[1]} tie{'s' * (n[1] != 1)}, "
                         f"{n[2]} loss{'es' * (n[2] != 1)}")
    return "; ".join(parts) if parts else "no comparison was run"


def pyramid_text(lengths, keep: float) -> str:
    """How far PyramidKV's per-layer budgets spread, and whether kvpress's PyramidKV equals SnapKV."""
    t = mean_layer_lengths(lengths, keep)
    out = []
    if "pyramidkv" in t:
        p = t["pyramidkv"]
        out.append(f"PyramidKV (original rule) keeps {p.iloc[0]:.0f} tokens in layer 0 down to {p.iloc[-1]:.0f} in "
                   f"the last layer at {_pct(keep)} kept")
    if {"pyramidkv_kvpress", "snapkv"} <= set(t):
        k = t["pyramidkv_kvpress"]
        same = bool(np.allclose(k, t["snapkv"]))
        out.append("kvpress's PyramidKV keeps " + ("exactly SnapKV's uniform budget in every layer (its fallback)"
                                                   if same else f"{k.iloc[0]:.0f} tokens in layer 0 down to "
                                                   f"{k.iloc[-1]:.0f} in the last layer"))
    tp = [m for m in ("tappa", "tappa_proportional") if m in t]
    for m in tp:
        out.append(f"{m} ranges from {t[m].min():.0f} to {t[m].max():.0f} tokens per layer")
    return ("; ".join(out) + ".") if out else ""


def write_results(out_dir, cfg, samples, seconds: float | None = None, null_samples=None) -> None:
    """Write run_info.json, samples.csv, summary.csv, comparisons.csv, layer_lengths.csv, cost.csv, summary.json
    and the quality plot (plus null_samples.csv and null_comparisons.csv when a null was run)."""
    from dataclasses import asdict

    import matplotlib.pyplot as plt  # no backend switch: the caller's (inline in notebooks, headless default else)

    from ..results import save_figure, save_json, save_run_info, save_table

    summary, comp = summarize(samples), compare(samples, seed=cfg.seed)
    save_run_info(out_dir, asdict(cfg), seconds=seconds)
    save_table(samples, out_dir, "samples.csv")
    save_table(summary, out_dir, "summary.csv")
    save_table(comp, out_dir, "comparisons.csv")
    extra = {}
    if "layer_lengths" in samples:
        save_table(layer_lengths(samples), out_dir, "layer_lengths.csv")
    if "press_ms" in samples:
        cost = compression_cost(samples)
        save_table(cost, out_dir, "cost.csv")
        extra["compression_cost"] = cost.to_dict(orient="records")
    if null_samples is not None:
        save_table(null_samples, out_dir, "null_samples.csv")
        null_comp = verdicts_vs_null(comp, compare(null_samples, seed=cfg.seed))
        save_table(null_comp, out_dir, "null_comparisons.csv")
        extra["null_comparisons"] = null_comp.to_dict(orient="records")
    save_json(out_dir, "summary.json", {"summary": summary.to_dict(orient="records"),
                                        "comparisons": comp.to_dict(orient="records"), **extra})
    fig = plot_quality(summary)
    save_figure(fig, out_dir, "quality_vs_budget.png")
    plt.close(fig)
