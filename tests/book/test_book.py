"""The book build logic: parameter parsing, toc handling, failure reports, hidden cells, README table, reference."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tappa_utils import book

ROOT = Path(__file__).resolve().parents[2]


def _notebook(path: Path, params: str, *cells: str) -> Path:
    nb = new_notebook(cells=[new_markdown_cell("# t"), new_code_cell(params, metadata={"tags": ["parameters"]}),
                             *[new_code_cell(c) for c in cells]])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def test_parse_parameters():
    src = 'model = "a#b"  # the model\nn = [1, 2]  # sizes | with pipe\n# a comment line\nx: int = 3  # typed\n'
    params = book.parse_parameters(src)
    assert [(p.name, p.default, p.description) for p in params] == [
        ("model", '"a#b"', "the model"), ("n", "[1, 2]", "sizes | with pipe"), ("x", "3", "typed")]


@pytest.mark.parametrize("src, problem", [
    ("a = 1\n", "no trailing"),
    ("a = (1,\n     2)  # x\n", "several lines"),
    ("print(1)  # x\n", "not an assignment"),
    ("a, b = 1, 2  # x\n", "name = value"),
    ("a = = 1\n", "not valid Python"),
])
def test_parse_parameters_rejects(src, problem):
    with pytest.raises(book.BookError, match=problem):
        book.parse_parameters(src)


def test_parameters_cell_must_be_unique():
    nb = new_notebook(cells=[new_code_cell("a = 1  # x")])
    with pytest.raises(book.BookError, match="found 0"):
        book.parameters_cell(nb)
    nb.cells = [new_code_cell("a = 1  # x", metadata={"tags": ["parameters"]})] * 2
    with pytest.raises(book.BookError, match="found 2"):
        book.parameters_cell(nb)


def test_real_toc_lists_every_notebook_once_in_number_order():
    """`_toc.yml` is the one list of chapters: each notebook once, in the order of their numbers, each one existing."""
    stems = book.chapter_stems(ROOT)
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert stems == notebooks, f"_toc.yml lists {stems}, notebooks/ holds {notebooks}"
    assert stems[0] == "00_reading" and book.existing_chapters(ROOT, warn=False) == stems
    files = book.toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    assert files[0] == "book/intro" and files[-2:] == ["book/generated/reference", "book/bibliography"]


def test_toc_numbers_chapter_nn_as_nn():
    """Numbered parts are numbered continuously (sphinx-multitoc-numbering): notebooks/NN_x is chapter NN."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    number = 0
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            stem = Path(chapter["file"]).name
            if part.get("numbered"):
                number += 1
                assert stem[:2] == f"{number:02d}", f"{stem} would be numbered {number} in the sidebar"
            elif stem[:2].isdigit():
                assert stem.startswith("00_"), f"{stem} is in an unnumbered part"
    assert number == sum(not s.startswith("00_") for s in book.chapter_stems(ROOT))  # every chapter but 00


def test_effective_toc_drops_missing_chapters_and_empty_parts():
    toc = {"format": "jb-book", "root": "intro", "parts": [
        {"caption": "A", "chapters": [{"file": "x/1"}, {"file": "x/2"}]},
        {"caption": "B", "chapters": [{"file": "x/3"}]},
        {"caption": "C", "chapters": [{"file": "x/4", "sections": [{"file": "x/5"}]}]}]}
    out = book.effective_toc(toc, {"x/2", "x/4"})
    assert book.toc_files(out) == ["intro", "x/2", "x/4"]
    assert [p["caption"] for p in out["parts"]] == ["A", "C"]
    assert "sections" not in out["parts"][1]["chapters"][0]
    assert book.toc_files(toc) == ["intro", "x/1", "x/2", "x/3", "x/4", "x/5"]  # input untouched


def _fake_root(tmp_path: Path) -> Path:
    toc = {"format": "jb-book", "root": "book/intro", "chapters": [
        {"file": "book/executed/00_a"}, {"file": "book/executed/01_b"}, {"file": "book/generated/reference"}]}
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump(toc))
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# intro\n")
    _notebook(tmp_path / "notebooks" / "00_a.ipynb", 'model = "m|n"  # the model\nseed = 0  # seed\n')
    (tmp_path / "README.md").write_text(f"# R\n\n{book.README_START}\nold\n{book.README_END}\n\ntail\n")
    return tmp_path


def test_missing_chapters_are_skipped_with_a_warning(tmp_path, capsys):
    root = _fake_root(tmp_path)
    assert book.existing_chapters(root) == ["00_a"]
    assert "01_b.ipynb is listed in _toc.yml but does not exist" in capsys.readouterr().err
    toc = yaml.safe_load(book.write_effective_toc(root, ["00_a"]).read_text())
    assert book.toc_files(toc) == ["book/intro", "book/executed/00_a"]  # reference.md not written yet: dropped


def test_params_table_and_readme_update(tmp_path):
    root = _fake_root(tmp_path)
    table = book.params_table(root)
    assert table.splitlines()[2] == '| 00_a | `model` | `"m\\|n"` | the model |'
    assert book.update_readme(root) is True
    text = (root / "README.md").read_text()
    assert book.readme_params_table(text) == table and text.endswith("\n\ntail\n")
    assert book.update_readme(root) is False
    with pytest.raises(book.BookError, match="markers"):
        book.readme_params_table("no markers")


def test_reference_parameters_table_is_a_book_table(tmp_path):
    """The reference page's parameter table goes through tappa_utils.tables: a scrolling box, `|` and `_` escaped."""
    from tappa_utils import tables
    from tappa_utils.book.reference import parameters_table

    text = parameters_table(_fake_root(tmp_path))
    assert text.startswith(tables.SCROLL_OPEN) and tables.SCROLL_CLOSE in text
    assert '| 00\\_a | `model` | `"m\\|n"` | the model |' in text.splitlines()


def test_execute_reports_the_failing_cell_and_hides_parameters(tmp_path):
    ok = _notebook(tmp_path / "ok.ipynb", "x = 1  # x", "y = x + 1")
    assert book.execute_notebook(ok, tmp_path / "out" / "ok.ipynb", {"x": 5}, cwd=tmp_path, timeout=120) is None
    assert book.hide_parameter_cells(tmp_path / "out" / "ok.ipynb") == 2
    cells = nbformat.read(str(tmp_path / "out" / "ok.ipynb"), as_version=4).cells
    tagged = [c.metadata.tags for c in cells if "remove-cell" in c.metadata.get("tags", [])]
    assert sorted(t[0] for t in tagged) == ["injected-parameters", "parameters"]

    bad = _notebook(tmp_path / "bad.ipynb", "x = 1  # x", "y = 2", "z = x / 0  # boom\nprint(z)")
    out = tmp_path / "out" / "bad.ipynb"
    failure = book.execute_notebook(bad, out, {"x": 3}, cwd=tmp_path, timeout=120)
    assert failure is not None and not out.exists()
    assert failure.cell_index == 3  # index in bad.ipynb, not counting papermill's injected cell
    assert "z = x / 0" in failure.source_head and "ZeroDivisionError" in failure.error
    assert Path(failure.executed_copy).exists()
    text = failure.describe()
    assert "bad.ipynb" in text and "cell 3" in text


def test_reference_page_covers_api_cli_models_and_pins():
    from tappa_utils import models
    from tappa_utils.__main__ import COMMANDS

    text = book.reference_markdown(ROOT)
    for command in COMMANDS:
        assert f"### `{command}`" in text
    for model_type in models.SUPPORTED_MODEL_TYPES:
        assert f"`{model_type}`" in text
    assert "def channel_periods(model)" in text and "class Check(" in text
    assert "torch==" in text and "| notebook | parameter | default | description |" in text


def test_main_rejects_unknown_chapters(capsys):
    from tappa_utils.book.cli import main

    assert main(["execute", "99_nope"]) == 2
    assert "unknown chapter" in capsys.readouterr().err
    assert main(["build", "--only", "00_reading", "99_nope"]) == 2
    assert "99_nope" in capsys.readouterr().err
