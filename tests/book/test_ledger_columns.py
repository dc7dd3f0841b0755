"""The ledger across models (this book, tappa-tiny, the random-weight null), its columns' runs and README's findings."""
from __future__ import annotations

from pathlib import Path

import pytest

from tappa_utils import claims as C
from tappa_utils.book import columns as K
from tappa_utils.book import ledger as G
from tappa_utils.book.cli import main
from tappa_utils.results import save_checks, save_run_info

STEMS = ["03_predictable", "04_sinks", "05_diagonal", "06_seasonal", "07_kv_cache", "08_pruning"]
ROOT = Path(__file__).resolve().parents[2]


def _book(base: Path, model: str, corr: tuple[float, tuple[float, float], float], sinks: str | None) -> Path:
    r = base / "results"
    (r / "03_predictable").mkdir(parents=True)
    m, ci, p = corr
    save_checks(r / "03_predictable", [C.claim("predictable.qsim_predictability_corr", m, ci=ci, p_value=p)])
    save_run_info(r / "03_predictable", {"model": model, "seed": 0})
    if sinks:
        (r / "04_sinks").mkdir(parents=True)
        value, ci, p = {"yes": (0.4, (0.3, 0.5), 0.001), "no": (-0.1, (-0.2, -0.05), 0.9)}[sinks]
        save_checks(r / "04_sinks", [C.claim("sinks.sinks_above_null", value, ci=ci, p_value=p)])
        save_run_info(r / "04_sinks", {"model": model, "seed": 0})
    return r


@pytest.fixture
def books(tmp_path) -> dict[str, Path]:
    """SmolLM2: headline not supported, sinks supported; tappa-tiny: both supported; the null: both not supported."""
    return {"main": _book(tmp_path / "a", "smollm2-135m", (-0.3, (-0.4, -0.2), 0.99), "yes"),
            "tappa-tiny": _book(tmp_path / "b", "tappa-tiny", (0.5, (0.3, 0.7), 0.001), "yes"),
            "null": _book(tmp_path / "c", "random:tappa-tiny", (0.01, (-0.1, 0.1), 0.4), "no")}


def _row(text: str, claim: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| `{claim}`"))
    return [c.strip() for c in line.strip()[1:-1].split(" | ")]


def test_across_models_has_a_column_per_model_with_effects(books, tmp_path):
    """One row per registered claim, one column per model, each cell the verdict and the effect [interval]; the
    counts per model and the claims whose verdicts differ are written above and below the table."""
    out = tmp_path / "ledger.md"
    G.write_ledger(books["main"], STEMS, out, others={"tappa-tiny": books["tappa-tiny"], "null": books["null"]})
    text = out.read_text()
    assert "## Across models" in text
    assert "| claim (its statement: the table below) | SmolLM2-135M-Instruct | tappa-tiny | null (" in text
    head = _row(text, "predictable.qsim_predictability_corr")
    assert "not supported" in head[1] and "[-0.4, -0.2]" in head[1]
    assert head[2].startswith("✔ supported") and "0.5 [0.3, 0.7]" in head[2]
    assert "inconclusive" in head[3]
    sinks = _row(text, "sinks.sinks_above_null")
    assert "✔ supported" in sinks[1] and "✔ supported" in sinks[2] and "not supported" in sinks[3]
    assert "- **SmolLM2-135M-Instruct:** 1 supported; 1 not supported" in text
    assert "- **tappa-tiny:** 2 supported; 0 not supported" in text
    assert "**Verdicts that differ between models:** 2 (`predictable.qsim_predictability_corr`, " \
           "`sinks.sinks_above_null`)." in text
    assert "## On SmolLM2-135M-Instruct" in text  # the detailed table stays the main book's


def test_ledger_command_merges_books_and_refuses_bad_specs(books, tmp_path, capsys):
    """`book ledger --book LABEL=DIR` adds a column per book; a malformed spec or a missing folder is one line,
    exit 2, nothing written."""
    out = tmp_path / "merged.md"
    assert main(["ledger", "--results", str(books["main"]), "--book", f"tiny={books['tappa-tiny']}",
                 "--output", str(out)]) == 0
    assert "| tiny (tappa-tiny) |" in out.read_text()
    bad = tmp_path / "bad.md"
    for spec in ("tiny", f"={books['null']}", f"x={tmp_path / 'nowhere'}"):
        assert main(["ledger", "--results", str(books["main"]), "--book", spec, "--output", str(bad)]) == 2
        assert "--book" in capsys.readouterr().err and not bad.exists()


def test_findings_block_counts_per_model_and_names_supported_claims(books, tmp_path):
    """README's findings: counts per model, one line per claim chapter naming what each model supports; the
    block is replaced between its markers only, and a README without them is refused."""
    read = {k: G.read_results(v, STEMS) for k, v in books.items()}
    block = G.findings_markdown(read, {"03_predictable": "Predictable patterns", "04_sinks": "Sinks",
                                       "01_default_model": "The two models"})
    assert "- **SmolLM2-135M-Instruct:** 1 supported; 1 not supported" in block
    assert "- **Sinks:** SmolLM2-135M-Instruct 1/4 supported (sinks_above_null); tappa-tiny 1/4 supported " \
           "(sinks_above_null); random:tappa-tiny 0/4 supported." in block
    assert "The two models" not in block  # no claims of its own
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n{G.FINDINGS_START}\nold\n{G.FINDINGS_END}\n\nrest\n")
    assert G.update_readme_findings(readme, block) and "old" not in readme.read_text()
    assert readme.read_text().endswith(f"{G.FINDINGS_END}\n\nrest\n") and block in readme.read_text()
    assert not G.update_readme_findings(readme, block)  # unchanged: not rewritten
    readme.write_text("# no markers\n")
    with pytest.raises(Exception, match="findings markers"):
        G.update_readme_findings(readme, block)


def test_columns_read_each_chapters_tiny_sizes():
    """Every claim chapter states its tappa-tiny sizes (metadata tappa.tiny), which the columns run with their
    own model; the smoke sizes of every chapter run on tappa-tiny (the tests' model)."""
    from tappa_utils.book.layout import existing_chapters
    from tappa_utils.book.nullbook import claim_chapters
    from tappa_utils.book.params import smoke_parameters

    for stem in claim_chapters(ROOT):
        for col in K.COLUMNS:
            params = K.column_parameters(ROOT, stem, col)
            assert params is not None, f"{stem} has no tappa.tiny metadata"
            assert params["model"] == col.model
    for stem in existing_chapters(ROOT, warn=False):
        assert smoke_parameters(ROOT, stem).get("model") == "tappa-tiny", stem


def test_readme_has_the_findings_markers():
    """`make book` rewrites README's findings block: the markers are there, findings first."""
    text = (ROOT / "README.md").read_text()
    assert G.FINDINGS_START in text and G.FINDINGS_END in text
    assert text.index(G.FINDINGS_START) < text.index("The two commands")


def test_every_chapter_defaults_to_the_book_model():
    """The default book runs on SmolLM2-135M-Instruct: every chapter's `model` parameter says so."""
    from tappa_utils.book.layout import existing_chapters, notebook_path
    from tappa_utils.book.params import notebook_parameters

    for stem in existing_chapters(ROOT, warn=False):
        got = {p.name: p.default for p in notebook_parameters(notebook_path(stem, ROOT))}
        assert got["model"] == repr(K.BOOK_MODEL).replace("'", '"'), stem


def test_status_counts_add_up_to_the_claims_with_assumption_violations_named():
    from collections import Counter

    counts = Counter({"supported": 1, "supported, assumptions violated": 2, "inconclusive": 3})
    text = G.status_counts(counts)
    assert text == "1 supported; 2 supported, assumptions violated; 0 not supported; 3 inconclusive; 0 not run"
    assert "mixed" not in text and sum(int(p.split()[0]) for p in text.split("; ")) == 6
