"""`prose.fill` / `say`: a chapter's generated sentences from a Markdown template, numbers written the book's way."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tappa_utils import prose


@pytest.mark.parametrize("value, text", [
    (31129600, "31,129,600"), (np.int64(48), "48"), (0.80312, "0.803"), (np.float32(0.123456), "0.123"),
    (1234.56, "1,235"), (2.5e-5, "2.5e-05"), (float("nan"), "n/a"), (None, "n/a"), (True, "True"), ("abc", "abc"),
    (math.inf, "∞"), (np.array(0.5), "0.5"), (torch.tensor(3), "3"),
])
def test_number(value, text):
    assert prose.number(value) == text


def test_fill_formats_values_attributes_and_keys():
    row = pd.Series({"layer": 3, "mass": 0.45678})
    out = prose.fill("L{row.layer}: {row.mass} of {d[n]} ({share:.0%}, {x!r})", row=row, d={"n": 12}, share=0.256,
                     x="a")
    assert out == "L3: 0.457 of 12 (26%, 'a')"
    assert prose.fill("{t:.2f} and {ci[1]}", t=torch.tensor(1.0 / 3), ci=(0.1, 0.25)) == "0.33 and 0.25"
    assert prose.fill("p = {p:.2g}, {share:.0%}, {x:.3f}", p=float("nan"), share=None, x=np.float32("nan")) == (
        "p = n/a, n/a, n/a")


def test_fill_keeps_markdown_latex_and_roles():
    t = r"$\theta_{m}$ and $$\frac{a}{b_{c}}$$ at {n}, see {doc}`00_reading` and {numref}`fig-x`; {{literal}}"
    assert prose.fill(t, n=5) == (r"$\theta_{m}$ and $$\frac{a}{b_{c}}$$ at 5, see {doc}`00_reading` and "
                                  "{numref}`fig-x`; {literal}")


def test_fill_fills_inline_code_but_keeps_roles():
    assert prose.fill("On `{model}` (**`{qv}`**), see {doc}`03_predictable`.", model="m", qv="q") == (
        "On `m` (**`q`**), see {doc}`03_predictable`.")


def test_fill_substitutes_inside_maths_only_given_names():
    assert prose.fill(r"$\ln {V} = {lnv:.2f}$ on $x_{i}$", V=259, lnv=math.log(259)) == r"$\ln 259 = 5.56$ on $x_{i}$"


def test_fill_dedents_a_triple_quoted_template():
    assert prose.fill("""
        - first {a}
        - second
        """, a=1) == "- first 1\n- second"


def test_a_placeholder_without_a_value_is_named():
    with pytest.raises(KeyError, match=r"\{ratio\}.*pass ratio="):
        prose.fill("copy ratio {ratio}", rati=0.5)


def test_say_displays_the_filled_markdown(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    assert prose.say("**{x}** tokens", x=2048) is None
    assert len(shown) == 1 and shown[0].data == "**2,048** tokens"
