"""A chapter's generated sentences, one way: a Markdown template filled from results, numbers formatted as the book
writes them. A code cell shows the computation and one `say(...)`:

    ratio = copy_loss_second / copy_loss_first
    say("The copy ratio is **{ratio}** (random weights: {null_ratio}).", ratio=ratio, null_ratio=null)

Placeholders are `str.format` fields naming a given value: `{x}`, `{row.attr}`, `{d[key]}`, with a conversion and a
format spec if wanted (`{share:.0%}`, `{n:,}`). Without a spec a number is written by `number`: integers whole with
thousands separators, other numbers to 3 significant digits (`tables.number`), a missing one (None, NaN) as n/a
(with a format spec too). Everything else of Markdown is kept as written: a MyST role naming no given value
(`{doc}`...), LaTeX braces inside `$...$` that name no given value (`$\\theta_{m}$`), and `{{` / `}}` (one literal
brace, outside maths). A placeholder naming no given value outside maths is an error that names it.
"""
from __future__ import annotations

import math
import numbers
import re
import textwrap
from typing import Any

from .tables import number as _sig

MISSING = "n/a"
# {{ or }} | {name(.attr|[key])*(!conv)?(:spec)?}
_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)((?:\.\w+|\[[^\]{}]+\])*)(?:!([rsa]))?(?::([^{}]*))?\}")
_MATH = re.compile(r"\$\$.+?\$\$|(?<![\\$])\$[^$\n]+?\$", re.S)


def number(x: Any) -> str:
    """A number as prose writes it: integers whole with thousands separators, others to 3 significant digits
    (thousands whole, with separators), n/a when missing; anything else as `str`.

    >>> number(31129600), number(0.80312), number(1234.56), number(float("nan")), number(True)
    ('31,129,600', '0.803', '1,235', 'n/a', 'True')
    """
    x = _scalar(x)
    if x is None:
        return MISSING
    if isinstance(x, bool) or not isinstance(x, numbers.Number):
        return str(x)
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    v = float(x)
    if math.isnan(v):
        return MISSING
    if math.isfinite(v) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return _sig(v)


def _scalar(x: Any) -> Any:
    """A 0-d numpy array or torch tensor as its Python number; anything else unchanged."""
    return x.item() if getattr(x, "shape", None) == () and hasattr(x, "item") else x


def _lookup(values: dict[str, Any], root: str, chain: str) -> Any:
    obj = values[root]
    for attr, key in re.findall(r"\.(\w+)|\[([^\]]+)\]", chain):
        if attr:
            obj = getattr(obj, attr)
        else:
            obj = obj[int(key)] if key.isdigit() and not isinstance(obj, dict) else obj[key]
    return obj


def _render(value: Any, conv: str | None, spec: str | None) -> str:
    if conv:
        value = {"r": repr, "s": str, "a": ascii}[conv](value)
    if spec:
        value = _scalar(value)
        missing = value is None or isinstance(value, numbers.Real) and math.isnan(value)
        return MISSING if missing else format(value, spec)
    return number(value)


def fill(template: str, /, **values: Any) -> str:
    """The template (dedented, stripped) with its placeholders replaced by the formatted values (see the module).

    >>> fill("{n} heads; q-sim {q} ({share:.0%}) on $\\\\theta_{m}$, see {doc}`03_predictable`.",
    ...      n=48, q=0.76912, share=0.25)
    '48 heads; q-sim 0.769 (25%) on $\\\\theta_{m}$, see {doc}`03_predictable`.'
    >>> fill("{row[loss]} and {missing}", row={"loss": 0.5})
    Traceback (most recent call last):
    ...
    KeyError: "fill: the template names {missing} but no value 'missing' was given; pass missing=... or write {{ }}"
    """
    template = textwrap.dedent(template).strip()

    def substitute(m: re.Match, in_math: bool) -> str:
        whole, root = m.group(0), m.group(1)
        if root is None:  # {{ or }}
            return whole if in_math else whole[0]
        if root not in values:
            if in_math or m.string.startswith("`", m.end()):
                return whole  # LaTeX braces, or a MyST role such as {doc}`page` (inline code `{x}` is filled)
            raise KeyError(f"fill: the template names {{{root}}} but no value {root!r} was given; pass {root}=... "
                           "or write {{ }}")
        return _render(_lookup(values, root, m.group(2)), m.group(3), m.group(4))

    out, last = [], 0
    for math_span in _MATH.finditer(template):
        out.append(_FIELD.sub(lambda m: substitute(m, False), template[last:math_span.start()]))
        out.append(_FIELD.sub(lambda m: substitute(m, True), math_span.group(0)))
        last = math_span.end()
    out.append(_FIELD.sub(lambda m: substitute(m, False), template[last:]))
    return "".join(out)


def say(template: str, /, **values: Any) -> None:
    """Display `fill(template, **values)` as Markdown (a chapter's generated prose)."""
    from IPython.display import Markdown, display

    display(Markdown(fill(template, **values)))
