"""Reliability, minor findings of the bad-input sweep (issue 29): every refusal names the option as typed, comes
before the weights load, says what a bad text file is, and I/O failures exit 1. Same style as test_reliability.py:
each case asserts the exit status, one line on stderr and the output folder's state afterwards."""
# ruff: noqa: F811 - the fixtures imported from test_reliability are parameters of the tests
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from test_reliability import (  # noqa: F401 - fixtures
    argv_for,
    assert_one_line,
    models,
    no_loading,
    previous_result,
    run,
    snapshot,
    staging_leftovers,
    texts,
)

from tappa_utils import preflight as pf

FIELD = r"(?<![-\w])({})\b"  # a config field's bare name (not inside an option such as --seq-len)
KV_FIELDS = re.compile(FIELD.format("seq_len|cont_len|seg_len|prefix_len|cake_alpha|keep|window|distance|samples|seed|"
                                    "tasks|methods|attn"))
PRUNE_FIELDS = re.compile(FIELD.format("seq_len|calib_chunks|calib_stride|eval_windows|copy_windows|copy_seg_len|"
                                       "max_removed|batch_size|lm_eval_limit|betas|beta_grid|calib_text_file|"
                                       "eval_text_file|seed"))


def _with(argv: list[str], option: str, *values: str) -> list[str]:
    """`argv` with `option` given `values` (replacing its earlier values, or appended)."""
    argv = list(argv)
    if option in argv:
        i = argv.index(option)
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        del argv[i:j]
    return argv + [option, *values]


def _refused(capsys, command, argv, out: Path, *fragments: str) -> str:
    rc, err = run(capsys, command, argv)
    assert rc == 2, err
    assert_one_line(err, command, *fragments)
    assert not out.exists()
    return err[0]


# ------------------------------------------------------------------------------------------------ 1. option names


@pytest.mark.parametrize("option, values, fragment", [
    ("--keep", ["0"], "--keep must be fractions in (0, 1], got (0.0,)"),
    ("--window", ["1000"], "--seq-len must be an integer >= 2002 (2 * --window + 2, --window 1000), got 80"),
    ("--seed", ["-1"], "--seed must be an integer >= 0, got -1"),
    ("--cake-alpha", ["nan"], "--cake-alpha must be a finite number, got nan"),
    ("--samples", ["0"], "--samples must be an integer >= 1, got 0"),
    ("--prefix-len", ["9"], "--prefix-len (9) must be smaller than --seg-len (8)"),
    ("--distance", ["5"], "--distance must lie in (--seg-len 8, --seq-len - 1 - --prefix-len = 77]"),
    ("--tasks", ["nope"], "--tasks: unknown task(s) ['nope']"),
    ("--methods", ["nope"], "--methods: unknown method(s) ['nope']"),
    ("--attn", ["flash"], "--attn must be 'eager' or 'sdpa'"),
    ("--keep", ["0.05"], "--keep 0.05 of --seq-len 80 tokens is less than --window 8 plus 4 sinks"),
])
def test_kv_eval_refusals_name_the_option(option, values, fragment, models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "o"
    line = _refused(capsys, "kv-eval", _with(argv_for("kv-eval", models["good"], texts, out), option, *values), out,
                    fragment)
    assert not KV_FIELDS.search(line), line


@pytest.mark.parametrize("option, values, fragment", [
    ("--seq-len", ["4"], "--seq-len must be >= 8, got 4"),
    ("--copy-seg-len", ["40"], "--copy-seg-len 40 does not fit twice in --seq-len 64; use --copy-seg-len <= 7"),
    ("--betas", ["-1"], "--betas: beta must be a finite number >= 0, got -1.0"),
    ("--beta-grid", [","], "--beta-grid must not be empty"),
    ("--max-removed", ["40"], "--max-removed 40 leaves no layer: the model has 2 layers"),
    ("--seed", ["-1"], "--seed must be >= 0, got -1"),
    ("--batch-size", ["0"], "--batch-size must be >= 1, got 0"),
    ("--lm-eval-limit", ["0"], "--lm-eval-limit must be >= 1, got 0"),
])
def test_prune_eval_refusals_name_the_option(option, values, fragment, models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "o"
    line = _refused(capsys, "prune-eval", _with(argv_for("prune-eval", models["good"], texts, out), option, *values),
                    out, fragment)
    assert not PRUNE_FIELDS.search(line), line


def test_prune_eval_same_text_twice_names_both_options(models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "o"
    argv = _with(argv_for("prune-eval", models["good"], texts, out), "--calib-text-file", str(texts["b"]))
    _refused(capsys, "prune-eval", argv, out, "--calib-text-file and --eval-text-file are the same file")


def test_library_users_still_see_field_names():
    from tappa_utils.kv.evaluate import KVEvalConfig
    from tappa_utils.prune.evaluate import PruneEvalConfig

    with pytest.raises(ValueError, match=r"^keep must be fractions"):
        KVEvalConfig(keep=(0,)).validate()
    with pytest.raises(ValueError, match=r"^seq_len must be >= 8"):
        PruneEvalConfig(seq_len=4).validate()


# ------------------------------------------------------------------------------------------------ 2. before loading


def test_analyze_refusals_before_loading(models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "o"
    argv = argv_for("analyze", models["good"], texts, out)
    _refused(capsys, "analyze", _with(argv, "--window", "1"), out, "--window must be an integer >= 2, got 1")
    _refused(capsys, "analyze", _with(argv, "--seed", "-1"), out, "--seed must be an integer >= 0, got -1")
    _refused(capsys, "analyze", _with(argv, "--num-windows", "1000"), out, f"--text-file {texts['b']}: text too short",
             "--num-windows 1000")


@pytest.mark.parametrize("command", ["analyze", "kv-eval"])
def test_text_too_short_is_refused_before_loading(command, models, tmp_path, capsys, no_loading):
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x\n")
    out = tmp_path / "o"
    argv = _with(argv_for(command, models["good"], {"a": short, "b": short}, out), "--text-file", str(short))
    _refused(capsys, command, argv, out, f"--text-file {short}: text too short")


def test_prune_eval_short_evaluation_text_before_loading(models, texts, tmp_path, capsys, no_loading):
    short = tmp_path / "short.txt"
    short.write_text("x = 1\n" * 5)
    out = tmp_path / "o"
    argv = _with(argv_for("prune-eval", models["good"], texts, out), "--eval-text-file", str(short))
    _refused(capsys, "prune-eval", argv, out, f"--eval-text-file {short}: text too short")


@pytest.mark.parametrize("command", ["analyze", "kv-eval", "prune-eval"])
def test_corrupt_tokenizer_before_loading(command, models, texts, tmp_path, capsys, no_loading):
    bad = shutil.copytree(models["good"], tmp_path / "bad_tok")
    (bad / "tokenizer.json").write_text("{not json")
    out = tmp_path / "o"
    _refused(capsys, command, argv_for(command, bad, texts, out), out, f"--model {bad}: its tokenizer cannot be loaded")


# ------------------------------------------------------------------------------------------------ 3. text files


def _bad_texts(tmp_path: Path) -> list[tuple[Path, str]]:
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"\0" * 4096)
    ctrl = tmp_path / "ctrl.txt"
    ctrl.write_bytes(bytes([1, 2, 3, 7, 8, 27]) * 100)
    cases = [(tmp_path, "is a folder"), (nul, "holds no printable text"), (ctrl, "holds no printable text")]
    if Path("/dev/zero").exists():
        cases.append((Path("/dev/zero"), "is not a regular file"))
    return cases


@pytest.mark.parametrize("command, option", [("analyze", "--text-file"), ("kv-eval", "--text-file"),
                                             ("prune-eval", "--eval-text-file"), ("prune-eval", "--calib-text-file")])
def test_bad_text_file_says_what_it_is(command, option, models, texts, tmp_path, capsys, no_loading):
    out, folder = tmp_path / "o", tmp_path / "in"
    folder.mkdir()
    for path, what in _bad_texts(folder):
        argv = _with(argv_for(command, models["good"], texts, out), option, str(path))
        line = _refused(capsys, command, argv, out, f"{option} {path}: {what}")
        assert "not found" not in line


# ------------------------------------------------------------------------------------------------ 4. I/O failures


def test_disk_full_exits_1_and_keeps_the_previous_result(models, texts, tmp_path, capsys, monkeypatch):
    from tappa_utils import analysis

    out = tmp_path / "a"
    before = previous_result(out, "analyze", {"heads.csv": "old\n", "summary.json": "{}"})

    def fill_disk(args, tmp, *a):
        (Path(tmp) / "heads.csv").write_text("new")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(analysis, "run", fill_disk)
    rc, err = run(capsys, "analyze", argv_for("analyze", models["good"], texts, out))
    assert rc == 1
    assert_one_line(err, "analyze", "No space left on device")
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []


def test_run_cli_os_errors_from_the_system_exit_1_even_when_listed(capsys):
    def fail(exc):
        def body():
            raise exc
        return body

    assert pf.run_cli("x", fail(OSError(28, "No space left on device")), (OSError,)) == 1
    assert pf.run_cli("x", fail(FileNotFoundError("text file not found: t.txt")), (FileNotFoundError,)) == 2
    assert pf.run_cli("x", fail(FileNotFoundError(2, "No such file", "t.txt")), (FileNotFoundError,)) == 1
    assert pf.run_cli("x", fail(pf.UsageError("--a bad")), ()) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["x: error: [Errno 28] No space left on device", "x: error: text file not found: t.txt",
                   "x: error: [Errno 2] No such file: 't.txt'", "x: error: --a bad"]


# ------------------------------------------------------------------------------------------------ 5. lm-eval


def test_lm_eval_tasks_without_lm_eval_is_refused(models, texts, tmp_path, capsys, monkeypatch, no_loading):
    from tappa_utils.prune import evaluate

    monkeypatch.setattr(evaluate, "lm_eval_available", lambda: False)
    out = tmp_path / "o"
    argv = argv_for("prune-eval", models["good"], texts, out) + ["--lm-eval-tasks", "piqa"]
    _refused(capsys, "prune-eval", argv, out, "--lm-eval-tasks needs the lm-eval harness", "pip install lm-eval")


# ------------------------------------------------------------------------------------------------ 6. API errors


@pytest.mark.parametrize("name", ["sink_mass", "column_mass", "distance_profile", "half_profiles", "predictability",
                                  "concentration", "predictor_sums", "diagonal_offset_mass"])
def test_metrics_refuse_probs_that_are_not_maps(name):
    from tappa_utils import metrics as M

    f = getattr(M, name)
    for probs in (torch.softmax(torch.randn(40), -1), torch.rand(3, 40, 20), torch.rand(2, 0, 0)):
        with pytest.raises(ValueError, match=r"probs must be attention probabilities of shape \(\.\.\., T, T\)"):
            f(probs, 4)


def test_zero_windows_raise_instead_of_an_empty_table(tiny_llama):
    from tappa_utils.data import token_windows
    from tappa_utils.metrics import analyze_heads
    from tappa_utils.tiny.tokenizer import build_tokenizer

    with pytest.raises(ValueError, match="num_windows must be a positive integer, got 0"):
        token_windows(build_tokenizer(), "some text " * 50, 16, 0)
    with pytest.raises(ValueError, match="no windows"):
        analyze_heads(tiny_llama, torch.zeros(0, 32, dtype=torch.long))
