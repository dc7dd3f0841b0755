"""The rendered-book check: every rule fires on its bad fixture and stays silent on the good pages; a real
Jupyter Book build (the project's own _config.yml) is checked end to end; the built book, when there is one."""
from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from tappa_utils.book import html_check as hc
from tappa_utils.tables import markdown_table

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "html_check"


def test_good_fixture_pages_are_clean():
    problems = hc.check_html(FIXTURES / "good")
    assert problems == [], "\n".join(map(str, problems))
    assert sorted(p.name for p in hc.html_pages(FIXTURES / "good")) == ["chapter.html", "index.html"]


@pytest.mark.parametrize("rule", sorted(hc.RULES))
def test_each_rule_fires_on_its_bad_fixture_and_only_it(rule):
    path = FIXTURES / "bad" / f"{rule}.html"
    assert path.is_file(), f"rule {rule} has no bad fixture {path}"
    problems = hc.check_page(path.read_text(), path.name, path)
    assert {p.rule for p in problems} == {rule}, "\n".join(map(str, problems))
    assert all(str(p).startswith(f"{rule}.html: {rule}: ") for p in problems)


def test_every_bad_fixture_belongs_to_a_rule():
    assert {p.stem for p in (FIXTURES / "bad").glob("*.html")} == set(hc.RULES)


@pytest.mark.parametrize("tex, reason", [
    (r"m^\* = 1", r"'\*'"),
    (r"\frac{a}{b", "unbalanced braces"),
    (r"a}{b", "unbalanced braces"),
    (r"\left( x", r"1 \left but 0 \right"),
    (r"\left( x \right", r"no delimiter after \right"),
    (r"\begin{aligned} a \end{array}", r"\end{array} does not match"),
    (r"\begin{aligned} a", r"\begin{aligned} without \end"),
    (r"x^2^3", "double superscript"),
    (r"x_{i}_j", "double subscript"),
])
def test_tex_problems_finds_what_mathjax_cannot_typeset(tex, reason):
    assert any(reason in r for r in hc.tex_problems(tex)), hc.tex_problems(tex)


@pytest.mark.parametrize("tex", [
    r"m^{*} = \min\{ m : 2\pi/\theta_m \ge L \}", r"\left( \frac{a}{b} \right)^{2}", r"x_i^2 + x^{a}_{b}",
    r"\begin{aligned} a &= b \\ c &= d \end{aligned}", r"\{ \} \\ \rightarrow \leftarrow", r"q_t^\top R(t-j)\, k_j",
])
def test_tex_problems_accepts_valid_tex(tex):
    assert hc.tex_problems(tex) == []


def test_raw_tex_ignores_currency_code_and_urls():
    page = """<article class="bd-article"><p>A GPU costs $2 to $3, or $5-$10.</p>
    <p><code class="docutils literal">$x$</code> is how you write it; see https://example.org/tmp/x</p></article>"""
    assert hc.check_page(page, "p.html") == []


@pytest.mark.parametrize("text, found", [
    ("nan", True), ("(nan, nan)", True), ("NaN", True), ("None", True), ("[0.1, None]", True), ("<NA>", True),
    ("none", False), ("dominant channel", False), ("None of the heads", False), ("–", False), ("Nonetheless", False),
])
def test_nan_cell_pattern(text, found):
    assert bool(hc.NAN_CELL.search(text)) is found


@pytest.mark.parametrize("text, digits", [
    ("0.41234567891234567", 17), ("1234567.5", 8), ("0.001234", 4), ("1.5e-07", 2), ("-0.1234567", 7),
])
def test_significant_digits(text, digits):
    assert [m.group(0) for m in hc.LONG_FLOAT.finditer(text)] == [text]
    assert hc.significant_digits(text) == digits


@pytest.mark.parametrize("text", ["1234567", "1,234,567", "v1.2.3", "0.123", "L12 H3", "[0.2, 0.6]"])
def test_long_float_ignores_integers_versions_and_short_numbers(text):
    assert not [m for m in hc.LONG_FLOAT.finditer(text) if hc.significant_digits(m.group(0)) >= 7]


def test_helper_tables_pass_and_narrow_tables_need_no_box():
    """What `tappa_utils.tables` builds passes every table rule; a narrow table needs no scrolling box."""
    from markdown_it import MarkdownIt

    from tappa_utils import tables as T

    rows = [{"check": "Spearman(|delta|, rel) of `q_sim|x`", "value": 0.41234567891234567, "ci": (float("nan"), 1.0),
             **{f"column_with_a_long_name_{i}": "unbreakable_identifier_of_a_check" for i in range(5)}}]
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(T.markdown_table(rows))
    page = f'<article class="bd-article"><div class="cell_output">{html}</div></article>'
    assert hc.check_page(page, "p.html") == []
    bare = page.replace('<div style="overflow-x:auto">', '<div class="pst-scrollable-table-container">')  # theme's
    assert [p.rule for p in hc.check_page(bare, "p.html")] == ["table-scroll"]
    narrow = '<article class="bd-article"><div class="pst-scrollable-table-container"><table><tr><th>a</th></tr>' \
             '<tr><td>a long sentence of many short words that wraps in its column</td></tr></table></div></article>'
    assert hc.check_page(narrow, "p.html") == []


def test_command_line_exit_status_and_one_line_per_problem(tmp_path, capsys):
    book = tmp_path / "html"
    shutil.copytree(FIXTURES / "good", book)
    assert hc.main([str(book)]) == 0
    shutil.copy(FIXTURES / "bad" / "stderr.html", book / "book" / "noisy.html")
    assert hc.main([str(book)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("book/noisy.html: stderr: 'Token indices sequence length is longer")
    assert lines[-1] == "check-html: 1 problem(s) on 1 page(s)"
    assert hc.main([str(tmp_path / "nothing")]) == 2


def test_book_cli_dispatches_check_html(tmp_path):
    shutil.copytree(FIXTURES / "good", tmp_path / "html")
    proc = subprocess.run([sys.executable, "-m", "tappa_utils.book", "check-html", str(tmp_path / "html")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "check-html: no problems" in proc.stdout, proc.stdout + proc.stderr


def test_a_page_of_random_bytes_is_reported_as_not_html(tmp_path, capsys):
    import random

    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_bytes(random.Random(0).randbytes(4096))
    problems = hc.check_html(html)
    assert [(p.page, p.rule) for p in problems] == [("index.html", "not-html")]
    assert "bytes are not UTF-8 text" in problems[0].detail
    assert hc.run(html) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("index.html: not-html: the page is not HTML") and out[-1] != "check-html: no problems"
    (html / "index.html").write_text("just some words, no markup at all\n")  # text, but no page either
    assert [p.rule for p in hc.check_html(html)] == ["not-html"]


# ------------------------------------------------------------------------------------ a real rendered book

PNG = base64.b64encode((FIXTURES / "good" / "_images" / "fig.png").read_bytes()).decode()


def _chapter(path: Path, cells) -> None:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def _code(source: str, *outputs) -> object:
    cell = new_code_cell(source, execution_count=1)
    cell.outputs = list(outputs)
    return cell


def test_check_on_a_book_rendered_with_the_projects_config(tmp_path):
    """Jupyter Book renders two executed chapters with our _config.yml; the clean one passes, the noisy one
    shows each planted problem. Also checks numbering, MyST Markdown outputs and the bibliography."""
    for name in ("_config.yml", "references.bib"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "book").mkdir()
    shutil.copy(ROOT / "book" / "bibliography.md", tmp_path / "book" / "bibliography.md")
    (tmp_path / "book" / "intro.md").write_text("# Test book\n\nCited: {cite}`yang2026tappa`.\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nparts:\n  - caption: Start\n    chapters:\n      - file: book/zero\n"
        "  - caption: Main\n    numbered: true\n    chapters:\n      - file: book/clean\n      - file: book/noisy\n"
        "  - caption: Back\n    chapters:\n      - file: book/bibliography\n")
    _chapter(tmp_path / "book" / "zero.ipynb", [new_markdown_cell("# Reading this book\n\nUnnumbered.")])
    _chapter(tmp_path / "book" / "clean.ipynb", [
        new_markdown_cell("(ch-clean)=\n# Clean\n\nThe score $q_t^\\top k_j$ and\n\n```{math}\n:label: eq-a\n"
                          "a^{*} = 1\n```\n\nas {eq}`eq-a` says; the figure below shows it."),
        _code("plot()", new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})),
        _code("display(Markdown(text))", new_output("display_data", data={
            "text/markdown": "Sink mass $\\ge 0.3$ in **5** heads.\n\n| head | mass |\n|---|---|\n| L5H3 | 0.55 |",
            "text/plain": "<Markdown>"})),
        _code("print(x)", new_output("stream", name="stdout", text="mean 0.41\n")),
        _code("display(Markdown(markdown_table(rows)))", new_output("display_data", data={
            "text/markdown": markdown_table([{"check": "Spearman(|delta|) of `q_sim|x`", "ci": (None, 0.5),
                                              **{f"column_{i}": f"unbreakable_identifier_number_{i}"
                                                 for i in range(5)}}]),
            "text/plain": "<Markdown>"})),
    ])
    _chapter(tmp_path / "book" / "noisy.ipynb", [
        new_markdown_cell("# Noisy\n\nThe plot below shows the sinks.\n\n$$m^\\* = 1$$"),
        _code("tok(text)", new_output("stream", name="stderr", text="Token indices sequence length is longer\n")),
        _code("print(s)", new_output("stream", name="stdout",
                                     text="mass $\\ge$ 0.3 saved to /tmp/run/fig.png\n" + "x" * 120 + "\n")),
        _code("df", new_output("display_data", data={
            "text/html": '<table border="1" class="dataframe"><thead><tr><th></th><th>measured</th><th>ci</th></tr>'
                         '</thead><tbody><tr><th>0</th><td>0.41234567891234567</td><td>(nan, nan)</td></tr></tbody>'
                         '</table>', "text/plain": "df"})),
        _code("display(Markdown(text))", new_output("display_data", data={
            "text/markdown": "| " + " | ".join(f"unbreakable_identifier_number_{i}" for i in range(6)) + " |\n"
                             + "|---" * 6 + "|\n" + "| a " * 6 + "|", "text/plain": "<Markdown>"})),
        _code("1/0", new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[
            "Traceback (most recent call last)", "ZeroDivisionError: division by zero"])),
    ])
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())", "build",
           str(tmp_path), "--path-output", str(tmp_path), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    html = tmp_path / "_build" / "html"

    problems = hc.check_html(html)
    by_page: dict[str, set[str]] = {}
    for p in problems:
        by_page.setdefault(p.page, set()).add(p.rule)
    assert by_page.get("book/clean.html") is None, "\n".join(str(p) for p in problems if "clean" in p.page)
    assert by_page["book/noisy.html"] == {"figure-ref", "mathjax", "stderr", "raw-tex", "abs-path", "wide-output",
                                          "traceback", "dataframe", "long-float", "nan-cell", "table-scroll"}, \
        "\n".join(map(str, problems))
    assert set(by_page) == {"book/noisy.html"}

    clean = (html / "book" / "clean.html").read_text()
    assert '<span class="section-number">1. </span>Clean' in clean  # first numbered chapter; zero is unnumbered
    assert '<span class="section-number">2. </span>Noisy' in (html / "book" / "noisy.html").read_text()
    assert "<h1>Reading this book<" in (html / "book" / "zero.html").read_text()  # no number
    assert "(1.1)" in clean  # numbered, labelled equation
    assert "pst-scrollable-table-container" in clean  # the Markdown output's table was parsed (MyST), not left raw
    assert '<div style="overflow-x:auto">' in clean  # tappa_utils.tables' scrolling box reaches the page
    assert "<code class=\"docutils literal notranslate\"><span class=\"pre\">q_sim|x</span></code>" in clean
    bibliography = (html / "book" / "bibliography.html").read_text()
    assert "Why attention patterns exist" in bibliography and "SnapKV" in bibliography
    assert 'href="bibliography.html#' in (html / "book" / "intro.html").read_text()  # {cite} resolved


def test_the_built_book_is_clean():
    """The book `make book` built last (skipped when there is none)."""
    html = ROOT / "_build" / "html"
    if not (html / "index.html").is_file():
        pytest.skip("no built book in _build/html (run `make book`)")
    problems = hc.check_html(html)
    assert problems == [], f"{len(problems)} problem(s):\n" + "\n".join(map(str, problems))


def test_nan_cell_ignores_none_shown_as_code():
    def page(cell: str) -> str:
        return (f'<article class="bd-article"><div style="overflow-x:auto"><table><tr><th>parameter</th>'
                f'<th>default</th></tr><tr><td>layers</td><td>{cell}</td></tr></table></div></article>')

    assert [p.rule for p in hc.check_page(page("None"), "p.html")] == ["nan-cell"]
    assert hc.check_page(page('<code class="docutils literal">None</code> (all layers)'), "p.html") == []
