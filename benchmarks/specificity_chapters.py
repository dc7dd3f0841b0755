"""Specificity of every claim, chapter by chapter: each claim chapter run on N random-weight draws of tappa-tiny.

    .venv/bin/python benchmarks/specificity_chapters.py --draws 20 --out runs/specificity [--only 03_predictable]

Each draw `random:tappa-tiny@k` (k = 1..N) is the ledger column's architecture with weights drawn with seed k; every
claim chapter runs on it with its `tappa.tiny` sizes (the ledger's tappa-tiny column), two at a time. A claim about
trained structure should come out *supported* on at most 1 of 20 draws (issue 26): more means the test would pass
on a network that learned nothing. Prints one row per claim (supported / not supported / inconclusive / not run
counts over the draws) and writes `specificity.csv` (draw, chapter, claim, status) into --out. Run on demand: about
N x (the tappa-tiny column's time) of CPU.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tappa_utils import claims as C  # noqa: E402
from tappa_utils.book.columns import Column, run_columns  # noqa: E402
from tappa_utils.book.nullbook import claim_chapters, claim_statuses  # noqa: E402
from tappa_utils.tables import escape  # noqa: E402
from tappa_utils.verdicts import SUPPORTED_VIOLATED, combined_status  # noqa: E402

STATUSES = ("supported", "not supported", "inconclusive", "not run")


def tally(rows: list[dict[str, str]], draws: int) -> list[dict[str, object]]:
    """Per registered claim: how many draws gave each status (a draw without the claim counts as not run; "supported,
    assumptions violated" counts as supported: the test passed on random weights)."""
    by_claim: dict[str, Counter] = {}
    for r in rows:
        status = "supported" if r["status"] == SUPPORTED_VIOLATED else r["status"]  # passed the test all the same
        by_claim.setdefault(r["claim"], Counter())[status] += 1
    out = []
    for s in C.SPECS:
        if s.kind != "claim":
            continue
        got = by_claim.get(s.id, Counter())
        got["not run"] += draws - sum(got.values())
        out.append({"claim": s.id, **{k: got.get(k, 0) for k in STATUSES}, "draws": draws,
                    "specific": got.get("supported", 0) <= max(1, draws // 20), "any_weights": s.any_weights})
    return out


def goal(row: dict[str, object]) -> str:
    """'met' / 'MISSED' for a claim about trained structure; for one that holds on any weights, that it does not
    apply (and why: `claims.Spec.any_weights`)."""
    if row["any_weights"]:
        return f"does not apply (holds on any weights: {escape(row['any_weights'])})"
    return "met" if row["specific"] else "MISSED"


def markdown(table: list[dict[str, object]]) -> str:
    """The README table: claim, supported of N, the other statuses, whether it meets the <= 1 of 20 goal."""
    lines = ["| claim | supported | not supported | inconclusive | not run | goal: supported on <= 1 of 20 |",
             "|---|---|---|---|---|---|"]
    for r in table:
        if r["not run"] == r["draws"]:
            continue
        lines.append(f"| `{r['claim']}` | {r['supported']} of {r['draws']} | {r['not supported']} | "
                     f"{r['inconclusive']} | {r['not run']} | {goal(r)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the draws, write specificity.csv, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=20, help="random-weight draws (default: 20)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the runs and specificity.csv")
    ap.add_argument("--only", nargs="+", metavar="STEM", help="these claim chapters only (default: all)")
    ap.add_argument("--workers", type=int, default=2, help="chapters run at once (default: 2)")
    args = ap.parse_args(argv)
    if args.draws < 1:
        ap.error("--draws must be at least 1")
    stems = [s for s in claim_chapters(ROOT) if not args.only or s in args.only]
    out = args.out.resolve()
    cols = tuple(Column(f"draw{k:02d}", f"random:tappa-tiny@{k}", base=str(out)) for k in range(1, args.draws + 1))
    run_columns(ROOT, stems, cols, workers=args.workers)
    rows = []
    for col in cols:
        for stem, by_id in claim_statuses(out / col.label, stems).items():
            rows += [{"draw": col.label, "chapter": stem, "claim": cid, "status": combined_status(st)}
                     for cid, st in by_id.items()]
    with open(out / "specificity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["draw", "chapter", "claim", "status"])
        w.writeheader()
        w.writerows(rows)
    sys.stdout.write(markdown(tally(rows, args.draws)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
