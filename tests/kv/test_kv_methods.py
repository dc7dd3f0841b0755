"""The registry of KV methods (`kv.methods`): every reader (make_press, kv-eval's defaults and help, the figures'
palette, the null) follows it, a method added in one entry reaches all of them, and the colours stay apart."""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from kvpress import SnapKVPress
from matplotlib.colors import to_rgb

from tappa_utils.__main__ import main as cli
from tappa_utils.kv.evaluate import KVEvalConfig
from tappa_utils.kv.methods import METHODS, KVMethod, make_press, method_names, null_methods, palette, press_class

TINY = ["--seq-len", "160", "--samples", "2", "--keep", "0.25", "--cont-len", "8", "--seg-len", "12",
        "--prefix-len", "4", "--distance", "60", "--window", "16", "--quiet"]


def test_every_method_has_its_own_colour():
    """Chapter 07's figures tell the methods apart: every registered method has a colour, no two nearly the same
    (RGB distance >= 0.2)."""
    pal = palette()
    assert set(pal) == set(METHODS)
    close = [(a, b) for a, b in combinations(sorted(pal), 2)
             if np.linalg.norm(np.subtract(to_rgb(pal[a]), to_rgb(pal[b]))) < 0.2]
    assert not close, f"methods drawn in nearly the same colour: {close}"


def test_readers_follow_the_registry():
    assert KVEvalConfig().methods == method_names() == tuple(METHODS)
    assert null_methods() == tuple(m for m, spec in METHODS.items() if spec.runs_on_null)
    assert null_methods()[0] == "full" and "tappa" in null_methods()  # the null's claims compare against these
    assert make_press("full", 0.25) is None
    with pytest.raises(ValueError, match="unknown method.*choose from full, tappa"):
        make_press("h2o", 0.5)
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['h2o'\]"):
        KVEvalConfig(methods=("full", "h2o")).validate()


def test_a_bad_entry_is_refused():
    with pytest.raises(ValueError, match="colour of 'x' must be '#rrggbb'"):
        KVMethod("x", lambda r, w, a: None, "orange")
    with pytest.raises(ValueError, match="method name must be"):
        KVMethod("Bad name", lambda r, w, a: None, "#123456")


def _probe(ratio: float, window: int, cake_alpha: float):
    return press_class("kvpress:SnapKVPress")(compression_ratio=ratio, window_size=window)


def test_a_method_registered_in_one_entry_reaches_every_reader(tmp_path, monkeypatch, capsys):
    """One registry entry (made here, removed after): make_press, the palette, the config's default, the command's
    help and the command itself know it; no other file is touched."""
    probe = KVMethod("probe", _probe, "#ffd700", description="SnapKV registered by a test")
    with monkeypatch.context() as mp:
        mp.setitem(METHODS, "probe", probe)
        press = make_press("probe", 0.25, window=16)
        assert isinstance(press, SnapKVPress) and press.compression_ratio == 0.75 and press.window_size == 16
        assert palette()["probe"] == "#ffd700" and "probe" in KVEvalConfig().methods
        assert cli(["kv-eval", "--help"]) == 0
        help_text = capsys.readouterr().out
        assert "kvzip, probe (default: all" in help_text and "SnapKV registered by a test" in help_text
        out = tmp_path / "kv"
        assert cli(["kv-eval", *TINY, "--methods", "full", "probe", "--out", str(out)]) == 0
        samples = pd.read_csv(out / "samples.csv")
        assert set(samples.method) == {"full", "probe"}
        assert (samples[samples.method == "probe"].kept_fraction - 0.25).abs().max() < 0.02
        assert (out / "quality_vs_budget.png").stat().st_size > 1000
    assert "probe" not in METHODS and "probe" not in palette() and "probe" not in KVEvalConfig().methods
    with pytest.raises(ValueError, match="unknown method"):
        make_press("probe", 0.5)
