"""The options of `python -m tappa_utils.book` (`build_parser`), apart from the command's handlers (`cli`).

The reference page (`reference`) prints this help, and the handlers build the book with `render` and `reference`:
the parser lives in a module of its own so that neither has to import the other.
"""
from __future__ import annotations

import argparse

from ..preflight import MODEL_FORMS, Parser
from . import html_check, lab
from .layout import RESULTS_DIR


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m tappa_utils.book`."""
    p = Parser(prog="python -m tappa_utils.book", description="Build the TAPPA Book.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="execute every chapter (papermill), write the reference, render the HTML")
    b.add_argument("--only", nargs="+", metavar="STEM",
                   help="execute only these chapters (others: reuse earlier runs; default: every chapter)")
    b.add_argument("--skip-execute", action="store_true", help="render the already executed notebooks only")
    b.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    b.add_argument("--jobs", type=int, default=None,
                   help="chapters executed at once (default: 2 for the default book on 2+ cores, 1 with --out; "
                        "make book JOBS=...)")
    b.add_argument("--smoke", action="store_true",
                   help="run every chapter on its small parameters (notebook metadata tappa.smoke): a quick complete "
                        "book, e.g. to try a model or device first (make book SMOKE=1)")
    b.add_argument("--no-check", action="store_true", help="do not check the rendered HTML (see check-html)")
    b.add_argument("--no-columns", action="store_true",
                   help="skip the ledger's tappa-tiny and random-weight columns (the default book runs its claim "
                        "chapters on both, with each notebook's tappa.tiny sizes)")
    b.add_argument("--browser-check", action="store_true",
                   help="also check the maths as MathJax renders it, in headless Chromium (check-html --browser)")
    b.add_argument("--model", help=f"run every chapter on this model: {MODEL_FORMS}; with --out, a whole book for it "
                                   "(make book MODEL=...; default: each chapter's own `model` parameter)")
    b.add_argument("--out", metavar="DIR", help="build the book in this folder (results/, book/, _build/html), "
                                                "never touching the default book (make book OUT=...; default: the "
                                                "default book)")
    b.add_argument("--device", help="torch device of every chapter (cpu, cuda, cuda:1; make book DEVICE=...; "
                                    "default: each chapter's own)")
    b.add_argument("--dtype", help="dtype of every chapter (float32, bfloat16, float16; make book DTYPE=...; "
                                   "default: each chapter's own)")
    b.add_argument("--device-map", choices=["auto"], help="spread the model over several GPUs in every chapter "
                                                          "(needs --device cuda; make book DEVICE_MAP=auto; "
                                                          "default: one device)")
    n = sub.add_parser("null", help="run the claim-bearing chapters' smoke parameters on a random-weight model and "
                                    "print each claim's verdict beside the book's (the null book)")
    n.add_argument("--out", metavar="DIR", required=True, help="folder for the runs (results/<stem>, notebooks)")
    n.add_argument("--model", default=None, help="the random-weight model, random:<shape> (e.g. random:qwen2.5-0.5b; "
                                                        "default: random:tappa-tiny)")
    n.add_argument("--workers", type=int, default=2, help="chapters run at once (default: 2)")
    n.add_argument("--compare", metavar="DIR", help=f"results to show beside (default: {RESULTS_DIR})")
    g = sub.add_parser("ledger", help="write the ledger (every claim's verdict) from existing chapter results")
    g.add_argument("--results", metavar="DIR", help=f"the chapters' result folders (default: {RESULTS_DIR})")
    g.add_argument("--output", metavar="FILE", help="where to write it (default: book/generated/ledger.md)")
    g.add_argument("--book", action="append", default=[], metavar="LABEL=DIR",
                   help="another book's results as a column of the ledger (repeatable), e.g. "
                        "--book qwen=books/qwen/results (default: the ledger columns of make book, if run)")
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
