"""Check the rendered HTML book for what a reader would see as broken: `python -m tappa_utils.book check-html`.

`make book` runs it after rendering and fails on any problem. One line per problem: `page: rule: detail`.
The checks read the HTML that Jupyter Book 1.x (sphinx-book-theme, myst-nb) writes, statically; maths is typeset
by MathJax in the browser, so TeX that MathJax cannot parse is recognised from its source (and, with
`--browser`, from the DOM headless Chromium produces after MathJax ran).

Rules (`RULES`), all applied to the page's article (`<article class="bd-article">`), never to the navigation:

- not-html: the page is not an HTML page at all (bytes that are not UTF-8 text, or text without a single HTML
  element; a redirect page of one `<meta>` is HTML): a damaged or overwritten file, which no other rule could judge.
- raw-tex: TeX a reader sees as source: `$...$`, `$$`, `\\(`, `\\[` or a TeX command such as `\\ge` in prose,
  in Markdown output or in printed output, i.e. outside the elements MathJax typesets (class `math`) and outside
  code inputs. Generated prose must be displayed with `IPython.display.Markdown` (parsed as MyST).
- mathjax: TeX inside maths that MathJax cannot typeset: `\\*` (undefined), unbalanced braces, `\\left` without
  `\\right`, `\\begin{x}`/`\\end{y}` mismatch, a double superscript or subscript (`a^b^c`). With `--browser`
  also every `merror` and every undefined macro (shown in red) of the MathJax-rendered page.
- traceback: a Python traceback or papermill's error banner in an output.
- iprogress: tqdm's "IProgress not found" notice in an output.
- stderr: an output block written to stderr (warnings, progress bars, library chatter).
- warning: a warning printed into an output ("Warning:", "UserWarning", "warning:").
- abs-path: an absolute path of the build machine (`/tmp/`, `/root/`, `/work/`, `/home/<user>`, `/Users/<user>`,
  `.../.venv`, `site-packages`) anywhere in the article's text (code included) or in a link/image address.
- missing-image: an `<img>` whose file is not in the built book (or whose address is an absolute file path).
- figure-ref: on a chapter page (one made from a notebook), text that refers to a figure ("figure", "Fig.",
  "the plot below") while the page shows no image; or text saying a figure/plot is below (above) with no image
  after (before) it in the same section.
- wide-table: a table estimated wider than the text column (`COLUMN_PX`, measured at a 1400 px window: about 9 px
  per character plus 16 px padding per column) that is not inside a horizontally scrolling container
  (`pst-scrollable-table-container`, `table-responsive`, `overflow-x-auto`, a notebook output's `.output`, or an
  inline `overflow` style).
- truncated-cell: a table cell pandas cut short (its text ends with "...").
- wide-math: a display formula estimated wider than the text column (visible characters x `MATH_PX_PER_CHAR`,
  per line of a multi-line display): the theme clips it to a scroll box, unreadable in print and screenshots.
  Break it (`aligned`, `multline`), shorten it, or wrap it in an explicit `overflow-x-auto` container.
- wide-output: a printed output line longer than `OUTPUT_CHARS` characters (what fits in the output box at a
  1400 px window): it scrolls sideways. Code inputs are not checked (their line length is a code-style matter).
- table-row: a table row whose cell count (colspans counted) differs from its header's, or a cell showing a lone
  backtick (a code span cut by a `|`: Markdown drops or pads a split row's cells, so the count alone cannot see it).
- dataframe: a table pandas rendered (class `dataframe`): raw floats, NaN, an index column, cut-off columns.
  Tables a reader sees are built by `tappa_utils.tables.markdown_table`.
- long-float: a number with `LONG_FLOAT_DIGITS` or more significant digits (a decimal point or an exponent) in a
  table cell: an unformatted float.
- nan-cell: `nan`, `NaN`, `<NA>`, `NaT` or a `None` value in a table cell (outside code spans: `None` as code is
  a Python value, e.g. a parameter's default).
- unresolved-ref: a `{numref}` Sphinx could not resolve (to a figure, table or equation label the page does not
  have, e.g. a figure a chapter did not draw on this model): Sphinx only warns, and the page prints the bare label.
  `{doc}` / `{ref}` to a page a partial book leaves out are not flagged.
- table-scroll: a table whose narrowest layout (each column as wide as its longest unbreakable word, about 9 px per
  character plus 16 px padding) is wider than the text column and that only the theme's automatic container or a
  notebook output box scrolls: the reader sees it cut off at the right. Narrow it, or put it in its own scrolling
  box (an inline `overflow-x:auto` style or class `overflow-x-auto`), as `tappa_utils.tables` does.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..preflight import decode_counting

RULES: dict[str, str] = {
    "not-html": "the page is not HTML (not UTF-8 text, or no HTML element at all)",
    "raw-tex": "TeX outside rendered maths ($...$, $$, \\(, \\[, \\ge) in prose or outputs",
    "mathjax": "TeX that MathJax cannot typeset (\\*, unbalanced braces, \\left/\\right, \\begin/\\end, a^b^c)",
    "traceback": "a Python traceback or papermill error banner in an output",
    "iprogress": "tqdm's 'IProgress not found' notice in an output",
    "stderr": "an output block written to stderr",
    "warning": "a warning printed into an output",
    "abs-path": "an absolute path of the build machine (/tmp/, /root/, /work/, /home/x, .venv, site-packages)",
    "missing-image": "an <img> whose file is missing",
    "figure-ref": "text refers to a figure that is not on the page (or not below/above it)",
    "wide-table": "a table wider than the text column outside a scrolling container",
    "truncated-cell": "a table cell cut short by pandas ('...')",
    "wide-math": "a display formula wider than the text column",
    "wide-output": "a printed output line wider than the output box",
    "table-row": "a table row whose cells do not match its header (a '|' in the text split the row)",
    "dataframe": "a pandas-rendered table (class 'dataframe'); build it with tappa_utils.tables",
    "long-float": "an unformatted number (7+ significant digits) in a table cell",
    "nan-cell": "NaN / None / nan in a table cell (show a dash and explain it)",
    "table-scroll": "a table wider than the text column without its own scrolling box",
    "unresolved-ref": "a {numref} Sphinx could not resolve (shown as its bare label)",
}

COLUMN_PX = 770  # width of the text column (and of an output box) at a 1400 px window, measured in Chromium
TABLE_PX_PER_CHAR, TABLE_PAD_PX = 9.0, 16.0
MATH_PX_PER_CHAR = 11.0  # display maths: the (x + 1)^25 expansion, 254 visible characters, is 2553 px wide
OUTPUT_CHARS = 88  # monospace 14 px: 8.4 px per character in a 770 px box with 24 px padding
LONG_FLOAT_DIGITS = 7  # a table cell's number with this many significant digits was not formatted
EXPLICIT_SCROLL_CLASSES = {"overflow-x-auto", "table-responsive"}
LONG_FLOAT = re.compile(r"(?<![\w.])[-+−]?(?:\d+\.\d+|\.\d+|\d+(?=[eE][-+]?\d))(?:[eE][-+]?\d+)?(?![\w.])")
NAN_CELL = re.compile(r"(?<![\w-])(?:nan|NaN|NAN)(?![\w-])|^\s*(?:None|<NA>|NaT)\s*$|[\[(,=:]\s*None\b|\bNone\s*[\]),]")
BROWSER_WORKERS = 4
SKIPPED_PAGES = ("genindex.html", "search.html", "py-modindex.html")
SKIPPED_DIRS = ("_static", "_sources", "_images", "_downloads")
SCROLL_CLASSES = {"pst-scrollable-table-container", "table-responsive", "overflow-x-auto"}
BLOCK_TAGS = {"p", "li", "td", "th", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "caption",
              "figcaption", "blockquote", "div", "section", "article"}
VISUAL_TAGS = ["img", "svg", "canvas", "object", "embed", "iframe", "video"]

_TEX_COMMANDS = ("ge|le|geq|leq|neq|approx|sim|cdot|cdots|ldots|dots|times|frac|dfrac|sqrt|sum|prod|int|infty|pm|"
                 "alpha|beta|gamma|delta|epsilon|varepsilon|eta|theta|vartheta|kappa|lambda|mu|nu|xi|rho|sigma|tau|"
                 "phi|varphi|chi|psi|omega|Delta|Theta|Lambda|Sigma|Phi|Omega|pi|mathrm|mathbf|mathcal|mathbb|"
                 "text|textbf|operatorname|left|right|to|rightarrow|Rightarrow|leftarrow|mapsto|in|notin|subset|"
                 "cos|sin|log|exp|arg|argmax|hat|bar|tilde|vec|top|langle|rangle|lVert|rVert|lvert|rvert|quad")
RAW_TEX = [
    (re.compile(r"(?<![\\$\w])\$(?=[^\s$])([^$\n]{1,300}?)(?<![\s\\])\$(?![\w$])"), "inline maths"),
    (re.compile(r"\$\$"), "display maths"),
    (re.compile(r"\\[(\[]"), "maths delimiter"),
    (re.compile(rf"\\(?:{_TEX_COMMANDS})(?![A-Za-z])"), "TeX command"),
]
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|An Exception was encountered at|"
                       r"Execution using papermill encountered an exception")
WARNING = re.compile(r"\b[A-Z]\w*Warning\b|\bWarning:|\bwarning:|\bWARNING\b")
ABS_PATH = re.compile(r"(?<![\w.:/~-])(?:/tmp/|/root/|/work/|/home/\w|/Users/\w|/var/folders/|/private/var/)"
                      r"|(?<![\w.-])(?:/[\w.+~-]+)+/\.venv\b|/site-packages/")
FIGURE_MENTION = re.compile(r"(?i)\b(?:figures?|fig\.)(?!\w)|"
                            r"\b(?:plots?|charts?|heat-?maps?|graphs?|images?|panels?|pictures?)\s+(?:below|above)\b|"
                            r"\b(?:below|above|following|next|previous)\s+(?:figures?|plots?|charts?|heat-?maps?|"
                            r"graphs?|images?|panels?)\b")
BELOW = re.compile(r"(?i)\bbelow\b|\bfollowing\b|\bnext\s+(?:figure|plot)")
ABOVE = re.compile(r"(?i)\babove\b|\bprevious\s+(?:figure|plot)")
DOUBLE_SCRIPT = re.compile(r"([\^_])\s*(?:\{[^{}]*\}|\\[A-Za-z]+|[^\s{}\\^_])\s*\1")
SPACING_COMMANDS = re.compile(r"\\(?:displaystyle|textstyle|left|right|big|Big|bigg|Bigg|quad|qquad|,|;|!|:|"
                              r"mathrm|mathbf|mathit|mathcal|mathbb|operatorname|text|boldsymbol|begin\{[^}]*\}|"
                              r"end\{[^}]*\}|label\{[^}]*\}|nonumber|notag)(?![A-Za-z])")


@dataclass(frozen=True)
class Problem:
    """One problem of one page: `page` (relative to the HTML root), `rule` (a key of `RULES`), `detail`."""

    page: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: {self.rule}: {self.detail}"


def _classes(tag) -> list[str]:
    return tag.get("class") or []


def _snippet(text: str, start: int = 0, end: int | None = None, width: int = 70) -> str:
    """`text[start:end]` with some context, whitespace collapsed, at most about `width` characters."""
    end = start + 1 if end is None else end
    lo, hi = max(0, start - width // 3), min(len(text), end + width // 3)
    out = " ".join(text[lo:hi].split())
    if len(out) > width:
        out = out[:width - 3] + "..."
    return ("..." if lo > 0 else "") + out + ("..." if hi < len(text) and not out.endswith("...") else "")


def _shorten(text: str, width: int = 70) -> str:
    """`text` with whitespace collapsed, cut to `width` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _context(string) -> str | None:
    """Where a text node sits: math, code (an input), output-pre, output-text, prose; None to skip it."""
    in_output = in_code = inline_code = False
    for parent in string.parents:
        name, cls = parent.name, _classes(parent)
        if name in ("script", "style", "noscript", "template", "head", "title"):
            return None
        if "headerlink" in cls or "eqno" in cls:
            return None
        if "math" in cls or (name or "").startswith("mjx-"):
            return "math"
        if "cell_output" in cls:
            in_output = True
        if name == "pre" or "highlight" in cls or "cell_input" in cls:
            in_code = True
        if name == "code":  # inline code in a paragraph: not prose (no raw-TeX check), not a printed line either
            inline_code = True
        if name == "article":
            break
    if in_output:
        return "output-pre" if in_code else ("code" if inline_code else "output-text")
    return "code" if in_code or inline_code else "prose"


def _block(string):
    """The nearest block-level ancestor of a text node (its paragraph, cell, list item, pre...)."""
    for parent in string.parents:
        if parent.name in BLOCK_TAGS:
            return parent
    return string.parent


def _text_blocks(article) -> list[tuple[str, object, str]]:
    """(context, block element, text) for every block of the article, text nodes joined in document order."""
    blocks: dict[tuple[int, str], list] = {}
    order = []
    for string in article.find_all(string=True):
        if type(string).__name__ in ("Comment", "Doctype", "Declaration", "ProcessingInstruction", "CData"):
            continue
        ctx = _context(string)
        if ctx is None:
            continue
        block = _math_element(string) if ctx == "math" else _block(string)
        key = (id(block), ctx)
        if key not in blocks:
            blocks[key] = [ctx, block, []]
            order.append(key)
        blocks[key][2].append(str(string))
    return [(blocks[k][0], blocks[k][1], "".join(blocks[k][2])) for k in order]


def _math_element(string):
    for parent in string.parents:
        if "math" in _classes(parent):
            return parent
    return string.parent


# ------------------------------------------------------------------------------------------------ maths


def tex_problems(tex: str) -> list[str]:
    """Why MathJax cannot typeset `tex` (one reason per entry); empty when no known problem is found."""
    out = []
    if re.search(r"(?<!\\)\\\*", tex):
        out.append("'\\*' is not a MathJax command (write * or ^{*})")
    depth, i, unbalanced = 0, 0, False
    while i < len(tex):
        ch = tex[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                unbalanced = True
                break
        i += 1
    if unbalanced or depth != 0:
        out.append("unbalanced braces { }")
    n_left = len(re.findall(r"\\left(?![A-Za-z])", tex))
    n_right = len(re.findall(r"\\right(?![A-Za-z])", tex))
    if n_left != n_right:
        out.append(f"{n_left} \\left but {n_right} \\right")
    bare = re.search(r"\\(left|right|middle)\s*(?:$|[}&])", tex)
    if bare:
        out.append(f"no delimiter after \\{bare.group(1)}")
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{([^}]*)\}", tex):
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            out.append(f"\\end{{{env}}} does not match a \\begin")
            break
    else:
        if stack:
            out.append(f"\\begin{{{stack[-1]}}} without \\end")
    match = DOUBLE_SCRIPT.search(tex)
    if match:
        kind = "superscript" if match.group(1) == "^" else "subscript"
        out.append(f"double {kind} '{match.group(0).strip()}' (use braces)")
    return out


def _strip_delimiters(tex: str) -> str:
    tex = tex.strip()
    for a, b in (("\\[", "\\]"), ("\\(", "\\)"), ("$$", "$$")):
        if tex.startswith(a) and tex.endswith(b):
            return tex[len(a):-len(b)].strip()
    return tex


def visible_math_chars(tex: str) -> int:
    """Rough count of the characters a typeset line of `tex` shows (commands as one glyph, no braces/spaces)."""
    tex = SPACING_COMMANDS.sub("", tex)
    tex = re.sub(r"\\[A-Za-z]+", "x", tex)
    tex = re.sub(r"\\.", "x", tex)
    return len(re.sub(r"[\s{}^_&]", "", tex))


def _math_lines(tex: str) -> list[str]:
    return [line for line in re.split(r"\\\\", tex) if line.strip()]


# ------------------------------------------------------------------------------------------------ pages


def _has_scroll_ancestor(tag, allow_output: bool) -> bool:
    for parent in [tag, *tag.parents]:
        cls = set(_classes(parent))
        if cls & SCROLL_CLASSES:
            return True
        if re.search(r"overflow(-x)?\s*:\s*(auto|scroll)", parent.get("style", "") or ""):
            return True
        if allow_output and "output" in cls and any("cell_output" in _classes(p) for p in parent.parents):
            return True
        if parent.name == "article":
            return False
    return False


def _table_width(table) -> float:
    widths: dict[int, int] = {}
    for row in table.find_all("tr"):
        for i, cell in enumerate(row.find_all(["td", "th"], recursive=False)):
            widths[i] = max(widths.get(i, 0), len(" ".join(cell.get_text().split())))
    return sum(n * TABLE_PX_PER_CHAR + TABLE_PAD_PX for n in widths.values())


def _position_index(article) -> dict[int, int]:
    return {id(tag): i for i, tag in enumerate(article.find_all(True))}


def check_page(html: str, page: str, page_path: Path | None = None, html_root: Path | None = None) -> list[Problem]:
    """The problems of one rendered page (`page`: its name in the report; `page_path`: its file, for images)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    if soup.find(True) is None:
        start = _shorten("".join(c if c.isprintable() else "?" for c in html[:200]), 40)
        return [Problem(page, "not-html", f"the page is not HTML (no HTML element; it starts '{start}'); rebuild "
                                          "the book")]
    article = soup.find("article", class_="bd-article") or soup.find("article") or soup.find("main") or soup.body
    if article is None:
        return []
    problems: list[Problem] = []

    def add(rule: str, detail: str) -> None:
        problem = Problem(page, rule, detail)
        if problem not in problems:
            problems.append(problem)

    blocks = _text_blocks(article)
    is_chapter = article.find(class_="cell") is not None
    # stderr and traceback blocks are reported once each, not again as warnings or wide lines
    stderr_blocks = {id(t) for t in article.select(".cell_output .output.stderr, .cell_output .traceback")}

    for ctx, block, text in blocks:
        if ctx == "math":
            continue
        if ctx in ("prose", "output-text", "output-pre"):
            for pattern, what in RAW_TEX:
                match = pattern.search(text)
                if match and (what != "inline maths" or re.search(r"[A-Za-z\\^_]", match.group(1))):
                    where = "printed output" if ctx == "output-pre" else "text"
                    add("raw-tex", f"{what} not rendered in {where}: '{_snippet(text, match.start(), match.end())}'")
                    break
        in_stderr = ctx.startswith("output") and any(id(p) in stderr_blocks for p in [block, *block.parents])
        match = ABS_PATH.search(text)
        if match:
            add("abs-path", f"'{_snippet(text, match.start(), match.end())}'")
        if ctx.startswith("output"):
            match = TRACEBACK.search(text)
            if match:
                error = [line for line in text.splitlines() if re.match(r"\w*(Error|Exception)\b", line.strip())]
                add("traceback", (error[-1].strip() if error else _snippet(text, match.start(), match.end()))[:120])
            if "IProgress" in text:
                i = text.index("IProgress")
                add("iprogress", f"'{_snippet(text, i, i + 9)}'")
            match = WARNING.search(text)
            if match and not in_stderr:
                add("warning", f"'{_snippet(text, match.start(), match.end())}'")
        if ctx == "output-pre" and not in_stderr:
            longest = max(text.splitlines() or [""], key=len)
            if len(longest) > OUTPUT_CHARS:
                add("wide-output", f"printed line of {len(longest)} characters (about {OUTPUT_CHARS} fit): "
                                   f"'{_shorten(longest, 50)}'")
    if article.find(id="papermill-error-cell") is not None:
        add("traceback", "papermill stopped at an exception ('Execution using papermill encountered an exception')")
    for tag in article.select(".cell_output .traceback"):
        lines = [line for line in tag.get_text().splitlines() if line.strip()]
        add("traceback", (lines[-1].strip() if lines else "traceback output")[:120])
    for tag in article.select(".cell_output .output.stderr"):
        first = next((line for line in tag.get_text().splitlines() if line.strip()), "")
        add("stderr", f"'{_shorten(first, 90)}'")

    for attr_tag in article.find_all(["a", "img", "link", "source"]):
        for attr in ("href", "src"):
            value = attr_tag.get(attr) or ""
            if value.startswith("file:") or ABS_PATH.search(unquote(value)):
                add("abs-path", f"{attr_tag.name} {attr}='{value[:90]}'")

    for img in soup.find_all("img"):
        src = (img.get("src") or "").strip()
        if not src or src.startswith(("data:", "http:", "https:", "//")):
            continue
        path = unquote(urlsplit(src).path)
        if path.startswith("/") or src.startswith("file:"):
            add("missing-image", f"img src '{src[:90]}' is an absolute file path, not a file of the book")
        elif page_path is not None and not (page_path.parent / path).exists():
            add("missing-image", f"img src '{src[:90]}' does not exist")

    for xref in article.select(".xref.std-numref"):
        if xref.find_parent("a") is None:
            add("unresolved-ref", f"'{_shorten(xref.get_text(), 60)}' links nowhere (a label the page does not define, "
                                  "e.g. a figure that was not drawn)")

    math_blocks = [(block, text) for ctx, block, text in blocks if ctx == "math"]
    for block, text in math_blocks:
        tex = _strip_delimiters(text)
        for reason in tex_problems(tex):
            add("mathjax", f"{reason} in '{_shorten(tex, 60)}'")
        display = block.name == "div" or text.strip().startswith(("\\[", "$$"))
        if display and not _has_scroll_ancestor(block, allow_output=False):
            widest = max((visible_math_chars(line) for line in _math_lines(tex)), default=0)
            if widest * MATH_PX_PER_CHAR > COLUMN_PX:
                add("wide-math", f"display formula about {widest * MATH_PX_PER_CHAR:.0f} px wide (column "
                                 f"{COLUMN_PX} px): '{_shorten(tex, 60)}'")

    for table in article.find_all("table"):
        width = _table_width(table)
        if width > COLUMN_PX and not _has_scroll_ancestor(table, allow_output=True):
            header = " | ".join(" ".join(c.get_text().split()) for c in table.find_all(["th", "td"])[:4])
            add("wide-table", f"table about {width:.0f} px wide (column {COLUMN_PX} px) without a scrolling "
                              f"container: '{_shorten(header, 60)}'")
        for cell in table.find_all(["td", "th"]):
            text = " ".join(cell.get_text().split())
            if len(text) > 3 and text.endswith("..."):
                add("truncated-cell", f"'{_shorten(text, 60)}' (pandas display.max_colwidth)")
                break

    if is_chapter:
        problems += _figure_problems(article, blocks, page)
    problems += [p for p in _table_problems(article, page) if p not in problems]
    return problems


def _figure_problems(article, blocks, page: str) -> list[Problem]:
    """figure-ref: mentions of a figure on a page without one, or 'below'/'above' with no image there."""
    index = _position_index(article)
    visuals = sorted(index[id(t)] for t in article.find_all(VISUAL_TAGS))
    headings = sorted(index[id(t)] for t in article.find_all(["h1", "h2", "h3"]))
    out = []
    for ctx, block, text in blocks:
        if ctx not in ("prose", "output-text") or block.name in ("div", "section", "article"):
            continue
        match = FIGURE_MENTION.search(text)
        if not match:
            continue
        quote = _snippet(text, match.start(), match.end())
        if not visuals:
            out.append(Problem(page, "figure-ref", f"text refers to a figure but the page shows none: '{quote}'"))
            continue
        pos = index.get(id(block))
        if pos is None:
            continue
        sentence = text[max(0, match.start() - 60):match.end() + 60]
        if BELOW.search(sentence):
            next_heading = min([h for h in headings if h > pos], default=10 ** 9)
            if not any(pos < v < next_heading for v in visuals):
                out.append(Problem(page, "figure-ref", f"text refers to a figure below but none follows in its "
                                                       f"section: '{quote}'"))
        elif ABOVE.search(sentence):
            prev_heading = max([h for h in headings if h < pos], default=-1)
            if not any(prev_heading < v < pos for v in visuals):
                out.append(Problem(page, "figure-ref", f"text refers to a figure above but none precedes it in "
                                                       f"its section: '{quote}'"))
    return out


# ------------------------------------------------------------------------------------------------ tables


def _row_width(row) -> int:
    return sum(int(c.get("colspan") or 1) if str(c.get("colspan") or 1).isdigit() else 1
               for c in row.find_all(["td", "th"], recursive=False))


def _visible_outside_code(tag) -> str:
    out = []
    for string in tag.find_all(string=True):
        parent = string.parent
        while parent is not None and parent is not tag and parent.name != "code":
            parent = parent.parent
        if parent is tag or parent is None:
            out.append(str(string))
    return "".join(out)


def significant_digits(number: str) -> int:
    """The significant digits of a written number ('0.0012340' -> 5, '1.5e-07' -> 2)."""
    mantissa = re.split(r"[eE]", number.lstrip("+-−"))[0].replace(".", "")
    return len(mantissa.lstrip("0"))


def _min_table_width(table) -> float:
    """The narrowest width a browser can give `table`: each column as wide as its longest unbreakable word."""
    widths: dict[int, int] = {}
    for row in table.find_all("tr"):
        for i, cell in enumerate(row.find_all(["td", "th"], recursive=False)):
            longest = max((len(w) for w in cell.get_text(" ").split()), default=0)
            widths[i] = max(widths.get(i, 0), longest)
    return sum(n * TABLE_PX_PER_CHAR + TABLE_PAD_PX for n in widths.values())


def _explicit_scroll(tag) -> bool:
    for parent in [tag, *tag.parents]:
        if set(_classes(parent)) & EXPLICIT_SCROLL_CLASSES:
            return True
        if re.search(r"overflow(-x)?\s*:\s*(auto|scroll)", parent.get("style", "") or ""):
            return True
        if parent.name == "article":
            return False
    return False


def _table_problems(article, page: str) -> list[Problem]:
    """table-row, dataframe, long-float, nan-cell and table-scroll problems of the article's tables."""
    out: list[Problem] = []

    def add(rule: str, detail: str) -> None:
        if Problem(page, rule, detail) not in out:
            out.append(Problem(page, rule, detail))

    for table in article.find_all("table"):
        rows = [r for r in table.find_all("tr") if r.find_parent("table") is table]
        head = " | ".join(" ".join(c.get_text().split()) for c in rows[0].find_all(["th", "td"])[:3]) if rows else ""
        if "dataframe" in _classes(table):
            add("dataframe", f"pandas table '{_shorten(head, 60)}': display it with tappa_utils.tables")
        if rows:
            n_head = _row_width(rows[0])
            for row in rows[1:]:
                text = " | ".join(" ".join(c.get_text().split()) for c in row.find_all(["td", "th"], recursive=False))
                if _row_width(row) != n_head:
                    add("table-row", f"row of {_row_width(row)} cells under a header of {n_head}: "
                                     f"'{_shorten(text, 60)}'")
                    break
                lone = [c for c in row.find_all(["td", "th"], recursive=False)
                        if _visible_outside_code(c).count("`") % 2]
                if lone:
                    add("table-row", f"cell with a lone backtick (a '|' split a code span): "
                                     f"'{_shorten(lone[0].get_text(), 60)}'")
                    break
        for cell in table.find_all(["td", "th"]):
            text = " ".join(cell.get_text().split())
            long = [m.group(0) for m in LONG_FLOAT.finditer(text)
                    if significant_digits(m.group(0)) >= LONG_FLOAT_DIGITS]
            if long:
                add("long-float", f"'{long[0]}' ({significant_digits(long[0])} significant digits) in "
                                  f"'{_shorten(text, 50)}'")
                break
        for cell in table.find_all(["td", "th"]):
            text = " ".join(_visible_outside_code(cell).split())  # `None` as code is a value, not a missing cell
            if NAN_CELL.search(text):
                add("nan-cell", f"'{_shorten(text, 60)}' in table '{_shorten(head, 40)}'")
                break
        width = _min_table_width(table)
        if width > COLUMN_PX and _has_scroll_ancestor(table, allow_output=True) and not _explicit_scroll(table):
            add("table-scroll", f"table at least {width:.0f} px wide (column {COLUMN_PX} px), cut off at the right: "
                                f"'{_shorten(head, 60)}'")
    return out


def html_pages(html_root: Path) -> list[Path]:
    """The content pages of a built book (no search/index pages, nothing under _static/_sources/_images)."""
    pages = []
    for path in sorted(html_root.rglob("*.html")):
        rel = path.relative_to(html_root)
        if rel.parts[0] in SKIPPED_DIRS or rel.name in SKIPPED_PAGES:
            continue
        pages.append(path)
    return pages


def check_html(html_root: str | Path, browser: bool = False) -> list[Problem]:
    """Every problem of every content page of the built book at `html_root` (`_build/html`)."""
    html_root = Path(html_root)
    if not (html_root / "index.html").is_file():
        raise FileNotFoundError(f"no built book at {html_root} (index.html missing); run `make book` first")
    problems = []
    for path in html_pages(html_root):
        rel = path.relative_to(html_root).as_posix()
        raw = path.read_bytes()
        text, bad = decode_counting(raw)
        if bad:
            problems.append(Problem(rel, "not-html", f"the page is not HTML ({bad} of {len(raw)} bytes are not UTF-8 "
                                                     "text); rebuild the book"))
            continue
        problems += check_page(text, rel, path, html_root)
    if browser:
        from concurrent.futures import ThreadPoolExecutor

        pages = html_pages(html_root)
        with ThreadPoolExecutor(max_workers=BROWSER_WORKERS) as pool:  # Chromium mostly waits: run a few at once
            found = pool.map(lambda p: browser_math_problems(p, p.relative_to(html_root).as_posix()), pages)
            problems += [p for page_problems in found for p in page_problems]
        order = {path.relative_to(html_root).as_posix(): i for i, path in enumerate(pages)}
        problems.sort(key=lambda p: order.get(p.page, len(order)))  # stable: each page's problems stay together
    return problems


# ------------------------------------------------------------------------------------------ browser check


def find_chromium() -> str | None:
    """The headless browser used by `--browser`: chromium (Debian), chromium-browser or google-chrome."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def rendered_dom(path: Path, timeout: float = 60.0) -> str:
    """The page's DOM after its scripts (MathJax) ran, from headless Chromium (`--dump-dom`)."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium found for --browser; install it (apt-get install chromium) or drop "
                                "--browser")
    with tempfile.TemporaryDirectory(prefix="tappa-chromium-") as profile:  # one profile per concurrent browser
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
               f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", path.resolve().as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout


def _mjx_text(tag) -> str:
    chars = []
    for c in tag.find_all("mjx-c"):
        code = next((k[5:] for k in _classes(c) if re.fullmatch(r"mjx-c[0-9A-F]+", k)), None)
        chars.append(chr(int(code, 16)) if code else "?")
    return "".join(chars) or tag.get_text()


def browser_math_problems(path: Path, page: str) -> list[Problem]:
    """mathjax problems seen in the rendered DOM: `mjx-merror` and undefined macros (red `mjx-mtext`)."""
    from bs4 import BeautifulSoup

    try:
        soup = BeautifulSoup(rendered_dom(path), "html.parser")
    except subprocess.TimeoutExpired:
        print(f"warning: chromium timed out on {page}; its rendered maths was not checked", file=sys.stderr)
        return []
    found = Counter()
    for tag in soup.find_all("mjx-merror"):
        found[f"MathJax error (rendered): '{tag.get('data-mjx-error') or _mjx_text(tag)}'"] += 1
    for tag in soup.find_all("mjx-mtext", style=re.compile(r"color:\s*red")):
        found[f"undefined TeX macro (rendered in red): '{_mjx_text(tag)}'"] += 1
    return [Problem(page, "mathjax", detail + (f" ({n} times)" if n > 1 else "")) for detail, n in found.items()]


# ---------------------------------------------------------------------------------------------- command


def report(problems: list[Problem], stream=None) -> None:
    """Print one line per problem and a summary line."""
    stream = stream or sys.stdout
    for problem in problems:
        print(problem, file=stream)
    pages = len({p.page for p in problems})
    print(f"check-html: {len(problems)} problem(s) on {pages} page(s)" if problems else "check-html: no problems",
          file=stream)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `check-html` (shared by the book's command line)."""
    parser.add_argument("html_root", nargs="?", default="_build/html", help="the built book (default: _build/html)")
    parser.add_argument("--browser", action="store_true",
                        help="also render every page in headless Chromium and report MathJax's own errors")


def run(html_root: str | Path, browser: bool = False) -> int:
    """`check-html`: exit status 0 (clean), 1 (problems, listed on stdout) or 2 (no built book / no browser)."""
    try:
        problems = check_html(html_root, browser=browser)
    except FileNotFoundError as e:
        print(f"check-html: error: {e}", file=sys.stderr)
        return 2
    report(problems)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tappa_utils.book.html_check [_build/html] [--browser]`."""
    from ..preflight import HelpFormatter

    parser = argparse.ArgumentParser(prog="python -m tappa_utils.book check-html", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.html_root, browser=args.browser)


if __name__ == "__main__":
    sys.exit(main())
