"""The ledger's other columns: the claim chapters re-run on the small model we trained and on its random-weight null.

The default book runs every chapter on its main model (SmolLM2-135M-Instruct). For the ledger to say which verdicts
hold across models and which training explains, `make book` also runs the claim-bearing chapters on `tappa-tiny`
and on `random:tappa-tiny`, each with the parameters in its notebook's metadata `tappa.tiny` (the sizes that give
the small model power), into `_build/columns/<label>/<stem>`. These runs are not rendered as pages: only their
verdicts reach the ledger. `python -m tappa_utils.book ledger --book LABEL=DIR` adds any other book's results.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .execute import Job, NotebookFailure, run_jobs
from .layout import notebook_path
from .params import tappa_metadata

COLUMNS_DIR = "_build/columns"
BOOK_MODEL = "smollm2-135m"  # the default book's model: every notebook's `model` parameter


@dataclass(frozen=True)
class Column:
    """One extra column of the ledger: a label, the model its chapters run on, and which metadata sizes they use."""

    label: str
    model: str
    sizes: str = "tiny"  # notebook metadata key tappa.<sizes>
    base: str = COLUMNS_DIR  # its folder's parent, relative to the root (or absolute)

    def folder(self, root: Path) -> Path:
        """Where its chapters' results go (`_build/columns/<label>` by default)."""
        return root / self.base / self.label


COLUMNS = (Column("tappa-tiny", "tappa-tiny"), Column("null", "random:tappa-tiny"))


def column_parameters(root: Path, stem: str, column: Column) -> dict | None:
    """The chapter's parameters for `column` (its metadata `tappa.<sizes>` with the column's model), or None when
    the chapter has no such metadata (it is then not part of that column)."""
    sizes = tappa_metadata(root, stem).get(column.sizes)
    if not isinstance(sizes, dict):
        return None
    return {**sizes, "model": column.model}


def run_columns(root: Path, stems: list[str], columns: tuple[Column, ...] = COLUMNS, workers: int = 2,
                timeout: int | None = None) -> dict[tuple[str, str], NotebookFailure | None]:
    """Execute each chapter of `stems` that has sizes for a column on that column's model, `workers` at a time;
    results in `<column folder>/<stem>`, the executed copy beside them (`<stem>.ipynb`, never rendered). The
    outcome by (column label, stem): None when it ran."""
    jobs = {}
    for col in columns:
        folder = col.folder(root)
        for stem in stems:
            params = column_parameters(root, stem, col)
            if params is not None:
                jobs[f"{col.label}/{stem}"] = Job(str(notebook_path(stem, root)), str(folder / f"{stem}.ipynb"),
                                                  {**params, "out_dir": str(folder / stem)}, str(root), timeout)
    if jobs:
        print(f"ledger columns: {len(jobs)} chapter run(s) on {', '.join(c.model for c in columns)}", flush=True)
    out = {}
    for name, failure, seconds in run_jobs(jobs, workers):
        label, stem = name.split("/", 1)
        out[(label, stem)] = failure
        print(f"  {name}: {'done' if failure is None else 'FAILED'} in {seconds:.0f} s", flush=True)
    return out


def column_books(root: Path, columns: tuple[Column, ...] = COLUMNS) -> dict[str, Path]:
    """{label: results folder} of the columns that have been run (their folder exists)."""
    return {c.label: c.folder(root) for c in columns if c.folder(root).is_dir()}
