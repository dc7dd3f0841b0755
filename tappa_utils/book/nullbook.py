"""The null book: the claim-bearing chapters run on a random-weight model, to see which verdicts training explains.

`random:tappa-tiny` is the default model's architecture with random weights. A claim about trained structure
(q-similarity above the null, sinks, diagonals, natural periodic diagonals, KV and pruning gains) that comes out
`supported` there is a wrong test or threshold, not a finding. `run_null_book` executes the chapters on their smoke
parameters (notebook metadata `tappa.smoke`), several at once, each in its own process; `claim_statuses` reads the
verdicts back from their `results.json`; `side_by_side` tabulates two books' verdicts (e.g. tappa-tiny and its null).
"""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from .execute import NotebookFailure, execute_notebook
from .layout import existing_chapters, notebook_path
from .ledger import claim_status, read_results

NULL_MODEL = "random:tappa-tiny"


def claim_chapters(root: Path) -> list[str]:
    """The existing chapters for which the registry holds at least one claim, in book order."""
    from .. import claims as C

    with_claims = {s.chapter for s in C.SPECS if s.kind == "claim"}
    return [s for s in existing_chapters(root, warn=False) if s in with_claims]


def smoke_parameters(root: Path, stem: str) -> dict[str, Any]:
    """A chapter's small parameters (`tappa.smoke` in its notebook metadata)."""
    meta = json.loads(notebook_path(stem, root).read_text())["metadata"]
    return dict(meta.get("tappa", {}).get("smoke", {}))


def _run_one(job: tuple[str, str, str, dict, int | None, dict]) -> NotebookFailure | None:
    notebook, output, cwd, parameters, timeout, env = job
    return execute_notebook(notebook, output, parameters, cwd=cwd, timeout=timeout, env=env)


def run_null_book(root: Path, out: str | Path, stems: list[str] | None = None, model: str = NULL_MODEL,
                  workers: int = 2, timeout: int | None = 600) -> dict[str, NotebookFailure | None]:
    """Execute `stems` (default: `claim_chapters`) on `model` with their smoke parameters, `workers` at a time;
    each chapter's results in `out/<stem>`, its executed copy in `out/<stem>.ipynb`. The failures by chapter.

    Each kernel gets `cpu_count // workers` threads so that the runs share the machine instead of fighting.
    """
    out = Path(out)
    stems = claim_chapters(root) if stems is None else stems
    threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    jobs = [(str(notebook_path(s, root)), str(out / f"{s}.ipynb"), str(root),
             {**smoke_parameters(root, s), "model": model, "out_dir": str(out / s)}, timeout, env) for s in stems]
    if workers <= 1 or len(jobs) <= 1:
        return {s: _run_one(j) for s, j in zip(stems, jobs)}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(stems, pool.map(_run_one, jobs)))


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
    folder}), e.g. {"tappa-tiny": "_build/results", "random:tappa-tiny": "/tmp/null"}."""
    from .. import claims as C

    statuses = {label: claim_statuses(folder, stems) for label, folder in books.items()}
    lines = ["| claim | " + " | ".join(books) + " |", "| --- |" + " --- |" * len(books)]
    for s in C.SPECS:
        if s.kind != "claim" or s.chapter not in stems:
            continue
        cells = []
        for label in books:
            got = statuses[label].get(s.chapter, {}).get(s.id)
            cells.append(claim_status("; ".join(got)) + (f" ({len(got)} checks)" if got and len(got) > 1 else "")
                         if got else "not run")
        lines.append(f"| `{s.id}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
