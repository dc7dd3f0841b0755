"""Chapter figures are numbered, captioned and referred to: MyST-NB figure metadata on the main figure cells."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("0[1-8]_*.ipynb"))
NAME = re.compile(r"fig-ch(\d\d)-[a-z0-9-]+")


def _figure_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "figure" in c["metadata"].get("mystnb", {})]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_main_figures_have_a_caption_a_label_and_a_reference(path):
    nb = json.loads(path.read_text())
    cells = _figure_cells(nb)
    assert len(cells) >= 2, f"{path.name}: at least two figure cells need mystnb.figure (caption and name)"
    chapter = path.stem[:2]
    # the prose: Markdown cells, and sentences a code cell writes with say() (a figure drawn only on some models is
    # referred to only when it is drawn: Sphinx cannot resolve a {numref} to a figure the page does not have)
    markdown = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"
                       or "say(" in "".join(c["source"]))
    names = []
    for cell in cells:
        fig = cell["metadata"]["mystnb"]["figure"]
        name, caption = fig.get("name", ""), fig.get("caption", "")
        m = NAME.fullmatch(name)
        assert m and m.group(1) == chapter, f"{path.name}: figure name {name!r} must look like fig-ch{chapter}-what"
        assert len(caption.split()) >= 5, f"{path.name}: {name} needs a caption of a sentence"
        src = "".join(cell["source"])
        # myst-nb wraps EVERY display output of the cell in the figure: the plot must be the only one
        assert src.count("plt.show()") == 1 and not re.search(r"\b(display|glue)\(", src), \
            f"{path.name}: {name}'s cell must show one figure and display nothing else"
        assert f"{{numref}}`{name}`" in markdown, f"{path.name}: the text never refers to {{numref}}`{name}`"
        names.append(name)
    assert len(set(names)) == len(names), f"{path.name}: duplicate figure names"
    for ref in re.findall(r"\{numref\}`([^`]+)`", markdown):
        assert ref in names, f"{path.name}: {{numref}}`{ref}` names no figure of this chapter"
