"""The claims registry, the kinds of checks and their status rules, and save_checks' refusal of unregistered rows."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tappa_utils import claims as C
from tappa_utils.claims import KINDS, Check, claim_status
from tappa_utils.results import checks_table, save_checks

ROOT = Path(__file__).resolve().parents[1]


def test_registry_is_consistent():
    assert len(C.REGISTRY) == len(C.SPECS) >= 20
    stems = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    for s in C.SPECS:
        assert s.chapter in stems, f"{s.id}: no notebook {s.chapter}"
        assert s.id.startswith(f"{s.chapter.split('_', 1)[1]}.") and s.statement and s.paper and s.notes
        assert s.threshold is None or math.isfinite(s.threshold)
        assert s.kind == "claim" or s.margin == 0  # assumptions: a threshold, no margin
        for a in s.assumptions:
            assert a in C.REGISTRY
    kinds = {s.kind for s in C.SPECS}
    assert kinds == {"claim", "assumption"}
    # the claims the issue lists are registered
    for need in ("predictable.qsim_predictability_corr", "predictable.trained_beats_null", "predictable.necessity",
                 "sinks.low_freq_share", "sinks.V1_query_continuity", "diagonal.D1_query_continuity",
                 "diagonal.D2_key_continuity", "diagonal.natural_periodic_diagonals", "seasonal.S1_query_periodicity",
                 "kv_cache.tappa_vs_uniform_budgets", "kv_cache.tappa_vs_expected_attention",
                 "kv_cache.tappa_vs_snapkv", "kv_cache.A_task_solvable",
                 "pruning.tappa_beats_shortgpt"):
        assert need in C.REGISTRY, need
    assert C.spec("pruning.tappa_beats_shortgpt").margin > 0  # superiority, not non-inferiority
    assert [s.id for s in C.by_chapter("05")] == [s.id for s in C.SPECS if s.chapter == "05_diagonal"]


_USE = re.compile(r"""\b(?:claim|assumption)\(\s*["']([A-Za-z0-9_.]+)["']""")


def _sources():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        yield nb.name, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for py in sorted((ROOT / "tappa_utils").rglob("*.py")):
        if py.name != "claims.py":
            yield str(py.relative_to(ROOT)), py.read_text()


def test_every_claim_or_assumption_used_in_the_code_is_registered():
    used = {(where, i) for where, src in _sources() for i in _USE.findall(src)}
    missing = sorted(f"{where}: {i}" for where, i in used if i not in C.REGISTRY)
    assert not missing, "unregistered claim/assumption ids: " + ", ".join(missing)
    assert _USE.findall('C.claim("predictable.x", 1)') == ["predictable.x"]  # the scan itself finds ids


def test_results_files_hold_only_registered_claims(tmp_path):
    """Every results.json of an executed book (when one exists under _build/results) and a written one."""
    rows = [C.claim("predictable.qsim_predictability_corr", 0.5, ci=(0.3, 0.7), p_value=0.001).to_dict()]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    files = [tmp_path / "results.json", *sorted((ROOT / "_build" / "results").glob("*/results.json"))]
    for f in files:
        C.validate_rows(json.loads(f.read_text()), source=str(f))
    bad = [dict(rows[0], id="predictable.unknown")]
    with pytest.raises(ValueError, match="not registered"):
        C.validate_rows(bad, source="x")


@pytest.mark.parametrize("relation, measured, ci, p, want", [
    ("ge", 0.5, (0.3, 0.7), 0.001, "supported"),
    ("ge", 0.5, (0.05, 0.7), 0.001, "inconclusive"),   # significant but the ci reaches below threshold + margin
    ("ge", 0.5, (0.3, 0.7), 0.2, "inconclusive"),      # beyond the bar but not significant
    ("ge", 0.05, (0.0, 0.09), 0.03, "not supported"),  # significant, but the whole ci is short of the margin
    ("ge", -0.5, (-0.7, -0.3), 0.999, "not supported"),
    ("ge", float("nan"), None, None, "inconclusive"),
    ("ge", 0.5, None, 0.001, "supported"),
    ("ge", -0.5, None, 0.999, "not supported"),        # significant in the opposite direction
    ("ge", 0.05, None, 0.5, "inconclusive"),
    ("le", -0.5, (-0.7, -0.3), 0.001, "supported"),    # mirrored: bar = 0 - 0.2
    ("le", 0.1, (-0.1, 0.3), 0.3, "not supported"),    # the whole ci above -0.2
    ("le", -0.1, (-0.3, 0.1), 0.01, "inconclusive"),
    ("le", 0.5, (0.3, 0.7), None, "not supported"),
])
def test_claim_status_rules(relation, measured, ci, p, want):
    assert claim_status(measured, 0.0, 0.2 if relation == "le" else 0.1, relation, ci, p) == want


def test_constructors_compute_status_from_the_registry():
    c = C.claim("predictable.qsim_predictability_corr", 0.45, ci=(0.2, 0.7), p_value=0.004)
    s = C.spec("predictable.qsim_predictability_corr")
    assert (c.kind, c.predicted, c.tolerance, c.relation, c.paper) == ("claim", s.threshold, s.margin, s.relation,
                                                                       s.paper)
    assert c.status == "supported" and c.passed is True
    assert C.claim("predictable.qsim_predictability_corr", 0.15, ci=(-0.1, 0.4), p_value=0.1).passed is False
    a = C.assumption("sinks.V1_query_continuity", 0.9)
    assert a.status == "violated" and a.passed is False
    assert C.assumption("sinks.V1_query_continuity", 0.3).status == "holds"
    assert C.assumption("sinks.V2_dominant_channel", float("nan")).status == "violated"
    assert C.sanity("identity", 1.0, 1.0 + 1e-12, 1e-9).status == "ok"
    assert C.sanity("identity", 1.0, 1.1, 1e-9).status == "BUG" and C.sanity("x", 1, 1.1, 1e-9).passed is False
    m = C.measurement("looseness", 0.07, ci=(0.05, 0.09))
    assert m.status == "reported" and m.passed is None and m.ci == (0.05, 0.09)
    # deterministic claims go without statistics; others must not
    assert C.Check("x", 0.1, 0.03, 0.0, "le", kind="claim", id="x").status == "supported"
    with pytest.raises(ValueError, match="ci or a p-value"):
        C.claim("predictable.qsim_predictability_corr", 0.5)
    with pytest.raises(KeyError, match="not a registered"):
        C.claim("predictable.made_up", 0.5, ci=(0, 1))
    with pytest.raises(ValueError, match="registered as an assumption"):
        C.claim("sinks.V1_query_continuity", 0.5, ci=(0, 1))
    with pytest.raises(ValueError, match="may not override"):
        C.claim("predictable.qsim_predictability_corr", 0.5, ci=(0, 1), predicted=0.3)


def test_old_style_checks_are_measurements():
    c = Check("old row", 0.0, 1.0, 0.0, "ge")
    assert c.kind == "measurement" and c.passed is None and c.status == "reported"
    with pytest.raises(ValueError, match="kind"):
        Check("x", 0, 0, kind="verdict")
    with pytest.raises(ValueError, match="registered id"):
        Check("x", 0, 1, 0, "ge", kind="claim")
    assert set(KINDS) == {"claim", "assumption", "sanity", "measurement"}


def test_save_checks_writes_kinds_and_refuses_unregistered_rows(tmp_path):
    checks = [C.claim("sinks.low_freq_share", 0.2, ci=(0.1, 0.3), p_value=0.001, name="L5 H3"),
              C.assumption("diagonal.D1_query_continuity", 0.3), C.sanity("bound holds", 1.0, 1.0),
              C.measurement("looseness", 0.06, ci=(0.05, 0.07))]
    path = save_checks(tmp_path, checks)
    rows = json.loads(path.read_text())
    for r in rows:
        assert {"name", "predicted", "measured", "tolerance", "passed", "kind", "id", "ci", "paper", "p_value",
                "status"} <= set(r)
    assert [r["status"] for r in rows] == ["supported", "holds", "ok", "reported"]
    assert rows[0]["ci"] == [0.1, 0.3] and rows[3]["passed"] is None and rows[1]["ci"] is None
    assert list(checks_table(checks)["kind"]) == ["claim", "assumption", "sanity", "measurement"]
    for bad in (Check("ad hoc claim", 0.0, 1.0, 0.0, "ge", kind="claim", id="predictable.not_registered", p_value=0.01),
                Check("moved threshold", 0.0, 0.2, 0.0, "ge", kind="claim", id="sinks.low_freq_share", p_value=0.01),
                Check("assumption as claim", 0.5, 0.2, 0.0, "le", kind="claim", id="sinks.V1_query_continuity",
                      p_value=0.01)):
        with pytest.raises(ValueError):
            save_checks(tmp_path / "bad", [bad])
        assert not (tmp_path / "bad" / "results.json").exists()


def test_what_held_reports_each_status_and_untested_claims():
    from tappa_utils import verdicts as V

    rows = [C.claim("predictable.qsim_predictability_corr", 0.5, ci=(0.3, 0.7), p_value=0.001).to_dict(),
            C.claim("predictable.trained_beats_null", -0.4, ci=(-0.6, -0.2), p_value=0.99).to_dict(),
            C.assumption("predictable.A_nonvacuous", 0.2).to_dict(),
            C.sanity("bound holds on every step", 1.0, 0.5).to_dict()]
    text = V.what_held(rows, "03_predictable")
    assert text.startswith("**Claims on this model:** 1 supported, 1 not supported, 0 inconclusive (of 2 tested; 1 ")
    assert "✘ BUG: bound holds on every step" in text and "0 of 1 hold" in text
    assert "not tested here" in text and "predictable.necessity" in text
    ledger = {r["id"]: r for r in V.ledger_rows({"03": rows})}
    assert ledger["predictable.qsim_predictability_corr"]["status"] == "supported"
    assert ledger["predictable.trained_beats_null"]["status"] == "not supported"
    assert ledger["sinks.low_freq_share"]["status"] == "not run"


def test_no_kv_claim_repeats_its_parent():
    """kv_win_over_null (TAPPA's gain trained minus random weights) equalled its parent when the null's gain was ~0:
    removed; the chapter 7 claims are stated on task accuracy with the probes under their own ids."""
    assert "kv_cache.kv_win_over_null" not in C.REGISTRY
    for cid in ("kv_cache.tappa_vs_uniform_budgets", "kv_cache.tappa_vs_snapkv",
                "kv_cache.tappa_vs_expected_attention"):
        s = C.spec(cid)
        assert "accuracy" in s.notes and "Holm" in s.notes and s.assumptions == ("kv_cache.A_task_solvable",)
