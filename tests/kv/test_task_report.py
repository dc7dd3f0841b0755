"""Chapter 07's task-accuracy checks, tables and sentences, on synthetic per-sample rows (no model)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tappa_utils import claims as C
from tappa_utils import verdicts as V
from tappa_utils.kv import task_report as TR


def _rows(correct: dict, n: int, keeps=(0.25, 0.5), cells=(("needle_passkey", 1024),), full_correct=None):
    """Per-sample rows: `correct[method]` is a function (sample, keep) -> 0/1."""
    rows = []
    for task, length in cells:
        for i in range(n):
            fc = 1 if full_correct is None else full_correct(task, i)
            rows.append(dict(task=task, length=length, sample=i, method="full", keep=1.0, correct=fc,
                             kept_fraction=1.0, press_ms=0.0, answer_ms=10.0, layer_lengths="100 100 100",
                             layer_qsim=""))
            for m, f in correct.items():
                for k in keeps:
                    lengths = "20 30 25" if m == "tappa" else "25 25 25"
                    rows.append(dict(task=task, length=length, sample=i, method=m, keep=k, correct=f(i, k),
                                     kept_fraction=k, press_ms=20.0 if m == "tappa" else 10.0, answer_ms=10.0,
                                     layer_lengths=lengths, layer_qsim="0.9 0.5 0.7" if m == "tappa" else ""))
    return pd.DataFrame(rows)


def test_sign_test_is_exact_and_one_sided():
    assert TR.sign_test_greater([1] * 5, [0] * 5) == pytest.approx(1 / 32)
    assert TR.sign_test_greater([0] * 5, [1] * 5) == 1.0  # the wrong direction is never significant
    assert TR.sign_test_greater([1, 0], [1, 0]) == 1.0  # no discordant pair
    assert TR.sign_test_greater([1, 1, 0], [0, 0, 1]) == pytest.approx(4 / 8)


def test_holm_corrects_within_each_claim_and_says_so():
    rows = [C.claim("kv_cache.tappa_vs_snapkv", 0.3, ci=(0.1, 0.5), p_value=p, name=f"c{i}")
            for i, p in enumerate((0.02, 0.02))]
    other = C.claim("kv_cache.tappa_vs_expected_attention", 0.3, ci=(0.1, 0.5), p_value=0.02)
    gated = C.claim("kv_cache.tappa_vs_snapkv", 0.3, ci=(0.1, 0.5), p_value=math.nan)
    C.holm_adjust(rows + [other, gated])
    assert [r.p_value for r in rows] == [0.04, 0.04] and other.p_value == 0.02  # family = one claim id
    assert all(r.status == "supported" and "Holm over the 2 checks" in r.note for r in rows)
    assert math.isnan(gated.p_value) and gated.status == "inconclusive"
    text = V.checks_markdown(rows)
    assert "2 supported of 2 checks, Holm-corrected" in text
    led = [r for r in V.ledger_rows({"07_kv_cache": [r.to_dict() for r in rows]})
           if r["id"] == "kv_cache.tappa_vs_snapkv"]
    assert led[0]["holm"] and led[0]["combined"] == "supported"


def test_a_real_gain_is_supported_and_a_null_one_is_not():
    n = 24
    data = _rows({"tappa": lambda i, k: int(i % 4 != 0), "snapkv": lambda i, k: int(i % 4 == 1),
                  "uniform_cake": lambda i, k: int(i % 4 != 0)}, n)
    checks = TR.task_checks(data)
    by = {(c.id, c.name): c for c in checks}
    snap = [c for c in checks if c.id == "kv_cache.tappa_vs_snapkv"]
    assert len(snap) == 2 and all(c.status == "supported" for c in snap)  # 12 wins 0 losses at each keep
    assert all(c.measured == pytest.approx(0.5) for c in snap)
    uni = [c for c in checks if c.id == "kv_cache.tappa_vs_uniform_budgets"]
    assert all(c.status != "supported" and c.measured == 0 for c in uni)  # identical answers: no evidence
    assert not any(c.id == "kv_cache.tappa_vs_expected_attention" for c in checks)  # not run, not claimed
    assert by[("kv_cache.A_task_solvable", "full-cache accuracy, needle_passkey at 1024 tokens")].status == "holds"
    ranks = [c for c in checks if c.name.startswith("TAPPA's rank")]
    assert [c.measured for c in ranks] == [1.0, 1.0]
    cost = [c for c in checks if c.name.startswith("TAPPA / SnapKV time, compression")]
    assert cost[0].measured == pytest.approx(2.0)


def test_a_cell_the_full_cache_cannot_do_gives_inconclusive_claims():
    data = _rows({"tappa": lambda i, k: 1, "snapkv": lambda i, k: 0}, 20,
                 full_correct=lambda task, i: int(i < 5))  # 5 / 20 with the full cache
    checks = TR.task_checks(data)
    assert [c.status for c in checks if c.kind == "assumption"] == ["violated"]
    claims = [c for c in checks if c.kind == "claim"]
    assert claims and all(c.status == "inconclusive" and "full cache fails" in c.note for c in claims)
    full = TR.full_cache_table(data)
    assert full.accuracy.tolist() == [0.25] and not full.solvable.iloc[0]
    assert "Below the registered bar" in TR.full_cache_text(full)


def test_tables_and_texts_name_every_method_and_budget():
    data = _rows({"tappa": lambda i, k: int(k > 0.3), "snapkv": lambda i, k: 1}, 6,
                 cells=(("needle_passkey", 512), ("qa", 512)))
    md = TR.accuracy_markdown(data)
    assert "**needle\\_passkey, 512 tokens**: full cache 1 [0.61, 1], n = 6" in md and "**qa, 512 tokens**" in md
    lines = [line for line in md.splitlines() if line.startswith("| tappa")]
    assert len(lines) == 2 and lines[0].startswith("| tappa | 0 [0, 0.39] |")
    assert "rank 2 of 2 at 25 % kept (mean accuracy 0.00; best snapkv, 1.00)" in TR.rank_text(data)
    assert "rank 1 of 2 at 50 % kept (mean accuracy 1.00, tied with 1 other)" in TR.rank_text(data)
    # a grid part that ran qa only at 50 %: no "qa 512, 25 %" column is left for it
    part = data[~((data.task == "qa") & (data.keep == 0.25))]
    md_part = TR.accuracy_markdown(part)
    qa_table = md_part.split("**qa, 512 tokens**")[1]
    assert "25 %" not in qa_table and "50 %" in qa_table and "25 %" in md_part.split("**qa")[0]
    # a method run on fewer samples shows its n
    fewer = data[~((data.method == "snapkv") & (data["sample"] >= 3))]
    assert "(n = 3)" in TR.accuracy_markdown(fewer) and "(n = 3)" not in md
    prof = TR.layer_profile(data, 0.25)
    assert prof.tappa.tolist() == [20, 30, 25] and prof.snapkv.tolist() == [25, 25, 25]
    assert np.allclose(prof.qsim, [0.9, 0.5, 0.7])


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(tasks=["nope"]), "tasks: unknown"), (dict(keep=[1.5]), "keep"), (dict(lengths=[100]), "lengths"),
    (dict(samples=0), "samples"), (dict(window=300), "window 300"), (dict(methods=["zzz"]), "unknown method")])
def test_check_grid_refuses_bad_input_in_one_line(kwargs, fragment):
    args = dict(tasks=["needle_passkey"], lengths=[512], samples=4, keep=[0.25], methods=["tappa"], window=32)
    with pytest.raises(ValueError, match=fragment) as e:
        TR.check_grid(**{**args, **kwargs})
    assert "\n" not in str(e.value)


def test_accuracy_by_depth_shows_where_a_recent_window_press_loses_the_needle():
    rows = []
    for i, depth in enumerate([0.0, 0.5, 1.0] * 4):
        rows.append({"task": "needle_passkey", "length": 1024, "depth": depth, "sample": i, "method": "full",
                     "keep": 1.0, "correct": 1})
        rows.append({"task": "needle_passkey", "length": 1024, "depth": depth, "sample": i, "method": "window",
                     "keep": 0.25, "correct": int(depth == 1.0)})  # keeps the last tokens only
        rows.append({"task": "needle_passkey", "length": 1024, "depth": depth, "sample": i, "method": "good",
                     "keep": 0.25, "correct": int(i % 4 != 0)})
    rows.append({"task": "common_words", "length": 1024, "depth": np.nan, "sample": 99, "method": "good",
                 "keep": 0.25, "correct": 1})  # no needle: no depth row
    t = TR.accuracy_by_depth(pd.DataFrame(rows)).set_index("method")
    assert list(t.columns) == ["task", "length", "keep", "depth 0", "depth 0.5", "depth 1"]
    assert t.loc["window", ["depth 0", "depth 0.5", "depth 1"]].tolist() == [0.0, 0.0, 1.0]
    assert t.loc["good", "depth 0"] == pytest.approx(0.75)  # samples 0, 3, 6, 9: only 0 wrong
    assert "full" not in t.index and len(t) == 2
    assert TR.accuracy_by_depth(pd.DataFrame(rows), methods=["good"]).method.tolist() == ["good"]


def test_recent_only_names_the_budgets_where_tappa_found_only_the_last_needles():
    rows = [{"task": "needle_passkey", "length": 1024, "depth": d, "sample": i, "method": m, "keep": k,
             "correct": int(d == 1.0 or (m == "keydiff") or (k == 0.9 and d >= 0.5))}
            for i, d in enumerate([0.0, 0.5, 1.0] * 2) for m in ("full", "tappa", "snapkv", "keydiff")
            for k in (0.25, 0.9)]
    r = pd.DataFrame(rows)
    assert TR.recent_only(r) == [("needle_passkey", 1024, 0.25, ["tappa", "snapkv"], 3)]
    text = TR.recent_only_text(r)
    assert "needle_passkey at 1024 tokens, 25 % kept" in text and "2 of 3" in text and "90 %" not in text
    assert TR.recent_only_text(r[r.keep == 0.9]).startswith("Every press answers some needle")
