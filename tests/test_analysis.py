"""The `analyze` command: happy path on a tiny saved model, and every bad input exits 2 with one line, no files."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import make_tiny_model

from tappa_utils.analysis import main
from tappa_utils.metrics import HEAD_COLUMNS, PATTERNS


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama with the byte tokenizer, saved like a reader's model folder."""
    from tappa_utils.tiny.tokenizer import build_tokenizer

    path = tmp_path_factory.mktemp("models") / "tiny"
    model = make_tiny_model("llama", layers=2)
    model.config.bos_token_id = 256
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text("def f(x):\n    return x + 1\n" * 40)
    return path


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr()


def test_happy_path_writes_tables_summary_and_gallery(tiny_dir, text_file, tmp_path, capsys):
    out = tmp_path / "res"
    rc, cap = _run(capsys, "--model", tiny_dir, "--text-file", text_file, "--seq-len", 64, "--num-windows", 2,
                   "--skip", 8, "--top-k", 4, "--out", out, "--null", "--gallery-heads", 2)
    assert rc == 0, cap.err
    assert sorted(p.name for p in out.iterdir()) == [".tappa-result", "gallery.png", "heads.csv", "layers.csv",
                                                     "null_heads.csv", "null_layers.csv", "summary.json"]
    heads = pd.read_csv(out / "heads.csv")
    assert list(heads.columns) == list(HEAD_COLUMNS)
    assert len(heads) == 2 * 4 and set(heads["pattern"]) <= set(PATTERNS)
    assert heads["sink_mass"].between(0, 1).all() and heads["q_sim_window_post"].between(-1, 1).all()
    assert list(pd.read_csv(out / "layers.csv")["layer"]) == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"]["seq_len"] == 64 and summary["num_tokens"] == 128
    assert summary["metric_config"]["skip"] == 8 and summary["timings"]["analyze_s"] > 0
    assert "torch" in summary["versions"] and sum(summary["patterns"].values()) == 8
    assert (out / "gallery.png").read_bytes()[:4] == b"\x89PNG"
    # a second run with --layers replaces the folder atomically and leaves no temporary folders behind
    rc, cap = _run(capsys, "--model", tiny_dir, "--text-file", text_file, "--seq-len", 64, "--num-windows", 1,
                   "--out", out, "--layers", 1)
    assert rc == 0, cap.err
    assert list(pd.read_csv(out / "heads.csv")["layer"].unique()) == [1]
    assert not (out / "null_heads.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


@pytest.mark.parametrize("case", ["missing_file", "empty_text", "beyond_context", "beyond_text", "layer_range",
                                  "non_numeric", "unsupported", "missing_model", "too_short", "bad_device",
                                  "unknown_shape"])
def test_bad_input_exits_2_with_one_line_and_no_files(case, tiny_dir, text_file, tmp_path, capsys):
    out = tmp_path / "res"
    base = ["--model", tiny_dir, "--text-file", text_file, "--seq-len", 64, "--num-windows", 1, "--out", out]
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    argv = {
        "missing_file": [*base[:2], "--text-file", tmp_path / "nope.txt", *base[4:]],
        "empty_text": [*base[:2], "--text-file", empty, *base[4:]],
        "beyond_context": [*base[:4], "--seq-len", 2000, "--num-windows", 1, "--out", out],
        "beyond_text": [*base[:4], "--seq-len", 600, "--num-windows", 4, "--out", out],
        "layer_range": [*base, "--layers", 0, 5],
        "non_numeric": [*base[:4], "--seq-len", "abc", "--out", out],
        "missing_model": ["--model", tmp_path / "no_model", *base[2:]],
        "too_short": [*base[:4], "--seq-len", 10, "--out", out],
        "bad_device": [*base, "--device", "gpu7"],
        "unknown_shape": ["--model", "random:gpt-17b", *base[2:]],
    }
    if case == "unsupported":
        from transformers import GPT2Config, GPT2LMHeadModel

        gdir = tmp_path / "gpt2"
        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300,
                                   n_positions=128)).save_pretrained(gdir)
        argv[case] = ["--model", gdir, *base[2:]]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, cap = _run(capsys, *argv[case])
    assert rc == 2
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("analyze: error: "), cap.err
    expect = {"missing_file": "not found", "empty_text": "empty", "beyond_context": "context length",
              "beyond_text": "too short", "layer_range": "out of range", "non_numeric": "invalid int",
              "unsupported": "gpt2", "missing_model": "not found", "too_short": "too short",
              "bad_device": "not a device", "unknown_shape": "unknown model shape"}[case]
    assert expect in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial or temporary files


def test_dispatcher_exit_status_and_single_stderr_line(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "res"
    res = subprocess.run([sys.executable, "-m", "tappa_utils", "analyze", "--text-file", str(tmp_path / "none.txt"),
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "not found" in res.stderr
    assert not out.exists()
