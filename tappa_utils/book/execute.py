"""Executing the chapters with papermill: each into `book/executed/<stem>.ipynb`, a failure reported with its cell.

Kernels talk to papermill over IPC (local sockets) rather than TCP: nothing is exposed on the network, and ipykernel
has no reason to warn about unencrypted TCP once per chapter in the build log. The kernels' own log keeps only
critical messages (see `KERNEL_ARGUMENTS`).
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
            cells = [c for c in nbformat.read(str(executed), as_version=4).cells  # without papermill's error banners
                     if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
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


# The kernel's own log (not the chapter's output): jupyter-client interrupts every kernel before shutting it down,
# and ipykernel logs "KeyboardInterrupt caught in kernel" at ERROR when that lands during a message; a cell's error
# reaches papermill through the notebook, a dead kernel through nbclient, so only critical kernel logs are kept.
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=CRITICAL",)


def _ipc_config():
    """Kernel-manager configuration: IPC transport (local sockets, no TCP port, no unencrypted-TCP warning).

    The sockets get a unique prefix in the temporary folder: jupyter-client's default (`kernel-ipc-N` in the
    working directory) would litter the repository and collide between chapters run at the same time.
    """
    import tempfile
    import uuid

    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = os.path.join(tempfile.gettempdir(), f"tappa-kernel-{uuid.uuid4().hex[:12]}")
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
                                request_save_on_cell_execute=False, config=_ipc_config(),
                                extra_arguments=list(KERNEL_ARGUMENTS))
    except Exception as exc:  # noqa: BLE001 - every failure is reported with its cell
        failed = output.with_name(f"{output.stem}.failed.ipynb")
        if tmp.exists():
            tmp.replace(failed)
        return _failure_from(exc, notebook, failed if failed.exists() else None)
    tmp.replace(output)
    return None


@dataclass(frozen=True)
class Job:
    """One notebook to execute: what `execute_notebook` takes."""

    notebook: str
    output: str
    parameters: dict
    cwd: str
    timeout: int | None = None
    env: dict | None = None


def _run_job(job: Job) -> tuple[NotebookFailure | None, float]:
    t0 = time.time()
    failure = execute_notebook(job.notebook, job.output, job.parameters, cwd=job.cwd, timeout=job.timeout,
                               env=job.env)
    return failure, time.time() - t0


def run_jobs(jobs: dict[str, Job], workers: int = 1) -> Iterator[tuple[str, NotebookFailure | None, float]]:
    """Execute the jobs, `workers` at a time (each in its own spawned process when more than one); yields
    (name, failure or None, seconds) as each finishes.

    With several workers each kernel gets `cpu_count // workers` threads (OMP/MKL), so the runs share the cores
    instead of oversubscribing them; the single-threaded parts of a chapter (kernel start, imports, plotting)
    then overlap with another chapter's computation.
    """
    if workers <= 1 or len(jobs) <= 1:
        for name, job in jobs.items():
            yield (name, *_run_job(job))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = str(max(1, (os.cpu_count() or 1) // workers))
    limited = {n: Job(j.notebook, j.output, j.parameters, j.cwd, j.timeout,
                      {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **(j.env or {})})
               for n, j in jobs.items()}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_job, job): name for name, job in limited.items()}
        for future in as_completed(futures):
            yield (futures[future], *future.result())


def execute_chapters(root: Path, stems: Iterable[str], timeout: int | None = None,
                     extra_parameters: dict | None = None, target: Target | None = None,
                     env: dict[str, str] | None = None, jobs: int = 1,
                     chapter_parameters: dict[str, dict] | None = None) -> list[NotebookFailure]:
    """Execute each chapter into `<book>/book/executed/<stem>.ipynb` with `out_dir` = `<results>/<stem>` (see
    `Target`; default: the repository's own book), `chapter_parameters[stem]` then `extra_parameters` over its
    defaults, `jobs` chapters at a time (see `run_jobs`); the failures, in book order.

    Each chapter's wall time is printed to the build log (never onto its page).
    """
    target = target or Target(root)
    stems = list(stems)
    todo = {}
    for stem in stems:
        output = target.executed / f"{stem}.ipynb"
        todo[stem] = Job(str(notebook_path(stem, root)), str(output),
                         {**(chapter_parameters or {}).get(stem, {}), "out_dir": str(target.results / stem),
                          **(extra_parameters or {})}, str(root), timeout, env)
    print(f"executing {len(stems)} chapter(s)" + (f", {jobs} at a time" if jobs > 1 and len(stems) > 1 else "")
          + f" into {_shown(target.executed, root)}", flush=True)
    failures = {}
    for stem, failure, seconds in run_jobs(todo, jobs):
        if failure is None:
            hide_parameter_cells(todo[stem].output)
            print(f"  {stem}: done in {seconds:.0f} s", flush=True)
        else:
            print(f"  {stem}: FAILED after {seconds:.0f} s\n" + failure.describe(), file=sys.stderr, flush=True)
            failures[stem] = failure
    return [failures[s] for s in stems if s in failures]


def _shown(path: Path, root: Path) -> str:
    """`path` relative to the root when it lies inside, else as given."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
