"""The ledger (`book/generated/ledger.md`): every claim of the paper, with its verdict on the book's model.

Built from each chapter's `results.json` (rows written by `results.save_checks`) and `run_info.json` (the model it
ran on), through `tappa_utils.verdicts.ledger_rows`, so it is true of whatever model the chapters ran on and never
typed by hand. `make book` writes it after executing the chapters; `python -m tappa_utils.book ledger` writes it
from existing results.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tables as T
from ..io import atomic_write_text
from ..models import model_label
from .layout import EXECUTED_DIR, GENERATED_DIR, find_root

STATUSES = ("supported", "supported, assumptions violated", "not supported", "inconclusive", "mixed", "not run")
SHOWN_IF_ANY = ("supported, assumptions violated", "mixed")  # counted aloud only when some claim has them


def status_counts(counts: Counter) -> str:
    """'7 supported; 3 supported, assumptions violated; ...': every status of `STATUSES` (the rarer ones only when
    present), so the counts add up to the claims."""
    return "; ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES if s not in SHOWN_IF_ANY or counts.get(s))


@dataclass
class ChapterResults:
    """What one chapter left in its result folder: its rows (None: no results.json) and the model it ran on."""

    stem: str
    rows: list[dict[str, Any]] | None
    model: str | None = None
    problems: list[str] = field(default_factory=list)


def read_chapter(folder: Path, stem: str) -> ChapterResults:
    """The rows and model of one chapter's result folder (`folder/<stem>`); unreadable files become problems."""
    out = ChapterResults(stem, None)
    base = folder / stem
    try:
        rows = json.loads((base / "results.json").read_text())
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("not a list of rows")
        out.rows = rows
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        out.problems.append(f"{stem}/results.json cannot be read ({e})")
    try:
        info = json.loads((base / "run_info.json").read_text())
        out.model = (info.get("params") or {}).get("model")
    except (OSError, ValueError, AttributeError):
        pass
    return out


def read_results(folder: str | Path, stems: list[str]) -> dict[str, ChapterResults]:
    """`read_chapter` for each chapter stem, in order."""
    return {s: read_chapter(Path(folder), s) for s in stems}


def ledger_row_status(status: str) -> str:
    """A ledger row's status (several checks of one claim joined by '; ') as one of `STATUSES`
    (`verdicts.combined_status`)."""
    from ..verdicts import combined_status

    return combined_status(p.strip() for p in status.split(";"))


def book_model(chapters: dict[str, ChapterResults], fallback: str | None = None) -> str:
    """The label of the model a book's chapters ran on (the most frequent one recorded), else `fallback`'s."""
    models = Counter(model_label(ch.model) for ch in chapters.values() if ch.rows is not None and ch.model)
    if models:
        return models.most_common(1)[0][0]
    return model_label(fallback) if fallback else "unknown model"


def model_cell(row: dict[str, Any]) -> str:
    """One model's verdict on a claim for the across-models table: status, then its effect (one check) or how its
    checks came out (several)."""
    from .. import verdicts as V

    status = V.status_text(row["combined"])
    if row["combined"] == "not run":
        return status
    if row["checks"]:
        counts = Counter(c["status"] for c in row["checks"])
        return f"{status} ({', '.join(f'{n} {s}' for s, n in counts.items())} of {len(row['checks'])} checks)"
    return f"{status}: {row['effect']}"


def across_models(books: dict[str, dict[str, ChapterResults]]) -> str:
    """The ledger's first table: each registered claim (rows, by id: the statements are in the detailed table, so the
    models' columns fit the page) with its verdict and effect [interval] on each book's
    model (columns, in the order given), and a line of counts per model above it."""
    from .. import verdicts as V

    rows = {label: {r["id"]: r for r in V.ledger_rows({s: ch.rows for s, ch in chapters.items()
                                                        if ch.rows is not None})}
            for label, chapters in books.items()}
    names = {label: f"{label} ({book_model(chapters)})" if book_model(chapters) != label else label
             for label, chapters in books.items()}
    out = []
    for label in books:
        counts = Counter(r["combined"] for r in rows[label].values())
        out.append(f"- **{names[label]}:** " + status_counts(counts) + ".")
    first = next(iter(rows.values()))
    table = [{"claim": T.Md(f"`{cid}`"), **{label: model_cell(rows[label][cid]) for label in books}}
             for cid in first]
    columns = {"claim": "claim (its statement: the table below)", **{label: names[label] for label in books}}
    differ = [cid for cid in first if len({rows[label][cid]["combined"] for label in books
                                           if rows[label][cid]["combined"] != "not run"}) > 1]
    out += ["", T.markdown_table(table, columns), ""]
    out.append(f"**Verdicts that differ between models:** {len(differ)}"
               + (f" ({', '.join(f'`{c}`' for c in differ)})." if differ else "."))
    return "\n".join(out) + "\n"


def ledger_markdown(chapters: dict[str, ChapterResults], linked: set[str] | None = None,
                    model: str | None = None, others: dict[str, dict[str, ChapterResults]] | None = None) -> str:
    """The ledger page: a header naming the model and counting the claims by status, then one row per claim.

    Parameters
    ----------
    chapters
        Each chapter's results (`read_results`); chapters without results count their claims as "not run".
    linked
        Stems whose executed page is in the same book (linked with `{doc}`); the others are named only.
    model
        The model to name when no chapter recorded one (e.g. a book whose chapters all failed).
    others
        Other books' results by label (e.g. tappa-tiny and its random-weight null): they get a column each in the
        across-models table at the top; the detailed table below is this book's.
    """
    from .. import claims as C
    from .. import verdicts as V

    linked = linked or set()
    rows = V.ledger_rows({s: ch.rows for s, ch in chapters.items() if ch.rows is not None})
    ran = {s for s, ch in chapters.items() if ch.rows is not None}
    models = Counter(model_label(ch.model) for ch in chapters.values() if ch.rows is not None and ch.model)
    if not models and model:
        models[model_label(model)] = 0
    title = ", ".join(models) if models else "unknown model"
    counts = Counter(ledger_row_status(r["status"]) for r in rows)
    out = [f"# Ledger: the paper's claims on {title}", "",
           "Every claim of the paper that the book tests, with its verdict on this model, generated from the "
           "chapters' results (`results.json`) by `python -m tappa_utils.book ledger`. A claim is *supported* only "
           "when its effect clears the margin fixed in advance in `tappa_utils/claims.py` with its interval (and "
           "p < 0.05); *not supported* when the interval lies on the wrong side; *inconclusive* otherwise.", "",
           f"**Model:** {title}" + (f" (chapters disagree: {', '.join(f'{m} in {n}' for m, n in models.items())} "
                                    "chapter(s))" if len(models) > 1 else "") + ".", "",
           f"**{len(rows)} claims:** " + status_counts(counts) + ".", ""]
    if others:
        books = {book_model(chapters, model): chapters, **others}
        out += ["## Across models", "",
                "The same registered claims, with the same thresholds, on each model: this book's model, the other "
                "books' (run by `make book` with each chapter's `tappa.tiny` sizes; `python -m tappa_utils.book "
                "ledger --book LABEL=DIR` adds any book). A claim about trained structure that is *supported* on the "
                "random-weight null is a test that cannot fail, not a finding.", "",
                across_models(books), f"## On {title}", ""]
    problems = [p for ch in chapters.values() for p in ch.problems]
    if problems:
        out += ["**Unreadable results:** " + "; ".join(problems) + ".", ""]
    missing = [s for s in chapters if s not in ran and C.by_chapter(s)]
    if missing:
        out += ["Chapters without results (their claims are *not run*): " + ", ".join(f"`{s}`" for s in missing)
                + ".", ""]
    table = []
    for r in rows:
        stem = r["chapter"]
        chapter = T.Md(f"{{doc}}`{stem[:2]} <../executed/{stem}>`") if stem in linked else stem[:2]
        combined = r["combined"] if stem in ran else "not run"
        status = V.status_text(combined)
        if stem in ran and combined == "not run":
            status = "· not tested (the chapter ran without it)"
        elif r["checks"]:
            counts = ', '.join(f'{n} {s}' for s, n in Counter(c['status'] for c in r['checks']).items())
            status += f" ({counts}" + (f"; Holm-corrected over {len(r['checks'])} checks)" if r.get("holm") else ")")
        needed = r["needed"]
        if needed == T.DASH and r["id"] in C.REGISTRY:  # untested: what the registry will ask of it
            spec = C.REGISTRY[r["id"]]
            if spec.threshold is not None:
                needed = V.bar_text({"kind": "claim", "relation": spec.relation, "predicted": spec.threshold,
                                     "tolerance": spec.margin})
        table.append({"chapter": chapter, "claim": r["statement"], "paper": r["paper"], "status": status,
                      "effect": r["effect"], "needed": needed, "assumptions": r["assumptions"]})
        table += [{"chapter": "", "claim": f"↳ {c['label']}", "paper": "", "status": V.status_text(c["status"]),
                   "effect": c["effect"], "needed": "", "assumptions": ""} for c in r["checks"]]
    columns = {"chapter": "chapter", "claim": "claim", "paper": "paper", "status": "status",
               "effect": "effect [interval]", "needed": "needed", "assumptions": "assumptions measured"}
    notes = [V.COMBINED_RULE] if any(r["checks"] for r in rows) else []
    out += [T.markdown_table(table, columns, notes=notes)]
    out += ["", "Effects are the measured values with their bootstrap intervals and p-values (see each chapter's "
                "*What held on this model*); *needed* is what the registry asks of the effect."]
    return "\n".join(out) + "\n"


FINDINGS_START = "<!-- findings:start (generated by `make book` from the chapters' results; do not edit) -->"
FINDINGS_END = "<!-- findings:end -->"


def findings_markdown(books: dict[str, dict[str, ChapterResults]], titles: dict[str, str]) -> str:
    """What the book found, for the README: the ledger's counts per model, then one line per claim chapter naming
    its claims by verdict on each model (`titles`: chapter stem -> its title)."""
    from .. import claims as C
    from .. import verdicts as V

    rows = {label: {r["id"]: r for r in V.ledger_rows({s: ch.rows for s, ch in chapters.items()
                                                        if ch.rows is not None})}
            for label, chapters in books.items()}
    names = {label: book_model(chapters) for label, chapters in books.items()}
    out = []
    for label in books:
        counts = Counter(r["combined"] for r in rows[label].values())
        out.append(f"- **{names[label]}:** " + status_counts(counts)
                   + f" of {len(rows[label])} registered claims.")
    out.append("")
    for stem, title in titles.items():
        ids = [s.id for s in C.SPECS if s.kind == "claim" and s.chapter == stem]
        if not ids:
            continue
        parts = []
        for label in books:
            got = Counter(rows[label][i]["combined"] for i in ids)
            if set(got) == {"not run"}:
                continue
            supported = [i.split(".", 1)[1] for i in ids if rows[label][i]["combined"] == "supported"]
            violated = [i.split(".", 1)[1] for i in ids if rows[label][i]["combined"] == V.SUPPORTED_VIOLATED]
            parts.append(f"{names[label]} {got.get('supported', 0)}/{len(ids)} supported"
                         + (f" ({', '.join(supported)})" if supported else "")
                         + (f", {len(violated)} supported with assumptions violated ({', '.join(violated)})"
                            if violated else ""))
        out.append(f"- **{title}:** " + ("; ".join(parts) if parts else "not run") + ".")
    return "\n".join(out) + "\n"


def update_readme_findings(readme: Path, block: str) -> bool:
    """Replace the text between the README's findings markers with `block` (atomically); False when unchanged.
    BookError when the markers are missing."""
    from .layout import BookError

    text = readme.read_text()
    if FINDINGS_START not in text or FINDINGS_END not in text:
        raise BookError(f"{readme.name} lacks the findings markers ({FINDINGS_START!r} ... {FINDINGS_END!r})")
    head, rest = text.split(FINDINGS_START, 1)
    new = f"{head}{FINDINGS_START}\n{block}{FINDINGS_END}{rest.split(FINDINGS_END, 1)[1]}"
    if new == text:
        return False
    atomic_write_text(readme, new)
    return True


def linked_chapters(ledger_path: Path, stems: list[str]) -> set[str]:
    """Stems whose executed notebook sits beside the ledger's folder (`../executed/<stem>.ipynb`)."""
    executed = ledger_path.parent.parent / Path(EXECUTED_DIR).name
    return {s for s in stems if (executed / f"{s}.ipynb").is_file()}


def write_ledger(results: str | Path, stems: list[str], path: str | Path, model: str | None = None,
                 others: dict[str, str | Path] | None = None) -> Path:
    """Write the ledger of the chapters `stems` from `results/<stem>/` to `path`, with a column for each of
    `others` ({label: results folder}); the path.

    A missing results folder or an `path` that is a folder is a `UsageError` (one line; exit status 2 from the
    book's command line), raised before anything is written."""
    from ..preflight import UsageError

    results, path = Path(results), Path(path)
    if not results.exists():
        raise UsageError(f"--results {results} does not exist; run the chapters first (make book) or pass "
                         "--results DIR")
    if not results.is_dir():
        raise UsageError(f"--results {results} is a file, not a folder of chapter results; pass --results DIR")
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder; give the ledger's file name (e.g. {path / 'ledger.md'})")
    for label, folder in (others or {}).items():
        if not Path(folder).is_dir():
            raise UsageError(f"--book {label}={folder}: no such folder of chapter results; build that book first "
                             "(make book MODEL=... OUT=...) and pass its results folder")
    chapters = read_results(results, stems)
    extra = {label: read_results(folder, stems) for label, folder in (others or {}).items()}
    return atomic_write_text(path, ledger_markdown(chapters, linked_chapters(path, stems), model=model,
                                                   others=extra or None))


def default_ledger_path(root: Path | None = None) -> Path:
    """`book/generated/ledger.md` under the root."""
    return (root or find_root()) / GENERATED_DIR / "ledger.md"
