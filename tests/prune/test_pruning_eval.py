"""tappa_utils.prune (evaluate, report, cli): metrics against direct computations, beta choice on calibration data,
CLI files/errors."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

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
    assert E.token_bytes(_WordTokenizer(), ids) == len("héllo world!".encode())


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
    # the copy losses (logits computed at the segments' positions only) equal the full forward's, tokens 2.. of each
    with torch.no_grad():
        cl = model(data.copy_ids).logits[:, :-1]
    cnll = torch.nn.functional.cross_entropy(cl.transpose(1, 2), data.copy_ids[:, 1:], reduction="none")
    assert q["copy_first"] == pytest.approx(cnll[:, data.first.start : data.first.stop - 1].mean().item(), rel=1e-5)
    assert q["copy_second"] == pytest.approx(cnll[:, data.second.start : data.second.stop - 1].mean().item(),
                                             rel=1e-5)


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


def _results_and_windows(sets: dict, losses: dict, n_windows: int = 20):
    """results / per_window frames for methods given as {method: {k: removed}} and {method: {k: window losses}}."""
    rows, win = [], []
    for m, by_k in sets.items():
        beta = None if m == "ShortGPT" else 0.1
        for k, removed in by_k.items():
            v = losses[m][k]
            rows.append({"method": m, "beta": beta, "n_removed": k, "removed": sorted(removed),
                         "nats_per_token": float(np.mean(v))})
            win += [{"method": m, "n_removed": k, "window": i, "nats_per_token": x} for i, x in enumerate(v)]
    return pd.DataFrame(rows), pd.DataFrame(win)


def test_superiority_counts_each_pruned_model_once_and_excludes_ties():
    rng = np.random.default_rng(0)
    base = {1: rng.normal(2.0, 0.3, 20), 2: rng.normal(2.5, 0.3, 20)}
    better = base[1] - 0.1 + rng.normal(0, 0.01, 20)
    sets = {"ShortGPT": {0: [], 1: [1], 2: [1, 2]},
            "TAPPA b=0.1": {0: [], 1: [3], 2: [1, 2]},          # k=2: ShortGPT's layers (tie by construction)
            "TAPPA b=0.2": {0: [], 1: [3], 2: [1, 2]},          # the same pruned models as b=0.1
            "TAPPA best (b=0.2)": {0: [], 1: [3], 2: [1, 2]}}
    losses = {m: {0: base[1] * 0 + 1.0, 1: base[1] if m == "ShortGPT" else better, 2: base[2]} for m in sets}
    results, per_window = _results_and_windows(sets, losses)
    sup = E.superiority(results, per_window, seed=0)
    assert len(sup) == 2  # one row per distinct (k, removed set): three methods, one pruned model each
    r1 = sup[sup.n_removed == 1].iloc[0]
    assert r1.methods == "TAPPA b=0.1 = TAPPA b=0.2 = TAPPA best (b=0.2)" and r1.chosen and not r1.tie
    assert r1.gain == pytest.approx(np.mean(base[1] - better))  # loss(ShortGPT) - loss(TAPPA): > 0 = TAPPA better
    assert r1.ci_low > 0.08 and r1.p_value < 0.01
    r2 = sup[sup.n_removed == 2].iloc[0]
    assert r2.tie and r2.gain == 0 and np.isnan(r2.p_value)
    # a worse TAPPA set gives a negative gain and a large one-sided p
    worse = {**losses, **{m: {**losses[m], 1: base[1] + 0.2} for m in sets if m != "ShortGPT"}}
    sup_w = E.superiority(*_results_and_windows(sets, worse), seed=0)
    assert sup_w.gain.iloc[0] == pytest.approx(-0.2) and sup_w.p_value.iloc[0] > 0.95 and sup_w.ci_high.iloc[0] < 0


def test_comparisons_are_paired_holm_corrected_and_become_claims(default_model):
    """Chosen TAPPA vs ShortGPT and vs the random draws: gains equal the direct paired means, p Holm-adjusted over
    k, one registered claim row per (claim, k); the paper's betas and the controls make no claim."""
    from tappa_utils import claims as C
    from tappa_utils.prune import checks as K

    model, tok = default_model
    cfg = _cfg(beta_grid=(0.5,), betas=(0.5,), eval_windows=3, max_removed=3, tasks=("facts",), task_prompts=4,
               random_draws=2, random_ks=(1, 3))
    res = E.run_pruning_eval(cfg, model=model, tokenizer=tok)
    assert {"last layers", "random #1", "random #2"} <= set(res.orders)
    assert set(res.results[res.results.method == "random #1"].n_removed) == {0, 1, 3}  # only at random_ks
    L = res.n_layers
    assert res.orders["last layers"]["order"][:3] == [L - 1, L - 2, L - 3]
    comp = E.comparisons(res, seed=0)
    pw = res.per_window
    for r in comp[(comp.measure == "loss") & ~comp.tie].itertuples():
        k = r.n_removed
        mine = pw[(pw.method == "TAPPA best (b=0.5)") & (pw.n_removed == k)].nats_per_token.to_numpy()
        names = ["ShortGPT"] if r.against == "ShortGPT" else ["random #1", "random #2"]
        theirs = np.mean([pw[(pw.method == m) & (pw.n_removed == k)].nats_per_token.to_numpy() for m in names], 0)
        assert r.gain == pytest.approx((theirs - mine).mean())
    tested = comp[~comp.tie]
    assert (tested.p_holm >= tested.p_value - 1e-12).all()
    assert set(comp[comp.against == "random"].n_removed) == {1, 3}
    checks = K.pruning_checks(res, comp, restored=(1.0, 1.0))
    ids = [c.id for c in checks if c.kind == "claim"]
    assert ids.count("pruning.tappa_beats_shortgpt") == 3 and ids.count("pruning.tappa_beats_random_layers") == 2
    assert ids.count("pruning.tappa_task_accuracy") == 3 and "pruning.gain_over_null" not in C.REGISTRY
    for c in checks:
        if c.kind == "claim":
            C.validate_check(c)
            assert c.tolerance == C.spec(c.id).margin == 0.02


def test_beta_zero_gives_zero_gains_read_not_supported(default_model):
    """beta = 0 chosen: TAPPA is ShortGPT, so each ShortGPT comparison is a tie with gain 0 (not NaN) and reads
    'not supported', saying why; the random-layers control is still tested."""
    from tappa_utils.prune import checks as K

    model, tok = default_model
    res = E.run_pruning_eval(_cfg(beta_grid=(0.0,), eval_windows=3, random_draws=2), model=model, tokenizer=tok)
    checks = K.pruning_checks(res, E.comparisons(res, seed=0))
    short = [c for c in checks if c.id == "pruning.tappa_beats_shortgpt"]
    assert len(short) == 2 and all(c.measured == 0 and c.status == "not supported" for c in short)
    assert all("tie by construction" in c.note and "β = 0" in c.note for c in short)
    rand = [c for c in checks if c.id == "pruning.tappa_beats_random_layers"]
    assert len(rand) == 2 and all(not np.isnan(c.measured) and c.p_value is not None for c in rand)
    assert K.claim_summary(checks, "pruning.tappa_beats_shortgpt") == "supported at 0 of 2 k (Holm-corrected)"


def test_qsim_profile_note_follows_the_value():
    from tappa_utils.prune.checks import qsim_profile_note

    assert "includes 0" in qsim_profile_note(-0.086, (-0.4, 0.3))
    assert qsim_profile_note(0.8, (0.5, 0.9)).startswith("positive")
    assert qsim_profile_note(-0.8, (-0.9, -0.5)).startswith("negative")


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
    for f in ("layer_scores.png", "results.png", "removed_layers.png"):
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
    # the chosen beta is the one with the lowest mean calibration loss in beta_selection.csv (ties: smallest beta)
    sel = pd.read_csv(out / "beta_selection.csv").groupby("beta").calib_loss.mean()
    assert info["best_beta"] == sel[sel == sel.min()].index.min()
    sup = pd.read_csv(out / "paired_vs_shortgpt.csv")
    assert {"gain", "ci_low", "ci_high", "p_value", "tie", "chosen"} <= set(sup.columns)
    win = pd.read_csv(out / "per_window.csv")
    assert len(win) == len(res) * 2  # eval_windows = 2
    # the per-window losses average to the reported nats/token
    means = win.groupby(["method", "n_removed"], sort=False).nats_per_token.mean().to_numpy()
    np.testing.assert_allclose(means, res.nats_per_token.to_numpy(), rtol=1e-5)


@pytest.mark.parametrize("argv, match", [
    (["--max-removed", "6"], "--max-removed 6"),
    (["--betas", "-0.2"], "beta"),
    (["--betas", "a,b"], "comma-separated"),
    (["--model", "/nonexistent/model"], ""),
    (["--seq-len", "0"], "--seq-len must be >= 1"),
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


def test_layer_scores_legends_sit_below_their_panels():
    """No legend of the layer-scores figure overlaps its panel (it would hide bars or lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tappa_utils.prune import report as R

    s = P.LayerScores(np.array([0.7, 0.2, 0.1, 0.05, 0.08, 0.2]), np.array([0.6, 0.8, 0.5, 0.55, 0.56, 0.75]))
    fig = R.plot_layer_scores(s, null_qsim=np.array([0.2, 0.6, 0.8, 0.75, 0.8, 0.8]))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2
    for ax, legend in legends:
        box, frame = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.y1 <= frame.y0  # entirely below the panel
        assert min(t.get_fontsize() for t in legend.get_texts()) >= 9
    plt.close(fig)


def test_removal_positions_name_the_layers_each_order_removes_first():
    from tappa_utils.prune.report import removal_positions

    orders = {"ShortGPT": {"order": [5, 2, 7, 0], "beta": None}, "TAPPA b=0.2": {"order": [5, 2, 1, 0], "beta": 0.2},
              "TAPPA best (b=0)": {"order": [5, 2, 7, 1], "beta": 0.0}, "last k": {"order": [7, 6, 5, 4], "beta": None}}
    tab = removal_positions(orders, n_layers=8, max_removed=3)
    # ShortGPT and TAPPA at the chosen beta 0 remove the same first three layers: one row
    assert list(tab.index) == ["ShortGPT = TAPPA β=0 (chosen on calibration)", "TAPPA β=0.2", "last k"]
    assert tab.loc["TAPPA β=0.2"].dropna().to_dict() == {5: 1.0, 2: 2.0, 1: 3.0}
    assert tab.loc["last k"].dropna().to_dict() == {7: 1.0, 6: 2.0, 5: 3.0}
    assert tab.notna().sum(axis=1).eq(3).all()
