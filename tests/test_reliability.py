"""Reliability (issue 15): every command checks its inputs before computing, never destroys a file it did not write,
never half-writes. Grouped by the issue's failure classes 1-11, then the minor ones. Every case asserts the exit
status, a one-line message, and the state of the output folder afterwards (nothing lost, nothing half-written).

Commands run in-process through their `main(argv)`; the signal cases fork, one case runs a notebook with papermill.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_llama

from tappa_utils import io as tio
from tappa_utils import preflight as pf

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ fixtures, helpers


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model folders: a good tiny Llama with the byte tokenizer, and broken or unsupported variants of it."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    root = tmp_path_factory.mktemp("models")
    good = save_tiny_llama(root / "tiny")
    d = {"good": good}
    d["truncated"] = shutil.copytree(good, root / "truncated")
    st = d["truncated"] / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    d["bad_header"] = shutil.copytree(good, root / "bad_header")
    (d["bad_header"] / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    d["missing_shard"] = shutil.copytree(good, root / "missing_shard")
    (d["missing_shard"] / "model.safetensors").rename(d["missing_shard"] / "model-00001-of-00002.safetensors")
    (d["missing_shard"] / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    d["no_tokenizer"] = shutil.copytree(good, root / "no_tokenizer")
    for f in ("tokenizer.json", "special_tokens_map.json"):
        (d["no_tokenizer"] / f).unlink(missing_ok=True)
    d["gpt2"] = root / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300,
                               n_positions=128)).save_pretrained(d["gpt2"])
    d["neox"] = root / "neox"
    GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=300, max_position_embeddings=128)).save_pretrained(d["neox"])
    return d


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    a, b = root / "a.txt", root / "b.txt"
    a.write_text((REPO / "tappa_utils" / "metrics.py").read_text() * 2)
    b.write_text((REPO / "tappa_utils" / "capture.py").read_text() * 2)
    return {"a": a, "b": b}


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a command loads a model: the front door must answer before any computation."""
    from tappa_utils import models as M

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(M, "load_model", refuse)


def _main(command: str):
    from tappa_utils import analysis
    from tappa_utils.kv import evaluate as kv
    from tappa_utils.prune import cli as pe
    from tappa_utils.tiny import card, train

    return {"analyze": analysis.main, "kv-eval": kv.main, "prune-eval": pe.main, "model-card": card.main,
            "train-tiny": train.main}[command]


def argv_for(command: str, model, texts, out) -> list[str]:
    """Small, valid options of each command (what a bad-input case then spoils)."""
    m, t = str(model), str(texts["b"])
    return {
        "analyze": ["--model", m, "--text-file", t, "--seq-len", "32", "--num-windows", "1", "--skip", "4",
                    "--top-k", "2", "--out", str(out)],
        "kv-eval": ["--model", m, "--seq-len", "80", "--samples", "1", "--keep", "0.5", "--methods", "full", "tappa",
                    "--tasks", "loss", "--cont-len", "4", "--window", "8", "--distance", "40", "--seg-len", "8",
                    "--prefix-len", "2", "--quiet", "--text-file", t, "--out", str(out)],
        "prune-eval": ["--model", m, "--seq-len", "64", "--calib-chunks", "2", "--calib-stride", "32",
                       "--eval-windows", "2", "--copy-windows", "1", "--copy-seg-len", "6", "--max-removed", "1",
                       "--betas", "0.1", "--beta-grid", "0,0.5", "--batch-size", "2", "--no-figures",
                       "--calib-text-file", str(texts["a"]), "--eval-text-file", t, "--out", str(out)],
        "model-card": ["--model", m, "--windows", "1", "--seq-len", "64", "--copy-windows", "1",
                       "--copy-seq-len", "160", "--text-file", t, "--out", str(out)],
    }[command]


def run(capsys, command: str, argv: list) -> tuple[int, list[str]]:
    rc = _main(command)([str(a) for a in argv])
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def assert_one_line(err: list[str], command: str, *fragments: str) -> None:
    assert len(err) == 1, err
    assert err[0].startswith(f"{command}: error: "), err[0]
    for f in fragments:
        assert f in err[0], (f, err[0])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def staging_leftovers(folder: Path) -> list[str]:
    return [e for e in os.listdir(folder) if ".tappa-" in e]


def previous_result(out: Path, command: str, files: dict[str, str]) -> dict[str, bytes]:
    """A complete earlier result of `command` at `out` (built through ResultDir, with its marker)."""
    with tio.ResultDir(out, command) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return snapshot(out)


COMMANDS4 = ("analyze", "kv-eval", "prune-eval", "model-card")


# ------------------------------------------------------------------------------------------------ 1. broken weights


@pytest.mark.parametrize("command", COMMANDS4)
def test_1_truncated_safetensors_is_found_before_loading(command, models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "out"
    rc, err = run(capsys, command, argv_for(command, models["truncated"], texts, out))
    assert rc == 2
    assert_one_line(err, command, "--model", "model.safetensors is truncated")
    assert not out.exists() and staging_leftovers(tmp_path) == []


@pytest.mark.parametrize("case, fragment", [("bad_header", "corrupt header"), ("missing_shard", "is missing")])
def test_1_corrupt_header_and_missing_shard(case, fragment, models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "out"
    rc, err = run(capsys, "analyze", argv_for("analyze", models[case], texts, out))
    assert rc == 2
    assert_one_line(err, "analyze", "--model", fragment)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ 2. architecture


@pytest.mark.parametrize("command, family", [("kv-eval", "gpt2"), ("kv-eval", "neox"), ("prune-eval", "gpt2")])
def test_2_unsupported_architecture(command, family, models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "out"
    rc, err = run(capsys, command, argv_for(command, models[family], texts, out))
    assert rc == 2
    assert_one_line(err, command, "unsupported architecture", {"gpt2": "'gpt2'", "neox": "'gpt_neox'"}[family],
                    "llama")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ 3. tokenizer


@pytest.mark.parametrize("command", COMMANDS4)
def test_3_model_folder_without_tokenizer(command, models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "out"
    rc, err = run(capsys, command, argv_for(command, models["no_tokenizer"], texts, out))
    assert rc == 2
    assert_one_line(err, command, "no tokenizer files", "tokenizer.json")
    assert "too short" not in err[0] and not out.exists()


# ------------------------------------------------------------------------------------------------ 4. device


@pytest.mark.parametrize("command", COMMANDS4)
def test_4_device_that_does_not_exist(command, models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "out"
    rc, err = run(capsys, command, argv_for(command, models["good"], texts, out) + ["--device", "tpu9"])
    assert rc == 2
    assert_one_line(err, command, "--device", "'tpu9' is not a device")
    assert not out.exists()


def test_4_layers_out_of_range_before_loading(models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "out"
    rc, err = run(capsys, "analyze", argv_for("analyze", models["good"], texts, out) + ["--layers", "0", "7", "-9"])
    assert rc == 2
    assert_one_line(err, "analyze", "--layers 7 -9 out of range", "decoder layers (0..")
    assert not out.exists()
    argv = argv_for("prune-eval", models["good"], texts, out)
    argv[argv.index("--max-removed") + 1] = "40"
    rc, err = run(capsys, "prune-eval", argv)
    assert rc == 2
    assert_one_line(err, "prune-eval", "--max-removed 40 leaves no layer")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_4_cuda_without_cuda(models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "out"
    rc, err = run(capsys, "kv-eval", argv_for("kv-eval", models["good"], texts, out) + ["--device", "cuda:0"])
    assert rc == 2
    assert_one_line(err, "kv-eval", "CUDA is not available", "--device cpu")


# ------------------------------------------------------------------------------------------------ 5. output path


@pytest.mark.parametrize("command, where", [("kv-eval", "file"), ("prune-eval", "file"), ("model-card", "file"),
                                            ("analyze", "under_file"), ("kv-eval", "under_file")])
def test_5_out_is_a_file_or_under_a_file_before_loading(command, where, models, texts, tmp_path, capsys, no_loading):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    out = f if where == "file" else f / "sub" / "out"
    rc, err = run(capsys, command, argv_for(command, models["good"], texts, out))
    assert rc == 2
    assert_one_line(err, command, "--out", "is a file, not a folder")
    assert f.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_5_read_only_parent(models, texts, tmp_path, capsys, no_loading):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    rc, err = run(capsys, "prune-eval", argv_for("prune-eval", models["good"], texts, ro / "out"))
    assert rc == 2
    assert_one_line(err, "prune-eval", "permission denied")


# ------------------------------------------------------------------------------------------------ 6. foreign files


def test_6_folder_with_foreign_files_is_refused_and_kept(models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("\\chapter{1}")
    (out / "data.csv").write_text("a,b\n1,2\n")
    before = snapshot(out)
    rc, err = run(capsys, "analyze", argv_for("analyze", models["good"], texts, out))
    assert rc == 2
    assert_one_line(err, "analyze", "did not write", "data.csv, thesis.tex", "choose a new or empty folder")
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []


def test_6_text_file_inside_out_is_not_deleted(models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "res"
    out.mkdir()
    text = out / "input.txt"
    shutil.copy(texts["b"], text)
    argv = argv_for("analyze", models["good"], texts, out)
    argv[argv.index("--text-file") + 1] = str(text)
    rc, err = run(capsys, "analyze", argv)
    assert rc == 2
    assert_one_line(err, "analyze", "input.txt")
    assert text.read_bytes() == texts["b"].read_bytes()


def test_6_out_dot_is_refused(models, texts, tmp_path, capsys, monkeypatch, no_loading):
    (tmp_path / "paper.md").write_text("draft")
    monkeypatch.chdir(tmp_path)
    rc, err = run(capsys, "analyze", argv_for("analyze", models["good"], texts, "."))
    assert rc == 2
    assert_one_line(err, "analyze", "paper.md")
    assert sorted(os.listdir(tmp_path)) == ["paper.md"]


def test_6_out_holding_the_current_folder_is_refused(models, texts, tmp_path, capsys, monkeypatch, no_loading):
    out = tmp_path / "res"
    previous_result(out, "analyze", {"heads.csv": "layer\n0\n"})
    monkeypatch.chdir(out)
    before = snapshot(out)
    rc, err = run(capsys, "analyze", argv_for("analyze", models["good"], texts, "."))
    assert rc == 2
    assert_one_line(err, "analyze", "contains the current folder")
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []


def test_6_results_of_another_command_are_not_replaced(models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "res"
    before = previous_result(out, "kv-eval", {"summary.csv": "method\nfull\n"})
    rc, err = run(capsys, "analyze", argv_for("analyze", models["good"], texts, out))
    assert rc == 2
    assert_one_line(err, "analyze", "the results of kv-eval")
    assert snapshot(out) == before


def test_6_own_result_with_a_file_added_later_is_refused(models, texts, tmp_path, capsys, no_loading):
    out = tmp_path / "res"
    previous_result(out, "analyze", {"heads.csv": "layer\n0\n"})
    (out / "my_notes.txt").write_text("mine")
    before = snapshot(out)
    rc, err = run(capsys, "analyze", argv_for("analyze", models["good"], texts, out))
    assert rc == 2
    assert_one_line(err, "analyze", "my_notes.txt")
    assert snapshot(out) == before


@pytest.mark.parametrize("command, names", [
    ("analyze", ["summary.json"]),  # the user's own summary, named like analyze's
    ("analyze", ["heads.csv", "null_heads.csv", "summary.json"]),  # what an older analyze wrote, without a marker
    ("prune-eval", ["data.csv", "notes.json", "run_info.json"]),
    ("kv-eval", ["run_info.json", "summary.csv"]),
])
def test_6_folder_without_marker_is_never_replaced(models, texts, tmp_path, capsys, no_loading, command, names):
    """Issue 29: ownership is by the marker only; file names that match a command's outputs do not count."""
    out = tmp_path / "mine"
    out.mkdir()
    for name in names:
        (out / name).write_text(f"the user's {name}\n")
    before = snapshot(out)
    rc, err = run(capsys, command, argv_for(command, models["good"], texts, out))
    assert rc == 2
    assert_one_line(err, command, f"--out {out.resolve()} ", "did not write", ", ".join(names[:3]),
                    f"no {tio.MARKER} marker", "choose a new or empty folder")
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []


def test_6_analyze_keeps_the_users_summary(tmp_path, capsys, no_loading):
    """The case of issue 29 as reported: `python -m tappa_utils analyze --out out` with the user's summary.json."""
    from tappa_utils.__main__ import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"mine": true}\n')
    before = snapshot(out)
    rc = main(["analyze", "--seq-len", "64", "--num-windows", "1", "--out", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2
    assert_one_line(err, "analyze", str(out.resolve()), "summary.json", "choose a new or empty folder")
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []


def test_6_empty_folder_without_marker_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with tio.ResultDir(out, "demo") as tmp:
        (tmp / "a.csv").write_text("x\n")
    assert tio.read_marker(out)["files"] == ["a.csv"]


def test_6_check_out_dir_accepts_kept_names_beside_a_marked_result_only(tmp_path):
    out = tmp_path / "export"
    previous_result(out, "demo", {"config.json": "{}"})
    (out / "MODEL_CARD.md").write_text("# card")  # written beside the result by another tool
    assert tio.check_out_dir(out, command="demo", keep=["MODEL_CARD.md"]) == out.resolve()
    with pytest.raises(pf.UsageError, match="did not write \\(MODEL_CARD.md\\); choose"):
        tio.check_out_dir(out, command="demo")
    (out / tio.MARKER).unlink()
    with pytest.raises(pf.UsageError, match="MODEL_CARD.md, config.json; it has no"):
        tio.check_out_dir(out, command="demo", keep=["MODEL_CARD.md"])


@pytest.mark.parametrize("names, keep", [
    (["run_info.json", "table.csv", "figure.png"], ()),  # a notebook's old output names
    (["MODEL_CARD.md"], ("MODEL_CARD.md",)),  # a name kept beside a marked result counts without the marker
])
def test_6_result_dir_refuses_any_unmarked_folder(tmp_path, names, keep):
    out = tmp_path / "out"
    out.mkdir()
    for name in names:
        (out / name).write_text("mine")
    before = snapshot(out)
    with pytest.raises(pf.UsageError, match=f"out_dir {out.resolve()} holds files that notebook did not write .*"
                                            f"no \\{tio.MARKER} marker"):
        tio.result_dir(out, keep=keep)
    assert tio.foreign_entries(out, "notebook", keep) == sorted(names)
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ 7. mixed results


def test_7_second_prune_eval_replaces_the_first_whole(models, texts, tmp_path, capsys):
    out = tmp_path / "prune"
    previous_result(out, "prune-eval", {"order_tappa_beta0.1.json": "{}", "results.csv": "old", "run_info.json": "{}"})
    argv = argv_for("prune-eval", models["good"], texts, out)
    argv[argv.index("--betas") + 1] = "0.3"
    rc = _main("prune-eval")(argv)
    assert rc == 0, capsys.readouterr().err
    names = set(os.listdir(out))
    assert "order_tappa_beta0.1.json" not in names and "order_tappa_beta0.3.json" in names
    assert (out / "results.csv").read_text() != "old"
    assert set(tio.read_marker(out)["files"]) == names - {tio.MARKER}
    assert staging_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ 8. half-written


def test_8_write_error_mid_run_keeps_the_previous_result(models, texts, tmp_path, capsys, monkeypatch):
    from tappa_utils.kv import evaluate as kv

    out = tmp_path / "kv"
    before = previous_result(out, "kv-eval", {"summary.csv": "method\nfull\n", "run_info.json": "{}"})

    def write_then_fail(out_dir, *a, **k):
        (Path(out_dir) / "run_info.json").write_text('{"new": 1}')
        (Path(out_dir) / "samples.csv").write_text("new")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kv, "run_kv_eval", lambda *a, **k: None)
    monkeypatch.setattr(kv, "write_results", write_then_fail)
    rc, err = run(capsys, "kv-eval", argv_for("kv-eval", models["good"], texts, out))
    assert rc == 1
    assert_one_line(err, "kv-eval", "No space left on device")
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []


def test_8_ctrl_c_mid_run_keeps_the_previous_result(models, texts, tmp_path, capsys, monkeypatch):
    from tappa_utils.kv import evaluate as kv

    out = tmp_path / "kv"
    before = previous_result(out, "kv-eval", {"summary.csv": "method\nfull\n"})

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(kv, "run_kv_eval", interrupted)
    rc = _main("kv-eval")(argv_for("kv-eval", models["good"], texts, out))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 130 and err == ["kv-eval: interrupted; earlier results are unchanged"]
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ 9. train-tiny


@pytest.fixture
def checkpoint(tmp_path):
    """A train-tiny run folder holding a (step 3) checkpoint, made without training."""
    import numpy as np
    from transformers import LlamaForCausalLM

    from tappa_utils.tiny.train import make_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.manual_seed(0)
    model = LlamaForCausalLM(make_config())
    opt = torch.optim.AdamW(model.parameters())
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": 3,
                "rng": np.random.default_rng(0).bit_generator.state, "torch_rng": torch.get_rng_state()},
               run_dir / "ckpt.pt")
    return mark_run_folder(run_dir)


def mark_run_folder(run_dir: Path) -> Path:
    """Give `run_dir` the marker train-tiny writes into its run folders (only a marked folder is a command's own)."""
    from tappa_utils.tiny.train import RUN_FILES

    tio.atomic_write_json(run_dir / tio.MARKER, {"command": "train-tiny", "files": list(RUN_FILES)})
    return run_dir


@pytest.mark.parametrize("argv, fragment", [
    (["--batch", "0"], "--batch must be a positive integer, got 0"),
    (["--seq-len", "0"], "--seq-len must be a positive integer, got 0"),
    (["--seq-len", "8192"], "--seq-len must lie in [2, 4096]"),
    (["--lr", "nan"], "--lr must be a positive number"),
])
def test_9_train_tiny_bad_numbers_write_nothing(argv, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = run(capsys, "train-tiny", ["--out", out, "--steps", "1", *argv])
    assert rc == 2
    assert_one_line(err, "train-tiny", fragment)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_9_train_tiny_out_is_a_file(where, tmp_path, capsys):
    f = tmp_path / "ckpt.txt"
    f.write_text("keep")
    rc, err = run(capsys, "train-tiny", ["--out", f if where == "file" else f / "run", "--steps", "1"])
    assert rc == 2
    assert_one_line(err, "train-tiny", "is a file, not a folder")
    assert f.read_text() == "keep" and os.listdir(tmp_path) == ["ckpt.txt"]


def test_9_train_tiny_refuses_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "docs"
    out.mkdir()
    (out / "training_log.jsonl").write_text("mine\n")
    (out / "report.pdf").write_text("pdf")
    before = snapshot(out)
    rc, err = run(capsys, "train-tiny", ["--out", out, "--steps", "1"])
    assert rc == 2
    assert_one_line(err, "train-tiny", "report.pdf")
    assert snapshot(out) == before


def test_9_export_without_checkpoint_refuses_and_deletes_nothing(tmp_path, capsys):
    export = tmp_path / "hf"
    export.mkdir()
    (export / "NOTES.txt").write_text("my notes")
    rc, err = run(capsys, "train-tiny", ["--out", tmp_path / "never_trained", "--export", export])
    assert rc == 2
    assert_one_line(err, "train-tiny", "--export needs a trained checkpoint", "ckpt.pt")
    assert snapshot(export) == {"NOTES.txt": b"my notes"} and not (tmp_path / "never_trained").exists()


def test_9_export_into_a_folder_that_is_not_an_export(checkpoint, tmp_path, capsys):
    export = tmp_path / "hf"
    export.mkdir()
    (export / "NOTES.txt").write_text("my notes")
    rc, err = run(capsys, "train-tiny", ["--out", checkpoint, "--export", export])
    assert rc == 2
    assert_one_line(err, "train-tiny", "--export", "NOTES.txt")
    assert snapshot(export) == {"NOTES.txt": b"my notes"}


def test_9_re_export_replaces_the_export_and_keeps_its_card(checkpoint, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    export = tmp_path / "hf"
    previous = {f: "old" for f in ("config.json", "model.safetensors", "tokenizer.json", "train_args.json")}
    previous_result(export, "train-tiny --export", {**previous, "MODEL_CARD.md": "# card"})  # a card carried over
    rc = _main("train-tiny")(["--out", str(checkpoint), "--export", str(export)])
    assert rc == 0, capsys.readouterr().err
    assert (export / "MODEL_CARD.md").read_text() == "# card"
    assert not (export / "train_args.json").exists()  # the run folder has none: nothing stale survives
    ck = torch.load(checkpoint / "ckpt.pt", weights_only=True)
    model = AutoModelForCausalLM.from_pretrained(export)
    torch.testing.assert_close(model.state_dict()["model.norm.weight"], ck["model"]["model.norm.weight"])
    assert staging_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ 10. safe loading


class _Payload:
    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (exec, (f"open({str(self.flag)!r}, 'w').write('ran')",))


def test_10_crafted_checkpoint_is_not_unpickled(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    flag = tmp_path / "pwned"
    torch.save({"model": _Payload(flag), "step": 1}, run_dir / "ckpt.pt")
    mark_run_folder(run_dir)
    before = snapshot(run_dir)
    rc, err = run(capsys, "train-tiny", ["--out", run_dir, "--export", tmp_path / "hf"])
    assert rc == 2
    assert_one_line(err, "train-tiny", "refusing to unpickle", "weights_only=True")
    assert not flag.exists() and snapshot(run_dir) == before and not (tmp_path / "hf").exists()


def test_10_truncated_checkpoint(checkpoint, tmp_path, capsys):
    ck = checkpoint / "ckpt.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    rc, err = run(capsys, "train-tiny", ["--out", checkpoint, "--steps", "5"])
    assert rc == 2
    assert_one_line(err, "train-tiny", "ckpt.pt cannot be read")
    assert sorted(os.listdir(checkpoint)) == [tio.MARKER, "ckpt.pt"]


# ------------------------------------------------------------------------------------------------ 11. notebooks


def test_11_book_build_keeps_run_info_of_a_failed_chapter(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from tappa_utils import book

    nb = new_notebook(cells=[
        new_code_cell('out_dir = "x"  # folder', metadata={"tags": ["parameters"]}),
        new_code_cell("from tappa_utils.io import result_dir\nfrom tappa_utils.results import save_run_info\n"
                      "out_dir = result_dir(out_dir)\nsave_run_info(out_dir, {'run': 2})"),
        new_code_cell("raise ValueError('chapter fails')"),
        new_code_cell("_ = out_dir.commit()")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, str(tmp_path / "notebooks" / "ch.ipynb"))
    results = tmp_path / book.RESULTS_DIR / "ch"
    before = previous_result(results, "notebook", {"run_info.json": '{"params": {"run": 1}}'})
    failures = book.execute_chapters(tmp_path, ["ch"], timeout=120)
    assert len(failures) == 1 and "chapter fails" in failures[0].error
    assert snapshot(results) == before and staging_leftovers(results.parent) == []


@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_11_every_chapter_builds_aside_and_commits_last(path):
    import nbformat

    cells = [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]
    setup = next(c.source for c in cells if "params = " in c.source and "out_dir" in c.source)
    assert "out_dir = result_dir(out_dir)" in setup
    assert setup.index("params = ") < setup.index("out_dir = result_dir(out_dir)")  # run_info keeps the path
    writes = [i for i, c in enumerate(cells) if "save_run_info(" in c.source]
    assert writes and all("result_dir(out_dir)" in cells[i].source for i in writes)
    assert "out_dir.commit()" in cells[-1].source and "remove-cell" in cells[-1].metadata.get("tags", [])


def test_11_book_execute_of_a_chapter_without_notebook(tmp_path, capsys, monkeypatch):
    from tappa_utils.book.cli import main

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: book/executed/01_gone\n")
    monkeypatch.chdir(tmp_path)
    rc = main(["execute", "01_gone"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2
    assert_one_line(err, "book", "01_gone", "notebooks/01_gone.ipynb", "do not exist")
    assert not (tmp_path / "_build").exists() and not (tmp_path / "book").exists()


# ------------------------------------------------------------------------------------------------ interruption


def _fork_building(out: Path) -> tuple[int, int]:
    """Fork a process that builds a result at `out` through `run_cli` + `ResultDir` and then waits (to be signalled).

    Returns (pid, read end of its stderr) once it is building. A fork, not a new interpreter: it starts in ms.
    """
    ready_r, ready_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(ready_r)
            os.close(err_r)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            sys.stderr = os.fdopen(err_w, "w")

            def body():
                with tio.ResultDir(out, "demo") as tmp:
                    (tmp / "part.csv").write_text("half")
                    os.write(ready_w, b"ready\n")
                    time.sleep(60)

            code = pf.run_cli("demo", body)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(err_w)
    assert os.read(ready_r, 6) == b"ready\n"
    os.close(ready_r)
    return pid, err_r


def _finish(pid: int, err_r: int) -> tuple[int, list[str]]:
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    with os.fdopen(err_r) as f:
        return status, [ln for ln in f.read().splitlines() if ln.strip()]


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated")])
def test_signal_exits_with_one_line_and_keeps_the_previous_result(sig, status, word, tmp_path):
    out = tmp_path / "res"
    before = previous_result(out, "demo", {"summary.csv": "complete"})
    pid, err_r = _fork_building(out)
    assert any(".tappa-tmp." in e for e in os.listdir(tmp_path))  # it really was building aside
    os.kill(pid, sig)
    rc, err = _finish(pid, err_r)
    assert rc == status
    assert err == [f"demo: {word}; earlier results are unchanged"]
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []


def test_sigkill_leftover_is_cleaned_by_the_next_run(tmp_path):
    out = tmp_path / "res"
    before = previous_result(out, "demo", {"summary.csv": "complete"})
    pid, err_r = _fork_building(out)
    os.kill(pid, signal.SIGKILL)
    assert _finish(pid, err_r) == (-signal.SIGKILL, [])
    assert len(staging_leftovers(tmp_path)) == 1 and snapshot(out) == before  # killed: its half result stays aside
    with tio.ResultDir(out, "demo") as tmp:
        assert staging_leftovers(tmp_path) == [tmp.name]
        (tmp / "summary.csv").write_text("new")
    assert staging_leftovers(tmp_path) == [] and (out / "summary.csv").read_text() == "new"


def test_staging_folder_of_a_running_process_is_left_alone(tmp_path):
    out = tmp_path / "res"
    live = tmp_path / f".res.tappa-tmp.{os.getppid()}.abcd1234"  # a live process (our parent) is building here
    live.mkdir()
    with tio.ResultDir(out, "demo") as tmp:
        (tmp / "a.csv").write_text("1")
    assert live.is_dir() and (out / "a.csv").read_text() == "1"


def test_crash_between_the_two_renames_never_loses_out(tmp_path, monkeypatch):
    out = tmp_path / "res"
    before = previous_result(out, "demo", {"summary.csv": "complete"})
    monkeypatch.setattr(tio, "_exchange", lambda a, b: False)  # a file system without atomic exchange
    real_rename = os.rename
    calls = []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies between moving the old result away and the new one in
        real_rename(src, dst)

    monkeypatch.setattr(tio.os, "rename", crash_on_second)
    dying = tio.ResultDir(out, "demo")
    with pytest.raises(KeyboardInterrupt):
        tio.swap_in(dying.tmp, out)
    monkeypatch.setattr(tio.os, "rename", real_rename)
    dying._forget()  # the process is gone: nothing of it is active any more
    assert not out.exists()  # the window the exchange closes; the next run restores the previous result
    restored = tio.ResultDir(out, "demo")
    assert snapshot(out) == before
    restored.discard()
    assert staging_leftovers(tmp_path) == []


def test_atomic_exchange_is_used_here(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not tio._exchange(a, b):
        pytest.skip("this file system has no atomic exchange (the two-rename fallback is tested above)")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_result_folders_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with tio.ResultDir(tmp_path / "a" / "res", "demo") as tmp:
            (tmp / "t.csv").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "res").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a" / "res" / "t.csv").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------------------ minor


def test_minor_one_bad_option_is_one_line_not_the_usage_block(models, texts, tmp_path, capsys):
    rc, err = run(capsys, "kv-eval", argv_for("kv-eval", models["good"], texts, tmp_path / "o") + ["--samples", "x"])
    assert rc == 2
    assert_one_line(err, "kv-eval", "argument --samples: invalid int value: 'x'")
    assert "usage:" not in " ".join(err) and not (tmp_path / "o").exists()


def test_minor_train_tiny_names_itself(tmp_path, capsys):
    rc, err = run(capsys, "train-tiny", ["--out", tmp_path / "r", "--no-such-option"])
    assert rc == 2
    assert_one_line(err, "train-tiny", "unrecognized arguments: --no-such-option")
    assert _main("train-tiny")(["--help"]) == 0
    assert "usage: python -m tappa_utils train-tiny" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_minor_model_card_negative_seed_names_the_option(models, texts, tmp_path, capsys, no_loading):
    rc, err = run(capsys, "model-card",
                  argv_for("model-card", models["good"], texts, tmp_path / "o") + ["--seed", "-1"])
    assert rc == 2
    assert_one_line(err, "model-card", "--seed must be an integer >= 0, got -1")


def test_minor_kv_eval_seq_len_beyond_context(tmp_path, capsys, no_loading):
    rc, err = run(capsys, "kv-eval", ["--model", "tappa-tiny", "--seq-len", "8192", "--out", tmp_path / "o"])
    assert rc == 2
    assert_one_line(err, "kv-eval", "--seq-len 8192", "exceeds the model's context length 4096")
    assert os.listdir(tmp_path) == []


def test_minor_hub_id_without_network_fails_fast(tmp_path, capsys, monkeypatch, no_loading):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    rc, err = run(capsys, "prune-eval", ["--model", "nobody/no-such-model", "--out", tmp_path / "o"])
    assert rc == 2 and time.time() - t0 < 20
    assert_one_line(err, "prune-eval", "cannot download nobody/no-such-model: no network; pass a local folder")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("raw, replaced", [("café ü".encode("latin-1"), 2), (bytes(range(256)) * 4, 128 * 4)])
def test_minor_non_utf8_text_says_how_many_bytes_were_replaced(raw, replaced, tmp_path, capsys):
    from tappa_utils.data import load_text

    f = tmp_path / "t.txt"
    f.write_bytes(raw)
    info = pf.check_text_file(f)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.replaced_bytes == replaced
    assert err == [f"warning: --text-file {f}: {replaced} of {len(raw)} bytes are not valid UTF-8 and were "
                   "replaced by U+FFFD"]
    assert info.text == load_text(text_file=f)  # the text the commands analyse is unchanged


def test_minor_dispatcher_passes_the_status_through(tmp_path, capsys):
    from tappa_utils.__main__ import main

    assert main(["train-tiny", "--out", str(tmp_path / "r"), "--batch", "0"]) == 2
    assert_one_line([ln for ln in capsys.readouterr().err.splitlines() if ln.strip()], "train-tiny", "--batch")


def test_minor_supported_families_agree():
    from tappa_utils.models import SUPPORTED_MODEL_TYPES

    assert pf.SUPPORTED_MODEL_TYPES == SUPPORTED_MODEL_TYPES
