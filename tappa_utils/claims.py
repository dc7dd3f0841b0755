"""The registry of every claim of the paper and every assumption the book tests, written before the data.

One `Spec` per claim or assumption: its id (``chNN.short_name``), kind, chapter, statement, paper section, relation
("ge": the effect must be large; "le": small), threshold and margin (fixed here, never in a notebook), the ids of
the assumptions it rests on, and notes on how the effect is measured.

A `Check` is one row of a chapter's results; its verdict is computed from its fields by the rules in its docstring.
Checks are built with the constructors below, which look the spec up (an unknown id is a clear error) and let
`Check` compute the verdict:

- `claim(id, measured, ci=..., p_value=...)`: "supported" only when p < 0.05 (when a p-value is given) and the
  effect clears threshold + margin in the claim's direction (the ci's lower bound for "ge", upper for "le");
  "not supported" when the ci lies entirely on the wrong side of threshold + margin (or, without a ci, the effect
  is there and significant in the opposite direction); otherwise "inconclusive". A claim needs a ci or a p-value
  unless its spec is `deterministic` (no sampling: then the point value decides).
- `assumption(id, measured, ci=None)`: "holds" / "violated" against the registered threshold (point value).
- `sanity(name, predicted, measured, tolerance, relation)`: an identity or a definition; "ok" / "BUG".
- `measurement(name, value, ci=None)`: a value with its interval; never passes or fails.

`results.save_checks` calls `validate_check`, so a claim or assumption whose id is not here, or whose threshold,
margin or relation was changed after the fact, cannot be written.

Margins: correlations must clear 0.1 (a weak but real monotone relation); trained-minus-null differences of head
metrics 0.05 (in probability mass); losses 0.01 nats/token (KV cache) and 0.02 nats/token (pruning, the paper claims
superiority). Assumption thresholds are the loosest reading of the paper's "small" (relative continuity steps <= 0.5,
a dominant channel carrying at least half of |q^m||k^m|, seasonal eps <= 0.1).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .stats import holm

KINDS = ("claim", "assumption", "sanity", "measurement")
ALPHA = 0.05  # significance level of every claim


@dataclass
class Check:
    """One row of a chapter's results: a claim, an assumption, a sanity check or a measurement.

    The verdict (`status`, `passed`) is computed from the fields, never set by hand. Build claims and assumptions
    with `tappa_utils.claims.claim` / `assumption` (they look the registered spec up and fill `predicted`,
    `tolerance`, `relation`, `paper`); sanity checks and measurements with `claims.sanity` / `claims.measurement`.

    Parameters
    ----------
    name : str
        What is checked, in words (shown in tables).
    predicted : float
        The threshold (claim, assumption) or the predicted value (sanity); NaN for a measurement without one.
    measured : float
        The effect / value measured on this model.
    tolerance : float
        Claims: the registered margin (the effect must clear ``predicted + tolerance`` for "ge", ``predicted -
        tolerance`` for "le"). Sanity: the allowed deviation. Assumptions, measurements: unused (0).
    relation : str
        "ge" or "le" (claims, assumptions, sanity), or "close" (sanity: ``|measured - predicted| <= tolerance``).
    note : str
        Free text shown beside the row.
    kind : str
        "claim" (a statement of the paper tested on this model; it may fail), "assumption" (a premise of a theorem,
        measured against a threshold fixed in advance), "sanity" (an identity or a definition: a failure is a bug)
        or "measurement" (a value with its interval; never passes or fails). Default "measurement", so that a check
        built the old way (`Check(name, predicted, measured, tolerance, relation)`) can never count as a passed
        claim: give it a kind explicitly.
    id : str or None
        Registry id (`tappa_utils.claims.REGISTRY`); required for claims and assumptions.
    ci : (low, high) or None
        Confidence interval of `measured` (95 %, bootstrap unless the note says otherwise).
    paper : str
        Section of the paper the row is about.
    p_value : float or None
        One-sided p-value of the test in the claim's direction (H0: the effect is not beyond the threshold).
    reachable_p : float or None
        The smallest p-value the test's number of units (and resamples) allows (`stats.reachable_p`, each
        `StatResult.reachable_p`): at or above 0.05 the claim cannot be supported whatever the data. Shown on every
        claim row.

    Status rules
    ------------
    claim ("ge"; "le" mirrored), with ``bar = predicted + tolerance``:
      "supported" when (p_value is None or p_value < ALPHA) and the effect clears the bar: ci low > bar (or, without a
      ci, measured > bar); "not supported" when the ci lies entirely below the bar (ci high < bar) or, without a ci,
      when the effect is below the bar and significant in the opposite direction (p_value > 1 - ALPHA) or has no
      p-value; otherwise "inconclusive" (NaN effect included). `passed` is True only for "supported".
    assumption: "holds" when measured satisfies the relation with the threshold (point value), else "violated"
      (NaN: violated). sanity: "ok" / "BUG" from the relation and tolerance. measurement: status "reported",
      `passed` None.
    """

    name: str
    predicted: float
    measured: float
    tolerance: float = 0.0
    relation: str = "close"
    note: str = ""
    kind: str = "measurement"
    id: str | None = None
    ci: tuple[float, float] | None = None
    paper: str = ""
    p_value: float | None = None
    reachable_p: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Check {self.name!r}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.relation not in ("close", "le", "ge"):
            raise ValueError(f"Check {self.name!r}: unknown relation {self.relation!r}; use close, le or ge")
        if self.kind in ("claim", "assumption") and self.relation == "close":
            raise ValueError(f"Check {self.name!r}: a {self.kind} needs relation 'ge' or 'le', not 'close'")
        if self.kind in ("claim", "assumption") and not self.id:
            raise ValueError(f"Check {self.name!r}: a {self.kind} needs a registered id; build it with "
                             f"tappa_utils.claims.{self.kind}(id, ...)")
        if self.ci is not None:
            lo, hi = (float(v) for v in self.ci)
            if not (lo <= hi or math.isnan(lo) or math.isnan(hi)):
                raise ValueError(f"Check {self.name!r}: ci {self.ci} has low > high")
            self.ci = (lo, hi)
        if self.p_value is not None:
            self.p_value = float(self.p_value)
            if not (0.0 <= self.p_value <= 1.0 or math.isnan(self.p_value)):
                raise ValueError(f"Check {self.name!r}: p_value {self.p_value} is not in [0, 1]")

    def _relation_holds(self, value: float, target: float, tol: float) -> bool:
        if math.isnan(value) or math.isnan(target):
            return False
        if self.relation == "close":
            return abs(value - target) <= tol
        if self.relation == "le":
            return value <= target + tol
        return value >= target - tol

    @property
    def status(self) -> str:
        """The verdict in words (rules in the class docstring)."""
        p, m = float(self.predicted), float(self.measured)
        if self.kind == "measurement":
            return "reported"
        if self.kind == "sanity":
            return "ok" if self._relation_holds(m, p, float(self.tolerance)) else "BUG"
        if self.kind == "assumption":
            return "holds" if self._relation_holds(m, p, 0.0) else "violated"
        return claim_status(m, p, float(self.tolerance), self.relation, self.ci, self.p_value)

    @property
    def passed(self) -> bool | None:
        """True / False from the status; None for a measurement."""
        s = self.status
        if self.kind == "measurement":
            return None
        return s in ("supported", "holds", "ok")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        return {**d, "passed": self.passed, "status": self.status}


def claim_status(measured: float, threshold: float, margin: float, relation: str,
                 ci: tuple[float, float] | None = None, p_value: float | None = None, alpha: float = ALPHA) -> str:
    """"supported" / "not supported" / "inconclusive" for a claim (rules in `Check`)."""
    sign = 1.0 if relation == "ge" else -1.0
    if relation not in ("ge", "le"):
        raise ValueError(f"a claim's relation is 'ge' or 'le', got {relation!r}")
    bar = threshold + sign * margin
    if math.isnan(measured) or math.isnan(bar) or (p_value is not None and math.isnan(p_value)):
        return "inconclusive"
    # work in the claim's direction: larger is better
    eff, b = sign * measured, sign * bar
    if ci is not None:
        lo, hi = sorted((sign * ci[0], sign * ci[1]))
        if math.isnan(lo) or math.isnan(hi):
            return "inconclusive"
        if lo > b and (p_value is None or p_value < alpha):
            return "supported"
        if hi < b:
            return "not supported"
        return "inconclusive"
    if p_value is None:
        return "supported" if eff > b else "not supported"
    if eff > b and p_value < alpha:
        return "supported"
    if eff < b and p_value > 1 - alpha:
        return "not supported"
    return "inconclusive"



@dataclass(frozen=True)
class Spec:
    """One registered claim or assumption.

    Parameters
    ----------
    id : str
        ``chNN.short_name``, unique.
    kind : str
        "claim" or "assumption".
    chapter : str
        Notebook stem where it is tested (e.g. "03_predictable").
    statement : str
        The statement in words, as the ledger shows it.
    paper : str
        Section of the paper (e.g. "§4, Proposition 1").
    relation : str
        "ge" (the effect must be at least threshold + margin) or "le" (at most threshold - margin).
    threshold : float or None
        Value the effect is compared to; None when it is set per check (`claim(..., predicted=...)`), e.g. a
        prediction that depends on the model.
    margin : float
        How far beyond the threshold a claim's effect must be (0 for assumptions).
    assumptions : tuple of str
        Ids of the assumptions the claim rests on (registered here).
    notes : str
        How the effect is measured and tested.
    deterministic : bool
        True when the effect involves no sampling, so no interval or p-value applies.
    any_weights : str
        Claims that hold for any weights (a theorem, RoPE's geometry): why. Empty (the default) for a claim about
        trained structure, which random weights must fail (`tests/book/test_null_book.py`,
        `benchmarks/specificity_chapters.py`).
    """

    id: str
    kind: str
    chapter: str
    statement: str
    paper: str
    relation: str
    threshold: float | None
    margin: float = 0.0
    assumptions: tuple[str, ...] = field(default_factory=tuple)
    notes: str = ""
    deterministic: bool = False
    any_weights: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("claim", "assumption"):
            raise ValueError(f"spec {self.id}: kind must be 'claim' or 'assumption', got {self.kind!r}")
        if self.relation not in ("ge", "le"):
            raise ValueError(f"spec {self.id}: relation must be 'ge' or 'le', got {self.relation!r}")
        if self.margin < 0:
            raise ValueError(f"spec {self.id}: the margin must be >= 0, got {self.margin}")
        if not self.id.startswith(f"{self.topic}."):
            raise ValueError(f"spec {self.id}: the id must start with its chapter's topic, '{self.topic}.'")

    @property
    def topic(self) -> str:
        """The chapter's stem without its number (`04_sinks` -> `sinks`): the prefix of the id, so inserting or
        renumbering a chapter renames no claim."""
        return self.chapter.split("_", 1)[1]

    @property
    def bar(self) -> float | None:
        """threshold + margin in the claim's direction."""
        if self.threshold is None:
            return None
        return self.threshold + (self.margin if self.relation == "ge" else -self.margin)


# ---------------------------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------------------------

_NULL = ("the trained heads against the heads of a random-weight copy of the same architecture (seed "
         "`stats.null_seed(seed)`); ")

SPECS: tuple[Spec, ...] = (
    # ---- chapters 0-2: the default model's premises (training targets of tappa-tiny, as assumptions of the book)
    # Chapters 4-5 and 3 study sinks, diagonals and the q-sim / predictability relation: they presuppose a model that
    # has them. These are goals fixed before training (issue 13), measured as point values on held-out windows by
    # `tiny.measure.summarize_heads` (chapter 1 and the model card); not claims of the paper, so they never count as
    # evidence for it. Counts are of heads; a sink head has first-token mass >= 0.3, a diagonal head mass >= 0.3 at
    # one offset (1..256, `metrics.profile_length`; `tiny.measure.CardConfig`).
    Spec("default_model.T_sink_heads", "assumption", "01_default_model",
         "The model has at least 2 sink heads outside layer 0 (first-token mass >= 0.3), for chapter 4 to study.",
         "§5.1 (premise of the book, training target)", "ge", 2.0, 0.0, (),
         "Number of heads outside the first layer with mean first-token mass >= 0.3 (queries t >= 16)."),
    Spec("default_model.T_diagonal_heads", "assumption", "01_default_model",
         "The model has at least 4 diagonal heads (mass >= 0.3 at one offset), for chapter 5 to study.",
         "§5.2 (premise of the book, training target)", "ge", 4.0, 0.0, (),
         "Number of heads whose best offset (1..256, crossing at least half of the queries) carries mean mass >= 0.3."),
    Spec("default_model.T_copying", "assumption", "01_default_model",
         "The model copies: a repeated random segment costs at most half as much the second time.",
         "§4 (unpredictable / retrieval heads; premise of the book, training target)", "le", 0.5, 0.0, (),
         "Copy ratio: mean loss on the second occurrence of a random 48-token segment / on the first."),
    Spec("default_model.T_qsim_predictability", "assumption", "01_default_model",
         "Within layers, q-similarity (consecutive, pre-RoPE) ranks heads like their predictability "
         "(Spearman >= 0.5).",
         "§4 (premise of the book, training target)", "ge", 0.5, 0.0, (),
         "tiny.measure.summarize_heads' within-layer Spearman; random weights reach a sizeable value too (a "
         "mechanical part), so this is a target, not evidence: chapter 3 tests the relation against the null."),
    # ---- chapter 3: predictable vs unpredictable (section 4)
    # Revised for issue 26 (before the revised chapter ran). The earlier target, the patterned predictability
    # `predictability x concentration`, ranked heads like concentration (within-layer Spearman 0.98 on tappa-tiny,
    # 1.00 on random weights) and its correlation with q-sim was "supported" on 13 of 20 random draws. The headline
    # now partials concentration out of both sides (their ranks regressed on concentration's ranks, within layers:
    # patterns.qsim_partial) and is tested on the heads with a pattern (concentration >= 0.2,
    # patterns.patterned_heads; random weights have none). The same statistic over every head is compared with a
    # distribution of >= 20 random-weight draws (nulls.null_distribution). The q-sim variant is chosen on chapter 3's
    # own calibration windows, disjoint from the held-out windows every claim is tested on, by a rule that never
    # picks a variant with the wrong sign (patterns.choose_qsim); each claim row names it. The jump proposition
    # (constants fitted on the same model) and the query / logit jump correlation hold for any weights: sanity rows.
    Spec("predictable.qsim_predictability_corr", "claim", "03_predictable",
         "Among heads with a pattern, heads with more similar queries (the q-sim variant named in the row) have more "
         "predictable attention than their concentration explains (within layers).",
         "§4", "ge", 0.0, 0.1, ("predictable.A_query_not_orthogonal",),
         "patterns.qsim_partial on the patterned heads (concentration >= 0.2, at least 8; fewer: inconclusive) of the "
         "held-out windows: Spearman of the q-sim variant and the predictability after regressing both ranks on "
         "concentration's ranks, layer means removed first (stats.partial_spearman_test: residual permutation p "
         "within layers, bootstrap ci over heads within layers)."),
    Spec("predictable.trained_beats_null", "claim", "03_predictable",
         "The q-sim / predictability relation beyond concentration is a property of training: it exceeds its "
         "distribution over random-weight copies of the same architecture.",
         "§4", "ge", 0.0, 0.1, ("predictable.qsim_predictability_corr",),
         "patterns.qsim_partial over every head (no gate, so random weights have a value) on the trained model minus "
         "the 95 % quantile of the same on null_draws (>= 20) random-weight copies (nulls.null_distribution, seeds "
         "nulls.null_seeds(seed, draws), the same windows and variant); p = rank of the trained value among the "
         "draws (reachable p 1 / (draws + 1)); ci = the trained value's bootstrap ci minus that quantile."),
    Spec("predictable.necessity", "claim", "03_predictable",
         "High q-similarity is necessary for a predictable pattern: the most predictable heads have high q-sim.",
         "§4, Proposition 1 (contrapositive)", "ge", 0.5, 0.2, ("predictable.qsim_predictability_corr",),
         "On the patterned heads of the held-out windows, q-sim and predictability as residual ranks on "
         "concentration within layers (stats.partial_ranks); share of the top-quartile heads by predictability whose "
         "q-sim is above the median (0.5 expected without any relation); one-sided permutation p-value (q-sim "
         "shuffled within layers), bootstrap ci over heads (patterns.necessity_test)."),
    Spec("predictable.A_query_not_orthogonal", "assumption", "03_predictable",
         "The query change is not orthogonal to the rotated keys: the calibrated c1 is a sizeable share of the "
         "largest possible alignment |k|max.",
         "§4, Proposition 1 (premise)", "ge", 0.1, 0.0, (),
         "c1 / (scale * max_j |k_j|) on calibration windows, median over heads (1 = the query change points at a "
         "key, 0 = orthogonal)."),
    Spec("predictable.A_nonvacuous", "assumption", "03_predictable",
         "The jump bound is non-vacuous (c1 |dq| > c2) on at least half of the held-out steps.",
         "§4, Proposition 1 (premise)", "ge", 0.5, 0.0, (),
         "Fraction of held-out steps with c1 |dq| - c2 > 0 (calibrated constants), median over heads."),
    # ---- chapter 4: re-access / vertical (section 5.1)
    # Registered before looking at results; revised by issue 26 (the null is a distribution of random-weight draws,
    # existence is judged on the strongest heads, the alignment gets a selection-matched control, the low-frequency
    # cut is the slowest channels, the units are heads). The mechanism claims explain vertical heads, so they are
    # tested only at the chosen heads whose fixed-key mass reaches MetricConfig.vertical_threshold; with none (e.g. on
    # random weights) they are inconclusive. Null draws: nulls.null_distribution (chapter parameter null_draws, 20 by
    # default: the smallest rank p is 1/21 = 0.048).
    Spec("sinks.sinks_above_null", "claim", "04_sinks",
         "Training creates vertical (sink / re-access) heads: the strongest heads put more attention on one fixed key "
         "than the strongest heads of any random-weight draw of the architecture.",
         "§5.1", "ge", 0.0, 0.05, ("sinks.V1_query_continuity", "sinks.V2_dominant_channel"),
         "Existence, not prevalence: statistic = mean fixed-key mass max(sink_mass, column_mass) of the n_heads "
         "strongest heads (patterns.sink_statistics); effect = the trained value minus the 95 % quantile of the same "
         "statistic over the random-weight draws (nulls.null_distribution); p = rank of the trained value among the "
         "draws. The share of heads above the vertical threshold (prevalence) is reported as a measurement."),
    Spec("sinks.low_freq_share", "claim", "04_sinks",
         "The logits on the re-accessed key are carried by low-frequency channels more than those on ordinary keys.",
         "§5.1", "ge", 0.0, 0.05, ("sinks.V2_dominant_channel",),
         "Low frequency = the low_freq_channels slowest RoPE channels (patterns.slowest_channels: the same meaning on "
         "any base and head size). Share of |contributions| on the re-accessed key minus the mean over ordinary keys, "
         "per vertical head (windows averaged inside the head); sign-flip p over heads, bootstrap ci."),
    Spec("sinks.sink_alignment", "claim", "04_sinks",
         "The rotated query makes a smaller angle with the re-accessed key than the selection of that key (the argmax "
         "of attention) gives on random weights.",
         "§5.1 (assumption V3 as a measurable claim)", "ge", 0.0, 0.05, (),
         "Alignment gap = key alignment with the re-accessed key minus its mean over ordinary keys "
         "(patterns.alignment_gap), mean over the m vertical heads; the key is the argmax of attention, so the gap is "
         "positive on any weights: the control applies the same selection (the m strongest heads, the argmax key) to "
         "each random-weight draw. Effect = trained gap minus the draws' 95 % quantile; p = rank among the draws."),
    Spec("sinks.column_stability", "claim", "04_sinks",
         "The logit column of the re-accessed key changes less per step than a typical column.",
         "§5.1", "le", 1.0, 0.1, ("sinks.V1_query_continuity",),
         "Mean |a[t+1,i] - a[t,i]| on the re-accessed key / median over keys of the same, per vertical head (windows "
         "averaged inside the head); bootstrap ci of the mean ratio over heads, sign-flip p against 1."),
    Spec("sinks.V1_query_continuity", "assumption", "04_sinks",
         "Queries are continuous: the relative step |q_t+1 - q_t| / mean |q_t| is small.",
         "§5.1, assumption V1", "le", 0.5, 0.0, (),
         "patterns.continuity of the pre-RoPE queries of the chosen heads (median over heads)."),
    Spec("sinks.V2_dominant_channel", "assumption", "04_sinks",
         "One RoPE channel dominates the logits (share of sum_m |q^m||k^m| >= 0.5).",
         "§5.1, assumption V2", "ge", 0.5, 0.0, (),
         "theory.dominant_channel_share at the chosen heads (median)."),
    # ---- chapter 5: diagonals (section 5.2)
    # Revised by issue 26: trained-structure claims against a distribution of random-weight draws (rank p, margin
    # above the 95 % quantile); units are heads (windows nested); the intervention holds on any weights (a random
    # model passes it), so it is a sanity row of the chapter, not a claim.
    Spec("diagonal.diagonals_above_null", "claim", "05_diagonal",
         "Training creates diagonal heads: the strongest heads put more attention at one offset than the strongest "
         "heads of any random-weight draw of the architecture.",
         "§5.2", "ge", 0.0, 0.05, ("diagonal.D1_query_continuity", "diagonal.D2_key_continuity"),
         "Existence: statistic = mean diag_mass of the n_heads strongest diagonal heads "
         "(patterns.diagonal_statistics); "
         "effect = trained value minus the 95 % quantile over the random-weight draws (nulls.null_distribution); "
         "p = rank among the draws. The share of heads with diag_mass >= 0.3 (prevalence) is a measurement."),
    Spec("diagonal.toeplitz_vs_column", "claim", "05_diagonal",
         "Along a diagonal head's offset the logit is nearly a function of t - i: the Toeplitz deviation is "
         "smaller than the column change.",
         "§5.2", "le", 1.0, 0.1, ("diagonal.D1_query_continuity", "diagonal.D2_key_continuity"),
         "Per top diagonal head: summed |a[t+1,i+1] - a[t,i]| / summed |a[t+1,i] - a[t,i]| along its offset over "
         "all windows (windows nested in the head); mean over heads, bootstrap ci over heads, sign-flip p against 1 "
         "(n_heads heads: smallest p 2^-n_heads)."),
    Spec("diagonal.natural_periodic_diagonals", "claim", "05_diagonal",
         "On untouched weights, heads with a dominant high-frequency channel have a logit-by-distance profile that "
         "repeats every 2 pi / theta_m* tokens, more than on any random-weight draw of the architecture.",
         "§5.2 (periodic sequential)", "ge", 0.0, 0.1, ("diagonal.P_dominant_channel",),
         "patterns.natural_periodicity: R^2 of a sinusoid at theta_m* in the detrended logit-by-distance profile "
         "(0 = nothing at that period, 1 = pure repeat), mean over the heads whose dominant channel m* has a period "
         "<= max_distance / 2 (patterns.diagonal_statistics); effect = trained mean minus the 95 % quantile of the "
         "same over the random-weight draws; p = rank among the draws. Control (measurement): the same R^2 at each "
         "head's strongest other fitting channel."),
    Spec("diagonal.D1_query_continuity", "assumption", "05_diagonal",
         "Queries are continuous: |q_t+1 - q_t| / mean |q_t| small.",
         "§5.2, assumption D1", "le", 0.5, 0.0, (),
         "patterns.continuity of the queries at the top diagonal heads (median over those heads)."),
    Spec("diagonal.D2_key_continuity", "assumption", "05_diagonal",
         "Keys are continuous: |k_i+1 - k_i| / mean |k_i| small.",
         "§5.2, assumption D2", "le", 0.5, 0.0, (),
         "patterns.continuity of the keys at the top diagonal heads (median over those heads)."),
    Spec("diagonal.P_dominant_channel", "assumption", "05_diagonal",
         "At the heads tested for periodic diagonals one channel dominates |q^m||k^m| (share >= 0.5).",
         "§5.2 (periodic sequential)", "ge", 0.5, 0.0, (),
         "Share of the dominant channel (patterns.natural_periodicity), median over the heads whose dominant "
         "channel's period fits the profile."),
    # ---- chapter 6: seasonal (section 5.3)
    Spec("seasonal.resonance_helps", "claim", "06_seasonal",
         "On a periodic input of period L, the logits one period later change less when L resonates with the "
         "dominant channel than at non-resonant periods.",
         "§5.3", "ge", 0.0, 0.1, ("seasonal.S1_query_periodicity", "seasonal.S2_key_periodicity",
                                  "seasonal.S4_dominant_channel"),
         "Per (L, window) the relative change mean |a[t+L,i] - a[t,i]| / mean |a[t,i]|; per head, the mean log "
         "relative "
         "change at the control periods (|delta| >= pi/2) minus at the resonant periods (|delta| <= pi/4), delta the "
         "mismatch of the dominant channel m* of the analysed head (0.1 = about 10 % smaller at resonance); units: the "
         "n_heads heads where m* carries most (periods and windows nested, patterns.per_head_seasonal); mean over "
         "heads, sign-flip p, bootstrap ci. A property of RoPE's geometry given a dominant channel and periodic q/k: "
         "it needs no training, so it is not a claim about trained structure.",
         any_weights="RoPE resonance on a periodic input: the mismatch |delta| is a property of the rotation, for any "
                     "queries that repeat with the input"),
    Spec("seasonal.paper_bound_holds", "claim", "06_seasonal",
         "The paper's seasonal bound C1 (eps_q + eps_k) + C2 |delta| (without the non-dominant phase term) holds.",
         "§5.3, Theorem (seasonal)", "ge", 0.99, 0.0, ("seasonal.S1_query_periodicity", "seasonal.S4_dominant_channel"),
         "Per head, the fraction of (t, i) pairs where it holds over the periods L of the sweep and the windows; mean "
         "over the n_heads tested heads, bootstrap ci over heads. Expected to fail where the phase term matters: the "
         "complete bound (with the phase term) is a sanity row.",
         any_weights="a theorem's bound checked numerically: true for any weights"),
    Spec("seasonal.S1_query_periodicity", "assumption", "06_seasonal",
         "Queries repeat with the input's period: eps_q = mean |q_t+L - q_t| / mean |q| small, at the head used "
         "(never a layer-0 head, whose queries depend on the current token alone).",
         "§5.3, assumption S1", "le", 0.1, 0.0, (),
         "Per head the median over the sweep of L; median over the heads tested."),
    Spec("seasonal.S2_key_periodicity", "assumption", "06_seasonal",
         "Keys repeat with the input's period: eps_k = mean |k_i+L - k_i| / mean |k| small, at the head used.",
         "§5.3, assumption S2", "le", 0.1, 0.0, (),
         "Per head the median over the sweep of L; median over the heads tested."),
    Spec("seasonal.S4_dominant_channel", "assumption", "06_seasonal",
         "A channel whose period fits the input dominates (share >= 0.5).",
         "§5.3, assumption S4", "ge", 0.5, 0.0, (),
         "Share of channel m* (patterns.channel_share), median over the heads tested."),
    # ---- chapter 7: KV cache (section 6.1)
    Spec("kv_cache.A_long_context_usable", "assumption", "07_kv_cache",
         "The model uses a context of seq_len tokens: with the full cache it copies the planted segment (retrieval "
         "top-1 accuracy >= 0.5).",
         "§6.1 (premise of any cache comparison)", "ge", 0.5, 0.0, (),
         "Full-cache top-1 accuracy on the retrieval task at seq_len (segment planted 3/4 of seq_len back). When it "
         "is violated, compressing a cache the model cannot use says nothing about TAPPA: every probe claim row "
         "then gets p = NaN (status inconclusive), its effect and interval still shown."),
    Spec("kv_cache.A_task_solvable", "assumption", "07_kv_cache",
         "With the full cache the model does the task at this length (greedy accuracy >= 0.5 over the samples).",
         "§6.1 (premise of any cache comparison)", "ge", 0.5, 0.0, (),
         "Full-cache accuracy (exact / contains match of the greedy answer, `long_tasks.score`) per (task, length). "
         "Where it is violated the task says nothing about compression: the claim rows of that (task, length) get "
         "p = NaN (status inconclusive), their effect and interval still shown."),
    Spec("kv_cache.tappa_vs_uniform_budgets", "claim", "07_kv_cache",
         "Per-layer budgets from q-similarity (TAPPA) answer more task questions than uniform budgets with the same "
         "token scorer (CAKE's score in both, so only the per-layer split differs).",
         "§6.1", "ge", 0.0, 0.05, ("kv_cache.A_task_solvable",),
         "Task accuracy (greedy answer through the chat template after the compressed context; the question never "
         "compressed) with `tappa` (reference allocation) minus with `uniform_cake`, equal total budget, paired over "
         "samples: bootstrap ci of the mean paired difference, one-sided exact sign test on the discordant pairs, "
         "Holm-corrected over this claim's checks (one per task, length and keep fraction)."),
    Spec("kv_cache.tappa_vs_snapkv", "claim", "07_kv_cache",
         "TAPPA answers more task questions than SnapKV at equal budget.",
         "§6.1, Table (SnapKV among the baselines)", "ge", 0.0, 0.05, ("kv_cache.A_task_solvable",),
         "Task accuracy with `tappa` minus with kvpress's SnapKVPress (same window), paired over samples; as "
         "`kv_cache.tappa_vs_uniform_budgets` (bootstrap ci, exact sign test, Holm over this claim's checks)."),
    Spec("kv_cache.tappa_vs_expected_attention", "claim", "07_kv_cache",
         "TAPPA answers more task questions than Expected Attention at equal budget.",
         "§6.1, Table (LongBench; +11.34 on Qwen2.5-7B at 512)", "ge", 0.0, 0.05, ("kv_cache.A_task_solvable",),
         "Task accuracy with `tappa` minus with kvpress's ExpectedAttentionPress, paired over samples; as "
         "`kv_cache.tappa_vs_uniform_budgets` (bootstrap ci, exact sign test, Holm over this claim's checks)."),
    Spec("kv_cache.probe_tappa_vs_uniform_budgets", "claim", "07_kv_cache",
         "On the loss and copy probes (models without a chat template, e.g. tappa-tiny), TAPPA's per-layer budgets "
         "beat uniform budgets with the same token scorer.",
         "§6.1", "ge", 0.0, 0.01, ("kv_cache.A_long_context_usable",),
         "NLL (nats/token) of the target with `uniform_cake` (TAPPAPress machinery, equal preferences) minus with "
         "`tappa` (reference allocation), equal total budget, paired over samples; stats.paired_difference "
         "(bootstrap ci; sign-flip p, Holm-corrected over this claim's checks: one per task (loss / retrieval) and "
         "keep fraction)."),
    Spec("kv_cache.probe_tappa_vs_expected_attention", "claim", "07_kv_cache",
         "On the loss and copy probes (models without a chat template), TAPPA beats Expected Attention at equal "
         "budget.",
         "§6.1", "ge", 0.0, 0.01, ("kv_cache.A_long_context_usable",),
         "NLL (nats/token) of the target with kvpress's ExpectedAttentionPress minus with `tappa`, paired over "
         "samples; stats.paired_difference (bootstrap ci; sign-flip p, Holm over this claim's checks)."),
    # ---- chapter 8: layer pruning (section 6.2)
    Spec("pruning.tappa_beats_shortgpt", "claim", "08_pruning",
         "Removing layers by TAPPA's score (BI + beta (1 - q-sim), beta chosen on calibration data) hurts the held-out "
         "loss less than ShortGPT's (BI alone).",
         "§6.2 (+5.60 average over ShortGPT on Llama-3.1-8B)", "ge", 0.0, 0.02, (),
         "Superiority. Effect = loss after ShortGPT's removal minus after TAPPA's (nats/token), paired over held-out "
         "windows (stats.paired_difference: sign-flip p, bootstrap ci), p Holm-adjusted over the k tested; beta "
         "chosen on calibration loss from a grid that includes 0; one check per number of removed layers k. Where "
         "TAPPA removes ShortGPT's layers (always when beta = 0 is chosen) the gain is 0 by construction, ci "
         "[0, 0], and the row reads not supported. Margin 0.02 nats/token (exp(0.02) = 1.02 in perplexity)."),
    Spec("pruning.tappa_task_accuracy", "claim", "08_pruning",
         "TAPPA's pruned models (beta chosen on calibration data) answer more short task prompts correctly than "
         "ShortGPT's.",
         "§6.2 (zero-shot accuracy, +5.60 over ShortGPT on Llama-3.1-8B)", "ge", 0.0, 0.02, (),
         "Effect = TAPPA's accuracy minus ShortGPT's on the same prompts (greedy answers through the chat template, "
         "`prune.tasks`), paired over prompts (stats.paired_difference on 0/1), p Holm-adjusted over k; one check "
         "per k. Equal removed sets: 0 by construction, not supported. Margin 0.02 (two points of accuracy)."),
    Spec("pruning.tappa_beats_random_layers", "claim", "08_pruning",
         "TAPPA's choice of layers hurts the held-out loss less than removing the same number of random layers.",
         "§6.2 (control: the scores carry information)", "ge", 0.0, 0.02, (),
         "Effect = mean over the random draws of the loss after removing k random layers minus the loss after "
         "TAPPA's removal (nats/token), paired over held-out windows (stats.paired_difference), p Holm-adjusted over "
         "the k at which the draws run. A control that can differ from pruning.tappa_beats_shortgpt: it compares "
         "with another order, also when TAPPA equals ShortGPT (it replaces the random-weight gain_over_null, which "
         "equalled its parent whenever the null chose beta = 0)."),
)

REGISTRY: dict[str, Spec] = {}
for _s in SPECS:
    if _s.id in REGISTRY:
        raise ValueError(f"duplicate spec id {_s.id}")
    REGISTRY[_s.id] = _s
for _s in SPECS:
    for _a in _s.assumptions:
        if _a not in REGISTRY or REGISTRY[_a].kind not in ("assumption", "claim"):
            raise ValueError(f"spec {_s.id} rests on {_a!r}, which is not registered")


def spec(id: str) -> Spec:
    """The registered spec of `id` (KeyError with the list of ids when unknown)."""
    if id not in REGISTRY:
        near = [k for k in REGISTRY if k.split(".")[0] == id.split(".")[0]] or list(REGISTRY)
        raise KeyError(f"{id!r} is not a registered claim or assumption; register it in tappa_utils/claims.py "
                       f"before measuring it (ids of that chapter: {', '.join(near)})")
    return REGISTRY[id]


def by_chapter(chapter: str) -> list[Spec]:
    """The specs tested in one chapter (stem like "03_predictable" or prefix "03")."""
    return [s for s in SPECS if s.chapter == chapter or s.chapter[:2] == chapter[:2]]


# ---------------------------------------------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------------------------------------------


def _ci(ci) -> tuple[float, float] | None:
    if ci is None:
        return None
    lo, hi = ci
    return float(lo), float(hi)


HOLM_NOTE = "Holm over the {m} checks of this claim (raw p = {raw})"


def holm_adjust(checks: list[Check]) -> list[Check]:
    """The claim checks' p-values Holm-corrected within each claim id, in place (every other row unchanged); each
    adjusted row's note says so (`HOLM_NOTE`, with its raw p). Checks without a finite p-value (gated, or without a
    test) are not in the family. Returns `checks`.

    >>> rows = [claim("kv_cache.tappa_vs_snapkv", 0.2, ci=(0.1, 0.3), p_value=p) for p in (0.01, 0.04, 0.03)]
    >>> [round(c.p_value, 3) for c in holm_adjust(rows)], rows[0].status, rows[1].status
    ([0.03, 0.06, 0.06], 'supported', 'inconclusive')
    """
    family: dict[str, list[Check]] = {}
    for c in checks:
        if c.kind == "claim" and c.p_value is not None and math.isfinite(c.p_value):
            family.setdefault(str(c.id), []).append(c)
    for rows in family.values():
        raws = [float(c.p_value) for c in rows]
        for c, raw, adjusted in zip(rows, raws, holm(raws)):
            c.p_value = adjusted
            note = HOLM_NOTE.format(m=len(rows), raw=f"{raw:.3g}")
            c.note = f"{c.note}; {note}" if c.note else note
    return checks


def claim(id: str, measured: float, ci=None, p_value: float | None = None, predicted: float | None = None,
          name: str | None = None, note: str = "", reachable_p: float | None = None) -> Check:
    """A claim check from its registered spec (status computed by `Check`).

    `reachable_p`: the smallest p-value the test allows with its units (`StatResult.reachable_p`).

    `predicted` is only allowed when the spec's threshold is None (a model-dependent prediction). `name` defaults
    to the spec's statement (give one per check when a claim is tested several times, e.g. per budget).
    """
    s = spec(id)
    if s.kind != "claim":
        raise ValueError(f"{id} is registered as an {s.kind}; use claims.{s.kind}()")
    if ci is None and p_value is None and not s.deterministic:
        raise ValueError(f"claim {id} needs a ci or a p-value (tappa_utils.stats); only deterministic specs go "
                         "without")
    thr = _threshold(s, predicted)
    return Check(name or s.statement, thr, float(measured), s.margin, s.relation, note, kind="claim", id=id,
                 ci=_ci(ci), paper=s.paper, p_value=p_value,
                 reachable_p=None if reachable_p is None else float(reachable_p))


def assumption(id: str, measured: float, ci=None, predicted: float | None = None, name: str | None = None,
               note: str = "") -> Check:
    """An assumption check from its registered spec: "holds" / "violated" against the registered threshold."""
    s = spec(id)
    if s.kind != "assumption":
        raise ValueError(f"{id} is registered as a {s.kind}; use claims.{s.kind}()")
    return Check(name or s.statement, _threshold(s, predicted), float(measured), 0.0, s.relation, note,
                 kind="assumption", id=id, ci=_ci(ci), paper=s.paper)


def _threshold(s: Spec, predicted: float | None) -> float:
    if s.threshold is None:
        if predicted is None:
            raise ValueError(f"{s.id} has no registered threshold: pass predicted=")
        return float(predicted)
    if predicted is not None:
        raise ValueError(f"{s.id} has a registered threshold ({s.threshold}); predicted= may not override it")
    return float(s.threshold)


def sanity(name: str, predicted: float, measured: float, tolerance: float = 0.0, relation: str = "close",
           note: str = "", paper: str = "") -> Check:
    """An identity or a definition checked numerically: "ok", or "BUG" (a failure is a bug, not a finding)."""
    return Check(name, float(predicted), float(measured), float(tolerance), relation, note, kind="sanity",
                 paper=paper)


def measurement(name: str, value: float, ci=None, predicted: float = math.nan, note: str = "", paper: str = "",
                p_value: float | None = None) -> Check:
    """A value with its interval (never passes or fails); `predicted` may hold a reference value for display."""
    return Check(name, float(predicted), float(value), 0.0, "close", note, kind="measurement", ci=_ci(ci),
                 paper=paper, p_value=p_value)


def validate_check(c: Check) -> None:
    """Raise ValueError when a claim/assumption check is not registered or departs from its spec."""
    if c.kind not in ("claim", "assumption"):
        return
    if not c.id or c.id not in REGISTRY:
        raise ValueError(f"check {c.name!r} ({c.kind}) has id {c.id!r}, which is not registered in "
                         "tappa_utils/claims.py; register it (threshold and margin fixed in advance) or make it a "
                         "measurement")
    s = REGISTRY[c.id]
    if s.kind != c.kind:
        raise ValueError(f"check {c.name!r}: {c.id} is registered as a {s.kind}, the check says {c.kind}")
    margin = s.margin if c.kind == "claim" else 0.0
    same_thr = s.threshold is None or math.isclose(float(c.predicted), s.threshold, rel_tol=0, abs_tol=1e-12)
    if c.relation != s.relation or not same_thr or not math.isclose(float(c.tolerance), margin, abs_tol=1e-12):
        raise ValueError(f"check {c.name!r}: relation/threshold/margin ({c.relation}, {c.predicted}, {c.tolerance}) "
                         f"differ from the registered {c.id} ({s.relation}, {s.threshold}, {margin}); thresholds "
                         "are fixed in the registry, not in the chapter")
    if c.kind == "claim" and c.ci is None and c.p_value is None and not s.deterministic:
        raise ValueError(f"claim {c.id} needs a ci or a p-value")


def validate_rows(rows: list[dict], source: str = "results") -> None:
    """`validate_check` for the rows of a results.json (as written by `save_checks`); rows without a kind are
    old-style measurements."""
    for r in rows:
        kind = r.get("kind") or "measurement"
        if kind not in ("claim", "assumption"):
            continue
        try:
            c = Check(r["name"], r["predicted"], r["measured"], r.get("tolerance", 0.0), r.get("relation", "ge"),
                      kind=kind, id=r.get("id") or "?", ci=r.get("ci"), p_value=r.get("p_value"))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        try:
            validate_check(c)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
