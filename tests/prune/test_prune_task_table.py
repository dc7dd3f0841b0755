"""The pruning task benchmark: one command runs prune-eval with the tasks (once: a finished run is reused) and its
manifest reads the run's own tables: a row per k, a column per distinct order, Wilson intervals, TAPPA's tests."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import prune_task_table as B  # noqa: E402

from tappa_utils.prune import report as R  # noqa: E402

SMALL = ["--seq-len", "80", "--calib-chunks", "2", "--calib-stride", "40", "--eval-windows", "4",
         "--copy-windows", "2", "--copy-seg-len", "8", "--max-removed", "3", "--beta-grid", "0,0.5,5",
         "--task-prompts", "6", "--passkey-tokens", "160", "--random-draws", "2", "--no-figures"]


def test_options_override_the_defaults_one_by_one():
    args, extra = B.parse(["--out", "o", "--model", "m", "--", "--max-removed", "3", "--device", "cuda"])
    argv = B.prune_eval_argv(args, extra)
    assert argv[:4] == ["--out", "o", "--model", "m"]
    assert argv.count("--max-removed") == 1 and argv[argv.index("--max-removed") + 1] == "3"
    assert argv[argv.index("--passkey-tokens") + 1] == "1024" and argv[-2:] == ["--device", "cuda"]


def test_one_command_makes_the_table_and_reuses_a_finished_run(tmp_path, capsys):
    out = tmp_path / "prune"
    assert B.main(["--out", str(out), "--model", "tappa-tiny", "--", *SMALL]) == 0
    made = (out / "results.json").stat().st_mtime_ns
    manifest = (out / "MANIFEST.md").read_text()
    cmd = json.loads((out / "command.json").read_text())
    assert "prune-eval --out" in cmd["command"] and "--tasks facts,passkey" in cmd["command"]
    assert (out / "removed_layers.png").read_bytes()[:4] == b"\x89PNG"
    results = pd.read_csv(out / "results.csv")
    tables = R.measure_tables(out)
    loss = tables["held-out loss (nats per byte, lower is better)"]
    assert list(loss.index) == [0, 1, 2, 3] and "last layers" in loss.columns
    shortgpt = next(c for c in loss.columns if c.startswith("ShortGPT"))
    want = results[(results.method == "ShortGPT") & (results.n_removed == 2)].nats_per_byte.iloc[0]
    assert loss.loc[2, shortgpt] == f"{want:.3f}"  # the manifest's number is the run's
    fam = [t for t in tables if t.startswith("pass-key")]
    assert fam and "n = 6 prompts (12 for the pooled random draws)" in fam[0]
    acc = pd.read_csv(out / "task_accuracy.csv")
    row = acc[(acc.method == "last layers") & (acc.n_removed == 3) & (acc.family == "facts")].iloc[0]
    facts = tables[next(t for t in tables if t.startswith("factual"))]
    assert facts.loc[3, "last layers"] == f"{row.accuracy:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"
    assert "- vs ShortGPT, loss: 3 values of k" in manifest and "- vs random, tasks: 3 values of k" in manifest
    comp = pd.read_csv(out / "comparisons.csv")
    for line, (_, g) in zip(R.comparison_lines(out), comp.groupby(["against", "measure"], sort=False)):
        below = ", ".join(map(str, g[(~g.tie) & (g.ci_high < 0)].n_removed)) or "none"
        assert line.endswith(f"interval below zero (TAPPA worse) at k = {below}.")
    assert "| last layers | 5 4 3 |" in manifest  # tappa-tiny has 6 layers: the last three go first
    capsys.readouterr()
    assert B.main(["--out", str(out), "--model", "tappa-tiny", "--", *SMALL]) == 0
    assert "holds a finished run" in capsys.readouterr().out
    assert (out / "results.json").stat().st_mtime_ns == made


def test_report_only_needs_a_finished_run(tmp_path):
    with pytest.raises(SystemExit, match="no finished prune-eval run"):
        B.main(["--out", str(tmp_path), "--report-only"])


def test_the_chapter_finds_the_newest_shipped_run_of_its_model(tmp_path):
    import shutil

    assert R.shipped_task_run("tappa-tiny", tmp_path) is None
    out = tmp_path / "run"
    B.main(["--out", str(out), "--model", "tappa-tiny", "--", *SMALL, "--max-removed", "1", "--task-prompts", "2"])
    for day in ("2026-12-01", "2026-12-04"):
        shutil.copytree(out, tmp_path / "artifacts" / f"prune-tasks-{day}")
    folder, res = R.shipped_task_run("tappa-tiny", tmp_path)
    assert folder.name == "prune-tasks-2026-12-04" and res["n_layers"] == 6
    assert R.shipped_task_run("SmolLM2-135M-Instruct", tmp_path) is None
