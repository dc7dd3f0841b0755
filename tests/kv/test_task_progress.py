"""A long kv-tasks run keeps its finished samples: re-run after a crash, it resumes and runs none of them again."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tappa_utils.kv import evaluate as EV
from tappa_utils.kv import task_cli
from tappa_utils.kv import task_eval as TE
from tappa_utils.kv.task_progress import TaskProgress, progress_path

ROWS = [{"task": "needle_passkey", "length": 256, "depth": None, "sample": 0, "method": "full", "keep": 1.0,
         "correct": 1, "answer": "12345", "kept_fraction": 1.0, "layer_qsim": ""}]


def test_progress_reopens_with_the_same_params_only(tmp_path):
    out = tmp_path / "run"
    p = TaskProgress.open(out, {"samples": 2, "keep": (0.5,)})
    p.add(0, ROWS)
    p.add(1, [{**ROWS[0], "sample": 1, "correct": 0}])
    assert p.path == progress_path(out) and p.path.parent == tmp_path and not out.exists()
    again = TaskProgress.open(out, {"samples": 2, "keep": [0.5]})
    assert again.done == {0: ROWS, 1: [{**ROWS[0], "sample": 1, "correct": 0}]}
    assert TaskProgress.open(out, {"samples": 3, "keep": [0.5]}).done == {}  # other options: start anew
    assert TaskProgress.open(out, {"samples": 2, "keep": [0.5]}).done == {}  # ... and the old file was replaced


def test_a_line_cut_short_by_a_kill_is_ignored(tmp_path):
    p = TaskProgress.open(tmp_path / "run", {"a": 1})
    p.add(0, ROWS)
    with open(p.path, "a") as f:
        f.write('{"sample": 1, "rows": [{"task"')
    assert TaskProgress.open(tmp_path / "run", {"a": 1}).done == {0: ROWS}
    p.remove()
    assert not p.path.exists()


ARGV = ["--model", "tappa-tiny", "--tasks", "needle_passkey", "--lengths", "256", "--samples", "3", "--keep", "0.5",
        "--methods", "snapkv", "--window", "16", "--max-new-tokens", "4", "--quiet"]


def test_kv_tasks_resumes_after_a_crash_without_rerunning_a_sample(tmp_path, monkeypatch):
    out = tmp_path / "kvt"
    prefills = []
    real = EV.compressed_caches
    monkeypatch.setattr(EV, "compressed_caches", lambda *a, **k: prefills.append(1) or real(*a, **k))

    def crash(*a, **k):
        raise RuntimeError("killed at the end")

    with monkeypatch.context() as m:
        m.setattr(TE, "ranks", crash)
        with pytest.raises(RuntimeError, match="killed at the end"):
            task_cli.main([*ARGV, "--out", str(out)])
    assert len(prefills) == 3 and not out.exists()
    saved = progress_path(out).read_text().splitlines()
    assert len(saved) == 4 and json.loads(saved[0])["params"]["samples"] == 3

    assert task_cli.main([*ARGV, "--out", str(out)]) == 0
    assert len(prefills) == 3  # every sample came from the saved progress
    resumed = pd.read_csv(out / "samples.csv")
    assert len(resumed) == 3 * 2 and sorted(resumed["sample"].unique()) == [0, 1, 2]
    assert not progress_path(out).exists()  # removed once the results were committed

    fresh = tmp_path / "fresh"
    assert task_cli.main([*ARGV, "--out", str(fresh)]) == 0
    assert len(prefills) == 6
    cols = ["task", "length", "depth", "sample", "method", "keep", "correct", "answer", "kept_fraction"]
    pd.testing.assert_frame_equal(resumed[cols], pd.read_csv(fresh / "samples.csv")[cols])
