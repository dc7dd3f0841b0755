"""The one table builder (`tappa_utils.tables`): what a reader sees in every cell, and that MyST parses each row
into exactly the header's cells (a `|` in a claim's text once split rows)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt

from tappa_utils import claims as C
from tappa_utils import tables as T
from tappa_utils import verdicts as V


def _html_rows(markdown: str) -> list[list[str]]:
    """The rows (cell texts) of the first table markdown-it (MyST's parser) makes of `markdown`."""
    from bs4 import BeautifulSoup

    html = MarkdownIt("commonmark").enable("table").render(markdown)
    table = BeautifulSoup(html, "html.parser").find("table")
    return [[c.get_text() for c in tr.find_all(["td", "th"])] for tr in table.find_all("tr")]


@pytest.mark.parametrize("value, text", [
    (0.123456789, "0.123"), (np.float32(12.3456), "12.3"), (123456.7, "1.23e+05"), (np.int64(1024), "1024"),
    (24.0, "24"), (None, "–"), (math.nan, "–"), (np.nan, "–"), (pd.NA, "–"), (math.inf, "∞"),
    ((0.1234567, 0.98765), "[0.123, 0.988]"), ((None, 2.0), "[–, 2]"), ((math.nan, math.nan), "–"),
    (np.array([1.0, 2.5]), "[1, 2.5]"), ([1, 2, 3], "1, 2, 3"), ("", ""),
])
def test_cell_formats_numbers_intervals_and_missing_values(value, text):
    assert T.cell(value) == text


def test_text_with_pipes_stars_and_underscores_stays_in_its_cell():
    name = "Spearman(|delta|, rel) of `q_sim|x` with $|q_t|$ and max_j *stars*"
    md = T.markdown_table([{"check": name, "value": 0.5}, {"check": "plain", "value": 1}])
    rows = _html_rows(md)
    assert all(len(r) == 2 for r in rows), rows
    assert rows[1][0] == "Spearman(|delta|, rel) of q_sim|x with $\\vert q_t\\vert $ and max_j *stars*"
    assert rows[1][1] == "0.5" and rows[2] == ["plain", "1"]


def test_table_scrolls_in_its_box_and_explains_the_dash():
    md = T.markdown_table(pd.DataFrame({"a": [1.0, np.nan], "ci": [(0.1, 0.2), None]}), notes=["A note."])
    lines = md.splitlines()
    assert lines[0] == T.SCROLL_OPEN and lines[1] == "" and T.SCROLL_CLOSE in lines
    assert lines[-3:] == ["A note.", "", T.DASH_NOTE]
    assert "| – | – |" in md and "nan" not in md.lower()
    assert T.DASH_NOTE not in T.markdown_table([{"a": 1}])  # no dash: no note


def test_columns_select_and_rename_and_bad_columns_fail_clearly():
    md = T.markdown_table([{"x": 1, "y": 2}], {"y": "why"})
    assert "| why |" in md and "| 2 |" in md and "x" not in md.split("\n", 2)[2]
    with pytest.raises(ValueError, match=r"no row has the column\(s\) \['z'\]"):
        T.markdown_table([{"x": 1}], ["z"])
    with pytest.raises(ValueError, match="at least one column"):
        T.markdown_table([])


def test_markdown_cells_keep_their_markup():
    md = T.markdown_table([{"chapter": T.Md("{doc}`03 <../executed/03_x>`"), "n": 1}])
    assert "| {doc}`03 <../executed/03_x>` | 1 |" in md


def test_checks_markdown_one_labelled_row_per_check_and_the_combined_status():
    checks = [C.claim("pruning.tappa_beats_shortgpt", g, ci=(g - 0.01, g + 0.01), p_value=0.001,
                      name=f"TAPPA (β = 1, chosen on calibration) vs ShortGPT, {k} layers removed: loss gain")
              for g, k in ((0.1, 2), (0.0, 4))]
    checks.append(C.measurement("value | with a pipe", 0.123456789, ci=(math.nan, math.nan)))
    md = V.checks_markdown(checks)
    rows = _html_rows(md)
    assert all(len(r) == len(rows[0]) == 7 for r in rows), rows
    assert rows[0][4] == "smallest reachable p" and rows[2][4] == "–"  # claim rows without it: a dash
    assert rows[1][2] == "✔✘ mixed" and rows[1][6] == "1 supported, 1 not supported of 2 checks"
    assert [r[1] for r in rows[2:4]] == ["↳ 2 layers removed", "↳ 4 layers removed"]
    assert rows[2][2:4] == ["✔ supported", "0.1 [0.09, 0.11], p = 0.001"]
    assert rows[4][1:4] == ["value | with a pipe", "· reported", "0.123"]
    assert V.COMBINED_RULE in md


def test_what_held_ends_with_every_check_in_one_table():
    checks = [C.claim("predictable.qsim_predictability_corr", 0.5, ci=(0.3, 0.7), p_value=0.001),
              C.sanity("bound |x| holds", 1.0, 1.0), C.measurement("number of zebras", 24)]
    text = V.what_held(checks, "03_predictable")
    head, table = text.split("**Every check**")
    assert "| sanity | bound \\|x\\| holds | ✔ ok | 1 |  | ≈ 1 ± 0 |" in table
    assert "| measurement | number of zebras | · reported | 24 |" in table
    assert "zebras" not in head  # measurements are in the table only
    assert "**Measurements**" in V.what_held(checks, "03_predictable", table=False)


@pytest.mark.parametrize("names, labels", [
    (["TAPPA vs uniform_cake, loss NLL, 25% kept", "TAPPA vs uniform_cake, retrieval NLL, 50% kept"],
     ["loss NLL, 25% kept", "retrieval NLL, 50% kept"]),
    (["gain, 1 layer removed: loss", "gain, 12 layers removed: loss"], ["1 layer removed", "12 layers removed"]),
    (["same", "same"], ["same", "same"]),
    (["only one"], ["only one"]),
])
def test_check_labels(names, labels):
    assert V.check_labels(names) == labels
