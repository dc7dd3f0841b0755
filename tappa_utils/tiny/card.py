"""The default model's card: measurements of a model against a random-weight copy, and the issue's targets.

    python -m tappa_utils model-card [--model DIR] [--windows 16] [--seq-len 512] [--out DIR]

Measures, on held-out windows, the held-out loss (nats/byte) of the model and of a random-weight copy, every
head's metrics (`tappa_utils.metrics.analyze_heads`: sink mass, best diagonal offset and its mass, q-similarity
before/after RoPE, predictability), the copy test (loss on the second occurrence of a repeated random segment vs the
first), checks the targets and writes `MODEL_CARD.md` and `model_card.json` (atomically) into the model folder or
`--out`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..io import atomic_write_json, atomic_write_text
from ..results import Check
from ..time_series import within_layer_spearman

QSIM_COLUMNS = ("q_sim_consecutive_pre", "q_sim_consecutive_post", "q_sim_window_pre", "q_sim_window_post")
HEAD_COLUMNS = ("layer", "head", "sink_mass", "diag_offset", "diag_mass", *QSIM_COLUMNS, "predictability", "pattern")


@dataclass
class CardConfig:
    """What the card measures and the targets' thresholds (defaults: the issue's)."""

    windows: int = 16
    seq_len: int = 512
    copy_windows: int = 16
    copy_seq_len: int = 256
    copy_seg_len: int = 48
    seed: int = 0
    text_file: str | None = None
    qsim_column: str = "q_sim_consecutive_pre"  # the q-similarity variant the correlation target uses
    sink_threshold: float = 0.3
    min_sink_heads: int = 2
    diag_threshold: float = 0.3
    min_diag_heads: int = 4
    min_spearman: float = 0.5
    max_copy_ratio: float = 0.5


# ----------------------------------------------------------------------------------------------------------------
# measurements


@torch.no_grad()
def heldout_loss(model, input_ids: torch.Tensor, tokenizer=None) -> float:
    """Mean next-token loss in nats per byte of text over `input_ids` (N, T) (the first token is never predicted).

    With a byte-level tokenizer (or none) a token is a byte; otherwise the summed loss is divided by the number of
    UTF-8 bytes the predicted tokens decode to.
    """
    ids = input_ids.to(next(model.parameters()).device)
    logits = model(ids).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                            reduction="sum").item()
    n_tokens = ids[:, 1:].numel()
    n_bytes = n_tokens if tokenizer is None or _is_byte_level(tokenizer) else sum(
        len(tokenizer.decode(row[1:].tolist(), skip_special_tokens=True).encode("utf-8")) for row in input_ids)
    return nll / max(1, n_bytes)


def _is_byte_level(tokenizer) -> bool:
    """True for the shipped byte tokenizer (ids 0..255 are bytes)."""
    return tokenizer("a", add_special_tokens=False)["input_ids"] == [ord("a")] and len(tokenizer) <= 259


def copy_test_ids(tokenizer, text: str, n: int, seq_len: int, seg_len: int, seed: int = 0):
    """Copy-test batch (`corpus.copy_test_batch`) on the token ids of `text`, BOS set to the tokenizer's.

    Returns (ids (n, seq_len) LongTensor, first slice, second slice).
    """
    from .corpus import copy_test_batch

    data = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    if len(data) <= seq_len + 1:
        raise ValueError(f"text too short for the copy test: {len(data)} tokens, need more than {seq_len + 1}")
    if seq_len < 2 * seg_len + 56:
        raise ValueError(f"copy test: seq_len {seq_len} is too short for two segments of {seg_len} (need "
                         f">= {2 * seg_len + 56})")
    x, first, second = copy_test_batch(np.random.default_rng(seed), data, n, seq_len=seq_len, seg_len=seg_len)
    if tokenizer.bos_token_id is not None:
        x[:, 0] = tokenizer.bos_token_id
    return torch.from_numpy(x), first, second


@torch.no_grad()
def token_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """(N, T-1) next-token losses in nats: entry [:, i] is the loss of predicting token i + 1."""
    ids = ids.to(next(model.parameters()).device)
    logp = torch.log_softmax(model(ids).logits.float(), -1)
    return -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].cpu()


def copy_test(model, ids: torch.Tensor, first: slice, second: slice) -> dict[str, float]:
    """Loss on tokens 2.. of the first and of the second occurrence of the segment, and their ratio."""
    nll = token_losses(model, ids)
    l1 = nll[:, first.start : first.stop - 1].mean().item()
    l2 = nll[:, second.start : second.stop - 1].mean().item()
    return {"copy_first": l1, "copy_second": l2, "copy_ratio": l2 / l1}


def patterned_mask(df: pd.DataFrame, cfg: CardConfig) -> pd.Series:
    """Heads that are sink heads (sink mass >= threshold) or diagonal heads (diagonal mass >= threshold)."""
    return (df["sink_mass"] >= cfg.sink_threshold) | ((df["diag_mass"] >= cfg.diag_threshold) & df["diag_offset"].between(1, 8))


def summarize_heads(df: pd.DataFrame, cfg: CardConfig) -> dict[str, Any]:
    """Counts and correlations over a per-head table (what the targets are judged on)."""
    outside0 = df[df["layer"] != df["layer"].min()] if len(df) else df
    diag = (df["diag_mass"] >= cfg.diag_threshold) & df["diag_offset"].between(1, 8)
    pat = patterned_mask(df, cfg)
    return {
        "n_heads": int(len(df)),
        "sink_heads_outside_layer0": int((outside0["sink_mass"] >= cfg.sink_threshold).sum()),
        "max_sink_mass_outside_layer0": float(outside0["sink_mass"].max()) if len(outside0) else float("nan"),
        "mean_sink_mass": float(df["sink_mass"].mean()),
        "diagonal_heads": int(diag.sum()),
        "max_diag_mass": float(df["diag_mass"].max()),
        "spearman_qsim_predictability": within_layer_spearman(df, cfg.qsim_column, "predictability"),
        "spearman_by_variant": {c: within_layer_spearman(df, c, "predictability") for c in QSIM_COLUMNS if c in df},
        "n_patterned": int(pat.sum()),
        "qsim_patterned": float(df.loc[pat, cfg.qsim_column].mean()) if pat.any() else float("nan"),
        "qsim_scattered": float(df.loc[~pat, cfg.qsim_column].mean()) if (~pat).any() else float("nan"),
        "mean_predictability": float(df["predictability"].mean()),
        "patterns": {k: int(v) for k, v in df["pattern"].value_counts().items()} if "pattern" in df else {},
    }


def targets(trained: dict[str, Any], null: dict[str, Any], cfg: CardConfig) -> list[Check]:
    """The issue's four targets as `Check`s (measured on the trained model; the null's value in the note)."""
    t, n = trained, null
    return [
        Check("sink heads outside layer 0 (first-token mass >= %.2f)" % cfg.sink_threshold, cfg.min_sink_heads,
              t["heads"]["sink_heads_outside_layer0"], 0, "ge",
              note=f"random weights: {n['heads']['sink_heads_outside_layer0']}"),
        Check("diagonal heads (mass >= %.2f at an offset 1..8)" % cfg.diag_threshold, cfg.min_diag_heads,
              t["heads"]["diagonal_heads"], 0, "ge", note=f"random weights: {n['heads']['diagonal_heads']}"),
        Check(f"within-layer Spearman({cfg.qsim_column}, predictability)", cfg.min_spearman,
              t["heads"]["spearman_qsim_predictability"], 0, "ge",
              note=f"random weights: {n['heads']['spearman_qsim_predictability']:.3f}"),
        Check("copy test: second / first occurrence loss", cfg.max_copy_ratio, t["copy"]["copy_ratio"], 0, "le",
              note=f"random weights: {n['copy']['copy_ratio']:.3f}"),
    ]


def measure(model, tokenizer, cfg: CardConfig, progress: bool = False) -> dict[str, Any]:
    """Measure one model: held-out loss, per-head metrics table (`heads_table`), head summary, copy test."""
    from ..data import load_text, token_windows
    from ..metrics import MetricConfig, analyze_heads

    text = load_text(text_file=cfg.text_file)
    ids = token_windows(tokenizer, text, cfg.seq_len, cfg.windows)
    cids, first, second = copy_test_ids(tokenizer, text, cfg.copy_windows, cfg.copy_seq_len, cfg.copy_seg_len, cfg.seed)
    t0 = time.time()
    table = analyze_heads(model, ids, MetricConfig(), progress=progress)
    return {
        "heldout_loss": heldout_loss(model, ids, tokenizer),
        "copy": copy_test(model, cids, first, second),
        "heads_table": table,
        "heads": summarize_heads(table, cfg),
        "seconds": time.time() - t0,
    }


# ----------------------------------------------------------------------------------------------------------------
# what the model is, how it was trained


def parameter_count(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def architecture(model, tokenizer) -> dict[str, Any]:
    """Architecture fields from the config, the parameter count and a description of the tokenizer."""
    c = model.config
    rope = getattr(c, "rope_parameters", None) or {}
    return {
        "model_type": c.model_type,
        "architectures": list(getattr(c, "architectures", None) or [type(model).__name__]),
        "num_hidden_layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": getattr(c, "intermediate_size", None),
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": getattr(c, "num_key_value_heads", c.num_attention_heads),
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        "vocab_size": c.vocab_size,
        "rope_type": rope.get("rope_type", "default"),
        "rope_theta": rope.get("rope_theta", getattr(c, "rope_theta", None)),
        "max_position_embeddings": getattr(c, "max_position_embeddings", None),
        "tie_word_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
        "parameters": parameter_count(model),
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "byte_level": _is_byte_level(tokenizer),
            "vocab_size": len(tokenizer),
            "bos": [tokenizer.bos_token, tokenizer.bos_token_id],
            "eos": [tokenizer.eos_token, tokenizer.eos_token_id],
            "pad": [tokenizer.pad_token, tokenizer.pad_token_id],
        },
    }


def read_training_log(model_dir: str | Path) -> pd.DataFrame:
    """`training_log.jsonl` of a model folder as a DataFrame (one row per step; eval columns NaN between evals).

    Empty DataFrame when the folder has no log (a reader's model).
    """
    path = Path(model_dir) / "training_log.jsonl"
    if not path.is_file():
        return pd.DataFrame()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows)
    if "step" in df:
        df = df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)
    return df


def training_phases(model_dir: str | Path, last_step: int | None = None) -> list[dict[str, Any]]:
    """Training phases from `train_args.json` (`{"arch", "phases": [...]}`, or the older flat form of one phase).

    Each phase: start and end step (the next phase's start, or `last_step`), batch, seq_len, lr, planned steps, the
    mixture name and tokens trained in it. A phase restarted at the same step replaces the earlier record.
    """
    path = Path(model_dir) / "train_args.json"
    if not path.is_file():
        return []
    raw = json.loads(path.read_text())
    phases = raw.get("phases") or [{"start_step": 0, **{k: v for k, v in raw.items() if k != "arch"}}]
    by_start: dict[int, dict] = {}
    for ph in phases:
        by_start[int(ph.get("start_step", 0))] = ph
    starts = sorted(by_start)
    out = []
    for i, start in enumerate(starts):
        ph = by_start[start]
        end = starts[i + 1] if i + 1 < len(starts) else (last_step if last_step is not None else int(ph.get("steps", start)))
        if last_step is not None:
            end = min(end, last_step)
        batch, seq = int(ph.get("batch", 0) or 0), int(ph.get("seq_len", 0) or 0)
        out.append({"start_step": start, "end_step": end, "batch": batch or None, "seq_len": seq or None,
                    "lr": float(ph["lr"]) if "lr" in ph else None,
                    "planned_steps": int(ph["steps"]) if "steps" in ph else None,
                    "mixture": ph.get("mixture", "base"), "tokens": max(0, end - start) * batch * seq})
    return out


def mixture_description(name: str) -> list[dict[str, Any]]:
    """The components of a named mixture of `tappa_utils.corpus.MIXTURES`: name, weight, what the window is."""
    from .corpus import MIXTURES

    if name not in MIXTURES:
        return []
    return [{"name": n, "weight": float(w), "what": (fn.__doc__ or "").strip().splitlines()[0]} for n, w, fn in MIXTURES[name]]


def training_summary(model_dir: str | Path) -> dict[str, Any] | None:
    """Steps, tokens seen, phases and their mixtures, final train loss, last held-out loss / copy ratio; None
    without a training log."""
    model_dir = Path(model_dir)
    log = read_training_log(model_dir)
    if log.empty:
        return None
    last = log.iloc[-1]
    steps = int(last["step"])
    phases = training_phases(model_dir, steps)
    evals = log.dropna(subset=["heldout_loss"]) if "heldout_loss" in log else log.iloc[:0]
    final = phases[-1] if phases else {}
    out = {
        "steps": steps,
        "planned_steps": final.get("planned_steps"),
        "batch": final.get("batch"),
        "seq_len": final.get("seq_len"),
        "tokens_seen": sum(p["tokens"] for p in phases) if phases and all(p["batch"] and p["seq_len"] for p in phases)
        else None,
        "final_train_loss": float(log["loss"].tail(20).mean()),
        "lr_peak": final.get("lr"),
        "phases": phases,
        "mixtures": {p["mixture"]: mixture_description(p["mixture"]) for p in phases},
    }
    if len(evals):
        e = evals.iloc[-1]
        out |= {"eval_step": int(e["step"]), "eval_heldout_loss": float(e["heldout_loss"]),
                "eval_copy_ratio": float(e["copy_ratio"]) if "copy_ratio" in e else None}
    return out


def corpus_summary(model_dir: str | Path) -> dict[str, Any] | None:
    """Files and bytes per split from `corpus_manifest.json`, and the sha256 of that manifest; None without one."""
    path = Path(model_dir) / "corpus_manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    df = pd.DataFrame(manifest)
    by = df.groupby("split").agg(files=("file", "count"), bytes=("bytes", "sum"))
    return {
        "files": int(len(df)),
        "bytes": int(df["bytes"].sum()),
        "by_split": {k: {"files": int(v["files"]), "bytes": int(v["bytes"])} for k, v in by.iterrows()},
        "manifest_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


# ----------------------------------------------------------------------------------------------------------------
# the card


def build_card(model, tokenizer, model_dir: str | Path | None, cfg: CardConfig, null_seed: int = 0,
               command: str = "", progress: bool = False) -> dict[str, Any]:
    """Everything the card shows, as a JSON-able dict (per-head tables as lists of records)."""
    from ..models import random_weight_copy

    null = random_weight_copy(model, seed=null_seed)
    trained_m, null_m = measure(model, tokenizer, cfg, progress), measure(null, tokenizer, cfg, progress)
    checks = targets(trained_m, null_m, cfg)
    heads = trained_m["heads_table"].merge(null_m["heads_table"], on=["layer", "head"], suffixes=("", "_random"))
    strip = lambda m: {k: v for k, v in m.items() if k != "heads_table"}
    return {
        "model_dir": str(model_dir) if model_dir is not None else None,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "config": asdict(cfg),
        "architecture": architecture(model, tokenizer),
        "training": training_summary(model_dir) if model_dir is not None else None,
        "corpus": corpus_summary(model_dir) if model_dir is not None else None,
        "trained": strip(trained_m),
        "random": strip(null_m),
        "targets": [c.to_dict() for c in checks],
        "heads": heads.to_dict(orient="records"),
    }


def _f(x, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{nd}f}"
    return str(x)


def render_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown: what the model is, how it was trained, the corpus, measurements vs random, targets."""
    a, tr, co, cfg = card["architecture"], card["training"], card["corpus"], card["config"]
    t, r = card["trained"], card["random"]
    name = Path(card["model_dir"]).name if card["model_dir"] else "model"
    L = [f"# {name}: model card", "",
         "Generated by `tappa_utils.model_card`; do not edit by hand. Regenerate with:", "",
         f"    {card['command']}", "",
         "## What it is", "",
         f"A {a['model_type']} causal LM ({', '.join(a['architectures'])}): {a['num_hidden_layers']} layers, hidden size "
         f"{a['hidden_size']}, MLP {a['intermediate_size']}, {a['num_attention_heads']} query heads / "
         f"{a['num_key_value_heads']} KV heads of dimension {a['head_dim']}, RoPE ({a['rope_type']}, base "
         f"{_f(a['rope_theta'], 0)}), context {a['max_position_embeddings']}, tied embeddings: "
         f"{a['tie_word_embeddings']}. **{a['parameters']:,} parameters.**", ""]
    tok = a["tokenizer"]
    if tok["byte_level"]:
        L += [f"Tokenizer: byte level ({tok['class']}), vocabulary {tok['vocab_size']} = 256 bytes + "
              f"`{tok['bos'][0]}`={tok['bos'][1]}, `{tok['eos'][0]}`={tok['eos'][1]}, `{tok['pad'][0]}`={tok['pad'][1]}; "
              "encoding prepends BOS, so `ids == [BOS] + list(text.encode('utf-8'))`. One token is one byte, so "
              "losses are in nats per byte.", ""]
    else:
        L += [f"Tokenizer: {tok['class']}, {tok['vocab_size']} tokens (BOS {tok['bos']}).", ""]
    L += ["## How it was trained", ""]
    if tr is None:
        L += ["No `training_log.jsonl` in the model folder: training details unknown.", ""]
    else:
        tokens = f"{tr['tokens_seen']:,}" if tr["tokens_seen"] else "n/a"
        L += [f"- {tr['steps']} optimizer steps, batch {tr['batch']} x {tr['seq_len']} tokens: **{tokens} tokens "
              f"seen**; AdamW, peak learning rate {tr['lr_peak']}, warm-up then cosine decay "
              "(`python -m tappa_utils.train_tiny`).",
              f"- Final training loss (mean of the last 20 steps): {_f(tr['final_train_loss'])} nats/byte."]
        if "eval_step" in tr:
            L += [f"- Last evaluation (step {tr['eval_step']}): held-out loss {_f(tr['eval_heldout_loss'])} nats/byte, "
                  f"copy ratio {_f(tr['eval_copy_ratio'])}."]
        L += ["- Phases (every window starts with BOS):"]
        for ph in tr["phases"]:
            parts = "; ".join(f"`{m['name']}` {m['weight']:.0%}" for m in tr["mixtures"].get(ph["mixture"], []))
            L += [f"  - steps {ph['start_step']}-{ph['end_step']} (schedule of {ph['planned_steps']} steps): mixture "
                  f"`{ph['mixture']}` ({parts})"]
        L += ["", "Window kinds:", ""]
        kinds = {m["name"]: m["what"] for mix in tr["mixtures"].values() for m in mix}
        L += [f"- `{k}`: {v}" for k, v in kinds.items()]
        L += [""]
    if co is not None:
        splits = ", ".join(f"{k}: {v['files']} files, {v['bytes']:,} bytes" for k, v in co["by_split"].items())
        L += ["## Corpus", "",
              f"Python's standard library `.py` files (present on every machine with Python; split by a hash of the "
              f"file name): {co['files']} files, {co['bytes']:,} bytes ({splits}). The full list with each file's "
              f"sha256 is `corpus_manifest.json` beside this card; its sha256 is `{co['manifest_sha256']}`.", ""]
    L += ["## Measurements vs the same network with random weights", "",
          f"{cfg['windows']} held-out windows of {cfg['seq_len']} tokens (`tappa_utils.data.load_text()`, text never "
          f"trained on); copy test: {cfg['copy_windows']} windows of {cfg['copy_seq_len']} tokens with a random "
          f"{cfg['copy_seg_len']}-byte segment repeated (`corpus.copy_test_batch`, seed {cfg['seed']}). "
          f"q-similarity: `{cfg['qsim_column']}`; Spearman correlations are across heads with each layer's mean removed.",
          "", "| measurement | trained | random weights |", "|---|---|---|"]
    th, rh = t["heads"], r["heads"]
    rows = [("held-out loss (nats/byte)", t["heldout_loss"], r["heldout_loss"]),
            ("copy test: loss, first occurrence", t["copy"]["copy_first"], r["copy"]["copy_first"]),
            ("copy test: loss, second occurrence", t["copy"]["copy_second"], r["copy"]["copy_second"]),
            ("copy test: ratio second / first", t["copy"]["copy_ratio"], r["copy"]["copy_ratio"]),
            (f"sink heads outside layer 0 (mass >= {cfg['sink_threshold']})", th["sink_heads_outside_layer0"],
             rh["sink_heads_outside_layer0"]),
            ("max first-token mass outside layer 0", th["max_sink_mass_outside_layer0"], rh["max_sink_mass_outside_layer0"]),
            (f"diagonal heads (mass >= {cfg['diag_threshold']}, offset 1..8)", th["diagonal_heads"], rh["diagonal_heads"]),
            ("max diagonal mass", th["max_diag_mass"], rh["max_diag_mass"]),
            ("within-layer Spearman(q-sim, predictability)", th["spearman_qsim_predictability"],
             rh["spearman_qsim_predictability"])]
    rows += [(f"  ... with `{k}`", v, rh["spearman_by_variant"].get(k)) for k, v in th["spearman_by_variant"].items()]
    rows += [("mean q-sim of patterned heads (sink or diagonal)", th["qsim_patterned"], rh["qsim_patterned"]),
             ("mean q-sim of scattered heads", th["qsim_scattered"], rh["qsim_scattered"]),
             ("mean predictability", th["mean_predictability"], rh["mean_predictability"])]
    L += [f"| {k} | {_f(a_)} | {_f(b_)} |" for k, a_, b_ in rows]
    L += ["", "## Targets", "", "| target | wanted | measured | met | note |", "|---|---|---|---|---|"]
    for c in card["targets"]:
        op = ">=" if c["relation"] == "ge" else "<=" if c["relation"] == "le" else "~"
        L += [f"| {c['name']} | {op} {_f(c['predicted'], 2)} | {_f(c['measured'])} | "
              f"{'**met**' if c['passed'] else 'missed'} | {c['note']} |"]
    n_met = sum(c["passed"] for c in card["targets"])
    L += ["", f"{n_met} of {len(card['targets'])} targets met.", "", "## Heads", "",
          "| layer | head | pattern | sink | diag offset | diag mass | q-sim pre | q-sim post | predictability | "
          "sink (random) | diag mass (random) | predictability (random) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for h in card["heads"]:
        L += [f"| {h['layer']} | {h['head']} | {h['pattern']} | {_f(h['sink_mass'])} | {h['diag_offset']} | "
              f"{_f(h['diag_mass'])} | {_f(h['q_sim_consecutive_pre'])} | {_f(h['q_sim_consecutive_post'])} | "
              f"{_f(h['predictability'])} | {_f(h['sink_mass_random'])} | {_f(h['diag_mass_random'])} | "
              f"{_f(h['predictability_random'])} |"]
    L += ["", f"Machine-readable: `model_card.json`. Generated {card['generated']}.", ""]
    return "\n".join(L)


def write_card(card: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write `MODEL_CARD.md` and `model_card.json` into out_dir atomically; returns both paths."""
    out_dir = Path(out_dir)
    md = atomic_write_text(out_dir / "MODEL_CARD.md", render_markdown(card))
    js = atomic_write_json(out_dir / "model_card.json", _jsonable(card))
    return md, js


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return None if math.isnan(x) else x
    return x


# ----------------------------------------------------------------------------------------------------------------
# command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, status 2
        print(f"error: model-card: {message}", file=sys.stderr)
        raise SystemExit(2)


def _positive(name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}")
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def main(argv: list[str] | None = None) -> int:
    """`python -m tappa_utils model-card`: measure, check the targets, write MODEL_CARD.md + model_card.json."""
    from ..models import DEFAULT_MODEL, context_length, load_model, resolve_model_path

    ap = _Parser(prog="python -m tappa_utils model-card", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model folder (default: the shipped tappa-tiny)")
    ap.add_argument("--windows", type=_positive("--windows"), default=16, help="held-out windows (default 16)")
    ap.add_argument("--seq-len", type=_positive("--seq-len"), default=512, help="tokens per window (default 512)")
    ap.add_argument("--copy-windows", type=_positive("--copy-windows"), default=16, help="copy-test windows")
    ap.add_argument("--copy-seq-len", type=_positive("--copy-seq-len"), default=256, help="copy-test window length")
    ap.add_argument("--text-file", default=None, help="held-out text (default: the shipped sample)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the copy test and of the random-weight copy")
    ap.add_argument("--out", default=None, help="folder for MODEL_CARD.md and model_card.json (default: the model folder)")
    ap.add_argument("--device", default="cpu")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad option (2, one line already printed)
        return int(e.code or 0)

    try:
        path = Path(resolve_model_path(args.model))
        if not (path / "config.json").is_file():
            raise ValueError(f"no model folder at {args.model!r} (config.json missing); pass --model DIR")
        if args.seq_len < 32:
            raise ValueError(f"--seq-len {args.seq_len} is too short: the metrics skip the first 16 queries; use >= 32")
        if args.text_file is not None and not Path(args.text_file).is_file():
            raise ValueError(f"--text-file {args.text_file!r} does not exist")
        out = Path(args.out) if args.out else path
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {str(out)!r} exists and is not a folder")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the whole text is tokenised at once: silence the length warning
        model, tokenizer = load_model(str(path), device=args.device)
        if args.seq_len > context_length(model):
            raise ValueError(f"--seq-len {args.seq_len} exceeds the model's context {context_length(model)}")
        cfg = CardConfig(windows=args.windows, seq_len=args.seq_len, copy_windows=args.copy_windows,
                         copy_seq_len=args.copy_seq_len, seed=args.seed, text_file=args.text_file)
        command = "python -m tappa_utils model-card" + (f" --model {args.model}" if args.model != DEFAULT_MODEL else "")
        command += f" --windows {args.windows} --seq-len {args.seq_len}"
        if args.copy_windows != 16 or args.copy_seq_len != 256:
            command += f" --copy-windows {args.copy_windows} --copy-seq-len {args.copy_seq_len}"
        if args.seed:
            command += f" --seed {args.seed}"
        if args.text_file:
            command += f" --text-file {args.text_file}"
        if args.out:
            command += f" --out {args.out}"
        card = build_card(model, tokenizer, path, cfg, null_seed=args.seed, command=command)
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        msg = str(e).replace("\n", " ")
        print(f"error: model-card: {msg}", file=sys.stderr)
        return 2
    md, js = write_card(card, out)
    met = sum(c["passed"] for c in card["targets"])
    print(f"wrote {md} and {js}: {met}/{len(card['targets'])} targets met; held-out loss "
          f"{card['trained']['heldout_loss']:.3f} vs random {card['random']['heldout_loss']:.3f} nats/byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
