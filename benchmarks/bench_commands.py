"""Benchmark of the commands at real model shapes (random weights, exact public configs); prints a table.

    nice -n 2 /work/main/.venv/bin/python benchmarks/bench_commands.py [--shapes qwen2.5-0.5b llama3.2-1b]
        [--dtypes float32 bfloat16] [--seq-len 512] [--commands analyze kv-eval prune-eval] [--json F]

Each run is `python -m tappa_utils <command> --model random:<shape> --dtype D --seq-len T ...` with one window or
sample (`ONE_WINDOW`; the random-weight null included where the command has one) in a fresh subprocess, writing
to a temporary folder. Peak RSS is the child's own high-water mark (RUSAGE_CHILDREN of a process that runs nothing
else). The memory goal of issue 16 is peak <= 1.3 x the weights + 1.5 GB. `model-card` and `train-tiny` concern
the shipped model only and are not run here. The CPU may be shared: times are single runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from shapes_common import ROOT, child_row, markdown_table, memory_goal_gb, weights_gb, write_rows

CHILD = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run([sys.executable, "-m", "tappa_utils", *sys.argv[1:]], stdout=subprocess.DEVNULL).returncode
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "peak_rss_gb": ru.ru_maxrss * 1024 / 1e9}))
"""
# One window / sample per command; the null wherever the command offers one.
ONE_WINDOW = {
    "analyze": ["--num-windows", "1", "--null"],
    "kv-eval": ["--samples", "1", "--keep", "0.25", "0.5", "--null"],
    "prune-eval": ["--calib-chunks", "1", "--eval-windows", "1", "--copy-windows", "1", "--max-removed", "2",
                   "--no-figures"],
}


def measure(command: str, shape: str, dtype: str, seq_len: int) -> dict:
    """One command in a fresh subprocess, writing into a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [command, "--model", f"random:{shape}", "--dtype", dtype, "--seq-len", str(seq_len),
                "--out", str(Path(tmp) / "out"), *ONE_WINDOW[command]]
        row, out = child_row([sys.executable, "-c", CHILD, *argv], f"{command} {shape} {dtype}", cwd=ROOT)
    if out.returncode != 0 or row["rc"] != 0:
        raise RuntimeError(f"{command} {shape} {dtype}: exit {row['rc']}: {out.stderr.strip()[-400:]}")
    w = weights_gb(shape, dtype)
    return {"command": command, "shape": shape, "dtype": dtype, "tokens": seq_len, "weights_gb": w, **row,
            "within_memory": row["peak_rss_gb"] <= memory_goal_gb(w)}


def table(rows: list[dict]) -> str:
    """Markdown table of the measurements."""
    return markdown_table([
        ("command", lambda r: r["command"]), ("shape", lambda r: r["shape"]), ("dtype", lambda r: r["dtype"]),
        ("tokens", lambda r: str(r["tokens"])), ("weights GB", lambda r: f"{r['weights_gb']:.2f}"),
        ("wall s", lambda r: f"{r['wall_s']:.0f}"), ("CPU s", lambda r: f"{r['cpu_s']:.0f}"),
        ("peak RSS GB", lambda r: f"{r['peak_rss_gb']:.2f}"),
        ("goal GB", lambda r: f"{memory_goal_gb(r['weights_gb']):.2f}"),
        ("within", lambda r: "yes" if r["within_memory"] else "**no**")], rows)


def main(argv=None) -> int:
    """Run the measurements (printing each row as it comes) and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["qwen2.5-0.5b", "llama3.2-1b"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--commands", nargs="+", default=list(ONE_WINDOW), choices=list(ONE_WINDOW))
    p.add_argument("--json", default=None, help="also write the rows to this JSON file (rewritten after each row)")
    args = p.parse_args(argv)
    rows = []
    for s in args.shapes:
        for d in args.dtypes:
            for c in args.commands:
                rows.append(measure(c, s, d, args.seq_len))
                print(json.dumps(rows[-1]), flush=True)
                write_rows(args.json, rows)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
