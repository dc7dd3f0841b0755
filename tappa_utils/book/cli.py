"""Building the TAPPA Book from the command line (what `make book` and `make params-table` run):

    python -m tappa_utils.book build              # what `make book` runs
    python -m tappa_utils.book build --model Qwen/Qwen2.5-0.5B --out books/qwen --device cuda --dtype bfloat16
                                                  # a whole book for another model, in its own folder
    python -m tappa_utils.book ledger             # write book/generated/ledger.md from _build/results
    python -m tappa_utils.book null --out runs/null # the claim chapters on random:tappa-tiny, verdicts side by side
    python -m tappa_utils.book execute 00_reading # execute chapters only (into book/executed/)
    python -m tappa_utils.book params-table       # print the README's notebook parameter table
    python -m tappa_utils.book params-table --update-readme
    python -m tappa_utils.book reference          # write book/generated/reference.md
    python -m tappa_utils.book check-html         # check the rendered _build/html (also the end of `build`)
    python -m tappa_utils.book lab                # JupyterLab on notebooks/ (what `make lab` runs)

`build_parser` (in `parser`) defines the options; each subcommand has its handler below, `main` dispatches to it.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..preflight import UsageError, check_device, check_dtype, check_model, check_out_dir, check_positive, run_cli
from . import html_check, lab
from .columns import column_books
from .execute import execute_chapters
from .layout import RESULTS_DIR, BookError, chapter_stems, existing_chapters, find_root, notebook_path
from .ledger import default_ledger_path, write_ledger
from .nullbook import NULL_MODEL, claim_chapters, run_null_book, side_by_side
from .params import params_table, update_readme
from .parser import build_parser
from .reference import write_reference
from .render import RunOptions, build


def run_options(args: argparse.Namespace) -> RunOptions:
    """The build's model, device, dtype and device map, checked before any chapter runs (UsageError)."""
    if args.model:
        check_model(args.model, option="--model (MODEL)")
    if args.device:
        check_device(args.device, option="--device (DEVICE)")
    if args.dtype:
        check_dtype(args.dtype, option="--dtype (DTYPE)")
    if args.device_map and not (args.device or "").startswith("cuda"):
        raise UsageError("--device-map auto (DEVICE_MAP=auto) needs --device cuda (DEVICE=cuda): the chapters put "
                         "their inputs on that device")
    return RunOptions(args.model, args.device, args.dtype, args.device_map)


def check_chapters(root: Path, asked: list[str]) -> None:
    """UsageError when a chapter asked for (`--only`, `execute STEM`) is not in `_toc.yml` or has no notebook."""
    known = chapter_stems(root)
    bad = [s for s in asked if s not in known]
    if bad:
        raise UsageError(f"unknown chapter(s) {bad}; _toc.yml lists {known}")
    missing = [s for s in asked if not notebook_path(s, root).is_file()]
    if missing:
        raise UsageError(f"chapter(s) {missing} are listed in _toc.yml but their notebooks do not exist "
                         f"({', '.join(str(notebook_path(s, root).relative_to(root)) for s in missing)})")


def check_html(args: argparse.Namespace) -> int:
    """`check-html`: check the rendered pages (no repository root needed)."""
    try:
        problems = html_check.check_html(args.html_root, browser=args.browser)
    except FileNotFoundError as e:  # no built book there: bad input (run_cli: `book: error: ...`, status 2)
        raise UsageError(str(e)) from e
    html_check.report(problems)
    return 1 if problems else 0


def run_lab(args: argparse.Namespace, root: Path) -> int:
    """`lab`: JupyterLab on the notebooks."""
    return lab.run(root, port=args.port, no_browser=args.no_browser)


def run_build(args: argparse.Namespace, root: Path) -> int:
    """`build`: the options checked together (OUT, MODEL, SMOKE, JOBS), then execute, reference, render, check."""
    from .columns import BOOK_MODEL

    if args.out is not None and not args.model:
        raise UsageError("--out (make book OUT=...) needs --model (MODEL=...): the default model's book "
                         "is the repository's own")
    if args.smoke and args.out is None:
        raise UsageError("--smoke (SMOKE=1) needs --out DIR (OUT=...): the default book is full-size")
    if args.model and args.model != BOOK_MODEL and args.out is None:
        raise UsageError(f"--model {args.model} needs --out DIR (make book MODEL=... OUT=...): the "
                         f"default book (_build/) stays {BOOK_MODEL}'s")
    options = run_options(args)
    if args.jobs is not None:
        check_positive(args.jobs, "--jobs (JOBS)")
    build(root, only=args.only, skip_execute=args.skip_execute, timeout=args.timeout,
          check=not args.no_check, browser_check=args.browser_check, out=args.out, options=options,
          jobs=args.jobs, smoke=args.smoke, columns=not args.no_columns)
    return 0


def run_null(args: argparse.Namespace, root: Path) -> int:
    """`null`: the claim chapters on a random-weight model, their verdicts beside the book's; 1 when one fails."""
    model = args.model or NULL_MODEL
    check_model(model, option="--model")
    check_positive(args.workers, "--workers")
    out = check_out_dir(args.out)
    stems = claim_chapters(root)
    failures = {s: f for s, f in run_null_book(root, out, stems, model, args.workers).items() if f}
    for f in failures.values():
        print(f.describe(), file=sys.stderr)
    compare = Path(args.compare) if args.compare else root / RESULTS_DIR
    sys.stdout.write(side_by_side({"this book": compare, model: out}, stems))
    return 1 if failures else 0


def run_ledger(args: argparse.Namespace, root: Path) -> int:
    """`ledger`: write every claim's verdict from existing results; prints the page's path."""
    results = Path(args.results) if args.results else root / RESULTS_DIR
    others = {}
    for spec in args.book:
        label, sep, folder = spec.partition("=")
        if not sep or not label or not folder:
            raise UsageError(f"--book {spec!r}: give LABEL=DIR, e.g. --book qwen=books/qwen/results")
        others[label] = Path(folder)
    if not args.book and not args.results:
        others = column_books(root)
    print(write_ledger(results, existing_chapters(root, warn=False),
                       Path(args.output) if args.output else default_ledger_path(root), others=others))
    return 0


def run_execute(args: argparse.Namespace, root: Path) -> int:
    """`execute`: run the chapters (all existing ones, or those named) into book/executed/; 1 when one fails."""
    stems = [s for s in existing_chapters(root) if not args.stems or s in args.stems]
    failures = execute_chapters(root, stems, timeout=args.timeout)
    if failures:
        print(f"{len(failures)} notebook(s) failed", file=sys.stderr)
        return 1
    return 0


def run_params_table(args: argparse.Namespace, root: Path) -> int:
    """`params-table`: print the notebook parameter table, or rewrite it in README.md (`--update-readme`)."""
    if args.update_readme:
        print("README.md updated" if update_readme(root) else "README.md already up to date")
    else:
        sys.stdout.write(params_table(root))
    return 0


def run_reference(args: argparse.Namespace, root: Path) -> int:
    """`reference`: write book/generated/reference.md; prints its path."""
    print(write_reference(root))
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace, Path], int]] = {
    "build": run_build, "null": run_null, "ledger": run_ledger, "execute": run_execute, "lab": run_lab,
    "params-table": run_params_table, "reference": run_reference}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring); exit status 1 on a failed build, 2 on bad input."""
    def body() -> int:
        args = build_parser().parse_args(argv)
        if args.cmd == "check-html":
            return check_html(args)
        try:
            root = find_root()
            check_chapters(root, getattr(args, "only", None) or getattr(args, "stems", None) or [])
            return HANDLERS[args.cmd](args, root)
        except BookError as e:
            print(f"book: error: {e}", file=sys.stderr)
            return 1

    return run_cli("book", body)
