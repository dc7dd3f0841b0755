"""KV-cache compression benchmark: TAPPA budgets vs kvpress baselines on a long context
(`python -m tappa_utils kv-eval`).

Tasks, each sample = (context, target); the context is compressed by the press during prefill, then the target is
teacher-forced after it (positions continue from the original length, per-layer masks; see `decoding`):
- `loss`: the next `cont_len` tokens of held-out text after a `seq_len`-token context: mean NLL (nats/token) and
  top-1 accuracy.
- `retrieval`: a random printable segment (`seg_len` bytes) is planted `distance` tokens before the end of the
  context (default 3/4 of `seq_len`), and the context ends with its first `prefix_len` bytes again; target = the rest
  of the segment. Only copying from the first occurrence predicts it: top-1 accuracy (and NLL).
Fixed seeds: every method sees the same samples. Methods: the registry `methods.METHODS` (each with its press, its
colour and one line of description; `python -m tappa_utils kv-eval --help` lists them). Also recorded per sample:
every layer's cache length and the time each press takes to compress a recorded prefill (scores, budgets,
eviction). Summaries, paired comparisons, claims and figures: `report`.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .methods import METHODS, describe, make_press, method_names, null_methods
from .report import kv_checks, summarize, write_results

TASKS = ("loss", "retrieval")


@dataclass
class KVEvalConfig:
    """Parameters of a kv-eval run (see the module docstring); `keep` = fractions of the context cache kept,
    `methods` default = every registered method (`methods.METHODS`), `distance` None = 3/4 of `seq_len`
    (`planted_distance`)."""

    model: str = "tappa-tiny"
    device: str = "cpu"
    dtype: str = "float32"
    attn: str = "sdpa"
    seq_len: int = 1024
    keep: tuple = (0.1, 0.25, 0.5)
    methods: tuple = field(default_factory=method_names)
    tasks: tuple = TASKS
    samples: int = 32
    cont_len: int = 32
    seg_len: int = 32
    prefix_len: int = 8
    distance: int | None = None
    window: int = 32
    cake_alpha: float = 1.0
    seed: int = 0
    text_file: str | None = None

    @property
    def planted_distance(self) -> int:
        """Tokens between the planted segment's start and the cue: `distance`, or 3/4 of `seq_len` when None."""
        return self.distance if self.distance is not None else 3 * self.seq_len // 4

    def validate(self, names: dict[str, str] | None = None) -> None:
        """Raise ValueError naming the bad parameter and what is allowed; `names` maps field names to the names the
        messages use (the command line passes `OPTIONS`: `--seq-len` for seq_len)."""
        def n(name: str) -> str:
            return (names or {}).get(name, name)

        def pos_int(name, lo=1, why=""):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{n(name)} must be an integer >= {lo}{why}, got {v!r}")
        for name in ("samples", "cont_len", "seg_len", "prefix_len", "window"):
            pos_int(name)
        pos_int("seed", 0)
        pos_int("seq_len", 2 * self.window + 2, f" (2 * {n('window')} + 2, {n('window')} {self.window})")
        if not self.keep or any(not isinstance(k, (int, float)) or not 0 < k <= 1 for k in self.keep):
            raise ValueError(f"{n('keep')} must be fractions in (0, 1], got {self.keep!r}")
        try:
            method_names(self.methods)
        except ValueError as e:
            raise ValueError(f"{n('methods')}: {e}") from e
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"{n('tasks')}: unknown task(s) {bad}; choose from {', '.join(TASKS)}")
        if self.prefix_len >= self.seg_len:
            raise ValueError(f"{n('prefix_len')} ({self.prefix_len}) must be smaller than {n('seg_len')} "
                             f"({self.seg_len})")
        if self.distance is not None and (not isinstance(self.distance, int) or isinstance(self.distance, bool)):
            raise ValueError(f"{n('distance')} must be an integer or None (3/4 of {n('seq_len')}), "
                             f"got {self.distance!r}")
        hi = self.seq_len - 1 - self.prefix_len
        if not self.seg_len < self.planted_distance <= hi:
            raise ValueError(f"{n('distance')} must lie in ({n('seg_len')} {self.seg_len}, {n('seq_len')} - 1 - "
                             f"{n('prefix_len')} = {hi}] (segment before the cue, inside the context), "
                             f"got {self.planted_distance}"
                             + (f" (the default: 3/4 of {n('seq_len')})" if self.distance is None else ""))
        if min(self.keep) * self.seq_len < self.window + 4:
            raise ValueError(f"{n('keep')} {min(self.keep)} of {n('seq_len')} {self.seq_len} tokens is less than "
                             f"{n('window')} {self.window} plus 4 sinks; raise {n('seq_len')} or {n('keep')}")
        if not isinstance(self.cake_alpha, (int, float)) or isinstance(self.cake_alpha, bool) or \
                not math.isfinite(self.cake_alpha):
            raise ValueError(f"{n('cake_alpha')} must be a finite number, got {self.cake_alpha!r}")
        if self.attn not in ("eager", "sdpa"):
            raise ValueError(f"{n('attn')} must be 'eager' or 'sdpa', got {self.attn!r}")


OPTIONS = {f: "--" + f.replace("_", "-") for f in KVEvalConfig.__dataclass_fields__}  # field -> command-line option


def _text_tokens(tokenizer, text_file: str | None, model: str | None = None) -> np.ndarray:
    from ..data import load_text

    ids = tokenizer(load_text(text_file=text_file, model=model), add_special_tokens=False,
                    verbose=False)["input_ids"]  # cut below
    return np.asarray(ids, dtype=np.int64)


def make_samples(tokens: np.ndarray, bos: int, cfg: KVEvalConfig, task: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`cfg.samples` (context (1, seq_len), target (1, n)) pairs for `task`, from fixed seeds."""
    rng = np.random.default_rng([cfg.seed, TASKS.index(task)])
    body = cfg.seq_len - 1
    need = body + cfg.cont_len
    if len(tokens) < need + 1:
        raise ValueError(f"text too short: {len(tokens)} tokens, a sample needs {need}; give a longer text_file")
    out = []
    for _ in range(cfg.samples):
        start = int(rng.integers(0, len(tokens) - need))
        x = tokens[start:start + need].copy()
        if task == "loss":
            ctx, tgt = x[:body], x[body:]
        else:
            seg = rng.integers(33, 127, size=cfg.seg_len)
            ctx = x[:body]
            first = body - cfg.prefix_len - cfg.planted_distance
            ctx[first:first + cfg.seg_len] = seg
            ctx[body - cfg.prefix_len:] = seg[:cfg.prefix_len]
            tgt = seg[cfg.prefix_len:]
        ctx = np.concatenate([[bos], ctx])
        out.append((torch.as_tensor(ctx).unsqueeze(0), torch.as_tensor(tgt).unsqueeze(0)))
    return out


@torch.no_grad()
def compressed_caches(model, context: torch.Tensor, presses: dict, timings: dict | None = None
                      ) -> tuple[dict, torch.Tensor]:
    """One full prefill, then every press replayed on its own copy of the cache -> ({name: cache}, last logits).

    kvpress presses compress layer l from layer l's inputs and full cache only (TAPPAPress records each layer and
    evicts at the last one), and the prefill itself always sees the full cache, so replaying each press's forward
    hook on recorded (hidden states, kwargs, attention output) gives exactly the cache that
    `with press(model): model(context)` gives (tested), at the cost of one forward. `timings`, if given, receives
    each press's replay time in seconds (scores, budgets and eviction: the compression's own cost).

    A press that scores after the prefill (KVzip reconstructs the context with more forwards: `needs_own_prefill`)
    cannot be replayed: it runs its own `with press(model)` prefill; its time is that prefill's minus the shared one.
    """
    from transformers import DynamicCache

    from ..models import decoder_layers
    from .decoding import keep_head_masks, prefill
    from .methods import needs_own_prefill

    records = {}

    def keep(module, args, kwargs, output):
        records[module.layer_idx] = (module, {k: v for k, v in kwargs.items() if k != "past_key_values"}, output)

    layers = decoder_layers(model)
    handles = [layer.self_attn.register_forward_hook(keep, with_kwargs=True) for layer in layers]
    t0 = time.perf_counter()
    try:
        full, last = prefill(model, context)
    finally:
        for h in handles:
            h.remove()
    shared_s = time.perf_counter() - t0
    base = model.model.language_model if hasattr(model.model, "language_model") else model.model
    caches = {}
    for name, press in presses.items():
        if press is not None and needs_own_prefill(press):
            t0 = time.perf_counter()
            cache, _ = prefill(model, context, press)
            keep_head_masks(cache, layers)
            if timings is not None:
                timings[name] = max(0.0, time.perf_counter() - t0 - shared_s)
            caches[name] = cache
            continue
        cache = DynamicCache()
        for i, layer in enumerate(full.layers):
            cache.update(layer.keys.clone(), layer.values.clone(), i)
        if press is not None:
            press.post_init_from_model(model)
            for layer in layers:
                layer.self_attn.rotary_emb = base.rotary_emb
            t0 = time.perf_counter()
            for i in sorted(records):
                module, kwargs, output = records[i]
                press.forward_hook(module, (), {**kwargs, "past_key_values": cache}, output)
            keep_head_masks(cache, layers)
            if timings is not None:
                timings[name] = time.perf_counter() - t0
        elif timings is not None:
            timings[name] = 0.0
        caches[name] = cache
    return caches, last


@torch.no_grad()
def score_sample(model, context: torch.Tensor, target: torch.Tensor, press=None, cache=None, last=None) -> dict:
    """Prefill `context` under `press` (or take a given compressed `cache` and last logits), teacher-force `target`.

    Returns NLL (nats/token), top-1 accuracy, kept fraction, cache bytes and the shortest/longest layer."""
    from .decoding import cache_bytes, cache_lengths, continue_forward, prefill

    if cache is None:
        cache, last = prefill(model, context, press)
    kept = cache_lengths(cache)
    size = cache_bytes(cache)
    t = context.shape[1]
    logits = last.unsqueeze(0)
    if target.shape[1] > 1:
        logits = torch.cat([logits, continue_forward(model, cache, target[:, :-1], t)])
    tgt = target[0].to(logits.device)
    nll = torch.nn.functional.cross_entropy(logits.float(), tgt).item()
    acc = (logits.argmax(-1) == tgt).float().mean().item()
    return {"nll": nll, "accuracy": acc, "kept_fraction": sum(kept) / (len(kept) * t), "cache_bytes": size,
            "min_layer_len": min(kept), "max_layer_len": max(kept), "layer_lengths": " ".join(map(str, kept))}


def run_kv_eval(model, tokenizer, cfg: KVEvalConfig, progress: bool = False):
    """Per-sample results (pandas DataFrame: task, method, keep, sample, nll, accuracy, kept_fraction, press_ms,
    layer_lengths (every layer's cached tokens, space-separated), ...)."""
    import pandas as pd

    cfg.validate()
    tokens = _text_tokens(tokenizer, cfg.text_file, cfg.model)
    rows = []
    for task in cfg.tasks:
        samples = make_samples(tokens, tokenizer.bos_token_id, cfg, task)
        for i, (ctx, tgt) in enumerate(samples):
            presses = {(m, k): make_press(m, k, cfg.window, cfg.cake_alpha)
                       for m in cfg.methods for k in ([1.0] if m == "full" else cfg.keep)}
            timings = {}
            caches, last = compressed_caches(model, ctx, presses, timings)
            for (method, keep), cache in caches.items():
                res = score_sample(model, ctx, tgt, cache=cache, last=last)
                rows.append({"task": task, "method": method, "keep": keep, "sample": i,
                             "press_ms": 1e3 * timings[(method, keep)], **res})
            if progress:
                print(f"{task}: sample {i + 1}/{len(samples)}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


@contextmanager
def random_weight_null(model, seed: int):
    """`model` as its random-weight null (seed `seed`, which must differ from the model's: `stats.null_seed`), drawn
    in place (`models.random_weights`: the weights wait in a temporary file and come back exactly on exit). No
    second model: on a real model a copy would add 1 x the weights' memory (measured: the Qwen2.5-0.5B shape in
    bfloat16 at 512 tokens peaked at 2.69 GB with a copy, over its 2.79 GB goal with the chapter around it)."""
    from ..models import random_weights

    with random_weights(model, seed) as m:
        yield m


def run_null_eval(model, tokenizer, cfg: KVEvalConfig, methods=None, progress: bool = False):
    """The same samples and budgets on the model's random-weight null (seed `stats.null_seed(cfg.seed)`), for the
    methods of `methods` (default: those registered with `runs_on_null`) that `cfg` runs: a win of TAPPA that also
    appears here is not evidence of its mechanism."""
    import dataclasses

    from ..stats import null_seed

    methods = null_methods() if methods is None else methods
    c = dataclasses.replace(cfg, methods=tuple(m for m in cfg.methods if m in methods))
    with random_weight_null(model, null_seed(cfg.seed)) as null:
        return run_kv_eval(null, tokenizer, c, progress=progress)


@torch.no_grad()
def length_profile(model, tokenizer, cfg: KVEvalConfig, lengths=(256, 512, 1024, 2048), n: int = 8):
    """Full-cache quality of both tasks after contexts of each length (how far the model's context reaches).

    The tasks are `cfg`'s (cont_len, seg_len, prefix_len, seed, text) at each length. The loss task is nested: the
    same `n` continuations at every length, each context the longest one cut from the left (BOS kept), so a change
    with length is the context's effect, not a different text (drawn per length, 6 samples gave 0.59, 0.97, 0.85,
    1.32 nats/token on tappa-tiny: the texts differed). The retrieval segment is planted at 3/4 of each length.
    Returns one row per (context_len, task): nll, accuracy (means over `n` samples) and
    accuracy_ci95.
    Lengths beyond the model's `max_position_embeddings` are skipped.
    """
    import dataclasses

    import pandas as pd

    tokens = _text_tokens(tokenizer, cfg.text_file, cfg.model)
    max_pos = getattr(model.config, "max_position_embeddings", None) or math.inf
    lengths = [int(L) for L in lengths if L + max(cfg.cont_len, cfg.seg_len) <= max_pos]
    rows = []
    longest = dataclasses.replace(cfg, seq_len=max(lengths, default=cfg.seq_len), samples=n, distance=None,
                                  methods=("full",))
    nested = make_samples(tokens, tokenizer.bos_token_id, longest, "loss") if "loss" in cfg.tasks else []
    for L in lengths:
        c = dataclasses.replace(cfg, seq_len=int(L), samples=n, distance=None, methods=("full",))
        for task in c.tasks:
            if task == "loss":  # the same targets at every length: each context is the longest one cut from the left
                pairs = [(torch.cat([ctx[:, :1], ctx[:, ctx.shape[1] - (L - 1):]], 1), tgt) for ctx, tgt in nested]
            else:
                pairs = make_samples(tokens, tokenizer.bos_token_id, c, task)
            for i, (ctx, tgt) in enumerate(pairs):
                r = score_sample(model, ctx, tgt)
                rows.append({"context_len": int(L), "task": task, "sample": i, "nll": r["nll"],
                             "accuracy": r["accuracy"]})
    df = pd.DataFrame(rows)
    g = df.groupby(["context_len", "task"])
    out = g.agg(nll=("nll", "mean"), accuracy=("accuracy", "mean"), n=("nll", "size")).reset_index()
    out["accuracy_ci95"] = g.accuracy.apply(lambda x: 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1
                                            else float("nan")).values
    return out


LEGACY_FILES = ("run_info.json", "samples.csv", "summary.csv", "comparisons.csv", "summary.json",
                "quality_vs_budget.png")


def _parse(argv):
    from ..preflight import MODEL_FORMS, Parser

    p = Parser(prog="python -m tappa_utils kv-eval", description=__doc__.split("\n\n")[0].replace("\n", " "),
               epilog="methods:\n" + describe())
    d = KVEvalConfig()
    p.add_argument("--model", default=d.model, help=MODEL_FORMS)
    p.add_argument("--device", default=d.device, help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default=d.dtype, help="float32, bfloat16 or float16")
    p.add_argument("--attn", default=d.attn, help="eager or sdpa")
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--keep", type=float, nargs="+", default=list(d.keep), help="fractions of the cache kept")
    p.add_argument("--methods", nargs="+", default=list(d.methods),
                   help=f"from {', '.join(METHODS)} (default: all; see the list below)")
    p.add_argument("--tasks", nargs="+", default=list(d.tasks), help=f"from {', '.join(TASKS)}")
    p.add_argument("--samples", type=int, default=d.samples)
    p.add_argument("--cont-len", type=int, default=d.cont_len)
    p.add_argument("--seg-len", type=int, default=d.seg_len)
    p.add_argument("--prefix-len", type=int, default=d.prefix_len)
    p.add_argument("--distance", type=int, default=d.distance, help="default: 3/4 of --seq-len")
    p.add_argument("--window", type=int, default=d.window)
    p.add_argument("--cake-alpha", type=float, default=d.cake_alpha)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--text-file", default=None,
                   help="text the samples are cut from (default: the model's built-in held-out text)")
    on_null = ", ".join(m for m in null_methods() if m != "full")
    p.add_argument("--null", action="store_true",
                   help=f"also run {on_null} on a random-weight null (results.json: the claims)")
    p.add_argument("--out", required=True, help="output folder (CSV, JSON, PNG)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: run, write samples.csv, summary.csv, comparisons.csv, summary.json, quality_vs_budget.png.

    Every input (options, model folder, device, text, --out) is checked before the model is loaded; the results are
    built in a temporary folder and swapped in whole at the end (`tappa_utils.io.ResultDir`).
    """
    from .. import preflight as pf
    from ..io import ResultDir
    from ..models import UnsupportedModelError, check_supported, load_model
    from ..results import save_checks

    def body() -> int:
        args = _parse(argv)
        cfg = KVEvalConfig(model=args.model, device=args.device, dtype=args.dtype, attn=args.attn,
                           seq_len=args.seq_len, keep=tuple(args.keep), methods=tuple(args.methods),
                           tasks=tuple(args.tasks), samples=args.samples, cont_len=args.cont_len,
                           seg_len=args.seg_len, prefix_len=args.prefix_len, distance=args.distance,
                           window=args.window, cake_alpha=args.cake_alpha, seed=args.seed, text_file=args.text_file)
        try:
            cfg.validate(OPTIONS)
        except ValueError as e:
            raise pf.UsageError(pf.one_line(e)) from e
        pf.check_device(cfg.device)
        pf.check_dtype(cfg.dtype)
        pf.check_text_file(cfg.text_file)
        info = pf.check_model(cfg.model)
        target = max(cfg.cont_len if "loss" in cfg.tasks else 0,
                     cfg.seg_len - cfg.prefix_len if "retrieval" in cfg.tasks else 0)
        if info.context_length and cfg.seq_len + target > info.context_length:
            raise pf.UsageError(f"--seq-len {cfg.seq_len} plus {target} target tokens exceeds the model's context "
                                f"length {info.context_length}; use --seq-len <= {info.context_length - target}")
        pf.check_out_dir(args.out, command="kv-eval", legacy=LEGACY_FILES, signature="run_info.json")
        tokenizer = pf.load_tokenizer(info)  # the text's length, before the weights load
        if tokenizer is not None:
            n, need = len(_text_tokens(tokenizer, cfg.text_file, cfg.model)), cfg.seq_len + cfg.cont_len
            if n < need:
                where = f"--text-file {cfg.text_file}" if cfg.text_file else "the built-in text"
                raise pf.UsageError(f"{where}: text too short: {n} tokens, a sample of --seq-len {cfg.seq_len} and "
                                    f"--cont-len {cfg.cont_len} needs {need}; give a longer text or a smaller "
                                    "--seq-len")
        with ResultDir(args.out, "kv-eval", legacy=LEGACY_FILES, signature="run_info.json") as tmp:
            model, tok = load_model(info.source, device=cfg.device, dtype=cfg.dtype, attn_implementation=cfg.attn)
            check_supported(model)
            t0 = time.perf_counter()
            samples = run_kv_eval(model, tok, cfg, progress=not args.quiet)
            null = run_null_eval(model, tok, cfg, progress=not args.quiet) if args.null else None
            write_results(tmp, cfg, samples, seconds=time.perf_counter() - t0, null_samples=null)
            save_checks(tmp, kv_checks(samples, seed=cfg.seed))
        if not args.quiet:
            print(summarize(samples).to_string(index=False))
        return 0

    return pf.run_cli("kv-eval", body, (UnsupportedModelError, ValueError, TypeError, FileNotFoundError))


