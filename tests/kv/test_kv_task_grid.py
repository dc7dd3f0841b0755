"""The grid benchmark runs its chunks once (resuming an interrupted run), numbers samples across chunks, and its
manifest states TAPPA's rank and the Holm-corrected comparisons of the combined samples."""
from __future__ import annotations

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
