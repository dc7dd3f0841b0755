"""Specificity of chapter 3's headline claim: how often random weights "support" it (run on demand; prints a table).

    .venv/bin/python benchmarks/specificity.py [--model tappa-tiny] [--draws 20] [--seq-len 256] [--windows 4]

The chapter's own functions at its default sizes: held-out windows after one calibration window, `analyze_heads`,
the within-layer Spearman of `q_sim_consecutive_pre` with the claim's target (`patterns.PATTERNED`, and the plain
`predictability` beside it), and the registered rule of `predictable.qsim_predictability_corr` (p < 0.05 and
the interval's lower bound above threshold + margin). Each random draw is `models.random_weight_copy(model,
seed)`. A claim about trained structure should be supported on at most 1 of 20 draws (issue 26).
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
QSIM = "q_sim_consecutive_pre"
TARGETS = (pt.PATTERNED, "predictability")


def headline(model, ids, seed: int = 0) -> dict[str, tuple[float, float, float, bool]]:
    """(estimate, ci low, ci high, supported by the registered rule) of the headline claim per target."""
    spec = C.spec(CLAIM)
    heads = pt.with_patterned(analyze_heads(model, ids, MetricConfig()))
    out = {}
    for target in TARGETS:
        r = S.spearman_test(heads[QSIM], heads[target], groups=heads.layer, seed=seed)
        out[target] = (r.estimate, r.ci[0], r.ci[1], bool(r.p_value < 0.05 and r.ci[0] > spec.threshold + spec.margin))
    return out


def main() -> None:
    """Print one row per model (trained, then each draw) and the supported counts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tappa-tiny")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=4)
    args = ap.parse_args()
    net, tok = load_model(args.model)
    ids = token_windows(tok, load_text(model=args.model), args.seq_len, args.windows + 1)[1:]  # after calibration
    print("| weights | " + " | ".join(f"{t} rho [ci]" for t in TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    counts = dict.fromkeys(TARGETS, 0)
    for label, model in [("trained", net)] + [(f"random seed {s}", None) for s in range(args.draws)]:
        model = model if model is not None else random_weight_copy(net, int(label.split()[-1]))
        res = headline(model, ids)
        cells = []
        for t in TARGETS:
            est, lo, hi, ok = res[t]
            cells.append(f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]{' supported' if ok else ''}")
            if label != "trained":
                counts[t] += ok
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print()
    for t in TARGETS:
        print(f"{t}: supported on {counts[t]} of {args.draws} random draws")


if __name__ == "__main__":
    main()
