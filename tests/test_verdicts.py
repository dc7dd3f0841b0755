"""Verdicts: the status of a claim whose assumptions are violated, combined statuses, the reachable p column."""
from __future__ import annotations

import math

from tappa_utils import claims as C
from tappa_utils import verdicts as V


def _rows(nonvacuous: float = 0.2):
    return [C.claim("predictable.qsim_predictability_corr", 0.5, ci=(0.3, 0.7), p_value=0.001, reachable_p=0.0005),
            C.claim("predictable.necessity", 0.9, ci=(0.8, 0.95), p_value=0.001, reachable_p=0.25),
            C.assumption("predictable.A_query_not_orthogonal", nonvacuous)]


def test_a_supported_claim_with_a_violated_assumption_gets_its_own_status_everywhere():
    rows = V.as_rows(_rows(0.05))  # A_query_not_orthogonal needs >= 0.1: violated
    by = {r["id"]: r for r in rows}
    assert by["predictable.qsim_predictability_corr"]["status"] == V.SUPPORTED_VIOLATED
    assert by["predictable.qsim_predictability_corr"]["violated"] == ["predictable.A_query_not_orthogonal"]
    assert by["predictable.necessity"]["status"] == "supported"  # rests on a claim, not on the assumption
    text = V.what_held(_rows(0.05), "03_predictable")
    assert text.startswith("**Claims on this model:** 1 supported, 1 supported with assumptions violated, 0 not ")
    assert "✔⚠ supported, assumptions violated" in text and "assumptions violated: predictable.A" in text
    assert V.VIOLATED_RULE.split(":")[0] in text
    assert "1 supported with assumptions violated" in V.verdict_line(_rows(0.05))
    ledger = {r["id"]: r for r in V.ledger_rows({"03": _rows(0.05)})}
    assert ledger["predictable.qsim_predictability_corr"]["combined"] == V.SUPPORTED_VIOLATED
    # the assumption holds: plain supported, no rule under the table
    ok = V.what_held(_rows(0.3), "03_predictable")
    assert "2 supported, 0 not supported" in ok and V.SUPPORTED_VIOLATED not in ok


def test_combined_status_keeps_the_violated_status_apart():
    sv = V.SUPPORTED_VIOLATED
    assert V.combined_status([sv, sv]) == sv
    assert V.combined_status(["supported", sv]) == sv
    assert V.combined_status([sv, "not supported"]) == "mixed"
    assert V.combined_status([sv, "inconclusive"]) == "inconclusive"
    assert V.status_text(sv).startswith("✔⚠")


def test_the_table_shows_each_claims_reachable_p_and_flags_one_that_cannot_be_significant():
    table = V.checks_markdown(_rows(0.3) + [C.sanity("x", 1.0, 1.0)])
    assert "| smallest reachable p |" in table
    assert "| 0.0005 |" in table and "0.25 (cannot be significant)" in table
    assert "Smallest reachable p:" in table
    old = C.claim("predictable.trained_beats_null", 0.2, ci=(0.15, 0.3), p_value=0.01).to_dict()
    old.pop("reachable_p")  # a results row written before the field existed: a dash
    assert "| – |" in V.checks_markdown([old])
    ledger = {r["id"]: r for r in V.ledger_rows({"03": _rows(0.3)})}
    assert ledger["predictable.necessity"]["reachable_p"] == 0.25
    assert math.isnan(ledger["sinks.low_freq_share"]["reachable_p"])
    assert C.claim("predictable.necessity", 0.9, ci=(0.8, 0.95), p_value=0.3,
                   reachable_p=0.25).to_dict()["reachable_p"] == 0.25
