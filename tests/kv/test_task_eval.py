"""Task-accuracy evaluation of KV presses: intervals, paired tests, Holm-corrected comparisons, ranks, decoding."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tappa_utils.kv import task_eval as TE


def test_mcnemar_is_an_exact_sign_test_on_discordant_pairs():
    a = np.array([1] * 6 + [0] * 1 + [1] * 5)
    b = np.array([0] * 6 + [1] * 1 + [1] * 5)
    # 6 wins, 1 loss: two-sided exact binomial p = 2 * P(X <= 1 | n=7, 1/2) = 2 * 8/128
    assert TE.mcnemar_p(a, b) == pytest.approx(16 / 128)
    assert TE.mcnemar_p(a, a) == 1.0
    assert TE.mcnemar_p(b, a) == TE.mcnemar_p(a, b)  # symmetric


def _results(acc: dict[str, float], n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rows.append({"task": "t", "length": 1024, "sample": i, "method": "full", "keep": 1.0, "correct": 1})
        for m, p in acc.items():
            rows.append({"task": "t", "length": 1024, "sample": i, "method": m, "keep": 0.25,
                         "correct": int(rng.random() < p)})
    return pd.DataFrame(rows)


def test_paired_comparisons_find_a_real_gap_and_not_a_null_one():
    res = _results({"tappa": 0.9, "snapkv": 0.3, "knorm": 0.9}, n=40)
    cmp = TE.paired_comparisons(res).set_index("method")
    assert set(cmp.index) == {"snapkv", "knorm"}
    assert cmp.loc["snapkv", "difference"] > 0.4 and cmp.loc["snapkv", "p_holm"] < 0.001
    assert cmp.loc["knorm", "p_holm"] > 0.05
    assert (cmp.p_holm >= cmp.p).all()


def test_accuracy_table_repeats_the_full_cache_and_ranks_order_methods():
    res = _results({"tappa": 0.8, "snapkv": 0.5}, n=20)
    table = TE.accuracy_table(res)
    full = table[table.method == "full"]
    assert full.keep.tolist() == [0.25] and full.accuracy.tolist() == [1.0] and full.n.tolist() == [20]
    assert (table.ci_low <= table.accuracy).all() and (table.accuracy <= table.ci_high).all()
    r = TE.ranks(res)
    assert r.iloc[0].method == "tappa" and r.iloc[0]["rank"] == 1


def test_a_method_run_on_fewer_samples_or_cells_is_paired_and_ranked_on_what_it_ran():
    """A grid part may run one method on the first 10 of 40 samples and on one task only: its comparisons pair on
    those 10, and the ranks at that keep use the cells every method ran."""
    res = _results({"tappa": 0.5, "snapkv": 0.5}, n=40)
    few = _results({"kvzip": 1.0}, n=10)
    other_task = _results({"tappa": 0.0, "snapkv": 1.0}, n=40, seed=1).assign(task="u")
    res = pd.concat([res, few[few.method != "full"], other_task[other_task.method != "full"]])
    cmp = TE.paired_comparisons(res).set_index(["task", "method"])
    assert cmp.loc[("t", "kvzip"), "n"] == 10 and cmp.loc[("t", "snapkv"), "n"] == 40
    tappa_first10 = res[(res.method == "tappa") & (res.task == "t") & (res["sample"] < 10)].correct.mean()
    assert cmp.loc[("t", "kvzip"), "reference_accuracy"] == pytest.approx(tappa_first10)
    assert cmp.loc[("t", "kvzip"), "difference"] == pytest.approx(tappa_first10 - 1.0)
    assert not cmp.isna().any().any()
    r = TE.ranks(res).set_index("method")
    # task "u" (kvzip did not run it) is left out of the ranks: kvzip's 1.0 on "t" ranks it first
    assert r.loc["kvzip", "rank"] == 1 and r.loc["snapkv", "accuracy"] == pytest.approx(
        res[(res.method == "snapkv") & (res.task == "t")].correct.mean())
    # without kvzip both tasks count, each weighing the same
    r2 = TE.ranks(res[res.method != "kvzip"]).set_index("method")
    assert r2.loc["snapkv", "accuracy"] == pytest.approx(
        (res[(res.method == "snapkv") & (res.task == "t")].correct.mean() + 1.0) / 2)


def test_answer_after_equals_greedy_generate_on_the_full_cache(default_model):
    from tappa_utils.kv.decoding import prefill

    model, tok = default_model
    ids = torch.tensor([[tok.bos_token_id] + list(b"def main(argv):\n    return 0\n\n\ndef ")])
    ctx, question = ids[:, :20], ids[:, 20:]
    cache, _ = prefill(model, ctx)
    got = TE.answer_after(model, cache, question, ctx.shape[1], stop_ids=[], max_new_tokens=6)
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert got == want
    stop = TE.answer_after(model, prefill(model, ctx)[0], question, 20, stop_ids=[want[2]], max_new_tokens=6)
    assert stop == want[:2]  # stops before the first stop token


def _cli(*argv: str):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "tappa_utils", "kv-tasks", *argv], capture_output=True, text=True,
                          cwd=root, timeout=600)


def test_kv_tasks_command_writes_every_table(tmp_path):
    out = tmp_path / "kvt"
    r = _cli("--model", "tappa-tiny", "--tasks", "needle_passkey", "--lengths", "256", "--samples", "2", "--keep",
             "0.5", "--methods", "tappa", "snapkv", "--window", "16", "--max-new-tokens", "6", "--quiet",
             "--out", str(out))
    assert r.returncode == 0, r.stderr
    samples = pd.read_csv(out / "samples.csv")
    assert len(samples) == 2 * 3 and set(samples.method) == {"full", "tappa", "snapkv"}
    kept = samples[samples.method != "full"].kept_fraction
    assert ((kept > 0.4) & (kept < 0.6)).all()  # the presses really evicted half of the context
    assert (samples[samples.method == "full"].kept_fraction == 1.0).all()
    acc = pd.read_csv(out / "accuracy.csv")
    assert acc.accuracy.between(0, 1).all() and (acc.n == 2).all()
    assert set(pd.read_csv(out / "comparisons.csv").method) == {"snapkv"}
    assert (out / "accuracy_vs_keep.png").stat().st_size > 1000 and (out / "run_info.json").is_file()


@pytest.mark.parametrize("argv, fragment", [
    (["--keep", "1.5"], "--keep 1.5"),
    (["--tasks", "sudoku"], "--tasks: unknown"),
    (["--methods", "magic"], "--methods"),
    (["--lengths", "100"], "--lengths 100"),
    (["--keep", "0.05", "--lengths", "256", "--window", "32"], "--window 32"),
])
def test_kv_tasks_refuses_bad_options_in_one_line_before_loading(tmp_path, argv, fragment):
    out = tmp_path / "kvt"
    r = _cli("--model", "tappa-tiny", *argv, "--out", str(out))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], r.stderr
    assert not out.exists()


def test_a_full_cache_only_run_gets_empty_ranks_and_comparisons_and_a_figure():
    """`kv-tasks --methods full` (what can the model do at all) used to crash after every sample had run."""
    from tappa_utils.kv.task_cli import plot_accuracy

    rows = pd.DataFrame([{"task": t, "length": n, "sample": i, "method": "full", "keep": 1.0, "correct": i % 2}
                         for t in ("needle_passkey", "multikey") for n in (1024, 2048) for i in range(4)])
    r = TE.ranks(rows)
    assert r.empty and list(r.columns) == ["keep", "method", "accuracy", "rank"]
    assert TE.paired_comparisons(rows).empty
    table = TE.accuracy_table(rows)
    assert len(table) == 4 and (table.accuracy == 0.5).all()
    assert plot_accuracy(table) is not None
