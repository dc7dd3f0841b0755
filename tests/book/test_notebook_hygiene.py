"""What the build log and the pages must not show, checked on the notebooks' sources (issue 17): parameters that
papermill cannot parse, and wall-clock timings printed onto the pages (the build log has them)."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from tappa_utils import book

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_as_we_do(path):
    assert book.params.papermill_mismatches(path) == []


def test_papermill_mismatch_is_detected(tmp_path):
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell('a = 1  # fine\nb = 2  # use >= 1024 on a long model\nc = "x"  # ok\n',
                                           metadata={"tags": ["parameters"]})])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "t.ipynb"))
    problems = book.params.papermill_mismatches(tmp_path / "t.ipynb")
    assert len(problems) == 1 and "'b'" in problems[0] and "reword the comment" in problems[0]


TIMING = re.compile(r"""print\(f?["'][^"']*\b(ran|took|done) in\b""")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_wall_clock_timing_on_the_page(path):
    """A chapter's run time depends on the machine and its load: it goes to the build log (`execute_chapters`
    prints it), not onto the page."""
    nb = nbformat.read(str(path), as_version=4)
    bad = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and TIMING.search(c.source)
           and "remove-cell" not in c.metadata.get("tags", [])]
    assert not bad, f"{path.name}: cells {bad} print the chapter's wall time onto the page"
