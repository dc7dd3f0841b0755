"""The ledger page (`book/generated/ledger.md`) from fixture results: every status, a chapter missing, the model."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tappa_utils import book
from tappa_utils import claims as C
from tappa_utils.book.cli import main
from tappa_utils.results import save_checks, save_run_info

ROOT = Path(__file__).resolve().parents[2]


def _chapter(results: Path, stem: str, checks, model: str = "tappa-tiny") -> None:
    out = results / stem
    out.mkdir(parents=True)
    save_checks(out, checks)
    save_run_info(out, {"model": model, "seed": 0})


@pytest.fixture
def results(tmp_path) -> Path:
    """03: supported, not supported, inconclusive; 07: one claim supported at one budget, not at another (mixed);
    04: ran, with an assumption only; 05, 06, 08: no results at all."""
    r = tmp_path / "results"
    _chapter(r, "03_predictable", [
        C.claim("predictable.qsim_predictability_corr", 0.5, ci=(0.3, 0.7), p_value=0.001),
        C.claim("predictable.trained_beats_null", -0.2, ci=(-0.3, -0.1), p_value=0.9),
        C.claim("predictable.necessity", 0.75, ci=(0.5, 0.9), p_value=0.01),
        C.assumption("predictable.A_query_not_orthogonal", 0.3),
        C.measurement("heads", 24)])
    _chapter(r, "07_kv_cache", [
        C.claim("kv_cache.tappa_vs_uniform_budgets", 0.15, ci=(0.1, 0.2), p_value=0.01,
                name="TAPPA vs uniform budgets at 25 %"),
        C.claim("kv_cache.tappa_vs_uniform_budgets", -0.15, ci=(-0.2, -0.1), p_value=0.01,
                name="TAPPA vs uniform budgets at 50 %")])
    _chapter(r, "04_sinks", [C.assumption("sinks.V1_query_continuity", 0.2)])
    return r


STEMS = ["03_predictable", "04_sinks", "05_diagonal", "06_seasonal", "07_kv_cache", "08_pruning"]


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row (an escaped `\\|` does not split)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def _rows(text: str) -> dict[str, str]:
    """Ledger table rows keyed by their statement cell (unescaped); a claim's per-check rows (↳) are left out."""
    out = {}
    for line in text.splitlines():
        cells = _cells(line) if line.startswith("| ") else []
        assert not cells or len(cells) == 7, f"row with {len(cells)} cells: {line}"
        if cells and cells[0] not in ("chapter", "---", ""):
            out[re.sub(r"\\([|*_])", r"\1", cells[1])] = line
    return out


def test_ledger_rows_statuses_and_header(results):
    chapters = book.read_results(results, STEMS)
    text = book.ledger_markdown(chapters, linked={"03_predictable"})
    claims = [s for s in C.SPECS if s.kind == "claim"]
    rows = _rows(text)
    assert len(rows) == len(claims), "one row per registered claim"
    assert text.startswith("# Ledger: the paper's claims on tappa-tiny\n")

    def row(claim_id: str) -> str:
        return rows[" ".join(C.spec(claim_id).statement.split())]

    assert "✔ supported" in row("predictable.qsim_predictability_corr") and "0.5 [0.3, 0.7], p = 0.001" in \
        row("predictable.qsim_predictability_corr")
    assert "✘ not supported" in row("predictable.trained_beats_null")
    assert "? inconclusive" in row("predictable.necessity")  # ci low end 0.5 does not clear 0.5 + 0.2
    # one claim checked at two budgets: a combined status, then one labelled row per check, and the rule below
    assert "| ✔✘ mixed (1 supported, 1 not supported) | 2 checks ↓ |" in row("kv_cache.tappa_vs_uniform_budgets")
    assert "|  | ↳ 25 % |  | ✔ supported | 0.15 [0.1, 0.2], p = 0.01 |  |  |" in text
    assert "|  | ↳ 50 % |  | ✘ not supported | -0.15 [-0.2, -0.1], p = 0.01 |  |  |" in text
    assert "one combined status: supported when every check is supported" in text
    assert '<div style="overflow-x:auto">' in text  # the wide table scrolls in its own box
    assert not re.search(r"\b(?:nan|NaN|None)\b", text)
    assert "not tested (the chapter ran without it)" in row("sinks.low_freq_share")
    assert "not tested" in row("sinks.sinks_above_null")  # ch04 ran but wrote no claim
    assert "| 08 |" in row("pruning.tappa_beats_shortgpt") and "not run" in row("pruning.tappa_beats_shortgpt")
    assert row("predictable.qsim_predictability_corr").startswith("| {doc}`03 <../executed/03_predictable>` |")
    assert row("kv_cache.tappa_vs_uniform_budgets").startswith("| 07 |")  # not rendered in this book: named, not linked
    # the assumption behind the supported claim, with its status and value
    assert "`predictable.A_query_not_orthogonal` (holds, 0.3)" in row("predictable.qsim_predictability_corr")

    n_run = len(claims) - 4  # four claims above have a verdict
    assert f"**{len(claims)} claims:** 1 supported; 1 not supported; 1 inconclusive; 1 mixed; {n_run} not run." \
        in text
    assert "Chapters without results (their claims are *not run*): `05_diagonal`, `06_seasonal`, `08_pruning`." \
        in text


def test_untestable_claim_shows_a_dash_and_its_meaning(results):
    """A claim measured as NaN (not testable on this model) shows a dash, explained under the table, never 'nan'."""
    nan = float("nan")
    _chapter(results, "05_diagonal", [C.claim("diagonal.natural_periodic_diagonals", nan, ci=(nan, nan),
                                              note="not testable here")])
    text = book.ledger_markdown(book.read_results(results, STEMS))
    row = _rows(text)[re.sub(r"\s+", " ", C.spec("diagonal.natural_periodic_diagonals").statement)]
    assert _cells(row)[3:5] == ["? inconclusive", "–"]
    assert "\n– : no value (not measured" in text
    assert not re.search(r"\b(?:nan|NaN|None)\b", text)


def test_ledger_counts_follow_the_results(results):
    """Re-measuring one claim changes its row and the header's counts (nothing is typed in)."""
    _chapter(results, "08_pruning", [C.claim("pruning.tappa_beats_shortgpt", 0.1, ci=(0.05, 0.15), p_value=0.001)])
    text = book.ledger_markdown(book.read_results(results, STEMS))
    assert ":** 2 supported; 1 not supported" in text
    assert "`08_pruning`" not in text


def test_ledger_row_status():
    assert book.ledger_row_status("supported") == "supported"
    assert book.ledger_row_status("not supported; supported") == "mixed"
    assert book.ledger_row_status("inconclusive; supported") == "inconclusive"
    assert book.ledger_row_status("not run") == "not run"


def test_model_is_named_and_disagreement_shown(results, tmp_path):
    _chapter(results, "05_diagonal", [], model=str(tmp_path / "models" / "Qwen2.5-0.5B"))
    text = book.ledger_markdown(book.read_results(results, STEMS))
    assert text.splitlines()[0] == "# Ledger: the paper's claims on tappa-tiny, Qwen2.5-0.5B"
    assert "chapters disagree" in text and str(tmp_path) not in text  # no absolute path on the page
    assert book.model_label("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert book.model_label("random:tappa-tiny") == "random:tappa-tiny"


def test_unreadable_results_are_reported(results):
    (results / "06_seasonal").mkdir()
    (results / "06_seasonal" / "results.json").write_text("{not json")
    text = book.ledger_markdown(book.read_results(results, STEMS))
    assert "**Unreadable results:** 06_seasonal/results.json cannot be read" in text


def test_ledger_command_writes_the_page(results, tmp_path, capsys):
    out = tmp_path / "book" / "generated" / "ledger.md"
    (tmp_path / "book" / "executed").mkdir(parents=True)
    (tmp_path / "book" / "executed" / "07_kv_cache.ipynb").write_text("{}")
    assert main(["ledger", "--results", str(results), "--output", str(out)]) == 0
    text = out.read_text()
    assert "{doc}`07 <../executed/07_kv_cache>`" in text and "{doc}`03" not in text  # links to rendered pages only
    before = out.read_text()
    capsys.readouterr()
    assert main(["ledger", "--results", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"book: error: --results {tmp_path / 'nowhere'} does not exist")
    assert "pass --results DIR" in err[0] and out.read_text() == before  # the earlier ledger is kept
    assert main(["ledger", "--results", str(results), "--output", str(out.parent)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"book: error: --output {out.parent} is a folder")


def test_ledger_is_in_the_toc_and_linked_from_the_introduction():
    import yaml

    assert "book/generated/ledger" in book.toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    assert "{doc}`ledger <generated/ledger>`" in (ROOT / "book" / "intro.md").read_text()


def test_results_rows_round_trip(results):
    rows = json.loads((results / "03_predictable" / "results.json").read_text())
    assert {r["kind"] for r in rows} == {"claim", "assumption", "measurement"}
