"""The model card: its numbers agree with an independent computation, it keeps the previous version's figures,
the targets are registered assumptions, the shipped weights are real, loading and tokenizer round trip."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tappa_utils.metrics import MetricConfig
from tappa_utils.models import ASSETS, load_model, random_weight_copy
from tappa_utils.tiny import card as mc
from tappa_utils.tiny import describe, measure

SHIPPED = ASSETS / "tappa-tiny"


@pytest.fixture(scope="module")
def card_dir(tmp_path_factory):
    """A tmp copy of the shipped model folder with a card generated on a small sample (2 windows x 128 tokens),
    with the frozen v1 card as its previous version."""
    d = tmp_path_factory.mktemp("card") / "tappa-tiny"
    shutil.copytree(SHIPPED, d)
    for f in ("MODEL_CARD.md", "model_card.json"):
        (d / f).unlink(missing_ok=True)
    rc = mc.main(["--model", str(d), "--windows", "2", "--seq-len", "128", "--copy-windows", "3",
                  "--copy-seq-len", "160", "--seed", "1", "--previous", str(mc.PREVIOUS_CARD)])
    assert rc == 0
    return d


def _eager_attention(model, ids):
    """(N, L, H, T, T) attention probabilities from transformers' own eager attention (not from `capture`)."""
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    return torch.stack([a.double() for a in out.attentions], 1)


def test_card_numbers_agree_with_an_independent_computation(card_dir):
    """The card's numbers, recomputed by another route: transformers' own loss and eager attention maps, summed by
    hand; the copy test from per-token log-probabilities; the targets' verdicts from the registry's thresholds."""
    from tappa_utils import claims
    from tappa_utils.data import load_text, token_windows

    card = json.loads((card_dir / "model_card.json").read_text())
    model, tok = load_model(str(card_dir))
    text = load_text()
    ids = token_windows(tok, text, 128, 2)
    with torch.no_grad():  # byte tokenizer: nats per token = nats per byte; equal-length windows: mean of means
        hf_loss = float(np.mean([model(ids[i : i + 1], labels=ids[i : i + 1]).loss.item() for i in range(len(ids))]))
    assert card["trained"]["heldout_loss"] == pytest.approx(hf_loss, rel=1e-4)
    assert card["random"]["heldout_loss"] > 3 * card["trained"]["heldout_loss"]  # the null is not the model

    att = _eager_attention(model, ids).mean(0)  # (L, H, T, T), averaged over windows
    skip, T = 16, ids.shape[1]
    got = pd.DataFrame(card["heads"]).sort_values(["layer", "head"]).reset_index(drop=True)
    L, H = att.shape[:2]
    assert len(got) == L * H == model.config.num_hidden_layers * model.config.num_attention_heads
    sink = att[:, :, skip:, 0].mean(-1).reshape(-1).numpy()
    t_idx = torch.arange(skip, T)
    # offsets whose diagonal crosses at least half of the queries t >= skip (metrics.profile_length)
    offsets = range(1, min(MetricConfig().max_offset, T - 1 - skip, (T + skip) // 2) + 1)
    diag = np.stack([att[:, :, t_idx[t_idx >= o], t_idx[t_idx >= o] - o].mean(-1).reshape(-1).numpy()
                     for o in offsets], 1)
    np.testing.assert_allclose(got["sink_mass"].to_numpy(float), sink, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(got["diag_mass"].to_numpy(float), diag.max(1), rtol=1e-3, atol=1e-5)
    outside0 = got["layer"] != got["layer"].min()
    assert card["trained"]["heads"]["sink_heads_outside_layer0"] == int((sink[outside0.to_numpy()] >= 0.3).sum())
    assert card["trained"]["heads"]["diagonal_heads"] == int((diag.max(1) >= 0.3).sum())

    cids, first, second = measure.copy_test_ids(tok, text, 3, 160, 48, seed=1)
    assert torch.equal(cids[:, first], cids[:, second])
    with torch.no_grad():
        logp = torch.log_softmax(model(cids).logits.double(), -1)
    nll = -logp[:, :-1].gather(-1, cids[:, 1:, None])[..., 0]  # nll[:, i] predicts token i + 1
    l1, l2 = nll[:, first.start : first.stop - 1].mean().item(), nll[:, second.start : second.stop - 1].mean().item()
    assert card["trained"]["copy"]["copy_ratio"] == pytest.approx(l2 / l1, rel=1e-3)
    assert card["architecture"]["parameters"] == sum(p.numel() for p in model.parameters())

    for t in card["targets"]:  # kind, id and verdict from the registry, not from measure.targets
        s = claims.spec(t["id"])
        assert t["kind"] == "assumption" and t["predicted"] == s.threshold and t["relation"] == s.relation
        ok = t["measured"] is not None and (t["measured"] >= s.threshold if s.relation == "ge"
                                            else t["measured"] <= s.threshold)
        assert t["passed"] is ok and t["status"] == ("holds" if ok else "violated")
    by_id = {t["id"]: t for t in card["targets"]}
    assert by_id["default_model.T_copying"]["measured"] == card["trained"]["copy"]["copy_ratio"]
    assert by_id["default_model.T_diagonal_heads"]["measured"] == int((diag.max(1) >= 0.3).sum())

    md = (card_dir / "MODEL_CARD.md").read_text()
    assert f"{card['architecture']['parameters']:,} parameters" in md
    assert "python -m tappa_utils model-card" in md and "--windows 2 --seq-len 128" in md
    assert f"{sum(t['passed'] for t in card['targets'])} of 4 targets met" in md


def test_card_keeps_the_previous_versions_figures(card_dir):
    """Old-vs-new columns: each measurement row carries this version, random weights and the frozen v2 value."""
    card = json.loads((card_dir / "model_card.json").read_text())
    prev = json.loads(mc.PREVIOUS_CARD.read_text())
    assert card["previous"]["label"] == prev["label"] == "tappa-tiny v2"
    md = (card_dir / "MODEL_CARD.md").read_text()
    t, r, p = card["trained"], card["random"], prev["trained"]
    assert (f"| held-out loss (nats/byte) | {t['heldout_loss']:.3f} | {r['heldout_loss']:.3f} | "
            f"{p['heldout_loss']:.3f} |") in md
    assert f"| copy test: ratio second / first | {t['copy']['copy_ratio']:.3f} |" in md
    assert f"{p['copy']['copy_ratio']:.3f}" in md
    assert f"## Previous version: {prev['label']}" in md
    assert f"| tokens seen | {card['training']['tokens_seen']:,} | {prev['training']['tokens_seen']:,} |" in md
    prev_sink = next(x for x in prev["targets"] if x["id"] == "default_model.T_sink_heads")
    sink_row = next(line for line in md.splitlines() if line.startswith("| sink heads outside layer 0 (first-token"))
    assert f"{mc._f(prev_sink['measured'])} ({'met' if prev_sink['passed'] else 'missed'})" in sink_row
    # the frozen file is a frozen card, and a non-card file is refused with a clear error
    assert mc.load_previous(mc.PREVIOUS_CARD)["trained"]["heldout_loss"] == p["heldout_loss"]
    with pytest.raises(ValueError, match="not a frozen model card"):
        mc.load_previous(card_dir / "config.json")


def test_freeze_card_round_trip(card_dir, tmp_path):
    out = mc.freeze_card(card_dir / "model_card.json", tmp_path / "v2.json", "tappa-tiny v2")
    frozen = mc.load_previous(out)
    card = json.loads((card_dir / "model_card.json").read_text())
    assert frozen["label"] == "tappa-tiny v2" and "heads" not in frozen and "previous" not in frozen
    assert frozen["trained"] == card["trained"] and frozen["targets"] == card["targets"]
    assert "phases" not in frozen["training"] and frozen["training"]["tokens_seen"] == card["training"]["tokens_seen"]
    md = mc.render_markdown({**card, "previous": frozen})
    assert "| measurement | this version | random weights | tappa-tiny v2 |" in md


def test_card_describes_training_and_corpus(card_dir):
    card = json.loads((card_dir / "model_card.json").read_text())
    log = describe.read_training_log(card_dir)
    last = int(log["step"].max())
    assert card["training"]["steps"] == last
    phases = card["training"]["phases"]
    assert phases[0]["start_step"] == 0 and phases[-1]["end_step"] == last
    assert all(a["end_step"] == b["start_step"] for a, b in zip(phases, phases[1:]))  # contiguous
    assert card["training"]["tokens_seen"] == sum((p["end_step"] - p["start_step"]) * p["batch"] * p["seq_len"]
                                                  for p in phases)
    evals = log.dropna(subset=["tokens_seen"]) if "tokens_seen" in log else log.iloc[:0]
    if len(evals) and int(evals["step"].iloc[-1]) == last:  # the trainer logs tokens_seen at evaluations
        assert card["training"]["tokens_seen"] == int(evals["tokens_seen"].iloc[-1])
    for p in phases:
        assert {m["name"] for m in card["training"]["mixtures"][p["mixture"]]} >= {"text", "copy"}
    manifest = json.loads((card_dir / "corpus_manifest.json").read_text())
    assert card["corpus"]["files"] == len(manifest)
    assert card["corpus"]["bytes"] == sum(m["bytes"] for m in manifest)
    assert card["corpus"]["manifest_sha256"] == hashlib.sha256(
        (card_dir / "corpus_manifest.json").read_bytes()).hexdigest()
    md = (card_dir / "MODEL_CARD.md").read_text()
    assert card["corpus"]["manifest_sha256"] in md and f"{card['training']['tokens_seen']:,} tokens seen" in md


def test_training_summary_on_a_synthetic_log(tmp_path):
    (tmp_path / "train_args.json").write_text(json.dumps({"batch": "4", "seq_len": "64", "steps": "10", "lr": "0.01"}))
    rows = [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 8)]
    rows.insert(5, {"step": 5, "loss": 9.9})  # a resumed run repeats step 5: the last record wins
    rows[-1] |= {"heldout_loss": 2.5, "copy_ratio": 0.8}
    (tmp_path / "training_log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = describe.training_summary(tmp_path)
    assert s["steps"] == 7 and s["tokens_seen"] == 7 * 4 * 64 and s["planned_steps"] == 10
    assert [p["mixture"] for p in s["phases"]] == ["base"]
    # phases: 0-3 base at batch 4, a restart at 3 (replaced), 3-7 copy-heavy at batch 2
    ph = [{"start_step": 0, "batch": "4", "seq_len": "64", "steps": "10"},
          {"start_step": 3, "batch": "8", "seq_len": "64", "steps": "10", "mixture": "copy-heavy"},
          {"start_step": 3, "batch": "2", "seq_len": "64", "steps": "10", "mixture": "copy-heavy", "lr": "0.002"}]
    (tmp_path / "train_args.json").write_text(json.dumps({"arch": {}, "phases": ph}))
    s = describe.training_summary(tmp_path)
    assert [(p["start_step"], p["end_step"], p["batch"]) for p in s["phases"]] == [(0, 3, 4), (3, 7, 2)]
    assert s["tokens_seen"] == 3 * 4 * 64 + 4 * 2 * 64 and s["lr_peak"] == 0.002
    assert "induction" in {m["name"] for m in s["mixtures"]["copy-heavy"]}
    assert s["eval_step"] == 7 and s["eval_heldout_loss"] == 2.5 and s["eval_copy_ratio"] == 0.8
    # a resume with the same settings continues its phase; a changed setting (here lr) starts a new one
    ph = [{"start_step": 0, "batch": "4", "seq_len": "64", "steps": "10", "max_minutes": "5"},
          {"start_step": 2, "batch": "4", "seq_len": "64", "steps": "10", "max_minutes": "None"},
          {"start_step": 4, "batch": "4", "seq_len": "64", "steps": "10"},
          {"start_step": 5, "batch": "4", "seq_len": "64", "steps": "10", "lr": "0.5"}]
    (tmp_path / "train_args.json").write_text(json.dumps({"arch": {}, "phases": ph}))
    s = describe.training_summary(tmp_path)
    assert [(p["start_step"], p["end_step"], p["resumed_at"]) for p in s["phases"]] == [(0, 5, [2, 4]), (5, 7, [])]
    assert s["tokens_seen"] == 7 * 4 * 64
    log = describe.read_training_log(tmp_path)
    assert log["step"].is_unique and len(log) == 7
    assert describe.training_summary(tmp_path / "nothing") is None and describe.corpus_summary(tmp_path) is None


def _table(**cols):
    n = len(next(iter(cols.values())))
    base = {"layer": [0] * n, "head": list(range(n)), "sink_mass": [0.0] * n, "diag_offset": [1] * n,
            "diag_mass": [0.0] * n, "predictability": [0.5] * n, "pattern": ["mixed"] * n}
    base.update({c: [0.5] * n for c in measure.QSIM_COLUMNS})
    base.update(cols)
    return pd.DataFrame(base)


def test_summary_counts_and_targets(tmp_path):
    df = _table(layer=[0, 0, 1, 1, 2, 2], sink_mass=[0.9, 0.9, 0.3, 0.29, 0.5, 0.0],
                diag_mass=[0.0, 0.0, 0.0, 0.31, 0.0, 0.8], q_sim_consecutive_pre=[0.9, 0.9, 0.8, 0.7, 0.9, 0.2])
    cfg = measure.CardConfig()
    s = measure.summarize_heads(df, cfg)
    assert s["sink_heads_outside_layer0"] == 2  # layer 0's sinks do not count; 0.29 is below the threshold
    assert s["diagonal_heads"] == 2
    assert s["n_patterned"] == 6 - 0  # every head here is a sink or a diagonal head
    null = {"heads": measure.summarize_heads(_table(layer=[0, 1, 2]), cfg),
            "copy": {"copy_ratio": 1.0}, "heldout_loss": 5.5}
    trained = {"heads": s, "copy": {"copy_ratio": 0.5}, "heldout_loss": 2.0}
    checks = measure.targets(trained, null, cfg)
    assert [c.kind for c in checks] == ["assumption"] * 4 and [c.id for c in checks] == list(measure.TARGET_IDS)
    assert checks[0].status == "holds" and checks[1].status == "violated"  # 2 sink heads ok, 2 < 4 diagonal
    assert checks[3].passed is True  # ratio 0.5 <= 0.5
    trained["copy"]["copy_ratio"] = 0.51
    assert measure.targets(trained, null, cfg)[3].passed is False
    trained["heads"] = {**s, "spearman_qsim_predictability": float("nan")}
    assert measure.targets(trained, null, cfg)[2].status == "violated"  # NaN never meets a target
    from tappa_utils.results import save_checks
    save_checks(tmp_path, checks)  # registered: the registry accepts them
    with pytest.raises(ValueError, match="register new targets"):
        measure.targets(trained, null, measure.CardConfig(sink_threshold=0.2))


def test_shipped_weights_are_real(default_model):
    from tappa_utils.data import load_text, token_windows

    model, tok = default_model
    ids = token_windows(tok, load_text(), 256, 2)
    trained = measure.heldout_loss(model, ids, tok)
    null = measure.heldout_loss(random_weight_copy(model, seed=0), ids, tok)
    assert abs(null - math.log(model.config.vocab_size)) < 0.5  # random weights: about uniform over the vocabulary
    assert trained < 0.7 * null


def test_load_offline():
    code = ("from tappa_utils import load_model; m, t = load_model('tappa-tiny'); "
            "print(m.config.model_type, m.config.vocab_size, t.bos_token_id)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["llama", "259", "256"]


def test_tokenizer_round_trip(default_model):
    _, tok = default_model
    for text in ("def f(x):\n\treturn x + 1  # ok", "déjà vu ✓ – π ≈ 3.14", " leading space"):
        ids = tok(text)["input_ids"]
        assert ids == [256] + list(text.encode("utf-8"))
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert measure.is_byte_level(tok)


@pytest.mark.parametrize("argv, fragment", [
    (["--windows", "0"], "--windows must be >= 1"),
    (["--seq-len", "abc"], "--seq-len must be an integer"),
    (["--seq-len", "8"], "too short"),
    (["--model", "/nonexistent/model"], "model folder not found"),
    (["--seq-len", "5000"], "exceeds the model's context"),
    (["--windows", "100000"], "text too short"),
])
def test_cli_bad_input(tmp_path, capsys, argv, fragment):
    out = tmp_path / "out"
    rc = mc.main(argv + ["--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and fragment in err
    assert not out.exists() or not any(out.iterdir())


def test_copy_test_ids_validates(default_model):
    _, tok = default_model
    with pytest.raises(ValueError, match="too short for two segments"):
        measure.copy_test_ids(tok, "x" * 5000, 2, 100, 48)
    ids, first, second = measure.copy_test_ids(tok, "abcdefgh" * 500, 2, 160, 48, seed=0)
    assert (ids[:, 0] == tok.bos_token_id).all()
    assert torch.equal(ids[:, first], ids[:, second])  # the segment really repeats


def test_token_losses_match_the_models_loss(default_model):
    model, tok = default_model
    ids = tok(["def main():\n    return 0\n"], return_tensors="pt")["input_ids"]
    nll = measure.token_losses(model, ids)
    assert nll.shape == (1, ids.shape[1] - 1) and (nll >= 0).all()
    with torch.no_grad():
        ref = model(ids, labels=ids).loss.item()
    assert nll.mean().item() == pytest.approx(ref, rel=1e-5)


def test_write_card_leaves_the_previous_pair_when_the_new_card_cannot_be_written(tmp_path, monkeypatch):
    (tmp_path / "MODEL_CARD.md").write_text("old card")
    (tmp_path / "model_card.json").write_text("{}")
    monkeypatch.setattr(mc, "render_markdown", lambda card: "new card")
    with pytest.raises(TypeError, match="cannot serialise"):
        mc.write_card({"weights": object()}, tmp_path)  # renders, but cannot be serialised
    assert (tmp_path / "MODEL_CARD.md").read_text() == "old card" and (tmp_path / "model_card.json").read_text() == "{}"
    md, js = mc.write_card({"n": np.int64(3)}, tmp_path)
    assert md.read_text() == "new card" and json.loads(js.read_text()) == {"n": 3}


def test_write_card_swaps_both_files_together_even_when_a_signal_arrives_between_them(tmp_path, monkeypatch):
    """Ctrl-C after the first rename no longer leaves a new MODEL_CARD.md beside the old model_card.json."""
    import signal

    (tmp_path / "MODEL_CARD.md").write_text("old card")
    (tmp_path / "model_card.json").write_text("{}")
    monkeypatch.setattr(mc, "render_markdown", lambda card: "new card")
    real_replace, calls, handler = os.replace, [], signal.getsignal(signal.SIGINT)

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    md, js = mc.write_card({"n": 1}, tmp_path)  # no KeyboardInterrupt: the signal came during the swap
    assert len(calls) == 2 and md.read_text() == "new card" and json.loads(js.read_text()) == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL_CARD.md", "model_card.json"]  # no temporaries
    assert signal.getsignal(signal.SIGINT) == handler  # the handler is back


def test_write_card_interrupted_before_the_swap_leaves_the_old_pair(tmp_path, monkeypatch):
    (tmp_path / "MODEL_CARD.md").write_text("old card")
    (tmp_path / "model_card.json").write_text("{}")
    real_chmod, calls = os.chmod, []

    def chmod_then_interrupt(path, mode):
        real_chmod(path, mode)
        calls.append(path)
        if len(calls) == 2:  # both new files written aside, neither swapped in yet
            raise KeyboardInterrupt

    monkeypatch.setattr(mc, "render_markdown", lambda card: "new card")
    monkeypatch.setattr(os, "chmod", chmod_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        mc.write_card({"n": 1}, tmp_path)
    assert (tmp_path / "MODEL_CARD.md").read_text() == "old card" and (tmp_path / "model_card.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL_CARD.md", "model_card.json"]


def test_vocab_size_reads_the_folders_config(tmp_path):
    """The uniform-guess line of chapter 01 uses the vocabulary of the model whose training is drawn."""
    from tappa_utils.models import ASSETS, DEFAULT_MODEL
    from tappa_utils.tiny import describe

    assert describe.vocab_size(ASSETS / DEFAULT_MODEL) == json.loads((ASSETS / DEFAULT_MODEL / "config.json")
                                                                     .read_text())["vocab_size"]
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 49152}))
    assert describe.vocab_size(tmp_path) == 49152


def test_shipped_card_is_its_json_rendered_with_whole_sentences():
    """MODEL_CARD.md is model_card.json rendered; window kinds are described by whole sentences, and the two
    held-out losses (training's check, the card's measurement) say why they differ."""
    import json
    import re

    from tappa_utils.models import ASSETS
    from tappa_utils.tiny import card as mc
    from tappa_utils.tiny.describe import first_sentence, mixture_description

    folder = ASSETS / "tappa-tiny"
    card = json.loads((folder / "model_card.json").read_text())
    md = (folder / "MODEL_CARD.md").read_text()
    assert mc.render_markdown(card) == md
    kinds = re.findall(r"^- `(\w+)`: (.*)$", md, flags=re.M)
    assert {k for k, _ in kinds} >= {"text", "copy", "periodic", "induction", "retrieval"}
    for kind, what in kinds:
        assert what.endswith("."), f"window kind {kind}: cut sentence {what!r}"
    for name, mix in card["training"]["mixtures"].items():
        assert mix == mixture_description(name)  # the shipped JSON holds the current descriptions
    assert "quarter of the window later." in md
    losses = {f"{card['training']['eval_heldout_loss']:.3f}", f"{card['trained']['heldout_loss']:.3f}"}
    assert all(v in md for v in losses) and "training's own check" in md and "so their held-out loss differs" in md
    assert first_sentence("A b.c d.  E f.") == "A b.c d."
