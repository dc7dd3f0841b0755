"""kv-eval: the harness runs end to end with tiny parameters, press replay equals real prefill, errors are clean;
the baselines (uniform budgets, original PyramidKV) and the chapter's claims (report.kv_checks)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from tappa_utils.__main__ import main as cli
from tappa_utils.kv.decoding import prefill
from tappa_utils.kv.evaluate import KVEvalConfig, compressed_caches, make_samples
from tappa_utils.kv.methods import METHODS, make_press
from tappa_utils.kv.report import compare, kv_checks, verdicts_vs_null
from tappa_utils.metrics import attention_implementation

TINY = ["--seq-len", "160", "--samples", "2", "--keep", "0.25", "0.5", "--cont-len", "8", "--seg-len", "12",
        "--prefix-len", "4", "--distance", "60", "--window", "16", "--quiet"]


def test_kv_eval_cli_tiny(tmp_path):
    out = tmp_path / "kv"
    assert cli(["kv-eval", *TINY, "--null", "--out", str(out)]) == 0
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
    lengths = pd.read_csv(out / "layer_lengths.csv")  # every layer of every (method, keep, sample) is logged
    n_layers = lengths.layer.max() + 1
    assert len(lengths) == len(samples) * n_layers
    per_row = lengths.groupby(["task", "method", "keep", "sample"]).length.sum().reset_index()
    merged = per_row.merge(samples, on=["task", "method", "keep", "sample"])
    assert merged.length.tolist() == [round(k * 160 * n_layers) for k in merged.kept_fraction]
    ref, prop = (samples[(samples.method == m) & (samples.keep == 0.25)].layer_lengths
                 for m in ("tappa", "tappa_proportional"))
    assert (ref.values != prop.values).any()  # the two allocation rules really differ
    cost = pd.read_csv(out / "cost.csv")
    assert (cost.press_ms > 0).all() and cost.set_index(["method", "keep"]).x_snapkv.loc[("snapkv", 0.25)] == 1
    assert "compression_cost" in data
    null = pd.read_csv(out / "null_samples.csv")  # the null ran the same samples for its methods only
    assert set(null.method) == {"full", "tappa", "uniform_cake", "expected_attention"}
    assert not null.merge(samples, on=["task", "method", "keep", "sample"]).nll_x.eq(
        null.merge(samples, on=["task", "method", "keep", "sample"]).nll_y).any()  # other weights, other losses
    rows = json.loads((out / "results.json").read_text())
    ids = {r["id"] for r in rows if r["kind"] == "claim"}
    assert ids == {"kv_cache.probe_tappa_vs_uniform_budgets", "kv_cache.probe_tappa_vs_expected_attention"}
    assert sum(r["id"] == "kv_cache.probe_tappa_vs_uniform_budgets" for r in rows) == 2 * 2  # one per (task, keep)


def test_write_results_keeps_the_matplotlib_backend(tmp_path):
    import matplotlib

    from tappa_utils.kv.evaluate import write_results

    backend = matplotlib.get_backend()
    rows = [{"task": "loss", "method": m, "keep": k, "sample": i, "nll": 1.0 + i, "accuracy": 0.5, "kept_fraction": k,
             "cache_bytes": 1, "press_ms": 1.0, "layer_lengths": "3 4"}
            for i in range(2) for m, k in (("full", 1.0), ("tappa", 0.5), ("snapkv", 0.5))]
    write_results(tmp_path, KVEvalConfig(), pd.DataFrame(rows), null_samples=pd.DataFrame(rows))
    assert matplotlib.get_backend() == backend and (tmp_path / "layer_lengths.csv").exists()
    assert (tmp_path / "null_comparisons.csv").exists()


def test_long_text_tokenized_without_length_warning(default_model, capfd, caplog):
    from tappa_utils.kv.evaluate import _text_tokens

    _, tok = default_model
    assert len(_text_tokens(tok, None)) > tok.model_max_length  # long enough to trigger the warning if enabled
    out = capfd.readouterr()
    assert "Token indices sequence length" not in out.err + out.out + caplog.text


@pytest.mark.parametrize("argv, match", [
    (["--methods", "h2o"], "unknown method"), (["--keep", "1.5"], "--keep"), (["--distance", "5"], "--distance"),
    (["--distance", "156"], "distance"),
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
    with attention_implementation(model, "sdpa"):  # as kv-eval runs (kvpress's AdaKV refuses eager)
        caches, last = compressed_caches(model, ids, presses)
        for m in METHODS:
            ref, ref_last = prefill(model, ids, make_press(m, 0.3, window=16))
            assert torch.allclose(last, ref_last, atol=1e-5)
            for a, b in zip(caches[m].layers, ref.layers):
                assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values), m


@pytest.mark.parametrize("method", ["adakv_snapkv", "adakv_expected_attention"])
def test_replayed_head_masks_decode_like_the_real_prefill_and_do_not_leak(default_model, method):
    """AdaKV masks keys per head (kvpress keeps them on the attention modules): a replayed cache carries its own
    masks, decodes as `with press(model)` does, and leaves the modules clean for the next cache."""
    model, _ = default_model
    ids = torch.randint(0, 256, (1, 200), generator=torch.Generator().manual_seed(0))
    nxt = torch.tensor([[7, 8, 9]])
    with attention_implementation(model, "sdpa"):
        _head_masks_case(model, ids, nxt, method)


def _head_masks_case(model, ids, nxt, method):
    from tappa_utils.kv.decoding import continue_forward
    from tappa_utils.models import decoder_layers

    caches, _ = compressed_caches(model, ids, {method: make_press(method, 0.5, window=16), "full": None})
    assert all(getattr(layer.self_attn, "masked_key_indices", None) is None for layer in decoder_layers(model))
    full = continue_forward(model, caches["full"], nxt, 200)
    replayed = continue_forward(model, caches[method], nxt, 200)
    ref, _ = prefill(model, ids, make_press(method, 0.5, window=16))
    real = continue_forward(model, ref, nxt, 200)
    for layer in decoder_layers(model):
        layer.self_attn.masked_key_indices = None
    assert torch.allclose(replayed, real, atol=1e-5)
    assert not torch.allclose(replayed, full, atol=1e-3)  # the masks changed the answer's logits
    assert torch.allclose(full, continue_forward(model, prefill(model, ids)[0], nxt, 200), atol=1e-5)


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


def test_default_distance_scales_with_seq_len():
    assert KVEvalConfig(seq_len=1024).planted_distance == 768 and KVEvalConfig(seq_len=512).planted_distance == 384
    assert KVEvalConfig(seq_len=512, distance=100).planted_distance == 100


def _rows(effect_null: float, full_acc: float, n: int = 12):
    """Synthetic per-sample NLLs: TAPPA better than uniform by 0.2 on the trained model, by `effect_null` on
    the null."""
    rng = np.random.default_rng(0)
    out = {"trained": [], "null": []}
    for which, gain in (("trained", 0.2), ("null", effect_null)):
        for task in ("loss", "retrieval"):
            for i in range(n):
                base = 2.0 + rng.normal(0, 0.3)
                noise = rng.normal(0, 0.02)
                for m, nll in (("full", base - 0.5), ("tappa", base - gain + noise), ("uniform_cake", base),
                               ("expected_attention", base + 0.3), ("tappa_proportional", base - gain)):
                    acc = full_acc if m == "full" else 0.3
                    out[which].append({"task": task, "method": m, "keep": 1.0 if m == "full" else 0.25, "sample": i,
                                       "nll": nll, "accuracy": acc, "kept_fraction": 1.0 if m == "full" else 0.25})
    return pd.DataFrame(out["trained"]), pd.DataFrame(out["null"])


def test_kv_checks_support_a_real_gain_holm_corrected():
    trained, _ = _rows(effect_null=0.0, full_acc=0.9)
    claims = [r for r in kv_checks(trained) if r.kind == "claim"]
    status = {(r.id, r.name.split(",")[1].strip()): r.status for r in claims}
    assert status[("kv_cache.probe_tappa_vs_uniform_budgets", "loss NLL")] == "supported"
    assert not any("null" in r.id for r in claims)  # no trained-minus-null claim: it repeated its parent
    uni = [r for r in claims if r.id == "kv_cache.probe_tappa_vs_uniform_budgets"]
    assert all(f"Holm over the {len(uni)} checks" in r.note for r in uni)


def test_kv_checks_are_inconclusive_when_the_full_cache_cannot_retrieve():
    trained, _ = _rows(effect_null=0.0, full_acc=0.1)
    checks = kv_checks(trained)
    assert [r.status for r in checks if r.kind == "assumption"] == ["violated"]
    claims = [r for r in checks if r.kind == "claim"]
    assert claims and all(r.status == "inconclusive" for r in claims)
    # the effect is still reported
    assert all(r.measured > 0.1 for r in claims if r.id == "kv_cache.probe_tappa_vs_uniform_budgets")


def test_verdicts_vs_null_flags_wins_shared_with_random_weights():
    comp = pd.DataFrame([{"task": "loss", "keep": 0.25, "versus": v, "advantage": 0.1, "verdict": "win"}
                         for v in ("a", "b")])
    null = comp.assign(verdict=["win", "tie"])
    reading = verdicts_vs_null(comp, null).set_index("versus").reading
    assert "not evidence" in reading["a"] and reading["b"] == "win on the trained model only"


def test_uniform_cake_differs_from_tappa_only_in_the_split(default_model):
    from tappa_utils.kv.baselines import UniformCAKEPress
    from tappa_utils.kv.tappa_press import TAPPAPress

    model, _ = default_model
    ids = torch.randint(0, 256, (1, 300), generator=torch.Generator().manual_seed(1))
    u, t = UniformCAKEPress(compression_ratio=0.75), TAPPAPress(compression_ratio=0.75)
    prefill(model, ids, u), prefill(model, ids, t)
    assert sum(u.budgets) == sum(t.budgets) and max(u.budgets) - min(u.budgets) <= 1
    assert u.layer_qsim == t.layer_qsim  # same statistics, only the preference (hence the split) differs


@pytest.mark.parametrize("seq_len, keep", [(512, 0.1), (512, 0.5), (1024, 0.25)])
def test_original_pyramid_vs_kvpress_pyramid(default_model, seq_len, keep):
    """kvpress 0.5.5: SnapKV's uniform budget when budget/beta < window, else (at 50 %) a pyramid whose last layer
    holds only the window; the original rule: a pyramid at every keep with the window on top in every layer."""
    model, _ = default_model
    n = model.config.num_hidden_layers
    ids = torch.randint(0, 256, (1, seq_len), generator=torch.Generator().manual_seed(2))
    caches, _ = compressed_caches(model, ids, {m: make_press(m, keep, window=32)
                                               for m in ("pyramidkv", "pyramidkv_kvpress", "snapkv")})
    lengths = {m: [layer.keys.shape[2] for layer in c.layers] for m, c in caches.items()}
    if keep < 0.5:
        assert lengths["pyramidkv_kvpress"] == lengths["snapkv"]
    else:
        assert lengths["pyramidkv_kvpress"][-1] == 32 and lengths["pyramidkv_kvpress"][0] == seq_len - 32
    p = lengths["pyramidkv"]
    assert all(a > b for a, b in zip(p, p[1:])) and min(p) > 32  # strictly decreasing, window + some context
    assert abs(sum(p) - keep * seq_len * n) <= n  # same total up to rounding


def test_null_eval_runs_in_place_equal_to_a_copy_and_restores_the_weights(default_model, monkeypatch):
    from tappa_utils import models
    from tappa_utils.kv import evaluate
    from tappa_utils.stats import null_seed

    lm, tok = default_model
    cfg = KVEvalConfig(seq_len=160, samples=1, keep=(0.5,), methods=("full", "tappa"), cont_len=8, seg_len=12,
                       prefix_len=4, distance=60, window=16)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    expected = evaluate.run_kv_eval(models.random_weight_copy(lm, null_seed(cfg.seed)), tok, cfg)
    monkeypatch.setattr(models, "random_weight_copy", lambda *a, **k: pytest.fail("the null copied the model"))
    got = evaluate.run_null_eval(lm, tok, cfg)
    cols = ["task", "method", "keep", "sample", "nll", "accuracy"]
    pd.testing.assert_frame_equal(got[cols].reset_index(drop=True), expected[cols].reset_index(drop=True))
    assert all(torch.equal(v, before[k]) for k, v in lm.state_dict().items())


def test_one_sample_with_null_runs_and_its_claims_are_inconclusive(tmp_path):
    """One sample per method cannot give an interval: the run completes (it used to fail merging empty comparison
    tables) and every claim is shown with its effect, inconclusive."""
    out = tmp_path / "kv1"
    argv = [a if a != "2" else "1" for a in TINY]  # --samples 1
    assert cli(["kv-eval", *argv, "--methods", "full", "tappa", "uniform_cake", "snapkv", "--null",
                "--out", str(out)]) == 0
    checks = json.loads((out / "results.json").read_text())
    claims = [c for c in checks if c.get("kind") == "claim"]
    assert {c["id"] for c in claims} == {"kv_cache.probe_tappa_vs_uniform_budgets"}
    assert all(c["status"] == "inconclusive" and np.isfinite(c["measured"]) for c in claims)
    assert pd.read_csv(out / "null_comparisons.csv").empty


def test_length_profile_scores_the_same_loss_targets_at_every_length(default_model, monkeypatch):
    """The loss task is nested: every length scores the same continuations, each context the longest one cut from
    the left with BOS kept (drawn per length, the texts differed and the NLL moved for that reason alone)."""
    from tappa_utils.kv import evaluate as E

    model, tok = default_model
    seen = []
    monkeypatch.setattr(E, "score_sample", lambda m, ctx, tgt: seen.append((ctx, tgt)) or {"nll": 1.0, "accuracy": 1})
    cfg = KVEvalConfig(model="tappa-tiny", seq_len=256, samples=3, cont_len=8, seg_len=16, prefix_len=4)
    E.length_profile(model, tok, cfg, lengths=(64, 128, 256), n=3)
    loss = [(c, t) for c, t in seen if t.shape[1] == 8]
    assert len(loss) == 3 * 3
    by_len = {}
    for c, t in loss:
        by_len.setdefault(c.shape[1], []).append((c, t))
    assert sorted(by_len) == [64, 128, 256]
    for i in range(3):
        targets = [by_len[L][i][1] for L in (64, 128, 256)]
        assert all(torch.equal(targets[0], x) for x in targets)  # the same continuation at every length
        short, long = by_len[64][i][0], by_len[256][i][0]
        assert short[0, 0] == tok.bos_token_id and torch.equal(short[0, 1:], long[0, -63:])  # a left cut


def test_a_head_masked_cache_takes_a_long_teacher_forced_target(default_model):
    """kvpress's fake key must push every fed query's score below zero; the 32 queries of a probe target on random
    weights admit none (kvpress raises), so a replayed AdaKV cache is fed one token at a time: same logits."""
    from tappa_utils.kv.decoding import continue_forward
    from tappa_utils.models import random_model

    model = random_model("tappa-tiny", seed=3)
    ids = torch.randint(0, 256, (1, 160), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(2))
    with attention_implementation(model, "sdpa"):
        caches, _ = compressed_caches(model, ids, {"adakv_snapkv": make_press("adakv_snapkv", 0.5, window=16),
                                                   "full": None})
        first = continue_forward(model, copy.deepcopy(caches["adakv_snapkv"]), target[:, :1], 160)
        logits = continue_forward(model, caches["adakv_snapkv"], target, 160)
        full = continue_forward(model, caches["full"], target, 160)
    assert logits.shape == (32, full.shape[1]) and torch.isfinite(logits).all()
    assert torch.allclose(logits[:1], first, atol=1e-5) and not torch.allclose(logits, full, atol=1e-3)
