"""What the real-shape benchmarks share (bench_chapters, bench_commands, bench_scale): the repository root, the
weights' size of a shape, issue 16's memory goal, a child process's JSON row, and the Markdown table."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def weights_gb(shape: str, dtype: str) -> float:
    """The weights' size of a shape (counted on the meta device: nothing is allocated)."""
    from tappa_utils.models import random_model, weight_bytes

    return weight_bytes(random_model(shape, dtype=dtype, device="meta")) / 1e9


def memory_goal_gb(weights: float) -> float:
    """Issue 16's goal for the peak RSS of a chapter or a command: 1.3 x the weights + 1.5 GB."""
    return 1.3 * weights + 1.5


def child_row(argv: list[str], what: str, **kw) -> tuple[dict, subprocess.CompletedProcess]:
    """Run a measuring child (`argv`); its last stdout line is a JSON row. A child that prints none raises,
    naming `what` and the end of its stderr."""
    out = subprocess.run(argv, capture_output=True, text=True, **kw)
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{what}: exit {out.returncode}, no measurement: {out.stderr.strip()[-400:]}")
    return json.loads(lines[-1]), out


def markdown_table(columns: list[tuple[str, Callable[[dict], str]]], rows: list[dict]) -> str:
    """A Markdown table: one (header, row -> cell text) pair per column."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_rows(path: str | None, rows: list[dict]) -> None:
    """Rewrite the JSON file of the rows so far (a long run keeps what it measured if it is stopped)."""
    if path:
        Path(path).write_text(json.dumps(rows, indent=1))
