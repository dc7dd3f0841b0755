"""Verdicts in words: a chapter's "What held on this model" section and the book's ledger, from results rows.

Both are generated from the rows `results.save_checks` writes (dicts with `kind`, `id`, `status`, `measured`,
`ci`, `p_value`, ...) and from the registry (`claims`), never typed by hand, so they stay true on any model.

>>> from tappa_utils import claims as C
>>> rows = [C.claim("ch03.qsim_predictability_corr", 0.42, ci=(0.2, 0.6), p_value=0.001).to_dict()]
>>> print(what_held(rows, "03_predictable").splitlines()[0])
**Claims on this model:** 1 supported, 0 not supported, 0 inconclusive (of 1 tested; 4 registered but not tested).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from . import claims as C
from .claims import Check

STATUS_MARK = {"supported": "✔", "not supported": "✘", "inconclusive": "?", "holds": "✔", "violated": "✘",
               "ok": "✔", "BUG": "✘ BUG", "reported": "·"}


def as_rows(checks: Iterable[Check | dict[str, Any]]) -> list[dict[str, Any]]:
    """Checks or results.json rows as dicts with `status` and `kind` (old rows without a kind: measurements)."""
    rows = []
    for c in checks:
        r = c.to_dict() if isinstance(c, Check) else dict(c)
        r.setdefault("kind", "measurement")
        r.setdefault("status", "reported")
        rows.append(r)
    return rows


def fmt(x: Any, digits: int = 3) -> str:
    """A number for prose: NaN as 'n/a', otherwise `digits` significant digits."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "n/a"
    return f"{v:.{digits}g}"


def effect_text(r: dict[str, Any]) -> str:
    """'0.42 [0.2, 0.6], p = 0.001' from a row's measured value, interval and p-value."""
    s = fmt(r.get("measured"))
    ci = r.get("ci")
    if ci:
        s += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    if r.get("p_value") is not None:
        s += f", p = {fmt(r['p_value'], 2)}"
    return s


def bar_text(r: dict[str, Any]) -> str:
    """What the registry asks of a claim or assumption: '≥ 0.1' (threshold + margin in the claim's direction)."""
    rel, thr, tol = r.get("relation"), float(r.get("predicted", math.nan)), float(r.get("tolerance") or 0.0)
    if r.get("kind") == "assumption":
        tol = 0.0
    if rel == "ge":
        return f"> {fmt(thr + tol)}" if r.get("kind") == "claim" else f"≥ {fmt(thr)}"
    if rel == "le":
        return f"< {fmt(thr - tol)}" if r.get("kind") == "claim" else f"≤ {fmt(thr)}"
    return f"≈ {fmt(thr)} ± {fmt(tol)}"


def _assumption_summary(spec_ids: Iterable[str], by_id: dict[str, list[dict]]) -> str:
    parts = []
    for a in spec_ids:
        rows = by_id.get(a)
        if not rows:
            parts.append(f"{a} (not measured here)")
            continue
        states = sorted({r["status"] for r in rows})
        parts.append(f"{a} ({'/'.join(states)}, {', '.join(fmt(r['measured']) for r in rows[:3])})")
    return "; ".join(parts)


def what_held(checks: Iterable[Check | dict[str, Any]], chapter: str) -> str:
    """The Markdown of a chapter's "What held on this model" section: each claim's verdict with its effect and
    interval and the assumptions behind it, then the assumptions, the sanity checks and the measurements in a line
    each. `chapter` is the notebook stem (e.g. "03_predictable") or its number ("03")."""
    rows = as_rows(checks)
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("id"):
            by_id.setdefault(r["id"], []).append(r)
    claims_rows = [r for r in rows if r["kind"] == "claim"]
    counts = {s: sum(r["status"] == s for r in claims_rows) for s in ("supported", "not supported", "inconclusive")}
    registered = [s for s in C.by_chapter(chapter[:2]) if s.kind == "claim"]
    untested = [s for s in registered if s.id not in by_id]
    out = [f"**Claims on this model:** {counts['supported']} supported, {counts['not supported']} not supported, "
           f"{counts['inconclusive']} inconclusive (of {len(claims_rows)} tested"
           + (f"; {len(untested)} registered but not tested)." if untested else ").")]
    if claims_rows:
        out.append("")
    for r in claims_rows:
        spec = C.REGISTRY.get(r["id"])
        line = (f"- {STATUS_MARK[r['status']]} **{r['status']}**: {r['name']} ({r.get('paper') or 'paper section ?'}). "
                f"Effect {effect_text(r)}; needed {bar_text(r)}.")
        if spec and spec.assumptions:
            line += f" Rests on: {_assumption_summary(spec.assumptions, by_id)}."
        out.append(line)
    for s in untested:
        out.append(f"- · **not tested here**: {s.statement} ({s.id}).")
    assumptions = [r for r in rows if r["kind"] == "assumption"]
    if assumptions:
        held = sum(r["status"] == "holds" for r in assumptions)
        out += ["", f"**Assumptions:** {held} of {len(assumptions)} hold."]
        out += [f"- {STATUS_MARK[r['status']]} {r['name']}: {fmt(r['measured'])} (needs {bar_text(r)})"
                for r in assumptions]
    sanity = [r for r in rows if r["kind"] == "sanity"]
    if sanity:
        bugs = [r for r in sanity if r["status"] != "ok"]
        out += ["", f"**Sanity checks** (identities and definitions; a failure is a bug, not a finding): "
                    f"{len(sanity) - len(bugs)} of {len(sanity)} ok."]
        out += [f"- ✘ BUG: {r['name']}: {fmt(r['measured'])} vs {fmt(r['predicted'])}" for r in bugs]
    meas = [r for r in rows if r["kind"] == "measurement"]
    if meas:
        out += ["", "**Measurements** (values with their intervals; no verdict):"]
        out += [f"- {r['name']}: {effect_text(r)}" for r in meas]
    return "\n".join(out)


def verdict_line(checks: Iterable[Check | dict[str, Any]]) -> str:
    """One sentence for a chapter's Overview: 'On this model: 2 of 5 claims supported, 1 not supported, 2
    inconclusive.'"""
    rows = [r for r in as_rows(checks) if r["kind"] == "claim"]
    if not rows:
        return "No claim of the paper is tested in this chapter."
    n = {s: sum(r["status"] == s for r in rows) for s in ("supported", "not supported", "inconclusive")}
    return (f"On this model: {n['supported']} of {len(rows)} claim checks supported, {n['not supported']} not "
            f"supported, {n['inconclusive']} inconclusive.")


def ledger_rows(results_by_chapter: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per registered claim of the paper: chapter, statement, status on this model (several checks of one
    claim: each listed), effect with interval, and the assumptions behind it with their status. Claims whose
    chapter produced no row are 'not run'."""
    by_id: dict[str, list[dict]] = {}
    for rows in results_by_chapter.values():
        for r in as_rows(rows):
            if r.get("id"):
                by_id.setdefault(r["id"], []).append(r)
    out = []
    for s in C.SPECS:
        if s.kind != "claim":
            continue
        rows = by_id.get(s.id, [])
        status = "; ".join(sorted({r["status"] for r in rows})) if rows else "not run"
        out.append({
            "chapter": s.chapter, "id": s.id, "statement": s.statement, "paper": s.paper, "status": status,
            "effect": "; ".join(f"{effect_text(r)}" for r in rows) or "n/a",
            "needed": bar_text(rows[0]) if rows else "n/a",
            "assumptions": _assumption_summary(s.assumptions, by_id) if s.assumptions else "none",
        })
    return out
