"""`python -m tappa_utils analyze`: per-head metrics of a model on text windows, written to a results folder.

    python -m tappa_utils analyze --model tappa-tiny --text-file F --seq-len 512 --num-windows 4 --skip 16 \\
        --out DIR [--layers 0 3] [--device cpu --dtype float32 --window 32 --top-k 16 --null --seed 0]

Writes DIR/heads.csv (one row per layer and head: layer, head, kv_head, then the metrics of
`tappa_utils.metrics`), DIR/layers.csv (per-layer means and pattern counts), DIR/summary.json (parameters, model,
versions, timings, pattern counts) and DIR/gallery.png (attention maps of the heads with the highest and the lowest
q-similarity). With --null, also null_heads.csv / null_layers.csv for the random-weight null (weights swapped in
place, no second model). Everything is written to
a temporary folder beside DIR and swapped into place at the end, so a failed run leaves no partial files and the
previous result intact; a DIR holding files that `analyze` did not write is refused. Bad input exits with status 2
and one line on stderr, before anything is loaded.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .preflight import MODEL_FORMS, Parser, UsageError

GALLERY_METRIC = "q_sim_consecutive_pre"  # the variant the book and the model card use


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `analyze` command."""
    p = Parser(prog="python -m tappa_utils analyze", description="Per-head attention metrics of a model.")
    p.add_argument("--model", default="tappa-tiny",
                   help=MODEL_FORMS)
    p.add_argument("--text-file", default=None,
                   help="text to analyse (None: held-out English for real models, the shipped held-out code sample "
                        "for tappa-tiny)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per window (BOS included)")
    p.add_argument("--num-windows", type=int, default=4, help="number of consecutive text windows")
    p.add_argument("--skip", type=int, default=16, help="queries before this position are not analysed")
    p.add_argument("--window", type=int, default=32, help="window of the all-pairs q-similarity")
    p.add_argument("--top-k", type=int, default=16, help="unused (kept for old scripts)")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layer indices (None: all)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--null", action="store_true", help="also analyse the model's random-weight null")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-weight copy")
    p.add_argument("--gallery-heads", type=int, default=3, help="heads per row of the gallery (highest / lowest)")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar (auto: on for more than 8192 tokens)")
    return p


def _check(args):
    """The front door: every input checked before anything is loaded; the checked model (UsageError otherwise)."""
    from . import preflight as pf

    for name in ("seq_len", "num_windows", "top_k", "gallery_heads"):
        pf.check_positive(getattr(args, name), f"--{name.replace('_', '-')}")
    pf.check_positive(args.window, "--window", minimum=2)  # the all-pairs q-similarity needs two queries
    pf.check_positive(args.skip, "--skip", minimum=0)
    pf.check_positive(args.seed, "--seed", minimum=0)
    if args.seq_len < max(args.skip, args.top_k - 1) + 2:
        raise UsageError(f"--seq-len {args.seq_len} is too short for --skip {args.skip} and --top-k {args.top_k}: "
                         f"use at least {max(args.skip, args.top_k - 1) + 2}")
    pf.check_device(args.device)
    pf.check_dtype(args.dtype)
    pf.check_text_file(args.text_file)
    info = pf.check_model(args.model)
    pf.check_context(args.seq_len, info)
    pf.check_layers(args.layers, info)
    pf.check_out_dir(args.out, command="analyze")
    _check_text_length(args, info)
    return info


def _check_text_length(args, info) -> None:
    """UsageError when the text has too few tokens for the windows (tokenizer alone: the weights are not loaded)."""
    from . import preflight as pf
    from .data import load_text, token_windows

    tokenizer = pf.load_tokenizer(info)
    if tokenizer is None:
        return
    text = load_text(text_file=args.text_file, model=args.model)
    try:
        token_windows(tokenizer, text, args.seq_len, args.num_windows)
    except ValueError as e:
        where = f"--text-file {args.text_file}" if args.text_file else "the built-in text"
        raise UsageError(f"{where}: {pf.one_line(e)} (--num-windows {args.num_windows}, --seq-len {args.seq_len})") \
            from e


def _load_checked(args, info):
    """Load text, model and tokenizer of checked inputs."""
    from transformers.utils import logging as hf_logging

    from .data import load_text
    from .models import check_supported, load_model

    hf_logging.set_verbosity_error()  # no "sequence longer than the model" warning for the whole text
    text = load_text(text_file=args.text_file, model=args.model)
    model, tokenizer = load_model(info.source, device=args.device, dtype=args.dtype)
    check_supported(model)
    return text, model, tokenizer


def gallery_figure(model, input_ids, heads_df, n: int = 3, metric: str = GALLERY_METRIC, max_tokens: int = 512):
    """Attention maps of the first window: the n highest-`metric` heads (top row), the n lowest (bottom row).

    Drawn by `plots.plot_attention_gallery`: labelled axes, one colourbar, and maps longer than 128 tokens
    max-pooled, so a one-token sink stays a visible column at any length.
    """
    import matplotlib

    matplotlib.use("Agg")

    from .plots import attention_maps, plot_attention_gallery

    order = heads_df.sort_values(metric, ascending=False)
    n = min(n, len(order))
    picks = [("highest", order.head(n)), ("lowest", order.tail(n).iloc[::-1])]
    layers = sorted({int(r.layer) for _, part in picks for r in part.itertuples()})
    maps = attention_maps(model, input_ids, layers, max_tokens=max_tokens)
    shown, titles = [], []
    for label, part in picks:
        for r in part.itertuples():
            shown.append(maps[(int(r.layer), int(r.head))])
            titles.append(f"{label}: L{r.layer} H{r.head} {r.pattern}\n{metric} {getattr(r, metric):.2f}")
    tokens = min(max_tokens, input_ids.shape[1])
    return plot_attention_gallery(shown, titles, ncols=n, panel_size=3.0, max_width=3.0 * n,
                                  suptitle=f"attention of the first {tokens} tokens")


def run(args, out_tmp: Path, text, model, tokenizer) -> dict[str, Any]:
    """Compute the tables and the figure into `out_tmp`; return the summary dict."""
    import matplotlib.pyplot as plt

    from . import __version__
    from .capture import resolve_layers
    from .data import token_windows
    from .metrics import MetricConfig, analyze_heads, config_dict, layer_table, null_heads
    from .results import save_figure, save_json, save_table, versions

    ids = token_windows(tokenizer, text, args.seq_len, args.num_windows)
    layers = resolve_layers(model, args.layers)
    cfg = MetricConfig(skip=args.skip, window=args.window, top_k=args.top_k)
    progress = args.progress == "on" or (args.progress == "auto" and args.seq_len * args.num_windows > 8192)
    timings = {}
    t0 = time.perf_counter()
    heads = analyze_heads(model, ids, cfg, layers=layers, progress=progress)
    timings["analyze_s"] = time.perf_counter() - t0
    save_table(heads, out_tmp, "heads.csv")
    save_table(layer_table(heads), out_tmp, "layers.csv")
    summary: dict[str, Any] = {
        "command": "analyze",
        "params": {k: v for k, v in vars(args).items() if k != "progress"},
        "model": {"name": args.model, "model_type": model.config.model_type,
                  "num_layers": model.config.num_hidden_layers, "num_heads": model.config.num_attention_heads},
        "layers": layers,
        "num_tokens": int(ids.numel()),
        "metric_config": config_dict(cfg),
        "patterns": {k: int(v) for k, v in heads["pattern"].value_counts().items()},
        "versions": {**versions(), "tappa_utils": __version__},
    }
    if args.null:
        t0 = time.perf_counter()
        null = null_heads(model, ids, cfg, seed=args.seed, layers=layers, progress=progress)
        timings["null_s"] = time.perf_counter() - t0
        save_table(null, out_tmp, "null_heads.csv")
        save_table(layer_table(null), out_tmp, "null_layers.csv")
        summary["null_patterns"] = {k: int(v) for k, v in null["pattern"].value_counts().items()}
    t0 = time.perf_counter()
    fig = gallery_figure(model, ids, heads, args.gallery_heads)
    save_figure(fig, out_tmp, "gallery.png")
    plt.close(fig)
    timings["gallery_s"] = time.perf_counter() - t0
    summary["timings"] = timings
    save_json(out_tmp, "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m tappa_utils analyze`; returns the exit status (2 on bad input, 130 on Ctrl-C)."""
    from .io import ResultDir
    from .models import UnsupportedModelError
    from .preflight import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        args = build_parser().parse_args(argv)
        info = _check(args)
        t0 = time.perf_counter()
        with ResultDir(args.out, "analyze") as tmp:
            text, model, tokenizer = _load_checked(args, info)
            summary = run(args, tmp, text, model, tokenizer)
        print(f"wrote {Path(args.out).resolve()} ({len(summary['layers'])} layers, {time.perf_counter() - t0:.1f} s): "
              + ", ".join(f"{k} {v}" for k, v in summary["patterns"].items()))
        return 0

    return run_cli("analyze", body, (UnsupportedModelError, ValueError, TypeError, IndexError, OSError))


if __name__ == "__main__":
    sys.exit(main())
