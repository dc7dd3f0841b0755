"""Benchmark of capture and streaming analysis (run on demand, not in the tests); prints a table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_capture.py [--model tappa-tiny] [--lengths 512 2048]
        [--long 4096] [--repeats 3]

1. Full capture (q/k pre+post, logits, probs) vs a plain eager forward, same model and input, at each length:
   time ratio (goal <= 1.3). Captured logits are lazy (built on first read): a second row reads them all.
2. `analyze_heads` in streaming mode at the long length vs a plain eager forward with output_attentions=True:
   peak resident memory of a fresh subprocess per measurement, sampled every 2 ms from /proc/self/statm (goal
   <= 1.5; ru_maxrss is not used: Linux carries the parent's high-water mark into the child), its growth during
   the run, and wall time (goal <= 2).
3. Cost of q-similarity itself (consecutive + windowed, pre and post RoPE, every layer) relative to one forward
   (goal <= 2 %).
A training job may share the CPU: times are medians of `--repeats` interleaved runs and still noisy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

CHILD = r"""
import json, resource, sys, time, torch
from tappa_utils import load_model
from tappa_utils.metrics import MetricConfig, analyze_heads
mode, model_name, T = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model, _ = load_model(model_name)
ids = torch.randint(0, 256, (1, T)); ids[0, 0] = model.config.bos_token_id or 0
with torch.no_grad():
    model(ids[:, :64])  # warm-up
import os, threading
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20
state = {"peak": 0.0, "run": True}
def sample():
    while state["run"]:
        state["peak"] = max(state["peak"], rss())
        time.sleep(0.002)
base_now = rss()
th = threading.Thread(target=sample, daemon=True); th.start()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
with torch.no_grad():
    if mode == "eager_attn":
        out = model(ids, output_attentions=True, use_cache=False)
        n = len(out.attentions)
    else:
        df = analyze_heads(model, ids, MetricConfig())
dt = time.perf_counter() - t0
state["run"] = False; th.join()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "base_mb": base / 1024, "peak_mb": peak / 1024, "seconds": dt,
                  "rss_before_mb": base_now, "rss_peak_mb": state["peak"]}))
"""


def _median_time(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def capture_overhead(model, T: int, repeats: int, read_logits: bool = False) -> dict:
    """Plain eager forward vs forward inside a full capture (all fields), median seconds and ratio.

    Logits are built lazily; with `read_logits` every layer's logits are also read (built) inside the timing.
    """
    from tappa_utils.capture import WHAT, capture

    ids = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(0))

    def plain():
        with torch.no_grad():
            model(ids, use_cache=False)

    def captured():
        with torch.no_grad(), capture(model, what=WHAT) as cap:
            model(ids, use_cache=False)
            if read_logits:
                for layer in cap.layers():
                    cap[layer].logits  # noqa: B018 - reading builds the lazy logits

    plain(), captured()  # warm-up
    pairs = []
    for _ in range(repeats):  # interleaved, so that load from other processes hits both alike
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        captured()
        pairs.append((t1 - t0, time.perf_counter() - t1))
    p, c = statistics.median(x for x, _ in pairs), statistics.median(y for _, y in pairs)
    return {"T": T, "plain_s": p, "capture_s": c, "ratio": statistics.median(y / x for x, y in pairs)}


def qsim_cost(model, T: int, repeats: int) -> dict:
    """Seconds of the q-similarity metrics on every layer's captured q (pre and post) vs one plain forward."""
    from tappa_utils.capture import capture
    from tappa_utils.metrics import q_similarity_consecutive, q_similarity_window

    ids = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture(model, what=("q_pre", "q_post")) as cap:
        model(ids, use_cache=False)
    qs = [q for layer in cap.layers() for q in (cap[layer].q_pre, cap[layer].q_post)]

    def metrics():
        for q in qs:
            q_similarity_consecutive(q)
            q_similarity_window(q)

    def plain():
        with torch.no_grad():
            model(ids, use_cache=False)

    m, p = _median_time(metrics, repeats), _median_time(plain, repeats)
    return {"T": T, "qsim_s": m, "forward_s": p, "share": m / p}


def memory_run(mode: str, model: str, T: int) -> dict:
    """One measurement in a fresh subprocess (so ru_maxrss is this measurement's peak)."""
    res = subprocess.run([sys.executable, "-c", CHILD, mode, model, str(T)], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the three benchmarks and print the table (also as JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tappa-tiny")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--long", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from tappa_utils import load_model

    model, _ = load_model(args.model)
    rows = []
    for T in args.lengths:
        r = capture_overhead(model, T, args.repeats)
        rows.append((f"capture (all fields) / plain eager, T={T}", r["ratio"], 1.3,
                     f"{r['capture_s']:.3f} s vs {r['plain_s']:.3f} s"))
        r = capture_overhead(model, T, args.repeats, read_logits=True)
        rows.append((f"  same, every layer's logits read, T={T}", r["ratio"], float("nan"),
                     f"{r['capture_s']:.3f} s vs {r['plain_s']:.3f} s (logits are built on first read)"))
    eager = memory_run("eager_attn", args.model, args.long)
    stream = memory_run("analyze", args.model, args.long)
    rows.append((f"analyze peak RSS / eager+attentions, T={args.long}", stream["rss_peak_mb"] / eager["rss_peak_mb"],
                 1.5, f"{stream['rss_peak_mb']:.0f} MB vs {eager['rss_peak_mb']:.0f} MB (loaded model: "
                 f"{stream['rss_before_mb']:.0f} / {eager['rss_before_mb']:.0f} MB)"))
    d_s = stream["rss_peak_mb"] - stream["rss_before_mb"]
    d_e = eager["rss_peak_mb"] - eager["rss_before_mb"]
    rows.append(("  same, sampled RSS growth during the run", d_s / max(d_e, 1e-9), 1.5,
                 f"{d_s:.0f} MB vs {d_e:.0f} MB (RSS sampled every 2 ms)"))
    rows.append((f"analyze time / eager+attentions, T={args.long}", stream["seconds"] / eager["seconds"], 2.0,
                 f"{stream['seconds']:.2f} s vs {eager['seconds']:.2f} s"))
    q = qsim_cost(model, args.long, args.repeats)
    rows.append((f"q-similarity / forward, T={args.long}", q["share"], 0.02,
                 f"{q['qsim_s'] * 1e3:.1f} ms vs {q['forward_s'] * 1e3:.0f} ms"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'value':>7}  {'goal':>6}  ok    detail")
    for name, val, goal, detail in rows:
        ok = "-" if goal != goal else ("yes" if val <= goal else "NO")
        print(f"{name:<{width}}  {val:7.3f}  {goal:6.2f}  {ok:<4}  {detail}")
    if args.json:
        print(json.dumps([dict(zip(("name", "value", "goal", "detail"), r)) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
