"""Writing a chapter's or a command's results under `out_dir`, atomically, with parameters and versions beside them."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from .claims import ALPHA, KINDS, Check, claim_status, validate_check  # noqa: F401 - `results.Check` & co. stay valid
from .io import atomic_path, atomic_write_json


def versions(packages=("tappa_utils", "torch", "transformers", "kvpress", "numpy", "sympy"),
             missing: str | None = "not installed") -> dict[str, str]:
    """Versions of Python and `packages` (the main libraries by default); a package that is not installed gets
    `missing`, or is left out when `missing` is None."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            if missing is not None:
                out[pkg] = missing
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


def save_checks(out_dir: str | Path, checks: list[Check], name: str = "results.json") -> Path:
    """Write the checks as `[{"name", "predicted", "measured", "tolerance", "passed", "kind", "id", "ci", "paper",
    "p_value", "status", ...}]`. Refuses (ValueError, before writing) a claim or assumption whose id is not
    registered in `tappa_utils.claims` or whose threshold / margin / relation differ from the registered spec."""
    for c in checks:
        if not isinstance(c, Check):
            raise TypeError(f"save_checks takes Check objects, got {type(c).__name__}")
        validate_check(c)
    return atomic_write_json(Path(out_dir) / name, [c.to_dict() for c in checks])


def checks_table(checks: list[Check]):
    """The checks as a pandas DataFrame (for display in a chapter)."""
    import pandas as pd

    return pd.DataFrame([c.to_dict() for c in checks])
