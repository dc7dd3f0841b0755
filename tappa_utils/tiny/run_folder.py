"""Reading a `train-tiny` run folder (or an export) before anything in it is touched.

Each reader checks what it reads and raises `UsageError` with one line naming the file, the problem and the fix, so
that `train-tiny` refuses a damaged folder before writing a byte: `train_args.json` (the architecture and the
phases), `training_log.jsonl` (one JSON record with an integer `step` per line), `ckpt.pt` (the training state:
types, and tensor shapes against the run's model) and the destination of `--export`.
"""
from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

from ..io import MARKER, foreign_entries, read_marker
from ..preflight import UsageError, one_line

ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
             "intermediate_size", "max_position_embeddings", "rope_theta")
CKPT_KEYS = ("model", "opt", "step", "rng", "torch_rng")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_like(x: Any) -> bool:
    """An int, or the string of one (train_args.json stores the options as strings)."""
    if _is_int(x):
        return True
    try:
        int(str(x))
        return True
    except ValueError:
        return False


def read_train_args(folder: Path, option: str) -> tuple[dict | None, list[dict]]:
    """The recorded architecture (None: not recorded) and phases of `folder/train_args.json` ((None, []) without one).

    The older flat form (one record of options, no "phases") is one phase from step 0.
    """
    path = Path(folder) / "train_args.json"
    if not path.exists():
        return None, []
    fix = f"restore it or give a new {option}"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{option} {path} cannot be read ({one_line(e)}); {fix}") from e
    if not isinstance(old, dict):
        raise UsageError(f"{option} {path} is not a train-tiny record (a JSON object); {fix}")
    arch = old.get("arch")
    if arch is not None:
        bad = [k for k in ARCH_KEYS if not (isinstance(arch, dict) and isinstance(arch.get(k), (int, float))
                                            and not isinstance(arch.get(k), bool) and arch[k] > 0)]
        if bad or set(arch) - set(ARCH_KEYS):
            raise UsageError(f"{option} {path}: its arch is not a tappa-tiny architecture (bad or missing "
                             f"{', '.join(bad or sorted(set(arch) - set(ARCH_KEYS)))}); {fix}")
        if arch["num_attention_heads"] % arch["num_key_value_heads"]:
            raise UsageError(f"{option} {path}: {arch['num_attention_heads']} query heads are not a multiple of "
                             f"{arch['num_key_value_heads']} KV heads; {fix}")
    phases = old.get("phases")
    if phases is None:
        phases = [{"start_step": 0, **{k: v for k, v in old.items() if k != "arch"}}] if old else []
    if not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
        raise UsageError(f"{option} {path}: phases is not a list of records; {fix}")
    for i, p in enumerate(phases):
        bad = [k for k in ("start_step", "batch", "seq_len")
               if (k in p or k == "start_step") and not _int_like(p.get(k))]
        if bad or int(str(p["start_step"])) < 0:
            raise UsageError(f"{option} {path}: phase {i} has no valid {', '.join(bad or ['start_step'])}; {fix}")
    return arch, phases


def read_log(folder: Path, option: str) -> list[tuple[int, str]]:
    """(step, line) of each record of `folder/training_log.jsonl` ([] without one).

    A last line without its newline that does not parse was cut short by a killed run: it is dropped (it was logged
    after the last checkpoint). Any other line that is not a JSON record with an integer step is refused.
    """
    path = Path(folder) / "training_log.jsonl"
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{option} {path} cannot be read ({one_line(e)}); restore it or give a new {option}") from e
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            if i == len(lines):  # no newline after it: a record cut short by a kill
                break
            raise UsageError(f"{option} {path}: line {i} is not JSON ({one_line(e)}); fix or delete that line") from e
        if not isinstance(rec, dict) or not _is_int(rec.get("step")) or rec["step"] < 0:
            raise UsageError(f"{option} {path}: line {i} is not a training record with an integer step; fix or "
                             "delete that line")
        out.append((rec["step"], line))
    return out


def load_checkpoint(path: Path, device) -> dict:
    """The training state saved at `path`, unpickled with `weights_only=True` (tensors and plain values only), its
    entries checked for their types (`check_state` checks them against a model)."""
    import torch

    fix = "delete it to start over, or give a new --out"
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(f"--out {path} holds objects other than tensors and plain values; refusing to unpickle it "
                         "(weights_only=True)") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UsageError(f"--out {path} cannot be read ({one_line(e)}); {fix}") from e
    if not isinstance(ck, dict) or not set(CKPT_KEYS) <= set(ck):
        raise UsageError(f"--out {path} is not a train-tiny checkpoint (keys {', '.join(CKPT_KEYS)}); {fix}")
    opt = ck["opt"]
    problems = {
        "model": isinstance(ck["model"], dict) and all(isinstance(v, torch.Tensor) for v in ck["model"].values()),
        "opt": isinstance(opt, dict) and isinstance(opt.get("state"), dict)
        and isinstance(opt.get("param_groups"), list) and len(opt["param_groups"]) in (1, 2)
        and all(isinstance(g, dict) for g in opt["param_groups"]),
        "step": _is_int(ck["step"]) and ck["step"] >= 0,
        "rng": isinstance(ck["rng"], dict),
        "torch_rng": isinstance(ck["torch_rng"], torch.Tensor) and ck["torch_rng"].dtype == torch.uint8,
    }
    bad = [k for k, ok in problems.items() if not ok]
    if bad:
        raise UsageError(f"--out {path} is not a train-tiny checkpoint (wrong type of {', '.join(bad)}); {fix}")
    return ck


def check_state(ck: dict, model, path: Path) -> None:
    """UsageError unless the checkpoint's weights have the names and shapes of `model`'s (the run's architecture)."""
    want = model.state_dict()
    got = ck["model"]
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shapes = [k for k in want if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
    if missing or extra or shapes:
        what = (f"{shapes[0]} is {tuple(got[shapes[0]].shape)}, the run's model has {tuple(want[shapes[0]].shape)}"
                if shapes else f"{len(missing)} weights missing, {len(extra)} unexpected")
        raise UsageError(f"--out {path} does not fit the run's architecture ({what}); delete it to start over, or "
                         "give a new --out")


def check_optimizer(opt) -> None:
    """ValueError unless the loaded AdamW moments have their parameters' shapes (`load_state_dict` does not check)."""
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if key != "step" and hasattr(value, "shape") and tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"optimizer {key} is {tuple(value.shape)}, its parameter {tuple(p.shape)}")


def _listing(entries: list[str]) -> str:
    return ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")


def check_run_dest(out: Path) -> None:
    """UsageError when `out` holds files but is not a run folder: neither our marker nor a checkpoint (a run of an
    older version) -- training there would rewrite its `training_log.jsonl` and `train_args.json`."""
    if not out.is_dir() or read_marker(out) is not None or (out / "ckpt.pt").is_file():
        return
    entries = sorted(os.listdir(out))
    if entries:
        raise UsageError(f"--out {out} is not a train-tiny run folder (no {MARKER} marker, no ckpt.pt; it holds "
                         f"{_listing(entries)}); choose a new or empty folder")


def check_export_dest(dest: Path, command: str, keep: tuple[str, ...]) -> None:
    """UsageError unless `dest` is new, empty, or an earlier export (with its marker; files in `keep`, the model
    card, may sit beside). A non-empty folder without the marker -- another model's `save_pretrained` folder --
    is never replaced."""
    if not dest.is_dir():
        return
    entries = sorted(os.listdir(dest))
    if entries and read_marker(dest) is None:
        raise UsageError(f"--export {dest} is not a tappa-tiny export (no {MARKER} marker; it holds "
                         f"{_listing(entries)}); choose a new or empty folder")
    foreign = foreign_entries(dest, command, keep=keep)
    if foreign:
        raise UsageError(f"--export {dest} holds files that {command} did not write ({_listing(foreign)}); choose a "
                         "new or empty folder")


def finite_record(rec: dict) -> dict:
    """`rec` with every non-finite float (NaN, inf) as None, so that the JSON written is valid JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
