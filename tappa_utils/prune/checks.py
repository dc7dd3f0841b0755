"""Chapter 8's checks and generated prose: the pruning claims, their null, and sentences built from the results.

    sup = evaluate.superiority(res.results, res.per_window, seed=cfg.seed)  # each distinct pruned model once
    vs_null = evaluate.gains_vs_null(res, null_res, seed=cfg.seed)          # null: the same procedure on random weights
    checks = pruning_checks(res, sup, vs_null)

Claims (`pruning.tappa_beats_shortgpt`, `pruning.gain_over_null`) come only from the calibration-chosen beta's sets that
differ from ShortGPT's; the paper's fixed betas are measurements (they were tuned for 7-8B models); sets identical to
ShortGPT's are ties by construction, counted in one measurement row and never tested.
"""
from __future__ import annotations

import math

import numpy as np

from .. import claims as C
from ..verdicts import fmt
from .evaluate import BASELINE, PruneEvalResult


def _k(k: int) -> str:
    return f"{k} layer{'s' if k != 1 else ''} removed"


def pruning_checks(res: PruneEvalResult, sup, vs_null, restored: tuple[float, float] | None = None,
                   qsim_null=None) -> list:
    """The chapter's rows: claims per k for the chosen beta, the null claim, measurements, sanity rows.

    Parameters
    ----------
    res : the model's `PruneEvalResult`
    sup : `evaluate.superiority(...)` of `res`
    vs_null : `evaluate.gains_vs_null(res, null_res)`
    restored : (loss before, loss after) of the unpruned model around every pruned and null evaluation, or None
    qsim_null : the null's per-layer q-similarity (a Spearman of the trained profile against it is reported)
    """
    from .. import stats as S

    checks = []
    b = res.best_beta
    for r in sup[sup.chosen & ~sup.tie].itertuples():
        checks.append(C.claim(
            "pruning.tappa_beats_shortgpt", r.gain, ci=(r.ci_low, r.ci_high), p_value=_p(r.p_value),
            name=f"TAPPA (β = {b:g}, chosen on calibration) vs ShortGPT, {_k(r.n_removed)}: loss gain (nats/token)",
            note=f"TAPPA removes {r.removed}, ShortGPT {r.baseline_removed}; {r.n_windows} windows"))
    if not checks:  # every comparison of the chosen beta is a tie (or beta 0): the claim has nothing to test
        checks.append(C.claim(
            "pruning.tappa_beats_shortgpt", math.nan, ci=(math.nan, math.nan),
            name=f"TAPPA (β = {b:g}, chosen on calibration) vs ShortGPT: loss gain (nats/token)",
            note="not testable on this model: the chosen β removes the same layers as ShortGPT at every k"))
    for r in vs_null.itertuples():
        checks.append(C.claim(
            "pruning.gain_over_null", r.diff, ci=(r.ci_low, r.ci_high), p_value=_p(r.p_value),
            name=f"TAPPA's gain on the model minus on random weights, {_k(r.n_removed)} (nats/token)",
            note=f"gain {fmt(r.gain)} on the model, {fmt(r.gain_null)} on random weights"
                 + (" (the null's chosen order removed ShortGPT's layers)" if r.null_tie else "")))
    if not any(c.id == "pruning.gain_over_null" for c in checks):
        checks.append(C.claim(
            "pruning.gain_over_null", math.nan, ci=(math.nan, math.nan),
            name="TAPPA's gain on the model minus on random weights (nats/token)",
            note="not testable on this model: no comparison of the chosen β differs from ShortGPT"))
    for r in sup[~sup.chosen & ~sup.tie].itertuples():
        checks.append(C.measurement(
            f"{r.methods} vs ShortGPT, {_k(r.n_removed)}: loss gain (nats/token)", r.gain,
            ci=(r.ci_low, r.ci_high), p_value=_p(r.p_value),
            note="the paper's fixed beta (not chosen on this model): reported, not a claim"))
    checks.append(C.measurement(
        "comparisons that are ties by construction (TAPPA removes ShortGPT's layers; excluded from the claims)",
        float(sup.tie.sum()), note=f"of {len(sup)} distinct (k, removed set) comparisons"))
    checks.append(C.measurement("β chosen on calibration data", b, note="lowest mean calibration loss over k"))
    if qsim_null is not None and len(res.scores.qsim) >= 4:
        t = S.spearman_test(res.scores.qsim, np.asarray(qsim_null), alternative="two-sided")
        checks.append(C.measurement("Spearman of per-layer q-similarity: trained vs random weights", t.estimate,
                                    ci=t.ci, p_value=t.p_value,
                                    note="high: the depth profile of q-sim is architectural, not learned"))
    if restored is not None:
        checks.append(C.sanity("unpruned loss after all pruned and null evaluations equals the loss before "
                               "(in-place removal and null restore the model)", restored[0], restored[1], 0.0,
                               "close"))
    return checks


def _p(p) -> float | None:
    return None if p is None or (isinstance(p, float) and math.isnan(p)) else float(p)


def copy_notes(results, baseline: str = BASELINE) -> str:
    """A sentence on the copy test: which removals break copying (copy ratio >= 1 while the unpruned model copies),
    with ShortGPT's ratio at the same k beside it. Generated, so it is true on any model."""
    from .report import merge_identical_methods, short_label

    df = merge_identical_methods(results)
    full = float(df[df.n_removed == 0].copy_ratio.iloc[0])
    if not full < 1:
        return (f"The unpruned model does not copy (copy ratio {fmt(full)} ≥ 1: a repeated segment is no easier the "
                "second time), so the copy test cannot show what pruning takes away.")
    base_name = next(m for m in df.method.unique() if baseline in m.split(" = "))
    base = df[df.method == base_name].set_index("n_removed").copy_ratio
    broken = df[(df.n_removed > 0) & (df.copy_ratio >= 1)]
    if broken.empty:
        worst = df[df.n_removed > 0].copy_ratio.max()
        return (f"The unpruned model copies (copy ratio {fmt(full)}); no removal order tested here breaks copying "
                f"(the worst ratio is {fmt(worst)} < 1).")
    parts = []
    for r in broken.itertuples():
        who = short_label(r.method)
        cmp = "" if r.method == base_name else f" against ShortGPT's {fmt(base.loc[r.n_removed])}"
        parts.append(f"{who} with {_k(r.n_removed)} (layers {list(r.removed)}): copy ratio {fmt(r.copy_ratio)}{cmp}")
    return (f"**Pruning can break copying.** The unpruned model copies (copy ratio {fmt(full)}; 1 means the repeated "
            "segment is no easier the second time), but these removals push it to 1 or above: "
            + "; ".join(parts) + ". Held-out loss alone does not show this.")


def most_influential_note(res: PruneEvalResult) -> str:
    """Where the layer with the largest block influence stands: its BI against the median and whether any order
    removes it (generated, replacing a typed 'the first layer is never a candidate')."""
    bi = np.asarray(res.scores.bi)
    top = int(np.argmax(bi))
    ratio = bi[top] / np.median(bi) if np.median(bi) > 0 else math.inf
    removed = sorted({int(x) for r in res.results.itertuples() for x in r.removed})
    fate = ("and no order tested here removes it" if top not in removed
            else "and at least one order tested here removes it")
    return (f"Layer {top} has the largest block influence ({fmt(bi[top])}, {fmt(ratio, 2)}× the median layer's) "
            f"{fate}; the layers removed by some order are {removed}.")


def checks_markdown(checks) -> str:
    """The full checks table as Markdown: `verdicts.checks_markdown` (the book's one table builder; each claim
    checked at several k as one labelled row per k under its combined status)."""
    from ..verdicts import checks_markdown as table

    return table(checks)
