"""Describing a model for its card: architecture, parameter count, training log and phases, the corpus manifest."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .measure import is_byte_level


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
            "byte_level": is_byte_level(tokenizer),
            "vocab_size": len(tokenizer),
            "bos": [tokenizer.bos_token, tokenizer.bos_token_id],
            "eos": [tokenizer.eos_token, tokenizer.eos_token_id],
            "pad": [tokenizer.pad_token, tokenizer.pad_token_id],
        },
    }


def vocab_size(model_dir: str | Path) -> int:
    """The vocabulary size in a model folder's `config.json` (what a uniform guess's loss, ln V, is computed from)."""
    return int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])


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


# Settings that make a phase: a record that repeats them where the previous one ended is a resume of that phase.
_PHASE_SETTINGS = ("mixture", "batch", "seq_len", "lr", "steps", "warmup", "weight_decay", "decay", "schedule_from")


def training_phases(model_dir: str | Path, last_step: int | None = None) -> list[dict[str, Any]]:
    """Training phases from `train_args.json` (`{"arch", "phases": [...]}`, or the older flat form of one phase).

    Each phase: start and end step (the next phase's start, or `last_step`), batch, seq_len, lr, planned steps, the
    mixture name, tokens trained in it and `resumed_at` (steps where an identical phase was resumed). A phase
    restarted at the same step replaces the earlier record; a resume with the same settings continues its phase.
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
        end = (starts[i + 1] if i + 1 < len(starts)
               else (last_step if last_step is not None else int(ph.get("steps", start))))
        if last_step is not None:
            end = min(end, last_step)
        batch, seq = int(ph.get("batch", 0) or 0), int(ph.get("seq_len", 0) or 0)
        out.append({"start_step": start, "end_step": end, "batch": batch or None, "seq_len": seq or None,
                    "lr": float(ph["lr"]) if "lr" in ph else None,
                    "planned_steps": int(ph["steps"]) if "steps" in ph else None,
                    "mixture": ph.get("mixture", "base"), "tokens": max(0, end - start) * batch * seq,
                    "resumed_at": [], "_same": tuple(str(ph.get(k)) for k in _PHASE_SETTINGS)})
    merged: list[dict[str, Any]] = []
    for ph in out:
        prev = merged[-1] if merged else None
        if prev is not None and prev["_same"] == ph["_same"] and prev["end_step"] == ph["start_step"]:
            prev["resumed_at"].append(ph["start_step"])
            prev["end_step"], prev["tokens"] = ph["end_step"], prev["tokens"] + ph["tokens"]
        else:
            merged.append(ph)
    return [{k: v for k, v in ph.items() if k != "_same"} for ph in merged]


def mixture_description(name: str) -> list[dict[str, Any]]:
    """The components of a named mixture of `tappa_utils.tiny.corpus.MIXTURES`: name, weight, what the window is."""
    from .corpus import MIXTURES

    if name not in MIXTURES:
        return []
    return [{"name": n, "weight": float(w), "what": first_sentence(fn.__doc__ or "")} for n, w, fn in MIXTURES[name]]


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring, whole even when it runs over several lines.

    >>> first_sentence("Retrieval: a segment re-occurs at least a\\n    quarter of the window later.  Then more.")
    'Retrieval: a segment re-occurs at least a quarter of the window later.'
    """
    text = " ".join(doc.split())
    m = re.match(r"(.+?[.!?])(?:\s|$)", text)
    return m.group(1) if m else text


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
