"""A chapter refuses bad parameters in its set-up cell, before loading a model (papermill run, seconds)."""
from __future__ import annotations

import time
from pathlib import Path

from tappa_utils import book

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, stem: str, **params):
    t0 = time.perf_counter()
    failure = book.execute_notebook(ROOT / "notebooks" / f"{stem}.ipynb", tmp_path / f"{stem}.ipynb",
                                    {"out_dir": str(tmp_path / "out"), **params}, cwd=ROOT, timeout=300)
    return failure, time.perf_counter() - t0


def test_bad_chapter_parameters_stop_at_the_set_up_cell(tmp_path):
    failure, _ = _run(tmp_path, "02_time_series", top_channels=-1)
    assert failure is not None and "top_channels must be a positive integer" in failure.error
    assert "chapter_params" in failure.source_head or "import" in failure.source_head  # the set-up cell
    failure, _ = _run(tmp_path, "04_sinks", model="/no/such/model")
    assert failure is not None and "model /no/such/model: model folder not found" in failure.error
    assert not (tmp_path / "out").exists()
