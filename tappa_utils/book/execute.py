"""Executing the chapters with papermill: each into `book/executed/<stem>.ipynb`, a failure reported with its cell.

Kernels talk to papermill over IPC (local sockets) rather than TCP: nothing is exposed on the network, and ipykernel
has no reason to warn about unencrypted TCP once per chapter in the build log.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..io import atomic_path
from .layout import BookError, Target, notebook_path

HIDDEN_TAGS = ("parameters", "injected-parameters")


@dataclass
class NotebookFailure:
    """Where a notebook failed: notebook, cell index (in the source notebook), head of its source, the error."""

    notebook: str
    cell_index: int | None
    source_head: str
    error: str
    executed_copy: str | None = None

    def describe(self) -> str:
        """A readable multi-line description naming the notebook, the cell and the error."""
        where = f"cell {self.cell_index}" if self.cell_index is not None else "an unknown cell"
        lines = [f"notebook {self.notebook} failed at {where}:"]
        lines += [f"    | {line}" for line in self.source_head.splitlines()]
        lines.append(f"  error: {self.error}")
        if self.executed_copy:
            lines.append(f"  partially executed copy (with the traceback): {self.executed_copy}")
        return "\n".join(lines)


def hide_parameter_cells(path: str | Path) -> int:
    """Tag the `parameters` and papermill `injected-parameters` cells `remove-cell` (hidden in the book)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    n = 0
    for cell in nb.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if any(t in tags for t in HIDDEN_TAGS) and "remove-cell" not in tags:
            tags.append("remove-cell")
            n += 1
    with atomic_path(path) as tmp:
        nbformat.write(nb, str(tmp))
    return n


def _failure_from(exc: Exception, notebook: Path, executed: Path | None) -> NotebookFailure:
    """Translate papermill's error into a NotebookFailure whose cell index is that of the source notebook."""
    import nbformat

    index, source = getattr(exc, "cell_index", None), getattr(exc, "source", "") or ""
    if hasattr(exc, "ename"):
        error = f"{exc.ename}: {exc.evalue}"
    else:
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if index is not None and executed is not None and executed.exists():
        try:  # papermill counts its injected-parameters cell; report the index in notebooks/<stem>.ipynb
            cells = nbformat.read(str(executed), as_version=4).cells
            injected = [i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", [])]
            if injected and injected[0] < index:
                index -= 1
        except Exception:  # noqa: BLE001 - the failure report must not fail
            pass
    head = "\n".join(source.splitlines()[:4])
    return NotebookFailure(str(notebook), index, head, error, str(executed) if executed else None)


@contextmanager
def environment(env: dict[str, str] | None) -> Iterator[None]:
    """Set environment variables (inherited by the kernels started inside) and restore them on exit."""
    env = env or {}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ipc_config():
    """Kernel-manager configuration: IPC transport (local sockets, no TCP port, no unencrypted-TCP warning)."""
    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"
    return config


def execute_notebook(notebook: str | Path, output: str | Path, parameters: dict | None = None,
                     cwd: str | Path | None = None, timeout: int | None = None,
                     kernel_name: str = "python3", env: dict[str, str] | None = None) -> NotebookFailure | None:
    """Execute `notebook` with papermill into `output` (written only on success); the failure, if any.

    On failure the partially executed copy is kept at `output` + `.failed.ipynb` for inspection. `env`: variables
    the kernel sees (set for the duration of the run only).
    """
    import papermill as pm

    notebook, output = Path(notebook), Path(output)
    if not notebook.is_file():
        raise BookError(f"notebook {notebook} does not exist")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.running.ipynb")
    try:
        with environment(env):
            pm.execute_notebook(str(notebook), str(tmp), parameters=parameters or {}, kernel_name=kernel_name,
                                cwd=str(cwd) if cwd else None, progress_bar=False, execution_timeout=timeout,
                                request_save_on_cell_execute=False, config=_ipc_config())
    except Exception as exc:  # noqa: BLE001 - every failure is reported with its cell
        failed = output.with_name(f"{output.stem}.failed.ipynb")
        if tmp.exists():
            tmp.replace(failed)
        return _failure_from(exc, notebook, failed if failed.exists() else None)
    tmp.replace(output)
    return None


def execute_chapters(root: Path, stems: Iterable[str], timeout: int | None = None,
                     extra_parameters: dict | None = None, target: Target | None = None,
                     env: dict[str, str] | None = None) -> list[NotebookFailure]:
    """Execute each chapter into `<book>/book/executed/<stem>.ipynb` with `out_dir` = `<results>/<stem>` (see
    `Target`; default: the repository's own book) and `extra_parameters` over its defaults; the failures.

    Each chapter's wall time is printed to the build log (never onto its page).
    """
    target = target or Target(root)
    failures = []
    for stem in stems:
        out_dir = target.results / stem
        output = target.executed / f"{stem}.ipynb"
        t0 = time.time()
        print(f"executing notebooks/{stem}.ipynb -> {_shown(output, root)}", flush=True)
        failure = execute_notebook(notebook_path(stem, root), output,
                                   {"out_dir": str(out_dir), **(extra_parameters or {})}, cwd=root, timeout=timeout,
                                   env=env)
        if failure is None:
            hide_parameter_cells(output)
            print(f"  done in {time.time() - t0:.0f} s", flush=True)
        else:
            print("  FAILED\n" + failure.describe(), file=sys.stderr, flush=True)
            failures.append(failure)
    return failures


def _shown(path: Path, root: Path) -> str:
    """`path` relative to the root when it lies inside, else as given."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
