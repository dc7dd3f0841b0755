"""Benchmark (on demand): TAPPAPress prefill overhead vs SnapKVPress at the same budget, and decoding time per token
on the compressed (25 % kept) cache vs the full cache. Prints a table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kv.py [--model tappa-tiny] [--seq-len 1024] [--reps 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from tappa_utils import load_model
from tappa_utils.kv.decoding import continue_forward, prefill
from tappa_utils.kv.evaluate import make_press


def timed(fn, reps: int) -> float:
    """Median wall time of `fn()` over `reps` runs (after one warm-up), in seconds."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    """Run the benchmark and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tappa-tiny")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--keep", type=float, default=0.25)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    model, _ = load_model(args.model, attn_implementation=args.attn)
    ids = torch.randint(0, 256, (1, args.seq_len))
    rows = []
    prefill_t = {}
    for method in ("full", "snapkv", "tappa", "tappa_cake"):
        prefill_t[method] = timed(lambda: prefill(model, ids, make_press(method, args.keep)), args.reps)
        rows.append((f"prefill {method}", prefill_t[method] * 1e3, prefill_t[method] / prefill_t["snapkv"]
                     if "snapkv" in prefill_t else float("nan")))
    for method in ("full", "tappa"):
        def decode():
            cache, last = prefill(model, ids, make_press(method, args.keep))
            tok = torch.tensor([[int(last.argmax())]])
            t0 = time.perf_counter()
            for i in range(args.decode_tokens):
                tok = continue_forward(model, cache, tok, args.seq_len + i)[-1:].argmax(-1, keepdim=True).T
            return (time.perf_counter() - t0) / args.decode_tokens
        decode()
        per_tok = statistics.median(decode() for _ in range(args.reps))
        rows.append((f"decode/token {method}", per_tok * 1e3, float("nan")))
    full_dec, tappa_dec = rows[-2][1], rows[-1][1]
    print(f"model={args.model} attn={args.attn} seq_len={args.seq_len} keep={args.keep:.0%} "
          f"threads={torch.get_num_threads()} reps={args.reps}")
    print(f"{'measurement':<26}{'ms':>10}{'x SnapKV':>10}")
    for name, ms, ratio in rows:
        print(f"{name:<26}{ms:>10.2f}{'' if ratio != ratio else f'{ratio:>10.2f}'}")
    print(f"decode speed-up compressed vs full: {full_dec / tappa_dec:.2f}x")


if __name__ == "__main__":
    main()
