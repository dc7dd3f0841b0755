"""Rendering the book: execute the chapters, write the reference page and the effective toc, run jupyter-book,
check the rendered HTML."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from . import html_check
from .execute import execute_chapters
from .layout import EXECUTED_DIR, BookError, chapter_stems, existing_chapters, find_root, write_effective_toc
from .reference import write_reference


def render_html(root: Path, toc: Path) -> Path:
    """Run jupyter-book (execution off) on the root with the effective toc; the path of the HTML index."""
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())", "build",
           str(root), "--toc", str(toc),
           "--config", str(root / "_config.yml"), "--path-output", str(root), "-q"]
    print("rendering:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=root)
    if proc.returncode != 0:
        raise BookError(f"jupyter-book build failed (exit status {proc.returncode}); see its output above")
    index = root / "_build" / "html" / "index.html"
    if not index.exists():
        raise BookError(f"jupyter-book finished but {index} is missing")
    return index


def build(root: Path | None = None, only: list[str] | None = None, skip_execute: bool = False,
          timeout: int | None = None, check: bool = True, browser_check: bool = False) -> Path:
    """Execute the chapters, write the reference page and the effective toc, render the HTML, check it; the index.

    The check (`tappa_utils.book.html_check`) raises BookError after listing every problem of the rendered pages.
    """
    root = root or find_root()
    stems = existing_chapters(root)
    if only:
        unknown = sorted(set(only) - set(chapter_stems(root)))
        if unknown:
            raise BookError(f"unknown chapter(s) {unknown}; _toc.yml lists {chapter_stems(root)}")
    to_run = [s for s in stems if not only or s in only]
    if not skip_execute:
        failures = execute_chapters(root, to_run, timeout=timeout)
        if failures:
            raise BookError(f"{len(failures)} notebook(s) failed:\n" + "\n".join(f.describe() for f in failures))
    rendered = [s for s in stems if (root / EXECUTED_DIR / f"{s}.ipynb").exists()]
    for s in sorted(set(stems) - set(rendered)):
        print(f"warning: {EXECUTED_DIR}/{s}.ipynb has not been executed: left out of the book", file=sys.stderr)
    write_reference(root)
    toc = write_effective_toc(root, rendered)
    index = render_html(root, toc)
    print(f"\nThe book is at {index}\n  (open file://{index} in a browser)")
    if check:
        problems = html_check.check_html(index.parent, browser=browser_check)
        html_check.report(problems)
        if problems:
            raise BookError(f"the rendered book has {len(problems)} problem(s), listed above (page: rule: detail); "
                            f"fix them at their cause (rules: tappa_utils/book/html_check.py)")
    return index
