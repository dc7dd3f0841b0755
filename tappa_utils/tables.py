"""Every table a reader sees, built one way: Markdown for `display(Markdown(...))` and for the book's MyST pages.

`markdown_table` writes numbers to 3 significant digits, intervals as `[a, b]`, a missing value (None, NaN) as a
dash explained in a line under the table, and text escaped so that a `|` never splits a row and `*` or `_` never
starts emphasis (code spans and `$maths$` kept). The table sits in a horizontally scrolling box (an HTML `div`
with `overflow-x:auto`, which MyST and Jupyter both pass through), so a table wider than the text column scrolls
inside its box instead of being cut off; cells hold plain words, so long statements wrap.

>>> print(markdown_table([{"check": "a|b", "value": 0.123456, "ci": (0.1, None)}]).splitlines()[2:5])
['| check | value | ci |', '| --- | --- | --- |', '| a\\\\|b | 0.123 | [0.1, –] |']
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DASH = "–"
DASH_NOTE = f"{DASH} : no value (not measured, not applicable or not computable on this run)."
SCROLL_OPEN, SCROLL_CLOSE = '<div style="overflow-x:auto">', "</div>"
# code spans (`...`, ``...``) and inline maths ($...$) are kept as written, only their `|` is made safe
_DASH_CELL = re.compile(rf"(?:^|\[|, ){DASH}(?:$|\]|,)")  # a dash cell, or a dash end of an interval
_PROTECTED = re.compile(r"(`+)(?:.+?)\1|(?<![\\$])\$(?=\S)[^$\n]+?(?<![\s\\])\$")


class Md(str):
    """Text that is already Markdown (a link, bold, a `{doc}` role): only its `|` is escaped in a table cell."""


def is_missing(x: Any) -> bool:
    """True for None, a float NaN and pandas' NA/NaT."""
    if x is None or type(x).__name__ in ("NAType", "NaTType"):
        return True
    return _is_number(x) and math.isnan(float(x))


def _is_number(x: Any) -> bool:
    if isinstance(x, bool) or isinstance(x, str):
        return False
    if isinstance(x, (int, float)):
        return True
    return hasattr(x, "dtype") and getattr(x, "shape", None) == () and x.dtype.kind in "iuf"


def number(x: Any, digits: int = 3) -> str:
    """`x` to `digits` significant digits (integers exact, infinities as ∞); a dash when missing."""
    if is_missing(x):
        return DASH
    if isinstance(x, int) or getattr(x, "dtype", None) is not None and x.dtype.kind in "iu":
        return str(int(x))
    v = float(x)
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{v:.{digits}g}"


def interval(ci: Any, digits: int = 3) -> str:
    """A confidence interval as `[a, b]`; a dash when there is none (or both ends are missing)."""
    if ci is None or is_missing(ci) or len(ci) != 2 or all(is_missing(v) for v in ci):
        return DASH
    return f"[{number(ci[0], digits)}, {number(ci[1], digits)}]"


def _escape_plain(text: str) -> str:
    text = text.replace("|", "\\|")
    return re.sub(r"(?<!\\)([*_])", r"\\\1", text)


def _escape_protected(span: str) -> str:
    if span.startswith("$"):
        return span.replace("|", "\\vert ")  # a `|` in a table row ends the cell, even inside maths
    return span.replace("|", "\\|")  # markdown-it un-escapes `\|` inside a table's code span


def escape(text: Any) -> str:
    """Plain text as one table cell of Markdown: whitespace (newlines too) collapsed, `|` escaped everywhere,
    `*` and `_` escaped outside code spans and `$maths$` (which are kept)."""
    text = " ".join(str(text).split())
    out, last = [], 0
    for m in _PROTECTED.finditer(text):
        out += [_escape_plain(text[last:m.start()]), _escape_protected(m.group(0))]
        last = m.end()
    return "".join(out + [_escape_plain(text[last:])])


def cell(value: Any, digits: int = 3) -> str:
    """One value as the Markdown of a table cell: numbers to `digits` significant digits, 2-tuples as intervals,
    other sequences joined by commas, `Md` text as written (`|` escaped), any other text escaped; a dash when
    missing."""
    if isinstance(value, Md):
        return " ".join(value.split()).replace("|", "\\|")
    if isinstance(value, str):
        return escape(value) if value.strip() else ""
    if is_missing(value):
        return DASH
    if _is_number(value):
        return number(value, digits)
    if isinstance(value, (tuple, list)) or hasattr(value, "tolist"):
        seq = list(value.tolist() if hasattr(value, "tolist") else value)
        if len(seq) == 2 and all(_is_number(v) or v is None for v in seq):
            return interval(seq, digits)
        return ", ".join(cell(v, digits) for v in seq)
    return escape(value)


def markdown_table(rows: Iterable[Mapping[str, Any]] | Any, columns: Sequence[str] | Mapping[str, str] | None = None,
                   digits: int = 3, notes: Iterable[str] = ()) -> str:
    """A Markdown table of `rows` (dicts, or a DataFrame) inside a horizontally scrolling box, then its notes.

    Parameters
    ----------
    rows
        One mapping per row, or a pandas DataFrame (its index is dropped).
    columns
        The keys to show, in order, or a mapping from key to header; default: the first row's keys.
    digits
        Significant digits of numbers and interval ends.
    notes
        Lines printed under the table (Markdown); a line explaining the dash is added when a cell is missing.
    """
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        rows = rows.to_dict("records")
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    if not headers:
        raise ValueError("markdown_table needs at least one column (pass columns=... or non-empty rows)")
    unknown = [k for k in headers if rows and not any(k in r for r in rows)]
    if unknown:
        raise ValueError(f"markdown_table: no row has the column(s) {unknown}; the rows have {list(rows[0])}")
    body = [[cell(r.get(k), digits) for k in headers] for r in rows]
    lines = ["| " + " | ".join(escape(h) for h in headers.values()) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(c for c in row) + " |" for row in body]
    notes = [" ".join(n.split()) for n in notes]
    if any(_DASH_CELL.search(c) for row in body for c in row):
        notes.append(DASH_NOTE)
    out = [SCROLL_OPEN, "", *lines, "", SCROLL_CLOSE]
    for note in notes:
        out += ["", note]
    return "\n".join(out)
