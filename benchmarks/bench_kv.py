"""Benchmark (on demand): TAPPAPress prefill time vs SnapKVPress at the same budget (P4: <= 1.1x at T=1024 and
T=4096), and decoding time per token on the compressed (25 % kept) cache vs the full cache (P4: not slower).
Prints a table and the P4 verdicts.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kv.py [--model tappa-tiny] [--seq-len 1024 4096] [--reps 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from tappa_utils import load_model
from tappa_utils.kv.decoding import continue_forward, prefill
from tappa_utils.kv.evaluate import make_press

PREFILL_METHODS = ("full", "snapkv", "tappa", "tappa_proportional", "tappa_cake")


def decode_per_token(model, ids, press, n_tokens: int) -> float:
    """Seconds per greedy token after prefilling `ids` under `press` (None: full cache)."""
    cache, last = prefill(model, ids, press)
    tok = torch.tensor([[int(last.argmax())]])
    t = ids.shape[1]
    t0 = time.perf_counter()
    for i in range(n_tokens):
        tok = continue_forward(model, cache, tok, t + i)[-1:].argmax(-1, keepdim=True).T
    return (time.perf_counter() - t0) / n_tokens


def main() -> None:
    """Run the benchmark and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tappa-tiny")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--seq-len", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--keep", type=float, default=0.25)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    model, _ = load_model(args.model, attn_implementation=args.attn)
    print(f"model={args.model} attn={args.attn} keep={args.keep:.0%} threads={torch.get_num_threads()} "
          f"reps={args.reps}")
    print(f"{'T':>6}  {'measurement':<30}{'ms':>10}{'x SnapKV':>10}")
    verdicts = []
    for t in args.seq_len:
        ids = torch.randint(0, 256, (1, t))
        times = {m: [] for m in PREFILL_METHODS}
        dec_times = {m: [] for m in ("full", "tappa")}
        for m in PREFILL_METHODS:  # warm-up
            prefill(model, ids, make_press(m, args.keep))
        for _ in range(args.reps):  # methods interleaved within each repetition: shared-CPU drift hits all alike
            for m in PREFILL_METHODS:
                t0 = time.perf_counter()
                prefill(model, ids, make_press(m, args.keep))
                times[m].append(time.perf_counter() - t0)
            for m in dec_times:
                dec_times[m].append(decode_per_token(model, ids, make_press(m, args.keep), args.decode_tokens))
        ms = {m: 1e3 * statistics.median(v) for m, v in times.items()}
        for m in PREFILL_METHODS:
            print(f"{t:>6}  {'prefill ' + m:<30}{ms[m]:>10.2f}{ms[m] / ms['snapkv']:>10.2f}")
        dec = {m: 1e3 * statistics.median(v) for m, v in dec_times.items()}
        for m in dec:
            print(f"{t:>6}  {'decode/token ' + m:<30}{dec[m]:>10.3f}")
        verdicts.append((f"P4 prefill tappa <= 1.1x snapkv at T={t}", ms["tappa"] / ms["snapkv"], 1.1))
        verdicts.append((f"P4 decode/token tappa {args.keep:.0%} <= full at T={t}", dec["tappa"] / dec["full"], 1.0))
    for name, ratio, limit in verdicts:
        print(f"{name}: ratio {ratio:.2f} (limit {limit}) {'PASS' if ratio <= limit else 'FAIL'}")


if __name__ == "__main__":
    main()
