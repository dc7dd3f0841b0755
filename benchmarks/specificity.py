"""Specificity of chapter 3's headline claim: how often random weights "support" it (run on demand; prints a table).

    .venv/bin/python benchmarks/specificity.py [--model tappa-tiny] [--draws 20] [--seq-len 256] [--windows 4]

The chapter's own functions at its tappa-tiny sizes (`tappa.tiny` of notebooks/03_predictable.ipynb): one
calibration window, then the held-out windows; on each model (the trained one, then each random draw
`models.random_weight_copy(model, seed)`) the q-sim variant is chosen on the calibration window by the chapter's
rule (`patterns.choose_qsim`: the largest positive concentration-partialled correlation, else the paper's
consecutive pre-RoPE q-sim), then the headline `patterns.qsim_partial` (within-layer Spearman of q-sim with
predictability, both regressed on concentration's ranks) is tested on the held-out windows with the registered
rule of `predictable.qsim_predictability_corr` (p < 0.05 and the interval's lower bound above threshold + margin),
on the heads with a pattern (concentration >= 0.2, `patterns.patterned_heads`; fewer than 8: NaN, inconclusive), and
on every head (what `predictable.trained_beats_null` compares with the null distribution). The old target
(patterned predictability, no partialling, `q_sim_consecutive_pre`) is shown beside it. A claim about
trained structure should be supported on at most 1 of 20 draws (issue 26).
"""
from __future__ import annotations

import argparse

from tappa_utils import claims as C
from tappa_utils import load_model
from tappa_utils import patterns as pt
from tappa_utils import stats as S
from tappa_utils.data import load_text, token_windows
from tappa_utils.metrics import MetricConfig, analyze_heads
from tappa_utils.models import random_weight_copy

CLAIM = "predictable.qsim_predictability_corr"


def headline(model, calib, held, seed: int = 0) -> dict[str, tuple]:
    """{"new": (variant, estimate, ci low, ci high, supported), "ungated": ..., "old": ...} on one model: the
    headline on the heads with a pattern (`patterns.patterned_heads`; random weights have none, so NaN), the same
    statistic on every head, and the old target."""
    spec = C.spec(CLAIM)
    bar = spec.threshold + spec.margin
    cfg = MetricConfig()
    variant, _ = pt.choose_qsim(analyze_heads(model, calib, cfg))
    heads = pt.with_patterned(analyze_heads(model, held, cfg))
    new = pt.qsim_partial(pt.patterned_heads(heads, cfg.concentration_threshold), variant, seed=seed)
    ungated = pt.qsim_partial(heads, variant, seed=seed)
    old = S.spearman_test(heads["q_sim_consecutive_pre"], heads[pt.PATTERNED], groups=heads.layer, seed=seed)
    return {k: (v, r.estimate, r.ci[0], r.ci[1], bool(r.p_value < 0.05 and r.ci[0] > bar))
            for k, v, r in (("new", variant, new), ("ungated", variant, ungated),
                            ("old", "q_sim_consecutive_pre", old))}


def main() -> None:
    """Print one row per model (trained, then each draw) and the supported counts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tappa-tiny")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=4)
    args = ap.parse_args()
    net, tok = load_model(args.model)
    ids = token_windows(tok, load_text(model=args.model), args.seq_len, args.windows + 1)
    calib, held = ids[:1], ids[1:]
    keys = ("new", "ungated", "old")
    print("| weights | variant | claim: patterned heads, partial rho [ci] | all heads, partial rho [ci] "
          "| old: patterned predictability, rho [ci] |")
    print("|---|---|---|---|---|")
    counts = dict.fromkeys(keys, 0)
    for label, model in [("trained", net)] + [(f"random seed {s}", None) for s in range(args.draws)]:
        model = model if model is not None else random_weight_copy(net, int(label.split()[-1]))
        res = headline(model, calib, held)
        cells = [res["new"][0]]
        for k in keys:
            v, est, lo, hi, ok = res[k]
            cells.append(f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]{' supported' if ok else ''}")
            if label != "trained":
                counts[k] += ok
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print()
    for k in keys:
        print(f"{k}: supported on {counts[k]} of {args.draws} random draws")


if __name__ == "__main__":
    main()
