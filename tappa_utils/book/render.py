"""Rendering the book: execute the chapters, write the reference page, the ledger and the effective toc, run
jupyter-book, check the rendered HTML.

The default book is built in the repository (`book/executed`, `book/generated`, `_build/`). Another model's book
(`build(model=..., out=...)`, `make book MODEL=... OUT=...`) is built entirely under its own folder: the pages and
the configuration it renders are copied there (the title naming the model), so the default book is never touched.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import html_check
from .columns import column_books, run_columns
from .execute import execute_chapters
from .layout import (
    EXECUTED_DIR,
    GENERATED_DIR,
    BookError,
    Target,
    _load_yaml,
    chapter_stems,
    existing_chapters,
    find_root,
    toc_files,
    write_effective_toc,
)
from .ledger import model_label, write_ledger
from .params import smoke_parameters
from .reference import write_reference

BOOK_MARKER_COMMAND = "book"
BOOK_ENTRIES = ("_config.yml", "references.bib", "book", "results", "_build")
DEVICE_MAP_ENV = "TAPPA_DEVICE_MAP"  # read by tappa_utils.models.load_model in every chapter's kernel


@dataclass(frozen=True)
class RunOptions:
    """What every chapter runs with, beyond its own defaults (None: the notebook's default).

    Parameters
    ----------
    model, device, dtype : str or None
        Passed to every chapter as the papermill parameters of the same names.
    device_map : str or None
        "auto" spreads a model over several GPUs (`transformers`' device_map); it reaches `load_model` in every
        chapter through the environment variable `TAPPA_DEVICE_MAP` (the chapters have no such parameter).
    """

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None

    def parameters(self) -> dict[str, str]:
        """The papermill parameters."""
        return {k: v for k, v in (("model", self.model), ("device", self.device), ("dtype", self.dtype))
                if v is not None}

    def env(self) -> dict[str, str]:
        """The kernel's environment additions."""
        return {DEVICE_MAP_ENV: self.device_map} if self.device_map else {}


def render_html(root: Path, toc: Path, source: Path | None = None) -> Path:
    """Run jupyter-book (execution off) on `source` (default: the root) with the effective toc; the HTML index."""
    source = source or root
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())", "build",
           str(source), "--toc", str(toc),
           "--config", str(source / "_config.yml"), "--path-output", str(source), "-q"]
    print("rendering:", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=source)
    if proc.returncode != 0:
        raise BookError(f"jupyter-book build failed (exit status {proc.returncode}); see its output above")
    index = source / "_build" / "html" / "index.html"
    if not index.exists():
        raise BookError(f"jupyter-book finished but {index} is missing")
    print(f"  rendered in {time.time() - t0:.0f} s", flush=True)
    return index


def book_title(root: Path, model: str | None) -> str:
    """The book's title: `_config.yml`'s, followed by the model's name for another model's book."""
    title = str((_load_yaml(root / "_config.yml") or {}).get("title", "TAPPA Book"))
    return f"{title}: {model_label(model)}" if model else title


def prepare_out(target: Target) -> None:
    """Make `target.out` a book of its own: mark the folder as the book's, copy the Markdown pages the toc lists
    (not the generated or executed ones), the bibliography files and `_config.yml` with the title naming the model.

    A folder holding files the book did not write there is refused (nothing is overwritten).
    """
    import yaml

    from ..io import MARKER, atomic_write_json, atomic_write_text, check_out_dir

    root, out = target.root, target.out
    assert out is not None
    out, root = Path(out).expanduser().resolve(), root.resolve()
    default = {root / "_build", root / EXECUTED_DIR, root / GENERATED_DIR, root / "notebooks"}
    if root.is_relative_to(out) or any(out.is_relative_to(d) for d in default):
        raise BookError(f"OUT {out} would overwrite the default book or the sources; choose a folder of its own "
                        "(e.g. books/<model>)")
    out = check_out_dir(out, option="OUT", command=BOOK_MARKER_COMMAND)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MARKER, {"command": BOOK_MARKER_COMMAND, "files": list(BOOK_ENTRIES),
                                     "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
    config = _load_yaml(root / "_config.yml") or {}
    config["title"] = book_title(root, target.model)
    atomic_write_text(out / "_config.yml", "# generated by tappa_utils.book from the repository's _config.yml; do "
                      "not edit\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    for bib in config.get("bibtex_bibfiles") or []:
        shutil.copy2(root / bib, out / bib)
    prefix = (EXECUTED_DIR + "/", GENERATED_DIR + "/")
    for page in toc_files(_load_yaml(root / "_toc.yml")):
        src = (root / page).with_suffix(".md")
        if not page.startswith(prefix) and src.is_file():
            (out / page).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, (out / page).with_suffix(".md"))


def default_jobs(target: Target) -> int:
    """Chapters executed at once by default: two for the default book on a machine with two cores or more (its
    model is small; the chapters' single-threaded parts overlap), one for another model's book (two copies of a
    large model may not fit in memory)."""
    import os

    return 2 if target.out is None and (os.cpu_count() or 1) >= 2 else 1


def build(root: Path | None = None, only: list[str] | None = None, skip_execute: bool = False,
          timeout: int | None = None, check: bool = True, browser_check: bool = False,
          out: str | Path | None = None, options: RunOptions | None = None, jobs: int | None = None,
          smoke: bool = False, columns: bool = True) -> Path:
    """Execute the chapters, write the reference page, the ledger and the effective toc, render the HTML, check
    it; the index.

    The default book also runs the ledger's other columns (`columns`: the claim chapters on tappa-tiny and on
    its random-weight null, see `book.columns`) and writes what it found into README.md's findings block.

    `out` (with `options.model`): build another model's book entirely under that folder (see `Target`). `jobs`:
    chapters executed at once (default `default_jobs`). `smoke`: every chapter on its small parameters (notebook
    metadata `tappa.smoke`): a quick complete book, e.g. to try a model or a device first (only with `out`). The
    check (`tappa_utils.book.html_check`) raises BookError after listing every problem of the rendered pages.
    """
    root = root or find_root()
    options = options or RunOptions()
    if smoke and out is None:
        raise BookError("a smoke-size book (SMOKE=1) goes to its own folder (OUT): the default book is full-size")
    if out is not None and not options.model:
        raise BookError("a book in its own folder (OUT) needs a model (MODEL); the default book is built in the "
                        "repository")
    target = Target(root, Path(out).expanduser().resolve() if out is not None else None, options.model)
    if target.out is not None:
        prepare_out(target)
    stems = existing_chapters(root)
    if only:
        unknown = sorted(set(only) - set(chapter_stems(root)))
        if unknown:
            raise BookError(f"unknown chapter(s) {unknown}; _toc.yml lists {chapter_stems(root)}")
    to_run = [s for s in stems if not only or s in only]
    per_chapter = {s: smoke_parameters(root, s) for s in to_run} if smoke else None
    if not skip_execute:
        failures = execute_chapters(root, to_run, timeout=timeout, extra_parameters=options.parameters(),
                                    target=target, env=options.env(),
                                    jobs=jobs if jobs is not None else default_jobs(target),
                                    chapter_parameters=per_chapter)
        if failures:
            raise BookError(f"{len(failures)} notebook(s) failed:\n" + "\n".join(f.describe() for f in failures))
        if columns and target.out is None:
            run_ledger_columns(root, to_run, timeout, jobs if jobs is not None else default_jobs(target))
    rendered = [s for s in stems if (target.executed / f"{s}.ipynb").exists()]
    for s in sorted(set(stems) - set(rendered)):
        print(f"warning: {EXECUTED_DIR}/{s}.ipynb has not been executed: left out of the book", file=sys.stderr)
    t0 = time.time()
    write_reference(root, target.generated / "reference.md")
    others = column_books(root) if target.out is None and columns else {}
    write_ledger(target.results, stems, target.generated / "ledger.md", model=options.model, others=others)
    if target.out is None and not smoke:
        write_findings(root, stems, others)
    print(f"reference and ledger written in {time.time() - t0:.0f} s", flush=True)
    toc = write_effective_toc(root, rendered, base=target.base)
    index = render_html(root, toc, source=target.base)
    _record_build(target, rendered, options, smoke)
    print(f"\nThe book is at {index}\n  (open file://{index} in a browser)")
    if check:
        problems = html_check.check_html(index.parent, browser=browser_check)
        html_check.report(problems)
        if problems:
            raise BookError(f"the rendered book has {len(problems)} problem(s), listed above (page: rule: detail); "
                            f"fix them at their cause (rules: tappa_utils/book/html_check.py)")
    return index


def run_ledger_columns(root: Path, stems: list[str], timeout: int | None, jobs: int) -> None:
    """Run the claim chapters among `stems` for the ledger's other columns (`book.columns`); BookError listing
    the failures."""
    from .nullbook import claim_chapters

    claimed = [s for s in claim_chapters(root) if s in stems]
    failed = {k: f for k, f in run_columns(root, claimed, workers=jobs, timeout=timeout).items() if f}
    if failed:
        raise BookError(f"{len(failed)} ledger-column run(s) failed:\n"
                        + "\n".join(f"[{label}] {f.describe()}" for (label, _), f in failed.items()))


def write_findings(root: Path, stems: list[str], others: dict[str, Path]) -> None:
    """README.md's block of what the book found (`ledger.findings_markdown`), from the default book's results and
    its ledger columns."""
    from .layout import RESULTS_DIR, chapter_title
    from .ledger import findings_markdown, read_results, update_readme_findings

    books = {"book": read_results(root / RESULTS_DIR, stems),
             **{label: read_results(folder, stems) for label, folder in others.items()}}
    block = findings_markdown(books, {s: chapter_title(root, s) for s in stems})
    if update_readme_findings(root / "README.md", block):
        print("README.md: findings block updated", flush=True)


def _record_build(target: Target, rendered: list[str], options: RunOptions, smoke: bool = False) -> None:
    """`_build/book.json`: what was rendered, for which model and parameters (read by tests and tools)."""
    from ..io import atomic_write_json

    atomic_write_json(target.base / "_build" / "book.json", {
        "title": book_title(target.root, target.model), "model": options.model, "chapters": rendered,
        "parameters": options.parameters(), "device_map": options.device_map, "smoke": smoke,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S")})


def read_build_record(base: Path) -> dict:
    """The `_build/book.json` of a rendered book (BookError when there is none)."""
    try:
        return json.loads((Path(base) / "_build" / "book.json").read_text())
    except (OSError, ValueError) as e:
        raise BookError(f"{base} holds no rendered book (_build/book.json: {e})") from e
