"""The null book: the claim-bearing chapters run on a random-weight model, to see which verdicts training explains.

`random:tappa-tiny` is the default model's architecture with random weights. A claim about trained structure
(q-similarity above the null, sinks, diagonals, natural periodic diagonals, KV and pruning gains) that comes out
`supported` there is a wrong test or threshold, not a finding. `run_null_book` executes the chapters on their smoke
parameters (notebook metadata `tappa.smoke`), several at once, each in its own process; `claim_statuses` reads the
verdicts back from their `results.json`; `side_by_side` tabulates two books' verdicts (e.g. tappa-tiny and its null).
"""
from __future__ import annotations

from pathlib import Path

from .execute import Job, NotebookFailure, run_jobs
from .layout import existing_chapters, notebook_path
from .ledger import ledger_row_status, read_results
from .params import smoke_parameters

NULL_MODEL = "random:tappa-tiny"


def claim_chapters(root: Path) -> list[str]:
    """The existing chapters for which the registry holds at least one claim, in book order."""
    from .. import claims as C

    with_claims = {s.chapter for s in C.SPECS if s.kind == "claim"}
    return [s for s in existing_chapters(root, warn=False) if s in with_claims]


def run_null_book(root: Path, out: str | Path, stems: list[str] | None = None, model: str = NULL_MODEL,
                  workers: int = 2, timeout: int | None = 600) -> dict[str, NotebookFailure | None]:
    """Execute `stems` (default: `claim_chapters`) on `model` with their smoke parameters, `workers` at a time
    (`execute.run_jobs`); each chapter's results in `out/<stem>`, its executed copy in `out/<stem>.ipynb`. The
    failures by chapter (None: it ran)."""
    out = Path(out)
    stems = claim_chapters(root) if stems is None else stems
    jobs = {s: Job(str(notebook_path(s, root)), str(out / f"{s}.ipynb"),
                   {**smoke_parameters(root, s), "model": model, "out_dir": str(out / s)}, str(root), timeout)
            for s in stems}
    return {name: failure for name, failure, _ in run_jobs(jobs, workers)}


def claim_statuses(results: str | Path, stems: list[str]) -> dict[str, dict[str, list[str]]]:
    """{stem: {claim id: [status of each check]}} from the chapters' results.json (claim rows only)."""
    out: dict[str, dict[str, list[str]]] = {}
    for stem, ch in read_results(Path(results), stems).items():
        rows = [r for r in (ch.rows or []) if r.get("kind") == "claim" and r.get("id")]
        by_id: dict[str, list[str]] = {}
        for r in rows:
            by_id.setdefault(r["id"], []).append(r.get("status", "?"))
        out[stem] = by_id
    return out


def side_by_side(books: dict[str, str | Path], stems: list[str]) -> str:
    """A Markdown table of every registered claim of `stems` with its verdict in each book ({label: results
    folder}), e.g. {"tappa-tiny": "_build/results", "random:tappa-tiny": "runs/null"}."""
    from .. import claims as C

    statuses = {label: claim_statuses(folder, stems) for label, folder in books.items()}
    lines = ["| claim | " + " | ".join(books) + " |", "| --- |" + " --- |" * len(books)]
    for s in C.SPECS:
        if s.kind != "claim" or s.chapter not in stems:
            continue
        cells = []
        for label in books:
            got = statuses[label].get(s.chapter, {}).get(s.id)
            cells.append(ledger_row_status("; ".join(got)) + (f" ({len(got)} checks)" if got and len(got) > 1 else "")
                         if got else "not run")
        lines.append(f"| `{s.id}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
