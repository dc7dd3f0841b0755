"""tappa_utils.prune (evaluate, report, cli): metrics against direct computations, beta choice on calibration data, CLI files/errors."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_tiny_model
from tappa_utils import prune as P
from tappa_utils.prune import evaluate as E
from tappa_utils.prune import report as R
from tappa_utils.prune.cli import main as cli_main

TINY = ["--seq-len", "80", "--calib-chunks", "2", "--calib-stride", "40", "--eval-windows", "2",
        "--copy-windows", "2", "--copy-seg-len", "8", "--max-removed", "2", "--beta-grid", "0,0.5,5",
        "--no-figures"]


def _cfg(**kw):
    base = dict(seq_len=80, calib_chunks=2, calib_stride=40, eval_windows=2, copy_windows=2, copy_seg_len=8,
                max_removed=2, beta_grid=(0.0, 0.5, 5.0))
    return E.PruneEvalConfig(**{**base, **kw})


def test_token_bytes_exact_for_byte_tokenizer(default_model):
    _, tok = default_model
    text = "héllo, wörld\n"
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    assert E.token_bytes(tok, ids) == len(text.encode("utf-8"))
    # a window cut in the middle of a multi-byte character still counts its bytes exactly
    assert E.token_bytes(tok, ids[:, :2]) == 2


class _WordTokenizer:
    """A stand-in for a sentencepiece-like tokenizer whose tokens are not byte-level characters."""

    all_special_ids = [0]
    vocab = ["<s>", "▁héllo", "▁world", "!"]

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i] for i in ids]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.vocab[i] for i in ids if i != 0).replace("▁", " ").lstrip()


def test_token_bytes_falls_back_to_decoding():
    ids = torch.tensor([[0, 1, 2, 3]])
    assert E.token_bytes(_WordTokenizer(), ids) == len("héllo world!".encode("utf-8"))


def test_lm_quality_matches_direct_loss(default_model):
    model, tok = default_model
    data = E.eval_data(tok, _cfg())
    assert data.ids.shape == (2, 80) and data.copy_ids.shape == (2, 80)
    assert torch.all(data.copy_ids[:, 0] == tok.bos_token_id)
    # the copy test really repeats the segment
    assert torch.equal(data.copy_ids[:, data.first], data.copy_ids[:, data.second])
    q = E.lm_quality(model, data, batch_size=1)
    with torch.no_grad():
        direct = model(data.ids, labels=data.ids).loss.item()
        logits = model(data.ids).logits[:, :-1]
    assert q["nats_per_token"] == pytest.approx(direct, rel=1e-5)
    # byte tokenizer: nats/byte == nats/token
    assert q["nats_per_byte"] == pytest.approx(direct, rel=1e-5)
    acc = (logits.argmax(-1) == data.ids[:, 1:]).float().mean().item()
    assert q["next_token_acc"] == pytest.approx(acc)
    assert q["copy_ratio"] == pytest.approx(q["copy_second"] / q["copy_first"])


def test_select_beta_uses_calibration_loss_only(tiny_llama):
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    scores = P.layer_scores(tiny_llama, ids)
    best, sel = E.select_beta(tiny_llama, scores, ids, max_removed=2, grid=(0.0, 0.3, 10.0))
    assert set(sel.beta) == {0.0, 0.3, 10.0} and set(sel.n_removed) == {1, 2}
    mean = sel.groupby("beta").calib_loss.mean()
    assert best == mean.idxmin()
    # each calibration loss is that of the model without exactly those layers
    row = sel.iloc[-1]
    direct = E.calibration_loss(P.remove_layers(tiny_llama, row.removed), ids)
    assert row.calib_loss == pytest.approx(direct, rel=1e-6)
    # ties go to the smallest beta: identical orders at every beta give identical losses
    flat = P.LayerScores(scores.bi, np.zeros_like(scores.qsim))
    best_flat, _ = E.select_beta(tiny_llama, flat, ids, max_removed=1, grid=(0.7, 0.2, 0.4))
    assert best_flat == 0.2


def test_method_orders_and_merge():
    s = P.LayerScores(np.array([0.3, 0.1, 0.2, 0.5]), np.array([0.9, 0.2, 0.8, 0.4]))
    orders = E.method_orders(s, (0.1, 2.0), best_beta=0.0)
    assert orders["ShortGPT"]["order"] == [1, 2, 0, 3] == orders["TAPPA best (b=0)"]["order"]
    assert orders["TAPPA b=2"]["order"] == P.tappa_order(s.bi, s.qsim, 2.0) != orders["ShortGPT"]["order"]
    rows = [{"method": m, "n_removed": k, "removed": sorted(o["order"][:k]), "nats_per_byte": 1.0}
            for m, o in orders.items() for k in range(3)]
    merged = R.merge_identical_methods(pd.DataFrame(rows))
    assert set(merged.method) == {"ShortGPT = TAPPA b=0.1 = TAPPA best (b=0)", "TAPPA b=2"}
    assert len(merged) == 6


def test_paired_comparison():
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.3, 20)
    rows = []
    for name, vals in (("ShortGPT", base), ("same", base), ("better", base - 0.1 + rng.normal(0, 0.01, 20)),
                       ("noisy", base + rng.normal(0, 0.5, 20))):
        rows += [{"method": name, "n_removed": 1, "window": i, "nats_per_token": v} for i, v in enumerate(vals)]
    cmp = E.paired_comparison(pd.DataFrame(rows)).set_index("method")
    assert cmp.loc["same", "verdict"] == "tie" and cmp.loc["same", "mean_diff"] == 0
    assert cmp.loc["better", "verdict"] == "better" and cmp.loc["better", "mean_diff"] == pytest.approx(-0.1, abs=0.01)
    d = (pd.DataFrame(rows).query("method == 'noisy'").nats_per_token.to_numpy() - base)
    assert cmp.loc["noisy", "se"] == pytest.approx(d.std(ddof=1) / np.sqrt(20))
    assert cmp.loc["noisy", "ci_low"] < cmp.loc["noisy", "mean_diff"] < cmp.loc["noisy", "ci_high"]


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="max_removed"):
        _cfg(max_removed=6).validate(n_layers=6)
    with pytest.raises(ValueError, match="beta"):
        _cfg(betas=(-0.1,)).validate()
    with pytest.raises(TypeError, match="seq_len"):
        _cfg(seq_len="64").validate()
    with pytest.raises(ValueError, match="copy_seg_len"):
        _cfg(copy_seg_len=40).validate()
    f = tmp_path / "t.txt"
    f.write_text("some text " * 100)
    with pytest.raises(ValueError, match="same file"):
        _cfg(calib_text_file=str(f), eval_text_file=str(f)).validate()


def test_same_text_for_calibration_and_evaluation_is_refused(tmp_path, default_model):
    model, tok = default_model
    held = tmp_path / "held.txt"
    from tappa_utils.data import load_text

    held.write_text(load_text()[:20000])
    with pytest.raises(ValueError, match="overlap"):
        E.run_pruning_eval(_cfg(calib_text_file=str(held)), model=model, tokenizer=tok)
    assert E._texts_overlap("abc" * 500, "xyz" + "abc" * 600) and not E._texts_overlap("abc" * 500, "xyz" * 600)


def test_beta_choice_and_scores_ignore_the_evaluation_text(tmp_path, default_model):
    model, tok = default_model
    from tappa_utils.data import load_text

    held = load_text()
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(held[: len(held) // 2])
    b.write_text(held[len(held) // 2 :])
    ra = E.run_pruning_eval(_cfg(eval_text_file=str(a)), model=model, tokenizer=tok)
    rb = E.run_pruning_eval(_cfg(eval_text_file=str(b)), model=model, tokenizer=tok)
    assert not ra.results.nats_per_byte.equals(rb.results.nats_per_byte)  # the evaluation really differs
    assert ra.best_beta == rb.best_beta and ra.beta_selection.equals(rb.beta_selection)
    np.testing.assert_array_equal(ra.scores.bi, rb.scores.bi)
    assert ra.orders == rb.orders
    # and a different calibration seed changes the scores
    rc = E.run_pruning_eval(_cfg(seed=5), model=model, tokenizer=tok)
    assert not np.array_equal(ra.scores.bi, rc.scores.bi)


def test_angular_bi_option_and_figures(tmp_path):
    out = tmp_path / "ang"
    argv = [a for a in TINY if a != "--no-figures"]
    assert cli_main(["--out", str(out), *argv, "--bi-kind", "angular"]) == 0
    for f in ("layer_scores.png", "results.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = json.loads((out / "scores_bi.json").read_text())
    assert rec["score_type"] == "block_influence_angular"
    assert all(0 <= v <= 1 for v in rec["scores"].values())


def test_cli_tiny_run_writes_files(tmp_path):
    out = tmp_path / "run"
    rc = cli_main(["--out", str(out), *TINY])
    assert rc == 0
    for f in ("scores_bi.json", "scores_qsim.json", "order_shortgpt.json", "order_tappa_beta0.1.json",
              "order_tappa_best.json", "layer_scores.csv", "beta_selection.csv", "results.csv", "results.json",
              "run_info.json", "per_window.csv", "paired_vs_shortgpt.csv"):
        assert (out / f).is_file(), f
    rec = json.loads((out / "order_shortgpt.json").read_text())
    assert set(rec) >= {"score_type", "model", "data", "chunking", "scores", "prune_order"}
    assert rec["chunking"] == {"chunk_len": 80, "stride": 40, "n_chunks": 2}
    bi = json.loads((out / "scores_bi.json").read_text())["scores"]
    assert rec["prune_order"] == P.prune_order([bi[str(i)] for i in range(len(bi))])
    res = pd.read_csv(out / "results.csv")
    assert set(res.n_removed) == {0, 1, 2}
    assert res[res.n_removed == 0].nats_per_byte.nunique() == 1  # unpruned baseline shared by every method
    info = json.loads((out / "results.json").read_text())
    assert info["lm_eval"]["available"] == E.lm_eval_available()
    assert info["best_beta"] in (0.0, 0.5, 5.0)
    win = pd.read_csv(out / "per_window.csv")
    assert len(win) == len(res) * 2  # eval_windows = 2
    # the per-window losses average to the reported nats/token
    means = win.groupby(["method", "n_removed"], sort=False).nats_per_token.mean().to_numpy()
    np.testing.assert_allclose(means, res.nats_per_token.to_numpy(), rtol=1e-5)


@pytest.mark.parametrize("argv, match", [
    (["--max-removed", "6"], "max_removed"),
    (["--betas", "-0.2"], "beta"),
    (["--betas", "a,b"], "comma-separated"),
    (["--model", "/nonexistent/model"], ""),
    (["--seq-len", "0"], "seq_len"),
    (["--eval-text-file", "/nonexistent.txt"], "not found"),
    (["--qsim-rope", "middle"], "invalid choice"),
])
def test_cli_errors_exit_2_one_line_no_files(tmp_path, capsys, argv, match):
    out = tmp_path / "run"
    rc = cli_main(["--out", str(out), *TINY, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("prune-eval: error:") and match in err[0]
    assert not out.exists()


def test_cli_missing_out(capsys):
    assert cli_main([]) == 2 and "--out" in capsys.readouterr().err
