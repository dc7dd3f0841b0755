"""Benchmark of every chapter at real model shapes (random weights, exact public configs); prints a table.

    nice -n 2 .venv/bin/python benchmarks/bench_chapters.py [--shapes qwen2.5-0.5b llama3.2-1b]
        [--dtypes float32] [--seq-len 256] [--chapters 03_predictable 08_pruning] [--json F]

Each chapter runs in a fresh subprocess through the book's own executor (`book.execute.execute_notebook`, papermill)
with `model="random:<shape>"`, the dtype, `seq_len` and one window (each notebook's metadata `tappa.bench`: the
chapter's window-count parameters set to 1 and its long profiles cut to `seq_len`; the chapters are `_toc.yml`'s and a
chapter without `tappa.bench` is refused before anything runs); results go to a temporary folder, nothing of the book
is touched. Columns: wall time (s), CPU time of the kernel (user + system, s: the fair figure on a shared CPU),
peak RSS of the kernel (GB, its VmHWM via getrusage of the finished children) and peak RSS over the weights (GB).
The issue-16 target: every chapter <= 5 min at 256 tokens, one window, peak <= 1.3 x weights + 1.5 GB.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shapes_common import ROOT, child_row, markdown_table, memory_goal_gb, weights_gb, write_rows

from tappa_utils.book import BookError, bench_parameters, chapter_stems

CHILD = r"""
import json, resource, sys, tempfile, time
from tappa_utils.book.execute import execute_notebook
stem, params = sys.argv[1], json.loads(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    params["out_dir"] = tmp + "/results"
    t0 = time.perf_counter()
    failure = execute_notebook(f"notebooks/{stem}.ipynb", tmp + f"/{stem}.ipynb", params, cwd=".")
    wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"ok": failure is None, "error": failure.describe()[-400:] if failure else "", "wall_s": wall,
                  "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_gb": ru.ru_maxrss * 1024 / 1e9}))
"""


def chapter_parameters(stem: str, shape: str, dtype: str, seq_len: int, root: Path | None = None) -> dict:
    """The papermill parameters of one measurement (BookError when the notebook lacks `tappa.bench`)."""
    sizes = bench_parameters(root or ROOT, stem, seq_len)
    return {"model": f"random:{shape}", "dtype": dtype, "seq_len": seq_len, **sizes}


def measure(stem: str, shape: str, dtype: str, seq_len: int) -> dict:
    """One chapter in a fresh subprocess."""
    params = chapter_parameters(stem, shape, dtype, seq_len)
    row, _ = child_row([sys.executable, "-c", CHILD, stem, json.dumps(params)], f"{stem} {shape} {dtype}", cwd=ROOT)
    w = weights_gb(shape, dtype)
    return {"chapter": stem, "shape": shape, "dtype": dtype, "tokens": seq_len, "weights_gb": w, **row,
            "over_weights_gb": row["peak_rss_gb"] - w, "within_memory": row["peak_rss_gb"] <= memory_goal_gb(w),
            "within_time": row["wall_s"] <= 300}


def table(rows: list[dict]) -> str:
    """Markdown table of the measurements (`within`: the memory goal; times are compared to 5 min only at 256
    tokens, float32, on an unshared CPU, which the table cannot know)."""
    return markdown_table([
        ("chapter", lambda r: r["chapter"]), ("shape", lambda r: r["shape"]), ("dtype", lambda r: r["dtype"]),
        ("tokens", lambda r: str(r["tokens"])), ("wall s", lambda r: f"{r['wall_s']:.0f}"),
        ("kernel CPU s", lambda r: f"{r['cpu_s']:.0f}"), ("peak RSS GB", lambda r: f"{r['peak_rss_gb']:.2f}"),
        ("peak - weights GB", lambda r: f"{r['over_weights_gb']:.2f}"),
        ("goal GB", lambda r: f"{memory_goal_gb(r['weights_gb']):.2f}"),
        ("ran", lambda r: "yes" if r["ok"] else "**FAILED**"),
        ("within memory", lambda r: "yes" if r["within_memory"] else "**no**")], rows)


def main(argv=None) -> int:
    """Run the measurements and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["qwen2.5-0.5b", "llama3.2-1b"])
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--seq-len", type=int, default=256)
    stems = chapter_stems(ROOT)  # _toc.yml: the one list of chapters
    p.add_argument("--chapters", nargs="+", default=stems, choices=stems)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file (rewritten after each row)")
    args = p.parse_args(argv)
    try:  # every chapter's sizes before the first (long) measurement
        for stem in args.chapters:
            chapter_parameters(stem, args.shapes[0], args.dtypes[0], args.seq_len)
    except BookError as e:
        print(f"bench_chapters: {e}", file=sys.stderr)
        return 2
    rows = []
    for shape in args.shapes:
        for dtype in args.dtypes:
            for stem in args.chapters:
                rows.append(measure(stem, shape, dtype, args.seq_len))
                r = rows[-1]
                print(f"  {stem} {shape} {dtype}: {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, "
                      f"peak {r['peak_rss_gb']:.2f} GB{'' if r['ok'] else ' FAILED: ' + r['error']}",
                      file=sys.stderr, flush=True)
                write_rows(args.json, rows)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
