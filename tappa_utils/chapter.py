"""Helpers every chapter shares: its parameters as one dict, and derivations shown as LaTeX with sympy's verdict.

In a chapter's set-up cell::

    params = chapter_params(globals())   # the parameters cell's names, with papermill's overrides
    save_run_info(out_dir, params)
    ...
    show_derivations([theory.rope_relative_identity()], log=derivation_log)
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, MutableSequence
from typing import Any


def parameter_names(source: str) -> list[str] | None:
    """The names a cell assigns when every statement is a plain `name = value` (a parameters cell); else None.

    >>> parameter_names('model = "tappa-tiny"  # the model\\nseed = 0  # the seed\\n')
    ['model', 'seed']
    >>> parameter_names("import torch\\nseed = 0") is None
    True
    """
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    names = []
    for node in body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a string standing alone, like a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            return None
        names.append(node.targets[0].id)
    return names or None


def chapter_params(namespace: dict[str, Any], names: Iterable[str] | None = None) -> dict[str, Any]:
    """The chapter's parameters and their current values (papermill's overrides included), in the cell's order.

    Parameters
    ----------
    namespace
        The notebook's global namespace: pass `globals()`.
    names
        The parameter names. By default, those of the chapter's `parameters` cell: the first cell in the kernel's
        input history (`In`) made only of `name = value` lines. Give them outside a notebook.

    Examples
    --------
    A kernel that ran the parameters cell, then papermill's injected cell overriding `seed`:

    >>> ns = {"In": ["", 'model = "tappa-tiny"  # the model\\nseed = 0  # the seed', "# Parameters\\nseed = 3\\n"],
    ...       "model": "tappa-tiny", "seed": 3}
    >>> chapter_params(ns)
    {'model': 'tappa-tiny', 'seed': 3}
    >>> chapter_params({"seed": 1}, names=["seed"])
    {'seed': 1}
    """
    if names is None:
        history = namespace.get("In")
        if history is None:
            raise ValueError("chapter_params: no input history `In` in the namespace (not an IPython kernel); "
                             "pass names=[...]")
        names = next((n for n in map(parameter_names, history) if n), None)
        if names is None:
            raise ValueError("chapter_params: no parameters cell has run yet; run the chapter's parameters cell first")
    names = list(names)
    missing = [n for n in names if n not in namespace]
    if missing:
        raise KeyError(f"chapter_params: parameters {missing} are not defined; run the parameters cell first")
    params = {n: namespace[n] for n in names}
    check_front_door(params)
    return params


def check_front_door(params: dict[str, Any]) -> None:
    """The commands' fast checks of `model`, `device` and `dtype` (those present), before a chapter loads anything:
    an unknown model, a missing packaged wheel, a hub id without network fail in a second with one line.

    >>> check_front_door({"model": "tappa-tiny", "device": "cpu", "dtype": "float32"})
    >>> check_front_door({"dtype": "float8"})
    Traceback (most recent call last):
    ...
    tappa_utils.errors.UsageError: dtype 'float8' is not supported; use float32, bfloat16 or float16
    """
    from . import preflight as pf

    if "model" in params:
        pf.check_model(params["model"], option="model")
    if "device" in params:
        pf.check_device(params["device"], option="device")
    if "dtype" in params:
        pf.check_dtype(params["dtype"], option="dtype")


def quiet_transformers() -> None:
    """Silence transformers' warnings in a chapter (e.g. a long text tokenised whole exceeds the model's length).

    Imported through `tappa_utils`, whose import filters tqdm's "IProgress not found" notice first; a chapter that
    imported `transformers` itself before `tappa_utils` (isort puts third-party imports first) would print it.
    """
    from transformers.utils import logging

    logging.set_verbosity_error()


class DisplayMath:
    r"""A display formula for notebooks and the rendered book: LaTeX for Jupyter, and in HTML a MathJax block inside
    a horizontally scrolling box, so a formula that cannot be broken (a 2x2 matrix of long entries) scrolls inside
    its box instead of running off the page.

    >>> print(DisplayMath(r"a^2 < b")._repr_html_())
    <div class="overflow-x-auto"><div class="math notranslate nohighlight">\[a^2 &lt; b\]</div></div>
    """

    def __init__(self, latex: str):
        self.latex = latex

    def _repr_latex_(self) -> str:
        return f"$$ {self.latex} $$"

    def _repr_html_(self) -> str:
        import html

        return (f'<div class="overflow-x-auto"><div class="math notranslate nohighlight">'
                f"\\[{html.escape(self.latex, quote=False)}\\]</div></div>")


def show_derivations(derivations, log: MutableSequence[dict] | None = None, display: bool = True):
    """Show each derivation as LaTeX and return a table saying whether sympy verified it.

    Parameters
    ----------
    derivations
        `tappa_utils.theory.Derivation`s (anything with `name`, `relation`, `assumptions`, `latex()`, `holds()`).
    log
        When given, one record per derivation (`name`, `latex`, `holds`, `assumptions`) is appended to it, for the
        chapter's `derivations.json`.
    display
        Display the LaTeX with IPython (False: only the table).

    Examples
    --------
    >>> from tappa_utils import theory
    >>> log = []
    >>> table = show_derivations([theory.chord_le_arc()], log=log, display=False)
    >>> table["verified by sympy"].tolist(), [r["holds"] for r in log]
    ([True], [True])
    """
    import pandas as pd

    rows = []
    for d in derivations:
        holds = d.holds()
        if display:
            from IPython.display import display as ipy_display

            from .theory import latex_lines

            ipy_display(DisplayMath(latex_lines(d)))  # long expansions broken into lines that fit the page
        rows.append({"identity": d.name, "relation": d.relation, "verified by sympy": holds,
                     "assumptions": "; ".join(d.assumptions)})
        if log is not None:
            log.append({"name": d.name, "latex": d.latex(), "holds": holds, "assumptions": d.assumptions})
    return pd.DataFrame(rows)
