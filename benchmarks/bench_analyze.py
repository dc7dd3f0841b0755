"""Cost of `analyze_heads` against a plain forward (run on demand, not in the tests); prints a table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_analyze.py [--model smollm2-135m] [--seq-len 512]
        [--repeats 3] [--top 12]

One window of held-out English (`data.english_text`), one thread. Rows: a plain forward of the decoder with sdpa
attention (what `analyze_heads` runs), the same forward inside a q/k capture (q pre/post-RoPE, k post-RoPE, no
metrics), and the whole `analyze_heads`; seconds are CPU seconds of this process (median of `--repeats` after a
warm-up), so other jobs on a shared machine inflate them little. Then the top cost centres of one `analyze_heads`
under cProfile (own time, per function). Goal (issue 25): analyze <= 2 x the forward.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch


def cpu_seconds(fn, repeats: int) -> float:
    """Median process CPU seconds of `fn()` over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def cost_centres(fn, top: int) -> list[tuple[str, float, int]]:
    """The `top` functions by own time in one profiled run of `fn()`: (name, seconds, calls)."""
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, name), (_, calls, own, _, _) in stats.stats.items():
        where = name if file.startswith("~") else f"{file.rsplit('/', 1)[-1]}:{line} {name}"
        rows.append((where, own, calls))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from tappa_utils import load_model
    from tappa_utils.capture import capture
    from tappa_utils.data import english_text, token_windows
    from tappa_utils.metrics import MetricConfig, analyze_heads, attention_implementation

    model, tokenizer = load_model(args.model)
    ids = token_windows(tokenizer, english_text(), args.seq_len, 1)
    cfg = MetricConfig()

    def forward():
        with torch.no_grad(), attention_implementation(model, "sdpa"):
            model.model(input_ids=ids, use_cache=False)

    def captured():
        with torch.no_grad(), attention_implementation(model, "sdpa"), \
                capture(model, what=("q_pre", "q_post", "k_post"), reducer=lambda rec: None):
            model.model(input_ids=ids, use_cache=False)

    def analyze():
        analyze_heads(model, ids, cfg)

    t_fwd = cpu_seconds(forward, args.repeats)
    t_cap = cpu_seconds(captured, args.repeats)
    t_ana = cpu_seconds(analyze, args.repeats)
    heads = model.config.num_hidden_layers * model.config.num_attention_heads
    print(f"{args.model}, {args.seq_len} tokens, one window, {heads} heads, one thread, CPU seconds "
          f"(median of {args.repeats})\n")
    print("| run | CPU s | x forward |\n|---|---|---|")
    for name, t in (("forward (decoder, sdpa)", t_fwd), ("capture q/k", t_cap), ("analyze_heads", t_ana)):
        print(f"| {name} | {t:.2f} | {t / t_fwd:.2f} |")
    print(f"\nanalyze / forward = {t_ana / t_fwd:.2f} (goal <= 2)\n")
    print("| cost centre (own time, one analyze_heads under cProfile) | s | calls |\n|---|---|---|")
    for where, own, calls in cost_centres(analyze, args.top):
        print(f"| `{where}` | {own:.3f} | {calls} |")


if __name__ == "__main__":
    main()
