"""Writing a chapter's or a command's results under `out_dir`, atomically, with parameters and versions beside them."""
from __future__ import annotations

import math
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .io import atomic_path, atomic_write_json


def versions() -> dict[str, str]:
    """Versions of Python, tappa_utils and the main libraries."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tappa_utils", "torch", "transformers", "kvpress", "numpy", "sympy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def save_run_info(out_dir: str | Path, params: dict[str, Any], **extra: Any) -> Path:
    """Write `out_dir/run_info.json`: the parameters, the versions and anything in `extra` (timings...)."""
    return atomic_write_json(Path(out_dir) / "run_info.json", {"params": params, "versions": versions(), **extra})


def save_json(out_dir: str | Path, name: str, obj: Any) -> Path:
    """Write `obj` to `out_dir/name` atomically."""
    return atomic_write_json(Path(out_dir) / name, obj)


def save_table(df, out_dir: str | Path, name: str) -> Path:
    """Write a pandas DataFrame as CSV to `out_dir/name` atomically."""
    path = Path(out_dir) / name
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def save_figure(fig, out_dir: str | Path, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG to `out_dir/name` atomically."""
    path = Path(out_dir) / name
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


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


def save_checks(out_dir: str | Path, checks: list[Check], name: str = "results.json") -> Path:
    """Write the checks as `[{"name", "predicted", "measured", "tolerance", "passed", "kind", "id", "ci", "paper",
    "p_value", "status", ...}]`. Refuses (ValueError, before writing) a claim or assumption whose id is not
    registered in `tappa_utils.claims` or whose threshold / margin / relation differ from the registered spec."""
    from .claims import validate_check

    for c in checks:
        if not isinstance(c, Check):
            raise TypeError(f"save_checks takes Check objects, got {type(c).__name__}")
        validate_check(c)
    return atomic_write_json(Path(out_dir) / name, [c.to_dict() for c in checks])


def checks_table(checks: list[Check]):
    """The checks as a pandas DataFrame (for display in a chapter)."""
    import pandas as pd

    return pd.DataFrame([c.to_dict() for c in checks])
