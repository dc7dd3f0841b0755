"""The null book (issue 12, item 7): the claim-bearing chapters on `random:tappa-tiny` (the default model's
architecture with random weights), on their smoke parameters. No claim about trained structure may come out
`supported` there: if one does, its test or its threshold is wrong (fix it in the registry, not here).

Which claims are about trained structure: every registered claim, except the few listed in `NOT_ABOUT_TRAINING`
with the reason they hold for any weights (a mechanism of RoPE or an inequality, not something training made).
New claims are about trained structure until listed there with a reason.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tappa_utils import claims as C
from tappa_utils.book import nullbook

ROOT = Path(__file__).resolve().parents[2]

# claims that hold for any weights, with the reason (registered: Spec.any_weights); the rest is trained structure
NOT_ABOUT_TRAINING = {s.id: s.any_weights for s in C.SPECS if s.any_weights}
# what the issue names as trained structure: never exempt (rename here if a chapter renames its claim)
NAMED_TRAINED = ("predictable.trained_beats_null", "sinks.sinks_above_null", "diagonal.diagonals_above_null",
                 "diagonal.natural_periodic_diagonals", "kv_cache.probe_tappa_vs_uniform_budgets",
                 "pruning.tappa_beats_shortgpt")

CLAIMS = [s for s in C.SPECS if s.kind == "claim"]
TRAINED = [s.id for s in CLAIMS if s.id not in NOT_ABOUT_TRAINING]
# chapters with at least one claim about trained structure (the others have nothing to check on random weights)
STEMS = [s for s in nullbook.claim_chapters(ROOT) if any(c.chapter == s for c in CLAIMS if c.id in TRAINED)]


def test_the_lists_name_registered_claims():
    registered = {s.id for s in CLAIMS}
    stale = sorted(set(NOT_ABOUT_TRAINING) - registered)
    assert not stale, f"NOT_ABOUT_TRAINING lists ids that are no longer registered claims: {stale}"
    missing = sorted(set(NAMED_TRAINED) - registered)
    assert not missing, f"claims the issue names as trained structure are not registered: {missing}"
    assert not set(NAMED_TRAINED) & set(NOT_ABOUT_TRAINING)


@pytest.fixture(scope="module")
def null_book(tmp_path_factory):
    """Run every claim-bearing chapter once on random:tappa-tiny (two at a time): (results folder, failures)."""
    out = tmp_path_factory.mktemp("null_book")
    failures = nullbook.run_null_book(ROOT, out, STEMS, workers=2, timeout=600)
    return out, failures


@pytest.mark.parametrize("stem", STEMS)
def test_no_trained_structure_claim_is_supported_on_random_weights(stem, null_book):
    out, failures = null_book
    assert failures[stem] is None, failures[stem].describe()
    statuses = nullbook.claim_statuses(out, [stem])[stem]
    trained_here = [s.id for s in C.by_chapter(stem) if s.kind == "claim" and s.id in TRAINED]
    tested = [i for i in trained_here if i in statuses]
    assert not trained_here or tested, (
        f"{stem} wrote no row for its claims about trained structure {trained_here} on {nullbook.NULL_MODEL}: "
        "the null book cannot check it (record each claim with claims.claim, inconclusive when too small)")
    supported = {i: statuses[i] for i in tested if "supported" in statuses[i]}
    assert not supported, (
        f"{stem}: claims about trained structure are supported on random weights ({nullbook.NULL_MODEL}): "
        f"{supported}; the test or its threshold is wrong (fix it in tappa_utils/claims.py)")


def test_side_by_side_table(tmp_path):
    """The table the null command prints, on fixture results (no chapter run)."""
    from tappa_utils.results import save_checks

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, ci in ((a, (0.3, 0.7)), (b, (-0.1, 0.2))):
        (folder / "03_predictable").mkdir(parents=True)
        save_checks(folder / "03_predictable",
                    [C.claim("predictable.qsim_predictability_corr", 0.5, ci=ci, p_value=0.01)])
    table = nullbook.side_by_side({"tappa-tiny": a, "random:tappa-tiny": b}, ["03_predictable", "04_sinks"])
    assert "| `predictable.qsim_predictability_corr` | supported | inconclusive |" in table
    assert "| `sinks.sinks_above_null` | not run | not run |" in table
    assert "diagonal." not in table
