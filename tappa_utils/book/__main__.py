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
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import html_check, lab
from .execute import execute_chapters
from .layout import RESULTS_DIR, BookError, chapter_stems, existing_chapters, find_root, notebook_path
from .ledger import default_ledger_path, write_ledger
from .params import params_table, update_readme
from .reference import write_reference
from .render import RunOptions, build


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m tappa_utils.book`."""
    from ..preflight import Parser

    p = Parser(prog="python -m tappa_utils.book", description="Build the TAPPA Book.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="execute every chapter (papermill), write the reference, render the HTML")
    b.add_argument("--only", nargs="+", metavar="STEM", help="execute only these chapters (others: reuse earlier runs)")
    b.add_argument("--skip-execute", action="store_true", help="render the already executed notebooks only")
    b.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    b.add_argument("--jobs", type=int, default=None,
                   help="chapters executed at once (default: 2 for the default book on 2+ cores, 1 with --out; "
                        "make book JOBS=...)")
    b.add_argument("--smoke", action="store_true",
                   help="run every chapter on its small parameters (notebook metadata tappa.smoke): a quick complete "
                        "book, e.g. to try a model or device first (make book SMOKE=1)")
    b.add_argument("--no-check", action="store_true", help="do not check the rendered HTML (see check-html)")
    b.add_argument("--browser-check", action="store_true",
                   help="also check the maths as MathJax renders it, in headless Chromium (check-html --browser)")
    b.add_argument("--model", help="run every chapter on this model (hub id, local folder, tappa-tiny or "
                                   "random:<shape>); with --out, a whole book for it (make book MODEL=...)")
    b.add_argument("--out", metavar="DIR", help="build the book in this folder (results/, book/, _build/html), "
                                                "never touching the default book (make book OUT=...)")
    b.add_argument("--device", help="torch device of every chapter (cpu, cuda, cuda:1; make book DEVICE=...)")
    b.add_argument("--dtype", help="dtype of every chapter (float32, bfloat16, float16; make book DTYPE=...)")
    b.add_argument("--device-map", choices=["auto"], help="spread the model over several GPUs in every chapter "
                                                          "(needs --device cuda; make book DEVICE_MAP=auto)")
    n = sub.add_parser("null", help="run the claim-bearing chapters' smoke parameters on a random-weight model and "
                                    "print each claim's verdict beside the book's (the null book)")
    n.add_argument("--out", metavar="DIR", required=True, help="folder for the runs (results/<stem>, notebooks)")
    n.add_argument("--model", default=None, help="the random-weight model (default: random:tappa-tiny)")
    n.add_argument("--workers", type=int, default=2, help="chapters run at once (default: 2)")
    n.add_argument("--compare", metavar="DIR", help=f"results to show beside (default: {RESULTS_DIR})")
    g = sub.add_parser("ledger", help="write the ledger (every claim's verdict) from existing chapter results")
    g.add_argument("--results", metavar="DIR", help=f"the chapters' result folders (default: {RESULTS_DIR})")
    g.add_argument("--output", metavar="FILE", help="where to write it (default: book/generated/ledger.md)")
    c = sub.add_parser("check-html", help="check the rendered book: raw TeX, MathJax errors, tracebacks, warnings, "
                                          "absolute paths, missing images and figures, over-wide tables/formulas")
    html_check.add_arguments(c)
    lab_parser = sub.add_parser("lab", help="open the notebooks in JupyterLab with this environment (`make lab`)")
    lab.add_arguments(lab_parser)
    e = sub.add_parser("execute", help="execute chapters into book/executed/ (all existing ones by default)")
    e.add_argument("stems", nargs="*", metavar="STEM")
    e.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    t = sub.add_parser("params-table", help="print the notebook parameter table (markdown)")
    t.add_argument("--update-readme", action="store_true", help="rewrite the table in README.md instead")
    sub.add_parser("reference", help="write book/generated/reference.md")
    return p


def run_options(args: argparse.Namespace) -> RunOptions:
    """The build's model, device, dtype and device map, checked before any chapter runs (UsageError)."""
    from ..preflight import UsageError, check_device, check_dtype, check_model

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


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring); exit status 1 on a failed build, 2 on bad input."""
    from ..preflight import UsageError, check_model, check_positive, run_cli

    def body() -> int:
        args = build_parser().parse_args(argv)
        if args.cmd == "check-html":
            return html_check.run(args.html_root, browser=args.browser)
        try:
            root = find_root()
            known = chapter_stems(root)
            asked = getattr(args, "only", None) or getattr(args, "stems", None) or []
            bad = [s for s in asked if s not in known]
            if bad:
                raise UsageError(f"unknown chapter(s) {bad}; _toc.yml lists {known}")
            missing = [s for s in asked if not notebook_path(s, root).is_file()]
            if missing:
                raise UsageError(f"chapter(s) {missing} are listed in _toc.yml but their notebooks do not exist "
                                 f"({', '.join(str(notebook_path(s, root).relative_to(root)) for s in missing)})")
            if args.cmd == "lab":
                return lab.run(root, port=args.port, no_browser=args.no_browser)
            if args.cmd == "build":
                from ..models import DEFAULT_MODEL

                if args.out is not None and not args.model:
                    raise UsageError("--out (make book OUT=...) needs --model (MODEL=...): the default model's book "
                                     "is the repository's own")
                if args.smoke and args.out is None:
                    raise UsageError("--smoke (SMOKE=1) needs --out DIR (OUT=...): the default book is full-size")
                if args.model and args.model != DEFAULT_MODEL and args.out is None:
                    raise UsageError(f"--model {args.model} needs --out DIR (make book MODEL=... OUT=...): the "
                                     f"default book (_build/) stays {DEFAULT_MODEL}'s")
                options = run_options(args)
                if args.jobs is not None:
                    check_positive(args.jobs, "--jobs (JOBS)")
                build(root, only=args.only, skip_execute=args.skip_execute, timeout=args.timeout,
                      check=not args.no_check, browser_check=args.browser_check, out=args.out, options=options,
                      jobs=args.jobs, smoke=args.smoke)
            elif args.cmd == "null":
                from ..preflight import check_out_dir
                from .nullbook import NULL_MODEL, claim_chapters, run_null_book, side_by_side

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
                if failures:
                    return 1
            elif args.cmd == "ledger":
                results = Path(args.results) if args.results else root / RESULTS_DIR
                print(write_ledger(results, existing_chapters(root, warn=False),
                                   Path(args.output) if args.output else default_ledger_path(root)))
            elif args.cmd == "execute":
                stems = [s for s in existing_chapters(root) if not args.stems or s in args.stems]
                failures = execute_chapters(root, stems, timeout=args.timeout)
                if failures:
                    print(f"{len(failures)} notebook(s) failed", file=sys.stderr)
                    return 1
            elif args.cmd == "params-table":
                if args.update_readme:
                    print("README.md updated" if update_readme(root) else "README.md already up to date")
                else:
                    sys.stdout.write(params_table(root))
            elif args.cmd == "reference":
                print(write_reference(root))
        except BookError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0

    return run_cli("book", body)


if __name__ == "__main__":
    sys.exit(main())
