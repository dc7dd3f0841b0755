"""Chapter 8's checks and generated prose: the pruning claims, their null, and sentences built from the results.

    comp = evaluate.comparisons(res, seed=cfg.seed)   # chosen TAPPA vs ShortGPT and vs random layers, Holm over k
    checks = pruning_checks(res, comp)

Claims (`pruning.tappa_beats_shortgpt`, `pruning.tappa_task_accuracy`, `pruning.tappa_beats_random_layers`) come
only from the calibration-chosen beta; the paper's fixed betas are measurements (tuned for 7-8B models). Where
TAPPA removes ShortGPT's layers (every k when beta = 0 is chosen) the gain is 0 by construction and the row says so.
"""
from __future__ import annotations

import math

import numpy as np

from .. import claims as C
from ..verdicts import fmt
from .evaluate import BASELINE, PruneEvalResult


def _k(k: int) -> str:
    return f"{k} layer{'s' if k != 1 else ''} removed"


_CLAIM_OF = {("ShortGPT", "loss"): "pruning.tappa_beats_shortgpt", ("ShortGPT", "tasks"): "pruning.tappa_task_accuracy",
             ("random", "loss"): "pruning.tappa_beats_random_layers"}


def pruning_checks(res: PruneEvalResult, comp, restored: tuple[float, float] | None = None,
                   qsim_null=None) -> list:
    """The chapter's rows: one claim row per (claim, k) from `evaluate.comparisons` (p Holm-adjusted over k),
    measurements (the chosen β, the random draws' task accuracy gap, the q-sim profile against random weights) and
    the sanity row.

    Parameters
    ----------
    res : the model's `PruneEvalResult`
    comp : `evaluate.comparisons(res)`
    restored : (loss before, loss after) of the unpruned model around every evaluation, or None
    qsim_null : per-layer q-similarity of a random-weight copy (a Spearman of the trained profile against it)
    """
    from .. import stats as S

    checks = []
    b = res.best_beta
    beta0 = " β = 0 was chosen, so TAPPA's order is ShortGPT's." if b == 0 else ""
    for r in comp.itertuples():
        cid = _CLAIM_OF.get((r.against, r.measure))
        unit = "nats/token" if r.measure == "loss" else "accuracy"
        name = (f"TAPPA (β = {b:g}) vs {'ShortGPT' if r.against == 'ShortGPT' else 'random layers'}, "
                f"{_k(r.n_removed)}: {'loss gain' if r.measure == 'loss' else 'task accuracy gain'} ({unit})")
        if r.tie:
            note = f"tie by construction: TAPPA removes ShortGPT's layers {r.removed}; gain 0.{beta0}"
        else:
            note = (f"TAPPA removes {r.removed}; {r.n_units} {'windows' if r.measure == 'loss' else 'prompts'}; "
                    f"p Holm-adjusted over {r.n_tests} k (raw p {fmt(r.p_value, 3)})")
        if cid is None:  # tasks against random draws: reported, not a registered claim
            checks.append(C.measurement(name, r.gain, ci=(r.ci_low, r.ci_high), p_value=_p(r.p_holm), note=note))
        else:
            checks.append(C.claim(cid, r.gain, ci=(r.ci_low, r.ci_high), p_value=_p(r.p_holm), name=name, note=note))
    checks.append(C.measurement("β chosen on calibration data", b,
                                note="lowest mean calibration loss over k" + (beta0 and "; TAPPA = ShortGPT")))
    if qsim_null is not None and len(res.scores.qsim) >= 4:
        t = S.spearman_test(res.scores.qsim, np.asarray(qsim_null), alternative="two-sided")
        checks.append(C.measurement("Spearman of per-layer q-similarity: trained vs random weights", t.estimate,
                                    ci=t.ci, p_value=t.p_value, note=qsim_profile_note(t.estimate, t.ci)))
    if restored is not None:
        checks.append(C.sanity("unpruned loss after all pruned evaluations equals the loss before "
                               "(in-place removal restores the model)", restored[0], restored[1], 0.0, "close"))
    return checks


def qsim_profile_note(rho: float, ci: tuple[float, float]) -> str:
    """What a Spearman ρ (with its ci) of the trained against the random-weight q-sim profile says, from its value.

    >>> qsim_profile_note(-0.086, (-0.45, 0.3))
    'the interval includes 0: no evidence that the depth profile of q-sim follows the architecture'
    """
    if ci[0] > 0:
        return "positive: part of the depth profile of q-sim follows the architecture, not training"
    if ci[1] < 0:
        return "negative: the trained depth profile of q-sim runs against the architecture's"
    return "the interval includes 0: no evidence that the depth profile of q-sim follows the architecture"


def claim_summary(checks, cid: str) -> str:
    """'supported at 2 of 8 k (Holm-corrected)' for the rows of one claim id."""
    rows = [c for c in checks if c.kind == "claim" and c.id == cid]
    n_sup = sum(c.status == "supported" for c in rows)
    return f"supported at {n_sup} of {len(rows)} k (Holm-corrected)"


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
