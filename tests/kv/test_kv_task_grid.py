"""The grid benchmark runs its chunks once (resuming an interrupted run), numbers samples across chunks, and its
manifest states TAPPA's rank and the Holm-corrected comparisons of the combined samples."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import kv_task_grid as G  # noqa: E402


def _fake_kv_tasks(calls):
    def run(argv):
        a = dict(zip(argv[::2], argv[1::2]))
        seed, n, out = int(a["--seed"]), int(a["--samples"]), Path(a["--out"])
        calls.append(seed)
        rng = np.random.default_rng(seed)
        rows = []
        for i in range(n):
            rows.append({"task": "needle_passkey", "length": 1024, "sample": i, "method": "full", "keep": 1.0,
                         "correct": 1})
            for keep in (0.5, 0.9):
                rows += [{"task": "needle_passkey", "length": 1024, "sample": i, "method": "tappa", "keep": keep,
                          "correct": 1},
                         {"task": "needle_passkey", "length": 1024, "sample": i, "method": "snapkv", "keep": keep,
                          "correct": int(rng.random() < 0.2)}]
        out.mkdir(parents=True)
        pd.DataFrame(rows).to_csv(out / "samples.csv", index=False)
        return 0
    return run


def test_chunks_resume_combine_and_the_manifest_reads_the_results(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(G, "kv_tasks", _fake_kv_tasks(calls))
    out = tmp_path / "grid"
    argv = ["--out", str(out), "--samples", "25", "--chunk", "10", "--methods", "tappa", "snapkv",
            "--keep", "0.5", "0.9"]
    (out / "chunks" / "seed1").mkdir(parents=True)  # an interrupted run: chunk 2 finished before
    _fake_kv_tasks([])(["--seed", "1", "--samples", "10", "--out", str(out / "chunks" / "seed1x")])
    (out / "chunks" / "seed1x" / "samples.csv").rename(out / "chunks" / "seed1" / "samples.csv")
    (out / "chunks" / "seed1x").rmdir()
    assert G.main(argv) == 0
    assert calls == [0, 2]  # chunk seed 1 reused; the last chunk holds the 5 left
    samples = pd.read_csv(out / "samples.csv")
    assert samples["sample"].nunique() == 25 and set(samples.chunk_seed) == {0, 1, 2}
    acc = pd.read_csv(out / "accuracy.csv").set_index(["method", "keep"])
    assert acc.loc[("tappa", 0.5), "accuracy"] == 1 and acc.loc[("snapkv", 0.5), "accuracy"] < 0.5
    comp = pd.read_csv(out / "comparisons.csv")
    assert (comp.p_holm >= comp.p).all() and (comp.p_holm < 0.05).all()
    manifest = (out / "MANIFEST.md").read_text()
    assert "keep 50%: tappa rank 1 of 2; first: tappa (1.00)" in manifest
    assert "2 of 2 differences are significant after Holm" in manifest
    assert "snapkv, needle_passkey 1024, keep 50% (+" in manifest  # each names its task and length
    calls.clear()
    assert G.main(argv + ["--combine-only"]) == 0 and calls == []


def test_unknown_method_is_refused_in_one_line(capsys):
    import pytest
    with pytest.raises(SystemExit):
        G.parse(["--out", "x", "--methods", "h2o"])
    assert "unknown method(s) ['h2o']" in capsys.readouterr().err


def test_the_chapter_finds_the_newest_shipped_grid_of_its_model(tmp_path, monkeypatch):
    from tappa_utils.kv.task_report import shipped_grid

    monkeypatch.setattr(G, "kv_tasks", _fake_kv_tasks([]))
    assert shipped_grid("SmolLM2-135M-Instruct", tmp_path) is None
    for day in ("2026-12-01", "2026-12-04"):
        G.main(["--out", str(tmp_path / "artifacts" / f"kv-grid-{day}"), "--samples", "3", "--chunk", "3",
                "--methods", "tappa", "snapkv", "--keep", "0.5", "0.9"])
    folder, rows, options = shipped_grid("SmolLM2-135M-Instruct", tmp_path)
    assert folder.name == "kv-grid-2026-12-04" and rows["sample"].nunique() == 3 and options["model"] == "smollm2-135m"
    assert shipped_grid("smollm2-135m", tmp_path)[0] == folder and shipped_grid("tappa-tiny", tmp_path) is None


def _fake_kv_tasks_for(task, keeps, full_correct=1):
    def run(argv):
        def a(flag):
            return argv[argv.index(flag) + 1]
        seed, n, out = int(a("--seed")), int(a("--samples")), Path(a("--out"))
        rows = []
        for i in range(n):
            rows.append({"task": task, "length": 1024, "sample": i, "method": "full", "keep": 1.0,
                         "correct": full_correct})
            for keep in keeps:
                rows += [{"task": task, "length": 1024, "sample": i, "method": "tappa", "keep": keep,
                          "correct": int(keep > 0.3), "press_ms": 30.0, "answer_ms": 100.0},
                         {"task": task, "length": 1024, "sample": i, "method": "snapkv", "keep": keep,
                          "correct": int((seed + i) % 2), "press_ms": 20.0, "answer_ms": 100.0}]
        out.mkdir(parents=True)
        pd.DataFrame(rows).to_csv(out / "samples.csv", index=False)
        return 0
    return run


def test_a_grid_grows_in_parts_that_stay_paired_and_are_all_named(tmp_path, monkeypatch):
    out = tmp_path / "grid"
    monkeypatch.setattr(G, "kv_tasks", _fake_kv_tasks_for("needle_passkey", (0.5, 0.9)))
    G.main(["--out", str(out), "--samples", "20", "--chunk", "10", "--methods", "tappa", "snapkv",
            "--keep", "0.5", "0.9"])
    # a later part: another budget on the same samples; its full-cache rows repeat the first part's (kept once)
    monkeypatch.setattr(G, "kv_tasks", _fake_kv_tasks_for("needle_passkey", (0.25,), full_correct=0))
    G.main(["--out", str(out), "--part", "keep25", "--samples", "20", "--chunk", "10", "--methods", "tappa", "snapkv",
            "--keep", "0.25"])
    # and another task with fewer samples
    monkeypatch.setattr(G, "kv_tasks", _fake_kv_tasks_for("multikey", (0.5,)))
    G.main(["--out", str(out), "--part", "multikey", "--tasks", "multikey", "--samples", "10", "--chunk", "10",
            "--methods", "tappa", "snapkv", "--keep", "0.5"])
    assert sorted(f.name for f in (out / "chunks").iterdir()) == [
        "keep25-seed0", "keep25-seed1", "multikey-seed0", "seed0", "seed1"]
    s = pd.read_csv(out / "samples.csv")
    full = s[(s.method == "full") & (s.task == "needle_passkey")]
    assert len(full) == 20 and full.correct.all()  # the first part's full-cache rows, once
    n = s.groupby(["task", "method", "keep"]).size()
    assert n[("needle_passkey", "tappa", 0.25)] == 20 and n[("multikey", "tappa", 0.5)] == 10
    # paired: keep 0.25 and keep 0.5 rows of one prompt carry the same sample number
    pk = s[(s.task == "needle_passkey") & (s.method == "tappa")]
    assert set(pk[pk.keep == 0.25]["sample"]) == set(pk[pk.keep == 0.5]["sample"])
    comp = pd.read_csv(out / "comparisons.csv")
    assert set(comp.keep) == {0.25, 0.5, 0.9}
    runs = json.loads((out / "runs.json").read_text())
    assert [r["part"] for r in runs] == ["", "keep25", "multikey"]
    manifest = (out / "MANIFEST.md").read_text()
    assert manifest.count("benchmarks/kv_task_grid.py --out") == 3 and "(part `keep25`)" in manifest
    assert "10 (multikey 1024) to 20 samples per cell" in manifest
    assert "## Cost against snapkv" in manifest and "1.50 [1.50, 1.50]" in manifest  # tappa's prefill: 30 / 20 ms
    assert "multikey at 1024 tokens:" in manifest and "needle_passkey at 1024 tokens:" in manifest
    # the mean over tasks weighs each task the same: at keep 50% snapkv is 0.5 on both, tappa 1.0 on both
    assert "keep 50%: tappa rank 1 of 2; first: tappa (1.00)" in manifest
    G.main(["--out", str(out), "--combine-only"])
    assert [r["part"] for r in json.loads((out / "runs.json").read_text())] == ["", "keep25", "multikey"]


def test_a_part_grown_to_more_samples_reuses_its_chunks_and_keeps_their_time(tmp_path, monkeypatch):
    out = tmp_path / "grid"
    calls = []
    fake = _fake_kv_tasks_for("needle_number", (0.5,))
    monkeypatch.setattr(G, "kv_tasks", lambda argv: calls.append(argv) or fake(argv))
    args = ["--out", str(out), "--part", "n2k", "--tasks", "needle_number", "--methods", "tappa", "snapkv",
            "--keep", "0.5", "--chunk", "10"]
    G.main([*args, "--samples", "10"])
    first = json.loads((out / "runs.json").read_text())[0]
    first["minutes"] = 14.0  # as if the first chunk had taken 14 minutes
    (out / "runs.json").write_text(json.dumps([first]))
    G.main([*args, "--samples", "30"])
    assert len(calls) == 3  # chunk seed 0 reused, seeds 1 and 2 run
    (run,) = json.loads((out / "runs.json").read_text())
    assert run["samples"] == 30 and 14.0 <= run["minutes"] < 15.0 and run["command"].endswith("--samples 30")
    assert pd.read_csv(out / "samples.csv").query("method == 'tappa'")["sample"].nunique() == 30


def test_a_part_name_that_cannot_name_a_folder_is_refused(capsys):
    import pytest
    with pytest.raises(SystemExit):
        G.parse(["--out", "x", "--part", "a/b"])
    assert "--part 'a/b'" in capsys.readouterr().err


def test_the_manifest_names_the_presses_that_answer_only_the_last_needles():
    rows = [{"task": "needle_passkey", "length": 1024, "depth": d, "sample": i, "method": m, "keep": 0.125,
             "correct": int(d == 1.0 or m == "kvzip")}
            for i, d in enumerate([0.0, 0.5, 1.0] * 2) for m in ("full", "snapkv", "kvzip")]
    lines = G.depth_lines(pd.DataFrame(rows))
    assert "- needle_passkey at 1024 tokens, keep 12.5%: 1 of 2 presses answer only the depth-1 needles (snapkv)." \
        in lines
    assert G.depth_lines(pd.DataFrame(rows).drop(columns="depth")) == []
