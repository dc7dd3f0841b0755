"""The real-shape benchmarks measure what they say: each runs its child on the tiny default shape and returns a
row whose memory verdict follows issue 16's goal (the benchmarks themselves are run on demand, not here)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_chapters  # noqa: E402
import bench_commands  # noqa: E402
import bench_scale  # noqa: E402
import shapes_common  # noqa: E402


def test_memory_goal_is_issue_16s():
    assert shapes_common.memory_goal_gb(2.0) == pytest.approx(4.1)
    assert shapes_common.memory_goal_gb(0.0) == pytest.approx(1.5)


def test_markdown_table_has_one_row_per_measurement_and_aligned_columns():
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    text = shapes_common.markdown_table([("A", lambda r: str(r["a"])), ("B", lambda r: r["b"])], rows)
    lines = text.splitlines()
    assert lines[:2] == ["| A | B |", "|---|---|"]
    assert lines[2:] == ["| 1 | x |", "| 2 | y |"]


def test_child_without_a_row_raises_naming_it():
    with pytest.raises(RuntimeError, match="the child: exit 3, no measurement: boom"):
        shapes_common.child_row([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
                                "the child")


def test_bench_scale_measures_analyze_on_the_tiny_shape():
    cfg = json.loads((ROOT / "tappa_utils" / "assets" / "tappa-tiny" / "config.json").read_text())
    heads = cfg["num_hidden_layers"] * cfg["num_attention_heads"]
    row = bench_scale.measure("tappa-tiny", "float32", 64)
    assert row["heads"] == heads and row["tokens"] == 64
    assert 0 < row["weights_gb"] < row["peak_rss_gb"]  # the process holds the weights and more
    assert row["over_weights_gb"] == pytest.approx(row["peak_rss_gb"] - row["weights_gb"])
    assert f"| tappa-tiny | float32 | 64 | {heads} |" in bench_scale.table([row])


def test_bench_commands_runs_analyze_and_judges_memory(monkeypatch):
    row = bench_commands.measure("analyze", "tappa-tiny", "float32", 64)
    assert row["rc"] == 0 and row["peak_rss_gb"] > row["weights_gb"] > 0
    assert row["within_memory"] is (row["peak_rss_gb"] <= shapes_common.memory_goal_gb(row["weights_gb"]))
    monkeypatch.setitem(bench_commands.ONE_WINDOW, "analyze", ["--num-windows", "0"])  # refused by the command
    with pytest.raises(RuntimeError, match="analyze tappa-tiny float32: exit 2"):
        bench_commands.measure("analyze", "tappa-tiny", "float32", 64)


def test_bench_chapters_sizes_come_from_each_notebook_of_the_toc():
    from tappa_utils import book

    stems = book.chapter_stems(ROOT)
    params = {s: bench_chapters.chapter_parameters(s, "qwen2.5-0.5b", "float32", 256) for s in stems}
    assert params["03_predictable"] == {"model": "random:qwen2.5-0.5b", "dtype": "float32", "seq_len": 256,
                                        "num_windows": 1, "null_draws": 2}
    assert params["07_kv_cache"]["profile_lengths"] == [256]  # "[{seq_len}]" in the metadata


def test_bench_chapters_refuses_a_chapter_without_sizes(tmp_path, monkeypatch, capsys):
    import nbformat

    from tappa_utils import book

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: book/executed/01_x\n")
    nbformat.write(nbformat.v4.new_notebook(), str(tmp_path / "notebooks" / "01_x.ipynb"))
    with pytest.raises(book.BookError, match=r"notebooks/01_x.ipynb has no metadata tappa.bench"):
        bench_chapters.chapter_parameters("01_x", "qwen2.5-0.5b", "float32", 256, root=tmp_path)
    monkeypatch.setattr(bench_chapters, "ROOT", tmp_path)
    assert bench_chapters.main(["--chapters", "01_x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "01_x.ipynb has no metadata tappa.bench" in err


def test_specificity_benchmark_applies_the_registered_rule(default_model):
    import specificity

    from tappa_utils import claims
    from tappa_utils import patterns as pt
    from tappa_utils.data import load_text, token_windows
    from tappa_utils.metrics import MetricConfig, analyze_heads

    model, tok = default_model
    ids = token_windows(tok, load_text(model="tappa-tiny"), 96, 3)
    res = specificity.headline(model, ids[:1], ids[1:])
    assert set(res) == {"new", "ungated", "old"}
    variant, _ = pt.choose_qsim(analyze_heads(model, ids[:1], MetricConfig()))
    assert res["new"][0] == variant  # chosen on the calibration window only
    heads = analyze_heads(model, ids[1:], MetricConfig())
    assert res["ungated"][1] == pytest.approx(pt.qsim_partial(heads, variant).estimate)
    spec = claims.spec(specificity.CLAIM)
    for _, est, lo, hi, ok in res.values():
        if ok:
            assert lo <= est <= hi and lo > spec.threshold + spec.margin


def test_specificity_tally_counts_every_draw_and_flags_unspecific_claims():
    """A claim supported on 2 of 20 draws misses the goal, on 1 meets it; draws without the claim are not run."""
    import specificity_chapters as sc

    rows = ([{"claim": "sinks.sinks_above_null", "status": "supported"}] * 2
            + [{"claim": "sinks.sinks_above_null", "status": "inconclusive"}] * 18
            + [{"claim": "diagonal.diagonals_above_null", "status": "supported"}]
            + [{"claim": "diagonal.diagonals_above_null", "status": "not supported"}] * 9)
    table = {r["claim"]: r for r in sc.tally(rows, 20)}
    assert table["sinks.sinks_above_null"]["supported"] == 2 and not table["sinks.sinks_above_null"]["specific"]
    diag = table["diagonal.diagonals_above_null"]
    assert (diag["supported"], diag["not supported"], diag["not run"], diag["specific"]) == (1, 9, 10, True)
    text = sc.markdown(list(table.values()))
    assert "| `sinks.sinks_above_null` | 2 of 20 | 0 | 18 | 0 | MISSED |" in text
    assert "predictable.necessity" not in text  # never run: left out of the table
    violated = sc.tally([{"claim": "sinks.sinks_above_null", "status": "supported, assumptions violated"}] * 2, 20)
    assert next(r for r in violated if r["claim"] == "sinks.sinks_above_null")["supported"] == 2  # the test passed
    resonance = sc.tally([{"claim": "seasonal.resonance_helps", "status": "supported"}] * 20, 20)
    row = next(r for r in resonance if r["claim"] == "seasonal.resonance_helps")
    line = sc.markdown([row]).splitlines()[-1]
    assert "| 20 of 20 | 0 | 0 | 0 | does not apply (holds on any weights: RoPE resonance" in line
    assert line.replace("\\|", "").count("|") == 7  # the reason's |delta| is escaped: one row, six cells
