"""`python -m tappa_utils analyze`: per-head metrics of a model on text windows, written to a results folder.

    python -m tappa_utils analyze --model tappa-tiny --text-file F --seq-len 512 --num-windows 4 --skip 16 \\
        --out DIR [--layers 0 3] [--device cpu --dtype float32 --window 32 --top-k 16 --null --seed 0]

Writes DIR/heads.csv (one row per layer and head: layer, head, kv_head, then the metrics of
`tappa_utils.metrics`), DIR/layers.csv (per-layer means and pattern counts), DIR/summary.json (parameters, model,
versions, timings, pattern counts) and DIR/gallery.png (attention maps of the heads with the highest and the lowest
q-similarity). With --null, also null_heads.csv / null_layers.csv for the random-weight null (weights swapped in
place, no second model). Everything is written to
a temporary folder beside DIR and renamed into place at the end, so a failed run leaves no partial files. Bad input
exits with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GALLERY_METRIC = "q_sim_consecutive_post"


class InputError(ValueError):
    """Bad command-line input (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises InputError instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        """Raise instead of exiting."""
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `analyze` command."""
    p = _Parser(prog="python -m tappa_utils analyze", description="Per-head attention metrics of a model.")
    p.add_argument("--model", default="tappa-tiny",
                   help="tappa-tiny (shipped), a local model folder, or random:<shape> (e.g. random:qwen2.5-0.5b)")
    p.add_argument("--text-file", default=None, help="text to analyse (default: the shipped held-out sample)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per window (BOS included)")
    p.add_argument("--num-windows", type=int, default=4, help="number of consecutive text windows")
    p.add_argument("--skip", type=int, default=16, help="queries before this position are not analysed")
    p.add_argument("--window", type=int, default=32, help="window of the all-pairs q-similarity")
    p.add_argument("--top-k", type=int, default=16, help="top-k keys for predictability")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layer indices (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--null", action="store_true", help="also analyse the model's random-weight null")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-weight copy")
    p.add_argument("--gallery-heads", type=int, default=3, help="heads per row of the gallery (highest / lowest)")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar (auto: on for more than 8192 tokens)")
    return p


def _load_checked(args):
    """Validate the inputs and load text, model and tokenizer; raise InputError/ValueError on bad input."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from .data import load_text
    from .models import (SUPPORTED_MODEL_TYPES, UnsupportedModelError, check_supported, context_length,
                         is_random_name, load_model, resolve_model_path, shape_name)

    for name in ("seq_len", "num_windows", "window", "top_k", "gallery_heads"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    import torch

    try:
        dev = torch.device(args.device)
    except RuntimeError as e:
        raise InputError(f"--device {args.device!r} is not a device (use cpu, cuda, cuda:0 ...)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    if args.skip < 0:
        raise InputError(f"--skip must be >= 0, got {args.skip}")
    if args.seq_len < max(args.skip, args.top_k - 1) + 2:
        raise InputError(f"--seq-len {args.seq_len} is too short for --skip {args.skip} and --top-k {args.top_k}: "
                         f"use at least {max(args.skip, args.top_k - 1) + 2}")
    hf_logging.set_verbosity_error()  # no "sequence longer than the model" warning for the whole text
    text = load_text(text_file=args.text_file)
    if is_random_name(args.model):
        shape_name(args.model)  # an unknown shape fails here, before anything is built
    else:
        path = resolve_model_path(args.model)
        if not Path(path).is_dir():
            raise InputError(f"model folder not found: {args.model} (use tappa-tiny, a local model folder or "
                             f"random:<shape>)")
        model_type = getattr(AutoConfig.from_pretrained(path), "model_type", "unknown")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(f"unsupported architecture {model_type!r}: supported model types: "
                                        f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    check_supported(model)
    ctx = context_length(model)
    if args.seq_len > ctx:
        raise InputError(f"--seq-len {args.seq_len} exceeds the model's context length {ctx}")
    return text, model, tokenizer


def gallery_figure(model, input_ids, heads_df, n: int = 3, metric: str = GALLERY_METRIC, max_tokens: int = 256):
    """Seaborn heat maps of the first window's attention: the n highest-`metric` heads (top row), n lowest (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    from .plots import attention_maps

    order = heads_df.sort_values(metric, ascending=False)
    n = min(n, len(order))
    picks = [("highest", order.head(n)), ("lowest", order.tail(n).iloc[::-1])]
    layers = sorted({int(r.layer) for _, part in picks for r in part.itertuples()})
    maps = attention_maps(model, input_ids, layers, max_tokens=max_tokens)
    fig, axes = plt.subplots(2, n, figsize=(3.0 * n, 6.2), squeeze=False)
    for row, (label, part) in enumerate(picks):
        for col, r in enumerate(part.itertuples()):
            ax = axes[row, col]
            m = maps[(int(r.layer), int(r.head))][:max_tokens, :max_tokens]
            sns.heatmap(np.sqrt(np.clip(m, 0, None)), ax=ax, cmap="magma", vmin=0, vmax=1, cbar=False,
                        xticklabels=False, yticklabels=False, square=True)
            ax.set_title(f"{label}: L{r.layer} H{r.head} {r.pattern}\n{metric} {getattr(r, metric):.2f}", fontsize=8)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
    fig.suptitle(f"attention (sqrt of probability, first {min(max_tokens, input_ids.shape[1])} tokens)", fontsize=9)
    fig.tight_layout()
    return fig


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


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder onto `out` (an existing `out` is replaced)."""
    old = None
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out} exists and is not a folder")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m tappa_utils analyze`; returns the exit status (2 on bad input)."""
    from .models import UnsupportedModelError

    argv = list(sys.argv[1:] if argv is None else argv)
    tmp = None
    try:
        args = build_parser().parse_args(argv)
        out = Path(args.out).resolve()
        text, model, tokenizer = _load_checked(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
        t0 = time.perf_counter()
        summary = run(args, tmp, text, model, tokenizer)
        _replace_dir(tmp, out)
        tmp = None
        print(f"wrote {out} ({len(summary['layers'])} layers, {time.perf_counter() - t0:.1f} s): "
              + ", ".join(f"{k} {v}" for k, v in summary["patterns"].items()))
        return 0
    except (InputError, UnsupportedModelError, ValueError, TypeError, IndexError, FileNotFoundError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
