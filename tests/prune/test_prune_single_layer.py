"""The single-layer scan: one row per layer removed, the baseline first, a bad range refused before any scoring."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import prune_single_layer as S  # noqa: E402


def test_layer_ranges():
    assert S.layer_range("16") == [16] and S.layer_range("10-12") == [10, 11, 12]


def test_scan_prints_a_row_per_layer(capsys):
    assert S.main(["--model", "tappa-tiny", "--layers", "0-1", "--prompts", "3", "--family", "facts"]) == 0
    out = capsys.readouterr().out.splitlines()
    head = out.index("facts, 3 prompts, tappa-tiny: accuracy without one layer")
    rows = [line.split() for line in out[head + 2:]]
    assert [r[0] for r in rows] == ["none", "0", "1"] and all(0 <= float(r[1]) <= 1 for r in rows)


def test_a_layer_the_model_lacks_is_refused():
    with pytest.raises(SystemExit, match="--layers 3-40: the model has layers 0..5"):
        S.main(["--model", "tappa-tiny", "--layers", "3-40", "--prompts", "2", "--family", "facts"])
