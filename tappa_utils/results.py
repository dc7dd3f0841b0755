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


@dataclass
class Check:
    """One theory-vs-measurement check: `passed` is computed from the relation, never set by hand.

    relation: "close" (|measured - predicted| <= tolerance), "le" (measured <= predicted + tolerance),
    "ge" (measured >= predicted - tolerance).
    """

    name: str
    predicted: float
    measured: float
    tolerance: float
    relation: str = "close"
    note: str = ""

    @property
    def passed(self) -> bool:
        p, m, tol = float(self.predicted), float(self.measured), float(self.tolerance)
        if math.isnan(p) or math.isnan(m):
            return False
        if self.relation == "close":
            return abs(m - p) <= tol
        if self.relation == "le":
            return m <= p + tol
        if self.relation == "ge":
            return m >= p - tol
        raise ValueError(f"unknown relation {self.relation!r}; use close, le or ge")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def save_checks(out_dir: str | Path, checks: list[Check], name: str = "results.json") -> Path:
    """Write the list of checks as `[{"name", "predicted", "measured", "tolerance", "passed", ...}]`."""
    return atomic_write_json(Path(out_dir) / name, [c.to_dict() for c in checks])


def checks_table(checks: list[Check]):
    """The checks as a pandas DataFrame (for display in a chapter)."""
    import pandas as pd

    return pd.DataFrame([c.to_dict() for c in checks])
