"""Samples saved as a long `kv-tasks` run goes, so a crash or Ctrl-C costs at most the sample in flight.

    progress = TaskProgress.open(out, params)       # reads what a run with the same params left, else starts anew
    rows = run_task_eval(..., done=progress.done, on_sample=progress.add)
    ...                                            # the results are committed
    progress.remove()

The file is `.<out name>.kv-tasks-progress.jsonl` beside the output folder (not inside it: the folder is swapped in
whole at the end). Its first line is the run's parameters; each further line one finished sample's rows. A file left
by a run with other parameters is not used (and is replaced); a truncated last line (the process killed while
writing) is ignored.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


def progress_path(out: str | os.PathLike) -> Path:
    """Where the progress of a run into `out` is kept."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.kv-tasks-progress.jsonl"


@dataclass
class TaskProgress:
    """The finished samples of a run (`done`: sample index -> its rows), appended to `path` as they come."""

    path: Path
    params: dict
    done: dict[int, list[dict]] = field(default_factory=dict)

    @classmethod
    def open(cls, out: str | os.PathLike, params: dict) -> TaskProgress:
        """The progress a run with the same `params` left for `out` (empty if none); the file is (re)started."""
        path = progress_path(out)
        params = json.loads(json.dumps(params))  # as it reads back (tuples become lists)
        done: dict[int, list[dict]] = {}
        if path.is_file():
            lines = path.read_text().splitlines()
            try:
                same = bool(lines) and json.loads(lines[0]) == {"params": params}
            except json.JSONDecodeError:
                same = False
            for line in lines[1:] if same else []:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by a kill
                done[int(rec["sample"])] = rec["rows"]
        progress = cls(path, params, done)
        progress._rewrite()
        return progress

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"params": self.params}) + "\n")
            for i, rows in sorted(self.done.items()):
                f.write(json.dumps({"sample": i, "rows": rows}) + "\n")
        os.replace(tmp, self.path)

    def add(self, i: int, rows: list[dict]) -> None:
        """Record sample `i`'s rows (appended and flushed at once)."""
        self.done[int(i)] = rows
        with open(self.path, "a") as f:
            f.write(json.dumps({"sample": int(i), "rows": rows}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        """Delete the file (the run's results were committed)."""
        self.path.unlink(missing_ok=True)
