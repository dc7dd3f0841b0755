"""Power of chapters 4 and 5's existence claims: a head planted by hand must pass the test random weights fail.

    .venv/bin/python benchmarks/positive_controls.py [--draws 20] [--seq-len 256] [--windows 4] [--base 1]

A random-weight draw of tappa-tiny's architecture (`random:tappa-tiny@BASE`, the specificity benchmark's draws)
gets one planted head (`tappa_utils.controls`: a sink head, then separately a previous-token head, in layer 0, head
0); the chapter's statistic (`patterns.sink_statistics` / `diagonal_statistics`, chapter sizes of `tappa.tiny`:
the 2 strongest heads) is compared with the same statistic on `--draws` further random draws
(`nulls.null_distribution`), and the registered claim (`sinks.sinks_above_null`, `diagonal.diagonals_above_null`:
effect = value minus the null's 95 % quantile, margin and rank p as registered) gives the verdict. The unplanted
draw is shown beside it: the claim must be supported with the planted head and not without it. Prints a Markdown
table (the one in README); about 2 min of CPU at the defaults.
"""
from __future__ import annotations

import argparse

from tappa_utils import claims as C
from tappa_utils import load_model
from tappa_utils import patterns as pt
from tappa_utils.controls import plant_previous_token_head, plant_sink_head
from tappa_utils.data import load_text, token_windows
from tappa_utils.metrics import MetricConfig
from tappa_utils.nulls import null_distribution
from tappa_utils.tables import number

CONTROLS = {  # name: (planting function, statistic, its column, registered claim)
    "planted sink head": (plant_sink_head, pt.sink_statistics, "top_fixed_key", "sinks.sinks_above_null"),
    "planted previous-token head": (plant_previous_token_head, pt.diagonal_statistics, "top_diag",
                                    "diagonal.diagonals_above_null"),
}


def verdict(model, ids, statistic, column: str, claim: str, args: dict, draws: int, seed: int) -> dict:
    """The claim's check on `model` against `draws` random-weight draws of its architecture."""
    value = statistic(model, ids, **args)[column]
    nulls = null_distribution(model, lambda net: statistic(net, ids, **args), draws, seed)
    check = C.claim(claim, value - nulls.upper(column), p_value=nulls.rank_p(column, value))
    return {"value": value, "null": nulls.describe(column), "effect": check.measured, "p": check.p_value,
            "status": check.status}


def main(argv: list[str] | None = None) -> int:
    """Run both controls, planted and unplanted; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=20, help="random-weight draws of the null (default: 20)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per window (default: 256, as tappa.tiny)")
    ap.add_argument("--windows", type=int, default=4, help="windows of held-out text (default: 4)")
    ap.add_argument("--base", type=int, default=1, help="which random draw gets the planted head (default: 1)")
    args = ap.parse_args(argv)
    if args.draws < 1 or args.seq_len < 64 or args.windows < 1:
        ap.error("need --draws >= 1, --seq-len >= 64 and --windows >= 1")
    cfg = MetricConfig()
    rows = ["| control | model | statistic (2 strongest heads) | null draws | effect (minus null q95) | rank p | "
            "claim | status |", "|---|---|---|---|---|---|---|---|"]
    for name, (plant, statistic, column, claim) in CONTROLS.items():
        for planted in (False, True):
            model, tok = load_model(f"random:tappa-tiny@{args.base}")
            ids = token_windows(tok, load_text(model="tappa-tiny"), args.seq_len, args.windows)
            if planted:
                plant(model)
            stat_args = dict(skip=cfg.skip, k=2)
            if statistic is pt.sink_statistics:
                stat_args.update(threshold=cfg.vertical_threshold, m=0)
            else:
                stat_args.update(threshold=cfg.diagonal_threshold, periodic=False,
                                 max_distance=min(128, args.seq_len - cfg.skip - 1))
            r = verdict(model, ids, statistic, column, claim, stat_args, args.draws, seed=0)
            rows.append(f"| {name} | {'planted' if planted else 'unplanted'} draw @{args.base} | {number(r['value'])} "
                        f"| {r['null']} | {number(r['effect'])} | {number(r['p'])} | `{claim}` | {r['status']} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
