"""`kv-tasks`: KV-cache compression judged by task accuracy (greedy answers, `long_tasks`) on any model.

    python -m tappa_utils kv-tasks --model smollm2-135m --tasks needle_passkey multikey --lengths 1024 \\
        --samples 20 --keep 0.1 0.25 0.5 --methods tappa uniform_cake snapkv streamingllm --out runs/kv-tasks

Writes samples.csv (one row per sample, method and budget, with the answer), accuracy.csv (Wilson intervals),
comparisons.csv (TAPPA vs each method, exact McNemar, Holm over the table), ranks.csv, accuracy_vs_keep.png and
run_info.json. The full cache is always run: its accuracy per (task, length) says which cells the model can do at
all (the chapters drop cells below 0.5 and say so). Every input is checked before the model is loaded; the results are
built aside and swapped in whole. Each finished sample is saved as the run goes (`task_progress`): the same command
re-run after a crash or Ctrl-C resumes where it stopped.
"""
from __future__ import annotations

import time

from ..long_tasks import TASKS
from .methods import METHODS, method_names

DEFAULT_METHODS = ("tappa", "uniform_cake", "snapkv", "pyramidkv", "streamingllm", "expected_attention")


def _parse(argv):
    from ..preflight import MODEL_FORMS, Parser

    p = Parser(prog="python -m tappa_utils kv-tasks", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help=MODEL_FORMS)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--tasks", nargs="+", default=["needle_passkey", "multikey"], help=f"from {', '.join(TASKS)}")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024], help="context lengths in the model's tokens")
    p.add_argument("--samples", type=int, default=10, help="samples per (task, length) (default: 10)")
    p.add_argument("--keep", type=float, nargs="+", default=[0.1, 0.25, 0.5], help="fractions of the cache kept")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help=f"from {', '.join(m for m in METHODS if m != 'full')} (the full cache always runs)")
    p.add_argument("--window", type=int, default=32, help="protected recent tokens of window-based presses")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _check(args, pf) -> None:
    bad = [t for t in args.tasks if t not in TASKS]
    if bad:
        raise pf.UsageError(f"--tasks: unknown {bad}; choose from {', '.join(TASKS)}")
    try:
        method_names(args.methods)
    except ValueError as e:
        raise pf.UsageError(f"--methods: {pf.one_line(e)}") from e
    for k in args.keep:
        if not 0 < k < 1:
            raise pf.UsageError(f"--keep {k}: every fraction must be in (0, 1), e.g. --keep 0.1 0.25 0.5")
    for n in args.lengths:
        if n < 256:
            raise pf.UsageError(f"--lengths {n}: contexts must be at least 256 tokens")
    pf.check_positive(args.samples, "--samples")
    pf.check_positive(args.window, "--window")
    pf.check_positive(args.max_new_tokens, "--max-new-tokens")
    if args.seed < 0:
        raise pf.UsageError(f"--seed {args.seed}: must be >= 0")
    if min(args.keep) * min(args.lengths) <= args.window:
        raise pf.UsageError(f"--window {args.window} is not below the smallest budget "
                            f"({min(args.keep)} x {min(args.lengths)} tokens); lower --window or raise --keep")


def plot_accuracy(table, ax_size: float = 3.2):
    """Accuracy vs fraction kept, one panel per (task, length), one line per method (registry colours)."""
    import matplotlib.pyplot as plt

    from .methods import palette

    cells = sorted({(t, n) for t, n in zip(table.task, table.length)})
    fig, axes = plt.subplots(1, len(cells), figsize=(ax_size * len(cells) + 1.5, ax_size), squeeze=False)
    colours = palette()
    for ax, (task, n) in zip(axes[0], cells):
        sub = table[(table.task == task) & (table.length == n)]
        for method, g in sub.groupby("method"):
            g = g.sort_values("keep")
            ax.plot(g.keep, g.accuracy, marker="o", color=colours.get(method, "black"), label=method,
                    ls="--" if method == "full" else "-")
            ax.fill_between(g.keep, g.ci_low, g.ci_high, color=colours.get(method, "black"), alpha=0.08)
        ax.set(title=f"{task}, {n} tokens", xlabel="fraction of the cache kept", ylim=(-0.03, 1.03))
    axes[0, 0].set_ylabel("accuracy (greedy, exact)")
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    from .. import preflight as pf
    from ..io import ResultDir
    from ..models import UnsupportedModelError, check_supported, load_model, model_label
    from ..results import save_figure, save_json, save_run_info, save_table

    def body() -> int:
        args = _parse(argv)
        _check(args, pf)
        pf.check_device(args.device)
        pf.check_dtype(args.dtype)
        info = pf.check_model(args.model)
        if info.context_length and max(args.lengths) + 256 > info.context_length:
            raise pf.UsageError(f"--lengths {max(args.lengths)}: the model's context is {info.context_length} "
                                "tokens (the chat template and answer need ~256 more)")
        pf.check_out_dir(args.out, command="kv-tasks")
        with ResultDir(args.out, "kv-tasks") as tmp:
            from ..long_tasks import make_suite
            from . import task_eval as TE
            from .task_progress import TaskProgress

            model, tok = load_model(info.source, device=args.device, dtype=args.dtype,
                                    attn_implementation="sdpa")
            check_supported(model)
            t0 = time.perf_counter()
            suite = make_suite(args.tasks, tok, args.lengths, args.samples, args.seed)
            params = {k: v for k, v in vars(args).items() if k not in ("out", "quiet")}
            progress = TaskProgress.open(args.out, {**params, "model": model_label(args.model)})
            if progress.done and not args.quiet:
                print(f"resuming: {len(progress.done)} of {len(suite)} samples were finished by an earlier run "
                      f"with the same options ({progress.path})", flush=True)
            samples = TE.run_task_eval(model, tok, suite, args.methods, args.keep, window=args.window,
                                       max_new_tokens=args.max_new_tokens, progress=not args.quiet,
                                       done=progress.done, on_sample=progress.add)
            table = TE.accuracy_table(samples)
            save_table(samples, tmp, "samples.csv")
            save_table(table, tmp, "accuracy.csv")
            save_table(TE.paired_comparisons(samples), tmp, "comparisons.csv")
            save_table(TE.ranks(samples), tmp, "ranks.csv")
            save_figure(plot_accuracy(table), tmp, "accuracy_vs_keep.png")
            save_run_info(tmp, {**params, "model": model_label(args.model)},
                          seconds=round(time.perf_counter() - t0, 1))
            save_json(tmp, "summary.json", {"full_cache_accuracy": table[table.method == "full"]
                                            .drop_duplicates(["task", "length"])[["task", "length", "accuracy", "n"]]
                                            .to_dict("records")})
        progress.remove()
        if not args.quiet:
            print(table.to_string(index=False))
        return 0

    return pf.run_cli("kv-tasks", body, (UnsupportedModelError, ValueError, TypeError, FileNotFoundError))
