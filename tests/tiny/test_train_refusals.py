"""train-tiny refuses what it cannot use, in one line (exit 2), before touching any file: another model's folder as
--export, a schedule with negative learning rates, a --long-eval without a finite measure, damaged run folders and a
truncated --init-from. Export, model card, re-export works; a NaN is never written as bare NaN."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tappa_utils.io import read_marker
from tappa_utils.tiny import card as mc
from tappa_utils.tiny import train
from tappa_utils.tiny.run_folder import ARCH_KEYS, finite_record

TINY = ["--batch", "1", "--seq-len", "32", "--threads", "1", "--eval-every", "1000"]


def _fake_evaluate(model, corpus, device, **kwargs) -> dict:
    return {"heldout_loss": 1.0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A run folder trained for one step and its export (the held-out evaluation replaced by a constant)."""
    base = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "evaluate", _fake_evaluate)
        assert train.main(["--out", str(base / "run"), "--steps", "1", *TINY]) == 0
    assert train.main(["--out", str(base / "run"), "--export", str(base / "hf")]) == 0
    return base / "run", base / "hf"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys, argv: list[str], *fragments: str) -> str:
    rc = train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("train-tiny: error: ") and all(f in err[0] for f in fragments), err[0]
    return err[0]


def test_arch_keys_are_the_default_architectures():
    assert set(ARCH_KEYS) == set(train.DEFAULT_ARCH)


def test_export_never_replaces_another_models_folder(trained, tmp_path, capsys):
    run, _ = trained
    from transformers import LlamaForCausalLM

    other = tmp_path / "exp"
    LlamaForCausalLM(train.make_config(num_hidden_layers=1)).save_pretrained(other)  # no .tappa-result marker
    before = _snapshot(other)
    assert "config.json" in before and "model.safetensors" in before
    _refused(capsys, ["--out", str(run), "--export", str(other)], f"--export {other}", "not a tappa-tiny export",
             "choose a new or empty folder")
    assert _snapshot(other) == before


def test_export_model_card_reexport_keeps_the_card(trained, tmp_path, capsys):
    run, _ = trained
    hf = tmp_path / "hf"
    assert train.main(["--out", str(run), "--export", str(hf)]) == 0
    assert mc.main(["--model", str(hf), "--windows", "1", "--seq-len", "64", "--copy-windows", "1",
                    "--copy-seq-len", "160", "--previous", "none"]) == 0
    card = {f: (hf / f).read_bytes() for f in train.CARD_FILES}
    assert train.main(["--out", str(run), "--export", str(hf)]) == 0, capsys.readouterr().err
    assert {f: (hf / f).read_bytes() for f in train.CARD_FILES} == card  # the card is carried over unchanged
    assert set(train.CARD_FILES) <= set(read_marker(hf)["files"]) and (hf / "model.safetensors").is_file()


@pytest.mark.parametrize("extra, fragments", [
    (["--steps", "1", "--schedule-from", "100"], ["--schedule-from 100 must be below --steps 1"]),
    (["--steps", "10", "--schedule-from", "5"], ["--schedule-from 5 lies after step 0", "give --schedule-from <= 0"]),
    (["--steps", "2", "--long-eval", "1"], ["--long-eval must be 0 (off) or lie in [16, 4096]", "got 1"]),
    (["--steps", "2", "--long-eval", "5000"], ["--long-eval must be 0 (off) or lie in [16, 4096]"]),
])
def test_a_schedule_or_long_eval_without_a_finite_positive_value_is_refused(tmp_path, capsys, extra, fragments):
    _refused(capsys, ["--out", str(tmp_path / "run"), *TINY, *extra], *fragments)
    assert not (tmp_path / "run").exists()


def test_schedule_from_after_a_resumed_step_is_refused(trained, tmp_path, capsys):
    run = _copy(trained[0], tmp_path / "run")  # at step 1
    before = _snapshot(run)
    _refused(capsys, ["--out", str(run), "--steps", "5", "--schedule-from", "3", *TINY],
             "--schedule-from 3 lies after step 1")
    assert _snapshot(run) == before


def test_long_eval_at_its_smallest_length_gives_finite_numbers():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(train.make_config(num_hidden_layers=1))
    corpus = type("C", (), {"heldout": np.random.default_rng(0).integers(0, 256, 5000)})()
    out = train.evaluate_long(model, corpus, "cpu", n=2, seq_len=train.MIN_LONG_EVAL)
    assert set(out) == {"loss_first_half", "loss_second_half", "retrieval_acc"}
    assert all(math.isfinite(v) for v in out.values()), out


def test_a_nan_is_logged_as_null_never_as_bare_nan(trained, tmp_path, monkeypatch):
    assert finite_record({"a": float("nan"), "b": float("inf"), "c": 1.5, "d": "x"}) == {"a": None, "b": None,
                                                                                         "c": 1.5, "d": "x"}
    run = _copy(trained[0], tmp_path / "run")
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: {"heldout_loss": float("nan"), "copy_ratio": 0.5})
    assert train.main(["--out", str(run), "--steps", "2", *TINY]) == 0
    text = (run / "training_log.jsonl").read_text()
    assert "NaN" not in text
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in the log")) for line in
            text.splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["heldout_loss"] is None and rows[-1]["copy_ratio"] == 0.5


def _ckpt(run: Path) -> dict:
    return torch.load(run / "ckpt.pt", weights_only=True)


def _edit_ckpt(run: Path, edit) -> None:
    ck = _ckpt(run)
    edit(ck)
    torch.save(ck, run / "ckpt.pt")


def _first_param_state(ck: dict) -> dict:
    return ck["opt"]["state"][0]


DAMAGE = {
    "ckpt wrong shape": (lambda run: _edit_ckpt(run, lambda ck: ck["model"].update(
        {"model.embed_tokens.weight": ck["model"]["model.embed_tokens.weight"][:100]})),
        ["does not fit the run's architecture", "model.embed_tokens.weight is (100, 128)"]),
    "ckpt step not an int": (lambda run: _edit_ckpt(run, lambda ck: ck.update(step="1")),
                             ["not a train-tiny checkpoint (wrong type of step)"]),
    "ckpt model not tensors": (lambda run: _edit_ckpt(run, lambda ck: ck.update(model=[1, 2])),
                               ["wrong type of model"]),
    "ckpt optimizer moment wrong shape": (lambda run: _edit_ckpt(run, lambda ck: _first_param_state(ck).update(
        exp_avg=torch.zeros(3))), ["cannot be resumed", "optimizer exp_avg is (3,)"]),
    "ckpt rng state wrong": (lambda run: _edit_ckpt(run, lambda ck: ck.update(rng={"bit_generator": "nope"})),
                             ["cannot be resumed"]),
    "ckpt truncated": (lambda run: (run / "ckpt.pt").write_bytes((run / "ckpt.pt").read_bytes()[:500]),
                       ["ckpt.pt cannot be read"]),
    "train_args not JSON": (lambda run: (run / "train_args.json").write_text("{not json"),
                            ["train_args.json cannot be read"]),
    "train_args phase without a start step": (lambda run: (run / "train_args.json").write_text(json.dumps(
        {"arch": train.DEFAULT_ARCH, "phases": [{"start_step": "x"}]})), ["phase 0 has no valid start_step"]),
    "train_args arch incomplete": (lambda run: (run / "train_args.json").write_text(json.dumps(
        {"arch": {"hidden_size": 128}, "phases": []})), ["not a tappa-tiny architecture"]),
    "log line not JSON": (lambda run: (run / "training_log.jsonl").write_text('{"step": 1\n{"step": 1}\n'),
                          ["training_log.jsonl: line 1 is not JSON"]),
    "log step not an int": (lambda run: (run / "training_log.jsonl").write_text('{"step": "one"}\n'),
                            ["line 1 is not a training record with an integer step"]),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_run_folder_is_refused_unchanged(trained, tmp_path, capsys, case):
    damage, fragments = DAMAGE[case]
    run = _copy(trained[0], tmp_path / "run")
    damage(run)
    before = _snapshot(run)
    _refused(capsys, ["--out", str(run), "--steps", "3", *TINY], f"--out {run}", *fragments)
    assert _snapshot(run) == before
    _refused(capsys, ["--out", str(run), "--export", str(tmp_path / "hf")], *fragments)  # export reads it too
    assert _snapshot(run) == before and not (tmp_path / "hf").exists()


def test_a_log_record_cut_short_by_a_kill_is_dropped_on_resume(trained, tmp_path, monkeypatch):
    run = _copy(trained[0], tmp_path / "run")
    with open(run / "training_log.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # killed while writing step 2, before its checkpoint
    monkeypatch.setattr(train, "evaluate", _fake_evaluate)
    assert train.main(["--out", str(run), "--steps", "2", *TINY]) == 0
    rows = [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and _ckpt(run)["step"] == 2


@pytest.mark.parametrize("case", ["truncated weights", "train_args not JSON", "log not JSON"])
def test_a_damaged_init_from_is_refused_before_the_run_folder_exists(trained, tmp_path, capsys, case):
    hf = _copy(trained[1], tmp_path / "hf")
    if case == "truncated weights":
        weights = hf / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        fragments = ["--init-from", "model.safetensors is truncated"]
    elif case == "train_args not JSON":
        (hf / "train_args.json").write_text("[1, 2")
        fragments = [f"--init-from {hf / 'train_args.json'} cannot be read"]
    else:
        (hf / "training_log.jsonl").write_text("oops\n")
        fragments = ["--init-from", "line 1 is not JSON"]
    before = _snapshot(hf)
    _refused(capsys, ["--out", str(tmp_path / "run"), "--init-from", str(hf), "--steps", "3", *TINY], *fragments)
    assert not (tmp_path / "run").exists() and _snapshot(hf) == before


def test_a_folder_without_marker_or_checkpoint_is_not_taken_for_a_run(tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "training_log.jsonl").write_text('{"step": 7, "loss": 1.0}\n')  # a name we write, but not our folder
    before = _snapshot(other)
    _refused(capsys, ["--out", str(other), "--steps", "2", *TINY], f"--out {other}", "no .tappa-result marker",
             "choose a new or empty folder")
    assert _snapshot(other) == before
