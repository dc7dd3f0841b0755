"""Building the TAPPA Book from the command line (what `make book` and `make params-table` run):

    python -m tappa_utils.book build              # what `make book` runs
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

from . import html_check, lab
from .execute import execute_chapters
from .layout import BookError, chapter_stems, existing_chapters, find_root, notebook_path
from .params import params_table, update_readme
from .reference import write_reference
from .render import build


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m tappa_utils.book`."""
    from ..preflight import Parser

    p = Parser(prog="python -m tappa_utils.book", description="Build the TAPPA Book.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="execute every chapter (papermill), write the reference, render the HTML")
    b.add_argument("--only", nargs="+", metavar="STEM", help="execute only these chapters (others: reuse earlier runs)")
    b.add_argument("--skip-execute", action="store_true", help="render the already executed notebooks only")
    b.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    b.add_argument("--no-check", action="store_true", help="do not check the rendered HTML (see check-html)")
    b.add_argument("--browser-check", action="store_true",
                   help="also check the maths as MathJax renders it, in headless Chromium (check-html --browser)")
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


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring); exit status 1 on a failed build, 2 on bad input."""
    from ..preflight import UsageError, run_cli

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
                build(root, only=args.only, skip_execute=args.skip_execute, timeout=args.timeout,
                      check=not args.no_check, browser_check=args.browser_check)
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
