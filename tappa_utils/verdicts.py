"""Verdicts in words: a chapter's "What held on this model" section and the book's ledger, from results rows.

Both are generated from the rows `results.save_checks` writes (dicts with `kind`, `id`, `status`, `measured`,
`ci`, `p_value`, ...) and from the registry (`claims`), never typed by hand, so they stay true on any model.

>>> from tappa_utils import claims as C
>>> rows = [C.claim("predictable.qsim_predictability_corr", 0.42, ci=(0.2, 0.6), p_value=0.001).to_dict()]
>>> print(what_held(rows, "03_predictable").splitlines()[0])
**Claims on this model:** 1 supported, 0 not supported, 0 inconclusive (of 1 tested; 2 registered but not tested).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from . import claims as C
from . import tables as T
from .claims import Check

SUPPORTED_VIOLATED = "supported, assumptions violated"
STATUS_MARK = {"supported": "✔", SUPPORTED_VIOLATED: "✔⚠", "not supported": "✘", "inconclusive": "?", "holds": "✔",
               "violated": "✘", "ok": "✔", "BUG": "✘ BUG", "reported": "·"}
CLAIM_STATUSES = ("supported", SUPPORTED_VIOLATED, "not supported", "inconclusive")
VIOLATED_RULE = (f"A claim that passes its test while one of its registered assumptions is violated on this model "
                 f"reads \"{SUPPORTED_VIOLATED}\" ({STATUS_MARK[SUPPORTED_VIOLATED]}), never plain supported: the "
                 "theorem it tests does not apply as stated.")


def mark_violated(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with each "supported" claim whose registered assumptions (`Spec.assumptions`, kind assumption) are
    measured as "violated" among `rows` set to `SUPPORTED_VIOLATED`, the violated ids in `violated` (in place)."""
    violated = {r["id"] for r in rows if r.get("kind") == "assumption" and r.get("status") == "violated"}
    for r in rows:
        spec = C.REGISTRY.get(r.get("id") or "")
        if r.get("kind") != "claim" or r.get("status") != "supported" or spec is None:
            continue
        bad = [a for a in spec.assumptions if a in violated]
        if bad:
            r["status"], r["violated"] = SUPPORTED_VIOLATED, bad
    return rows


def as_rows(checks: Iterable[Check | dict[str, Any]]) -> list[dict[str, Any]]:
    """Checks or results.json rows as dicts with `status` and `kind` (old rows without a kind: measurements), a
    claim's status downgraded when its assumptions are violated among these rows (`mark_violated`)."""
    rows = []
    for c in checks:
        r = c.to_dict() if isinstance(c, Check) else dict(c)
        r.setdefault("kind", "measurement")
        r.setdefault("status", "reported")
        rows.append(r)
    return mark_violated(rows)


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
    """'0.42 [0.2, 0.6], p = 0.001' from a row's measured value, interval and p-value (for prose; missing interval
    and p-value left out)."""
    s = fmt(r.get("measured"))
    ci = r.get("ci")
    if ci and not all(T.is_missing(v) for v in ci):
        s += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    if not T.is_missing(r.get("p_value")):
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


COMBINED_RULE = ("A claim checked several times (per task, budget or k) has one row per check (↳) and one combined "
                 "status: supported when every check is supported, supported with assumptions violated when every "
                 "check is supported and some of them with assumptions violated, not supported when every check "
                 "is not supported, mixed when some checks are supported and some not supported, inconclusive "
                 "otherwise.")


def combined_status(statuses: Iterable[str]) -> str:
    """The status of a claim from its checks' statuses (`COMBINED_RULE`); "not run" when there is none.

    >>> combined_status(["supported", "supported"]), combined_status(["supported", "not supported", "inconclusive"])
    ('supported', 'mixed')
    >>> combined_status(["supported", "supported, assumptions violated"])
    'supported, assumptions violated'
    """
    parts = {p for p in statuses if p and p != "not run"}
    if not parts:
        return "not run"
    if len(parts) == 1:
        return parts.pop()
    if parts == {"supported", SUPPORTED_VIOLATED}:
        return SUPPORTED_VIOLATED
    return "mixed" if parts & {"supported", SUPPORTED_VIOLATED} and "not supported" in parts else "inconclusive"


def status_text(status: str) -> str:
    """A status with its mark: '✔ supported'; a combined 'mixed' as '✔✘ mixed'."""
    mark = {"mixed": "✔✘", "BUG": "✘"}.get(status) or STATUS_MARK.get(status, "·")
    return f"{mark} {status}"


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(r["status"] == s for r in rows) for s in CLAIM_STATUSES}


def _count_text(rows: list[dict[str, Any]]) -> str:
    text = ", ".join(f"{n} {s}" for s, n in _counts(rows).items() if n) + f" of {len(rows)} checks"
    return text + (", Holm-corrected" if corrected(rows) else "")


def corrected(rows: list[dict[str, Any]]) -> bool:
    """True when a claim's checks were Holm-corrected together (`claims.holm_adjust` wrote it in their notes)."""
    return bool(rows) and any("Holm over" in (r.get("note") or "") for r in rows)


def counts_text(counts: dict[str, int]) -> str:
    """'2 supported, 1 not supported, 0 inconclusive' (and 'n supported with assumptions violated' when n > 0)."""
    sv = counts.get(SUPPORTED_VIOLATED, 0)
    return (f"{counts['supported']} supported, " + (f"{sv} supported with assumptions violated, " if sv else "")
            + f"{counts['not supported']} not supported, {counts['inconclusive']} inconclusive")


def reachable_cell(r: dict[str, Any]) -> str:
    """A claim row's smallest reachable p-value (`Check.reachable_p`), '≥ 0.05' flagged with '(cannot be
    significant)'; a dash when the row does not say; empty for other kinds."""
    if r.get("kind") != "claim":
        return ""
    v = r.get("reachable_p")
    if T.is_missing(v):
        return T.DASH
    return T.number(v, 2) + (" (cannot be significant)" if float(v) >= C.ALPHA else "")


def check_labels(names: list[str]) -> list[str]:
    """Short labels of several checks of one claim: their names without the words all of them share at the start
    and the clause (from ', ' or ': ') they share at the end; the full names when that leaves them alike.

    >>> check_labels(["TAPPA vs ShortGPT, 2 layers removed: gain", "TAPPA vs ShortGPT, 4 layers removed: gain"])
    ['2 layers removed', '4 layers removed']
    """
    if len(names) < 2:
        return list(names)
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    start = prefix.rfind(" ") + 1 if any(len(n) > len(prefix) for n in names) else 0
    suffix = names[0][start:]
    for n in names[1:]:
        while not n.endswith(suffix):
            suffix = suffix[1:]
    cut = min([i for i in (suffix.find(", "), suffix.find(": "), suffix.find(" (")) if i >= 0], default=len(suffix))
    labels = [n[start:len(n) - len(suffix) + cut].strip(" ,:") for n in names]
    return labels if all(labels) and len(set(labels)) == len(labels) else list(names)


def _group(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows in order, the claim checks of one id gathered at the first one."""
    groups: list[list[dict[str, Any]]] = []
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "claim" and r.get("id") in by_id:
            by_id[r["id"]].append(r)
            continue
        groups.append([r])
        if r["kind"] == "claim" and r.get("id"):
            by_id[r["id"]] = groups[-1]
    return groups


def effect_cell(r: dict[str, Any]) -> str:
    """A row's effect for a table: '0.42 [0.2, 0.6], p = 0.001' (3 significant digits), missing parts left out,
    a dash when there is no value."""
    ci, p = r.get("ci"), r.get("p_value")
    parts = [] if T.is_missing(r.get("measured")) else [T.number(r["measured"])]
    if ci is not None and not all(T.is_missing(v) for v in ci):
        parts.append(T.interval(ci))
    s = " ".join(parts)
    if not T.is_missing(p):
        s += f"{', ' if s else ''}p = {T.number(p, 2)}"
    return s or T.DASH


def checks_markdown(checks: Iterable[Check | dict[str, Any]]) -> str:
    """Every row as one table (`tables.markdown_table`): kind, check, status, effect [interval] and p, what a claim
    or assumption needs, note. A claim checked several times is one row with the combined status, then one
    labelled row (↳) per check; the rule is written under the table."""
    rows, multi = [], False
    for group in _group(as_rows(checks)):
        r = group[0]
        needed = bar_text(r) if r["kind"] in ("claim", "assumption", "sanity") else ""
        if len(group) == 1:
            rows.append({"kind": r["kind"], "check": r["name"], "status": status_text(r["status"]),
                         "effect": effect_cell(r), "reachable": reachable_cell(r), "needed": needed,
                         "note": _note(r)})
            continue
        multi = True
        spec = C.REGISTRY.get(r["id"])
        status = combined_status(x["status"] for x in group)
        rows.append({"kind": "claim", "check": spec.statement if spec else r["id"], "note": _count_text(group),
                     "status": status_text(status), "effect": f"{len(group)} checks ↓", "reachable": "",
                     "needed": needed})
        rows += [{"kind": "", "check": f"↳ {label}", "status": status_text(x["status"]), "effect": effect_cell(x),
                  "reachable": reachable_cell(x), "needed": "", "note": _note(x)}
                 for label, x in zip(check_labels([x["name"] for x in group]), group)]
    columns = {"kind": "kind", "check": "check", "status": "status", "effect": "effect [95 % interval], p",
               "reachable": "smallest reachable p", "needed": "needed", "note": "note"}
    notes = [COMBINED_RULE] if multi else []
    if any(r.get("kind") == "claim" for r in as_rows(checks)):
        notes.append("Smallest reachable p: the smallest p-value the test can give with this run's units (heads, "
                     "windows, draws) and resamples; at or above 0.05 the claim cannot be supported whatever the "
                     "data.")
    if any(r.get("status") == SUPPORTED_VIOLATED for r in as_rows(checks)):
        notes.append(VIOLATED_RULE)
    return T.markdown_table(rows, columns, notes=notes)


def _note(r: dict[str, Any]) -> str:
    note = r.get("note") or ""
    if r.get("violated"):
        note = (note + "; " if note else "") + "assumptions violated: " + ", ".join(r["violated"])
    return note


def _assumption_summary(spec_ids: Iterable[str], by_id: dict[str, list[dict]]) -> str:
    parts = []
    for a in spec_ids:
        rows = by_id.get(a)
        if not rows:
            parts.append(f"`{a}` (not measured here)")
            continue
        states = sorted({r["status"] for r in rows})
        parts.append(f"`{a}` ({'/'.join(states)}, {', '.join(T.number(r['measured']) for r in rows[:3])})")
    return "; ".join(parts)


def what_held(checks: Iterable[Check | dict[str, Any]], chapter: str, table: bool = True) -> str:
    """The Markdown of a chapter's "What held on this model" section: each claim's verdict with its effect and
    interval and the assumptions behind it (a claim checked several times: its combined status), the claims not
    tested, the counts of assumptions and sanity checks, then (`table`) every row in one table (`checks_markdown`;
    without it, the assumptions and measurements in a line each). `chapter` is the notebook stem (e.g.
    "03_predictable") or its number ("03")."""
    rows = as_rows(checks)
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("id"):
            by_id.setdefault(r["id"], []).append(r)
    claims_rows = [r for r in rows if r["kind"] == "claim"]
    counts = _counts(claims_rows)
    registered = [s for s in C.by_chapter(chapter[:2]) if s.kind == "claim"]
    untested = [s for s in registered if s.id not in by_id]
    checked = "claim checks" if len(claims_rows) > len({r.get("id") for r in claims_rows}) else "tested"
    out = [f"**Claims on this model:** {counts_text(counts)} (of {len(claims_rows)} {checked}"
           + (f"; {len(untested)} registered but not tested)." if untested else ").")]
    if claims_rows:
        out.append("")
    for group in _group(claims_rows):
        r = group[0]
        spec = C.REGISTRY.get(r.get("id"))
        if len(group) == 1:
            line = (f"- {STATUS_MARK[r['status']]} **{r['status']}**: {T.escape(r['name'])} "
                    f"({r.get('paper') or 'paper section ?'}). Effect {effect_cell(r)}; needed {bar_text(r)}; "
                    f"smallest reachable p {reachable_cell(r)}.")
        else:
            status = combined_status(x["status"] for x in group)
            line = (f"- {status_text(status).split()[0]} **{status}** ({_count_text(group)}, one per row of the "
                    f"table below): {T.escape(spec.statement if spec else r['name'])} "
                    f"({r.get('paper') or 'paper section ?'}); needed {bar_text(r)}.")
        if spec and spec.assumptions:
            line += f" Rests on: {T.escape(_assumption_summary(spec.assumptions, by_id))}."
        out.append(line)
    for s in untested:
        out.append(f"- · **not tested here**: {T.escape(s.statement)} (`{s.id}`).")
    assumptions = [r for r in rows if r["kind"] == "assumption"]
    if assumptions:
        held = sum(r["status"] == "holds" for r in assumptions)
        out += ["", f"**Assumptions:** {held} of {len(assumptions)} hold."]
        if not table:
            out += [f"- {STATUS_MARK[r['status']]} {T.escape(r['name'])}: {T.number(r['measured'])} "
                    f"(needs {bar_text(r)})" for r in assumptions]
    sanity = [r for r in rows if r["kind"] == "sanity"]
    if sanity:
        bugs = [r for r in sanity if r["status"] != "ok"]
        out += ["", f"**Sanity checks** (identities and definitions; a failure is a bug, not a finding): "
                    f"{len(sanity) - len(bugs)} of {len(sanity)} ok."]
        out += [f"- ✘ BUG: {T.escape(r['name'])}: {T.number(r['measured'])} vs {T.number(r['predicted'])}"
                for r in bugs]
    meas = [r for r in rows if r["kind"] == "measurement"]
    if table and rows:
        out += ["", "**Every check** (claims, assumptions, sanity checks and measurements of this run):", "",
                checks_markdown(rows)]
    elif meas:
        out += ["", "**Measurements** (values with their intervals; no verdict):"]
        out += [f"- {T.escape(r['name'])}: {effect_cell(r)}" for r in meas]
    return "\n".join(out)


def verdict_line(checks: Iterable[Check | dict[str, Any]]) -> str:
    """One sentence for a chapter's Overview: 'On this model: 2 of 5 claims supported, 1 not supported, 2
    inconclusive.'"""
    rows = [r for r in as_rows(checks) if r["kind"] == "claim"]
    if not rows:
        return "No claim of the paper is tested in this chapter."
    n = _counts(rows)
    sv = f", {n[SUPPORTED_VIOLATED]} supported with assumptions violated" if n[SUPPORTED_VIOLATED] else ""
    return (f"On this model: {n['supported']} of {len(rows)} claim checks supported{sv}, {n['not supported']} not "
            f"supported, {n['inconclusive']} inconclusive.")


def ledger_rows(results_by_chapter: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per registered claim of the paper: chapter, statement, paper section, status on this model
    (`status`: its checks' statuses joined by '; '; `combined`: `combined_status`; a supported check whose
    assumptions are violated anywhere in the results reads `SUPPORTED_VIOLATED`; `holm`: its checks' p-values were
    Holm-corrected together), effect with interval (a dash when not run; several checks: their count, each in
    `checks` with its label, status, effect and reachable p), the smallest reachable p of its checks
    (`reachable_p`, NaN when no row says), what it needs and the assumptions behind it with their status."""
    by_id: dict[str, list[dict]] = {}
    everything = mark_violated([r for rows in results_by_chapter.values() for r in as_rows(rows)])
    for r in everything:
        if r.get("id"):
            by_id.setdefault(r["id"], []).append(r)
    out = []
    for s in C.SPECS:
        if s.kind != "claim":
            continue
        rows = by_id.get(s.id, [])
        labels = check_labels([r["name"] for r in rows])
        out.append({
            "chapter": s.chapter, "id": s.id, "statement": s.statement, "paper": s.paper,
            "status": "; ".join(sorted({r["status"] for r in rows})) if rows else "not run",
            "combined": combined_status(r["status"] for r in rows),
            "holm": corrected(rows) and len(rows) > 1,
            "effect": (effect_cell(rows[0]) if len(rows) == 1 else f"{len(rows)} checks ↓") if rows else T.DASH,
            "needed": bar_text(rows[0]) if rows else T.DASH,
            "reachable_p": min((float(r["reachable_p"]) for r in rows if not T.is_missing(r.get("reachable_p"))),
                               default=float("nan")),
            "assumptions": _assumption_summary(s.assumptions, by_id) if s.assumptions else "none",
            "checks": [{"label": label, "status": r["status"], "effect": effect_cell(r),
                        "reachable_p": reachable_cell(r)}
                       for label, r in zip(labels, rows)] if len(rows) > 1 else [],
        })
    return out
