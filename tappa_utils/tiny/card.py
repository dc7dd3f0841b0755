"""The default model's card: measurements of a model against a random-weight copy, and the issue's targets.

    python -m tappa_utils model-card [--model DIR] [--windows 16] [--seq-len 512] [--out DIR] [--previous JSON]

Measures, on held-out windows, the held-out loss (nats/byte) of the model and of a random-weight copy, every
head's metrics (`tappa_utils.metrics.analyze_heads`: sink mass, best diagonal offset and its mass, q-similarity
before/after RoPE, predictability), the copy test (loss on the second occurrence of a repeated random segment vs the
first), checks the targets and writes `MODEL_CARD.md` and `model_card.json` (as one result) into the model folder or
`--out`.

Previous version: the card keeps the figures of the model's previous version beside the new ones (a column in the
measurements and targets tables, and a section on what changed). They come from a frozen summary of the previous
card, `--previous JSON` (default for the shipped model: `PREVIOUS_CARD`, the card of tappa-tiny v2; `--previous
none` leaves it out). Before shipping a version N+1, freeze version N's card with
`python -c "from tappa_utils.tiny import card; card.freeze_card('.../model_card.json', '.../tappa-tiny-vN-card.json',
'tappa-tiny vN')"` and point `PREVIOUS_CARD` at it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..io import _to_builtin, atomic_write_json
from ..models import ASSETS
from .describe import architecture, corpus_summary, training_summary
from .measure import QSIM_COLUMNS, TARGET_IDS, CardConfig, measure, targets

PREVIOUS_CARD = ASSETS / "tappa-tiny-v2-card.json"  # the shipped model's previous version (see the module docstring)
FROZEN_KEYS = ("label", "generated", "command", "config", "architecture", "training", "trained", "random", "targets")


def frozen_summary(card: dict[str, Any], label: str) -> dict[str, Any]:
    """What a later card shows of this one: its label, configuration, architecture, training summary (phases and
    mixtures left out), measurements (trained and random) and targets (by id where they have one). No per-head table."""
    tr = card.get("training")
    if tr is not None:
        tr = {k: v for k, v in tr.items() if k not in ("phases", "mixtures", "args")}
    return {"label": label, **{k: card.get(k) for k in FROZEN_KEYS if k not in ("label", "training")},
            "training": tr, "notes": card.get("notes", "")}


def freeze_card(card_json: str | Path, out: str | Path, label: str) -> Path:
    """Write `frozen_summary` of the card at `card_json` to `out` (before a new version replaces it)."""
    import json

    return atomic_write_json(Path(out), _jsonable(frozen_summary(json.loads(Path(card_json).read_text()), label)))


def load_previous(path: str | Path | None) -> dict[str, Any] | None:
    """The frozen previous card at `path` (None: none). A file that is not a frozen card is a clear error."""
    import json

    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"previous card not found: {p}; pass --previous none to leave it out")
    prev = json.loads(p.read_text())
    missing = [k for k in ("label", "trained", "targets") if k not in prev]
    if missing:
        raise ValueError(f"{p} is not a frozen model card (missing {', '.join(missing)}); make one with "
                         "tappa_utils.tiny.card.freeze_card")
    return prev

def build_card(model, tokenizer, model_dir: str | Path | None, cfg: CardConfig, null_seed: int = 0,
               command: str = "", progress: bool = False, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the card shows, as a JSON-able dict (per-head tables as lists of records); `previous` (a frozen
    card, `load_previous`) is kept under "previous" for the old-vs-new columns."""
    from ..models import random_weight_copy
    from ..stats import null_seed as _null_seed

    null = random_weight_copy(model, seed=_null_seed(null_seed))
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
        "previous": previous,
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
         "Generated by `tappa_utils.tiny.card`; do not edit by hand. Regenerate with:", "",
         f"    {card['command']}", "",
         "## What it is", "",
         f"A {a['model_type']} causal LM ({', '.join(a['architectures'])}): {a['num_hidden_layers']} layers, "
         f"hidden size {a['hidden_size']}, MLP {a['intermediate_size']}, {a['num_attention_heads']} query heads / "
         f"{a['num_key_value_heads']} KV heads of dimension {a['head_dim']}, RoPE ({a['rope_type']}, base "
         f"{_f(a['rope_theta'], 0)}), context {a['max_position_embeddings']}, tied embeddings: "
         f"{a['tie_word_embeddings']}. **{a['parameters']:,} parameters.**", ""]
    tok = a["tokenizer"]
    if tok["byte_level"]:
        L += [f"Tokenizer: byte level ({tok['class']}), vocabulary {tok['vocab_size']} = 256 bytes + "
              f"`{tok['bos'][0]}`={tok['bos'][1]}, `{tok['eos'][0]}`={tok['eos'][1]}, "
              f"`{tok['pad'][0]}`={tok['pad'][1]}; "
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
              "(`python -m tappa_utils train-tiny`).",
              f"- Final training loss (mean of the last 20 steps): {_f(tr['final_train_loss'])} nats/byte."]
        if "eval_step" in tr:
            L += [f"- Last evaluation (step {tr['eval_step']}): held-out loss {_f(tr['eval_heldout_loss'])} nats/byte, "
                  f"copy ratio {_f(tr['eval_copy_ratio'])}. This is training's own check, on windows at random "
                  "offsets of all held-out files; the measurements below use consecutive windows of the shipped "
                  "held-out sample, other held-out text, so their held-out loss differs."]
        L += ["- Phases (every window starts with BOS):"]
        for ph in tr["phases"]:
            parts = "; ".join(f"`{m['name']}` {m['weight']:.0%}" for m in tr["mixtures"].get(ph["mixture"], []))
            resumed = f", resumed at {', '.join(map(str, ph['resumed_at']))}" if ph.get("resumed_at") else ""
            L += [f"  - steps {ph['start_step']}-{ph['end_step']} (schedule of {ph['planned_steps']} steps{resumed}): "
                  f"mixture `{ph['mixture']}` ({parts})"]
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
    prev = card.get("previous")
    pl = prev["label"] if prev else None
    L += ["## Measurements vs the same network with random weights", "",
          f"{cfg['windows']} held-out windows of {cfg['seq_len']} tokens (`tappa_utils.data.load_text()`, text never "
          f"trained on); copy test: {cfg['copy_windows']} windows of {cfg['copy_seq_len']} tokens with a random "
          f"{cfg['copy_seg_len']}-byte segment repeated (`tiny.corpus.copy_test_batch`, seed {cfg['seed']}). "
          f"q-similarity: `{cfg['qsim_column']}`; Spearman correlations are across heads with each layer's "
          "mean removed."
          + (f" The column *{pl}* repeats the previous version's card for comparison (its own windows and "
             "settings: see the section on the previous version)." if prev else ""), ""]
    head = "| measurement | this version | random weights |" + (f" {pl} |" if prev else "")
    L += [head, "|---|---|---|" + ("---|" if prev else "")]
    for label, get in measurement_rows(cfg):
        vals = [get(t), get(r)] + ([get(prev["trained"])] if prev else [])
        L += [f"| {label} | " + " | ".join(_f(v) for v in vals) + " |"]
    L += ["", "## Targets", "",
          "Goals fixed before training (registered as assumptions `default_model.T_*` in `tappa_utils.claims`: the "
          "later chapters presuppose them); *met* when the measured value satisfies the registered threshold.", "",
          "| target | wanted | measured | met |" + (f" {pl} |" if prev else "") + " note |",
          "|---|---|---|---|" + ("---|" if prev else "") + "---|"]
    old = _previous_targets(prev)
    for c in card["targets"]:
        op = ">=" if c["relation"] == "ge" else "<=" if c["relation"] == "le" else "~"
        before = ""
        if prev:
            o = old.get(c.get("id"))
            before = (f" {_f(o['measured'])} ({'met' if o['passed'] else 'missed'}) |" if o else " n/a |")
        L += [f"| {c['name']} | {op} {_f(c['predicted'], 2)} | {_f(c['measured'])} | "
              f"{'**met**' if c['passed'] else 'missed'} |{before} {c['note']} |"]
    n_met = sum(bool(c["passed"]) for c in card["targets"])
    L += ["", f"{n_met} of {len(card['targets'])} targets met.", "", "## Heads", "",
          "| layer | head | pattern | sink | diag offset | diag mass | q-sim pre | q-sim post | predictability | "
          "sink (random) | diag mass (random) | predictability (random) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for h in card["heads"]:
        L += [f"| {h['layer']} | {h['head']} | {h['pattern']} | {_f(h['sink_mass'])} | {h['diag_offset']} | "
              f"{_f(h['diag_mass'])} | {_f(h['q_sim_consecutive_pre'])} | {_f(h['q_sim_consecutive_post'])} | "
              f"{_f(h['predictability'])} | {_f(h['sink_mass_random'])} | {_f(h['diag_mass_random'])} | "
              f"{_f(h['predictability_random'])} |"]
    if prev:
        L += ["", *previous_section(card, prev)]
    L += ["", f"Machine-readable: `model_card.json`. Generated {card['generated']}.", ""]
    return "\n".join(L)


def measurement_rows(cfg: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, getter) of each row of the measurements table; a getter takes a card's "trained" / "random" dict
    (or a previous card's) and returns the value, None where that card has no such field."""
    def get(*path):
        def f(m):
            for k in path:
                if not isinstance(m, dict) or k not in m:
                    return None
                m = m[k]
            return m
        return f

    rows = [("held-out loss (nats/byte)", get("heldout_loss")),
            ("copy test: loss, first occurrence", get("copy", "copy_first")),
            ("copy test: loss, second occurrence", get("copy", "copy_second")),
            ("copy test: ratio second / first", get("copy", "copy_ratio")),
            (f"sink heads outside layer 0 (mass >= {cfg['sink_threshold']})",
             get("heads", "sink_heads_outside_layer0")),
            ("max first-token mass outside layer 0", get("heads", "max_sink_mass_outside_layer0")),
            (f"diagonal heads (mass >= {cfg['diag_threshold']}, any offset)", get("heads", "diagonal_heads")),
            ("max diagonal mass", get("heads", "max_diag_mass")),
            ("within-layer Spearman(q-sim, predictability)", get("heads", "spearman_qsim_predictability"))]
    rows += [(f"  ... with `{k}`", get("heads", "spearman_by_variant", k)) for k in QSIM_COLUMNS]
    rows += [("mean q-sim of patterned heads (sink or diagonal)", get("heads", "qsim_patterned")),
             ("mean q-sim of scattered heads", get("heads", "qsim_scattered")),
             ("mean predictability", get("heads", "mean_predictability"))]
    return rows


def _previous_targets(prev: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The previous card's targets by registered id (frozen cards from before the ids carry them in `id`)."""
    if not prev:
        return {}
    return {t["id"]: t for t in prev.get("targets", []) if t.get("id") in TARGET_IDS}


def previous_section(card: dict[str, Any], prev: dict[str, Any]) -> list[str]:
    """Markdown lines: the previous version's size, training and settings next to this one's."""
    a, pa = card["architecture"], prev.get("architecture") or {}
    tr, ptr = card.get("training") or {}, prev.get("training") or {}
    cfg, pcfg = card["config"], prev.get("config") or {}
    rows = [("parameters", a.get("parameters"), pa.get("parameters")),
            ("layers x hidden size", f"{a.get('num_hidden_layers')} x {a.get('hidden_size')}",
             f"{pa.get('num_hidden_layers')} x {pa.get('hidden_size')}"),
            ("context (max positions)", a.get("max_position_embeddings"), pa.get("max_position_embeddings")),
            ("training steps", tr.get("steps"), ptr.get("steps")),
            ("tokens seen", tr.get("tokens_seen"), ptr.get("tokens_seen")),
            ("training window (tokens, last phase)", tr.get("seq_len"), ptr.get("seq_len")),
            ("final training loss (nats/byte)", tr.get("final_train_loss"), ptr.get("final_train_loss")),
            ("card: held-out windows x tokens", f"{cfg.get('windows')} x {cfg.get('seq_len')}",
             f"{pcfg.get('windows')} x {pcfg.get('seq_len')}")]
    fmt = lambda v: f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else _f(v)
    out = [f"## Previous version: {prev['label']}", "",
           f"Its card was generated {prev.get('generated', 'n/a')} with `{prev.get('command', 'n/a')}`; the figures "
           f"are kept here (from `{PREVIOUS_CARD.name}` unless `--previous` named another file) so that the two "
           "versions can be compared.", "", f"| | this version | {prev['label']} |", "|---|---|---|"]
    out += [f"| {k} | {fmt(v)} | {fmt(w)} |" for k, v, w in rows]
    if prev.get("notes"):
        out += ["", f"Note on the previous figures: {prev['notes']}"]
    return out


def write_card(card: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write `MODEL_CARD.md` and `model_card.json` into out_dir as one result; returns both paths.

    Both are rendered and written to temporary files beside before either is replaced, so a card that cannot be
    rendered or serialised, a full disk or a signal leaves the previous pair as it was; then both are renamed into
    place together (`replace_together`), so the folder never holds one new file beside one old one."""
    out_dir = Path(out_dir)
    text = render_markdown(card)
    payload = json.dumps(_jsonable(card), indent=2, default=_to_builtin) + "\n"  # as io.atomic_write_json
    md, js = out_dir / "MODEL_CARD.md", out_dir / "model_card.json"
    replace_together({md: text, js: payload})
    return md, js


def replace_together(files: dict[Path, str]) -> None:
    """Write each text to a temporary file beside its path, then rename them all into place with SIGINT, SIGTERM
    and SIGHUP held back, so that Ctrl-C leaves either every old file or every new one. A signal that arrives
    during the renames is dropped: the command has then finished its work."""
    temps: dict[Path, Path] = {}
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
            temps[path] = Path(tmp)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
        with _signals_held():
            for path, tmp in temps.items():
                os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def _signals_held():
    """Within the block, SIGINT, SIGTERM and SIGHUP only set a flag (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    sigs = [getattr(signal, n) for n in names if hasattr(signal, n)]
    old = {s: signal.signal(s, lambda *_: None) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


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


def _positive(name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def main(argv: list[str] | None = None) -> int:
    """`python -m tappa_utils model-card`: measure, check the targets, write MODEL_CARD.md + model_card.json."""
    from .. import preflight as pf
    from ..models import DEFAULT_MODEL, UnsupportedModelError, load_model

    ap = pf.Parser(prog="python -m tappa_utils model-card", description=__doc__)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model folder (default: the shipped tappa-tiny)")
    ap.add_argument("--windows", type=_positive("--windows"), default=16, help="held-out windows (default 16)")
    ap.add_argument("--seq-len", type=_positive("--seq-len"), default=512, help="tokens per window (default 512)")
    ap.add_argument("--copy-windows", type=_positive("--copy-windows"), default=16, help="copy-test windows")
    ap.add_argument("--copy-seq-len", type=_positive("--copy-seq-len"), default=256, help="copy-test window length")
    ap.add_argument("--text-file", default=None, help="held-out text (default: the shipped sample)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the copy test and of the random-weight copy")
    ap.add_argument("--out", default=None,
                    help="folder for MODEL_CARD.md and model_card.json (default: the model folder)")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    ap.add_argument("--previous", default=None,
                    help="frozen card of the previous version shown beside the new figures (default for the shipped "
                         f"model: {PREVIOUS_CARD.name}; 'none' to leave it out)")

    def body() -> int:
        args = ap.parse_args(argv)
        pf.check_positive(args.seed, "--seed", minimum=0)
        if args.seq_len < 32:
            raise pf.UsageError(f"--seq-len {args.seq_len} is too short: the metrics skip the first 16 queries; "
                                "use >= 32")
        pf.check_device(args.device)
        pf.check_text_file(args.text_file)
        if args.previous is None:
            prev_path = PREVIOUS_CARD if args.model == DEFAULT_MODEL and PREVIOUS_CARD.is_file() else None
        else:
            prev_path = None if args.previous.lower() == "none" else args.previous
        previous = load_previous(prev_path)
        info = pf.check_model(args.model)
        pf.check_context(args.seq_len, info)
        pf.check_context(args.copy_seq_len, info, "--copy-seq-len")
        path = info.path
        out = pf.check_out_dir(args.out if args.out else path)  # two files written beside the others, nothing removed
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the whole text is tokenised at once: silence the length warning
        model, tokenizer = load_model(str(path), device=args.device)
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
        if args.previous is not None:
            command += f" --previous {args.previous}"
        card = build_card(model, tokenizer, path, cfg, null_seed=args.seed, command=command, previous=previous)
        md, js = write_card(card, out)
        met = sum(bool(c["passed"]) for c in card["targets"])
        print(f"wrote {md} and {js}: {met}/{len(card['targets'])} targets met; held-out loss "
              f"{card['trained']['heldout_loss']:.3f} vs random {card['random']['heldout_loss']:.3f} nats/byte")
        return 0

    return pf.run_cli("model-card", body, (UnsupportedModelError, ValueError, FileNotFoundError, KeyError))


if __name__ == "__main__":
    sys.exit(main())
