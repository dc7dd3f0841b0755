"""kv-eval: the harness runs end to end with tiny parameters, press replay equals real prefill, errors are clean."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

pytest.importorskip("kvpress")

from tappa_utils.__main__ import main as cli  # noqa: E402
from tappa_utils.kv.decoding import prefill  # noqa: E402
from tappa_utils.kv.evaluate import METHODS, KVEvalConfig, compare, compressed_caches, make_press, make_samples  # noqa: E402

TINY = ["--seq-len", "160", "--samples", "2", "--keep", "0.25", "0.5", "--cont-len", "8", "--seg-len", "12",
        "--prefix-len", "4", "--distance", "60", "--window", "16", "--quiet"]


def test_kv_eval_cli_tiny(tmp_path):
    out = tmp_path / "kv"
    assert cli(["kv-eval", *TINY, "--out", str(out)]) == 0
    samples = pd.read_csv(out / "samples.csv")
    summary = pd.read_csv(out / "summary.csv")
    assert set(samples.method) == set(METHODS) and set(samples.task) == {"loss", "retrieval"}
    assert len(samples) == 2 * 2 * (1 + 2 * (len(METHODS) - 1))
    comp = samples[samples.method != "full"]
    assert (comp.kept_fraction - comp.keep).abs().max() < 0.02  # every method really keeps its budget
    assert (samples[samples.method == "full"].kept_fraction == 1).all()
    assert summary.accuracy.between(0, 1).all() and (summary.nll > 0).all()
    data = json.loads((out / "summary.json").read_text())
    assert {"summary", "comparisons"} <= set(data)
    assert set(pd.read_csv(out / "comparisons.csv").verdict) <= {"win", "tie", "lose"}
    assert (out / "quality_vs_budget.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, match", [
    (["--methods", "h2o"], "unknown method"), (["--keep", "1.5"], "keep"), (["--distance", "5"], "distance"),
    (["--text-file", "/nonexistent.txt"], "not found")])
def test_kv_eval_bad_input(tmp_path, capsys, argv, match):
    out = tmp_path / "bad"
    assert cli(["kv-eval", *TINY, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
    assert not out.exists()


def test_replay_equals_real_prefill(default_model):
    model, _ = default_model
    ids = torch.randint(0, 256, (1, 200), generator=torch.Generator().manual_seed(0))
    presses = {m: make_press(m, 0.3, window=16) for m in METHODS}
    caches, last = compressed_caches(model, ids, presses)
    for m in METHODS:
        ref, ref_last = prefill(model, ids, make_press(m, 0.3, window=16))
        assert torch.equal(last, ref_last)
        for a, b in zip(caches[m].layers, ref.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values), m


def test_retrieval_samples_repeat_the_segment():
    tokens = torch.randint(0, 256, (5000,)).numpy()
    cfg = KVEvalConfig(seq_len=300, samples=3, seg_len=20, prefix_len=5, distance=100)
    for ctx, tgt in make_samples(tokens, 256, cfg, "retrieval"):
        ctx, tgt = ctx[0].tolist(), tgt[0].tolist()
        assert len(ctx) == 300 and ctx[0] == 256 and len(tgt) == 15
        first = 300 - 5 - 100
        assert ctx[first:first + 20] == ctx[-5:] + tgt  # first occurrence = prefix + target


def test_compare_verdicts():
    rows = [{"task": "retrieval", "method": m, "keep": 0.5, "sample": i, "accuracy": a, "nll": 1.0}
            for i in range(10) for m, a in (("tappa", 0.9 + 0.01 * i), ("snapkv", 0.1 + 0.01 * i),
                                            ("knorm", 0.9 + 0.01 * i + (0.05 if i % 2 else -0.05)))]
    rows += [{"task": "retrieval", "method": "full", "keep": 1.0, "sample": i, "accuracy": 1.0, "nll": 1.0}
             for i in range(10)]
    v = compare(pd.DataFrame(rows)).set_index("versus").verdict
    assert v["snapkv"] == "win" and v["knorm"] == "tie" and v["full"] == "lose"
