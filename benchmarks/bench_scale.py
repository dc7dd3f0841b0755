"""Benchmark of `analyze` at real model shapes (random weights, exact public configs); prints a table.

    nice -n 2 /work/main/.venv/bin/python benchmarks/bench_scale.py [--shapes qwen2.5-0.5b llama3.2-1b]
        [--dtypes float32 bfloat16] [--seq-len 512] [--growth 512 2048] [--long 4096] [--json F]

Each measurement runs in a fresh subprocess: build `random_model(shape, dtype)` (meta device, then filled once),
then `analyze_heads` on one window of the shipped held-out text (byte tokens). Peak RSS is the child's VmHWM from
/proc/self/status (its own high-water mark; nothing inherited from this process). Columns: weights (GB of
parameters), build and analyze time (s), peak RSS (GB) and peak RSS minus weights (GB, the overhead: Python,
torch, activations, q/k and the query blocks). Rows: every shape x dtype at `--seq-len`, then analyze's growth over
`--growth` lengths (first shape, float32), then `--long` (first shape, float32: the bounded-memory check,
target peak <= weights + 2 GB). The CPU may be shared: times are single runs.
"""
from __future__ import annotations

import argparse
import sys

from shapes_common import child_row, markdown_table, write_rows

CHILD = r"""
import json, sys, time, torch
from tappa_utils.data import load_text
from tappa_utils.metrics import MetricConfig, analyze_heads
from tappa_utils.models import random_model, weight_bytes
from tappa_utils.tiny.tokenizer import build_tokenizer
shape, dtype, T = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
model = random_model(shape, dtype=dtype)
build = time.perf_counter() - t0
text = load_text()
ids = torch.tensor([build_tokenizer()(text)["input_ids"][:T]])
while ids.shape[1] < T:  # the sample is shorter than a long window: repeat it
    ids = torch.cat([ids, ids[:, 1:]], 1)[:, :T]
t0 = time.perf_counter()
heads = analyze_heads(model, ids, MetricConfig())
analyze = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
print(json.dumps({"shape": shape, "dtype": dtype, "tokens": T, "heads": len(heads),
                  "weights_gb": weight_bytes(model) / 1e9, "build_s": build, "analyze_s": analyze,
                  "peak_rss_gb": hwm / 1e9, "over_weights_gb": (hwm - weight_bytes(model)) / 1e9,
                  "threads": torch.get_num_threads()}))
"""


def measure(shape: str, dtype: str, tokens: int) -> dict:
    """One measurement in a fresh subprocess."""
    row, out = child_row([sys.executable, "-c", CHILD, shape, dtype, str(tokens)], f"{shape} {dtype} {tokens}")
    if out.returncode != 0:
        raise RuntimeError(f"{shape} {dtype} {tokens}: {out.stderr.strip()[-400:]}")
    return row


def table(rows: list[dict]) -> str:
    """Markdown table of the measurements."""
    return markdown_table([
        ("shape", lambda r: r["shape"]), ("dtype", lambda r: r["dtype"]), ("tokens", lambda r: str(r["tokens"])),
        ("heads", lambda r: str(r["heads"])), ("weights GB", lambda r: f"{r['weights_gb']:.2f}"),
        ("build s", lambda r: f"{r['build_s']:.1f}"), ("analyze s", lambda r: f"{r['analyze_s']:.1f}"),
        ("peak RSS GB", lambda r: f"{r['peak_rss_gb']:.2f}"),
        ("peak - weights GB", lambda r: f"{r['over_weights_gb']:.2f}")], rows)


def main(argv=None) -> int:
    """Run the measurements and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["qwen2.5-0.5b", "llama3.2-1b"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--growth", type=int, nargs="*", default=[512, 2048])
    p.add_argument("--long", type=int, default=0, help="one more float32 run of the first shape at this length")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file (rewritten after each row)")
    args = p.parse_args(argv)
    plan = [(s, d, args.seq_len) for s in args.shapes for d in args.dtypes]
    plan += [(args.shapes[0], "float32", t) for t in args.growth if (args.shapes[0], "float32", t) not in plan]
    if args.long:
        plan.append((args.shapes[0], "float32", args.long))
    rows = []
    for s, d, t in plan:
        rows.append(measure(s, d, t))
        print(f"  {s} {d} {t}: analyze {rows[-1]['analyze_s']:.1f} s, peak {rows[-1]['peak_rss_gb']:.2f} GB",
              file=sys.stderr, flush=True)
        write_rows(args.json, rows)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
