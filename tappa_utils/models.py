"""Loading models: `tappa-tiny` (shipped), any Hugging Face causal LM, random-weight *shapes* of public models, and
the random-weight null.

Supported for capture and analysis: the Llama, Mistral, Qwen2 and Qwen3 families (separate q/k/v projections,
rotate-half RoPE). Anything else raises `UnsupportedModelError` naming the architecture and the supported ones.

Shapes: `random_model("qwen2.5-0.5b")` (or `load_model("random:qwen2.5-0.5b")`) builds a model with the exact
architecture of a public checkpoint and random weights, with the byte tokenizer; nothing is downloaded. It has
the real model's tensors, memory and cost, so chapters and commands can be timed and sized on it (not its
patterns: those are the random-weight null's).

Random weights, whether for a shape or for the null, follow `transformers`' own initialisation
(`PreTrainedModel._init_weights`): Linear and Embedding weights N(0, initializer_range), biases 0, norm weights 1,
the embedding's padding row 0. Each parameter is drawn from its own generator, seeded from (seed, purpose,
parameter name), so the same seed gives the same weights whichever way they are built (`random_weight_copy`
builds a second model, `random_weights` draws them into the model itself and restores its weights on exit) and a
shape and a null never share weights even with equal seeds.
"""
from __future__ import annotations

import copy
import json
import os
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .packaged import ensure_converted, is_packaged_name, packaged

DEFAULT_MODEL = "tappa-tiny"
ASSETS = Path(__file__).parent / "assets"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
RANDOM_PREFIX = "random:"

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class UnsupportedModelError(ValueError):
    """The model's architecture is not one that `tappa_utils` can capture."""


class WeightsMismatchError(ValueError):
    """A model's weights do not match its config (a tensor missing, unexpected or of another shape; layer count)."""


class InsufficientMemoryError(ValueError):
    """A model's weights would not fit in the memory available (checked before anything is allocated)."""


class NonFiniteError(ValueError):
    """NaN or infinity in a model's weights or in what `capture` recorded (named by parameter, or layer and head)."""


# ---------------------------------------------------------------------------------------------------------------
# public configs (shapes)
# ---------------------------------------------------------------------------------------------------------------

# The architecture fields of each checkpoint's config.json on the Hugging Face hub (repo id in "source"), written
# from the published files as remembered (nothing is downloaded here). Token ids are those of the real tokenizer;
# `random_model` replaces them by the byte tokenizer's (BOS 256, EOS 257) because it ships that tokenizer instead.
# "params" is the real checkpoint's total parameter count (tied embeddings counted once; the model cards give it
# rounded, in the comment), checked against the built model in tests/test_models.py.
SHAPES: dict[str, dict[str, Any]] = {
    "llama3.2-1b": {
        "source": "meta-llama/Llama-3.2-1B",
        "params": 1_235_814_400,  # model card: 1.23B
        "config": dict(
            model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64, hidden_act="silu",
            max_position_embeddings=131072, initializer_range=0.02, rms_norm_eps=1e-5, tie_word_embeddings=True,
            attention_bias=False, mlp_bias=False, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192},
            bos_token_id=128000, eos_token_id=128001),
    },
    "llama3.1-8b": {
        "source": "meta-llama/Llama-3.1-8B",
        "params": 8_030_261_248,  # model card: 8B
        "config": dict(
            model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_act="silu",
            max_position_embeddings=131072, initializer_range=0.02, rms_norm_eps=1e-5, tie_word_embeddings=False,
            attention_bias=False, mlp_bias=False, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192},
            bos_token_id=128000, eos_token_id=128001),
    },
    "qwen2.5-0.5b": {
        "source": "Qwen/Qwen2.5-0.5B",
        "params": 494_032_768,  # model card: 0.49B, 0.36B non-embedding
        "config": dict(
            model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
            initializer_range=0.02, rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=1000000.0,
            use_sliding_window=False, sliding_window=32768, max_window_layers=24,
            bos_token_id=151643, eos_token_id=151643),  # q/k/v biases: built into Qwen2Attention
    },
    "qwen3-0.6b": {
        "source": "Qwen/Qwen3-0.6B",
        "params": 596_049_920,  # model card: 0.6B, 0.44B non-embedding
        "config": dict(
            model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128, hidden_act="silu",
            max_position_embeddings=40960, initializer_range=0.02, rms_norm_eps=1e-6, tie_word_embeddings=True,
            attention_bias=False, rope_theta=1000000.0, use_sliding_window=False, sliding_window=None,
            max_window_layers=28, bos_token_id=151643, eos_token_id=151645),  # q_norm/k_norm: built into Qwen3
    },
}
_ALIASES = {v["source"].lower(): k for k, v in SHAPES.items()}


def byte_tokenizer():
    """The byte-level tokenizer shipped with the default model (256 bytes + BOS/EOS/PAD), loaded offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ASSETS / DEFAULT_MODEL)


def random_seed(name: str) -> int:
    """The draw of a random-weight model name: 'random:tappa-tiny@7' -> 7, 0 without '@' (ValueError when the part
    after '@' is not a non-negative integer).

    >>> random_seed("random:tappa-tiny@7"), random_seed("random:tappa-tiny")
    (7, 0)
    """
    _, at, seed = str(name).partition("@")
    if not at:
        return 0
    if not seed.isdigit():
        raise ValueError(f"{name!r}: the draw after '@' must be a non-negative integer, e.g. random:tappa-tiny@3")
    return int(seed)


def shape_name(name: str) -> str:
    """Canonical shape name from 'qwen2.5-0.5b', 'random:qwen2.5-0.5b' (or its draw 'random:qwen2.5-0.5b@3') or
    'Qwen/Qwen2.5-0.5B' (case-insensitive)."""
    key = str(name).lower().removeprefix(RANDOM_PREFIX).partition("@")[0]
    key = _ALIASES.get(key, key)
    if key == DEFAULT_MODEL:  # the default model's own architecture with random weights: the null book
        return key
    if key not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; available: {', '.join([DEFAULT_MODEL, *SHAPES])} "
                         "(or their hub ids)")
    return key


def shape_facts(name: str) -> tuple[str, int, int]:
    """(model_type, context length, decoder layers) of a shape, without building anything."""
    key = shape_name(name)
    if key == DEFAULT_MODEL:
        cfg = shape_config(key)
        return cfg.model_type, int(cfg.max_position_embeddings), int(cfg.num_hidden_layers)
    cfg = SHAPES[key]["config"]
    return cfg["model_type"], int(cfg.get("max_position_embeddings") or 0), int(cfg["num_hidden_layers"])


def shape_config(name: str):
    """The `transformers` config of a shape (public architecture fields; the byte tokenizer's special ids)."""
    from transformers import AutoConfig

    key = shape_name(name)
    if key == DEFAULT_MODEL:
        return AutoConfig.from_pretrained(ASSETS / DEFAULT_MODEL)
    tok = byte_tokenizer()
    BOS_ID, EOS_ID = tok.bos_token_id, tok.eos_token_id
    fields = dict(SHAPES[key]["config"])
    model_type = fields.pop("model_type")
    rope = {"rope_type": "default", **(fields.pop("rope_scaling", None) or {}), "rope_theta": fields.pop("rope_theta")}
    fields.update(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=None, rope_parameters=rope)
    return AutoConfig.for_model(model_type, **fields)


def random_model(name: str, dtype: str | torch.dtype = "float32", seed: int = 0, device: str | torch.device = "cpu",
                 attn_implementation: str = "eager"):
    """A random-weight model with the exact architecture of a public checkpoint (see `SHAPES`), in eval mode.

    Built on the meta device, then materialised once on `device` in `dtype` and filled with random weights
    (no float32 detour, no download): peak memory is the weights themselves. `device="meta"` gives the shape only
    (no memory, no weights), enough to count parameters. Seed `seed`; the null (`random_weights`) with the same
    seed still draws different weights.
    """
    from transformers import AutoModelForCausalLM

    cfg = shape_config(name)
    cfg._attn_implementation = attn_implementation
    torch_dtype = parse_dtype(dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype, attn_implementation=attn_implementation)
    if str(device) != "meta":
        check_memory_for(model, name, device)
        model = model.to_empty(device=device)
        model.tie_weights()  # to_empty makes new tensors: re-tie the LM head to the embedding where the config says so
        _randomize(model, seed, "model")
        _reset_rotary(model)
    return model.eval()


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes free for new tensors on `device`: MemAvailable of /proc/meminfo (CPU), free memory (CUDA); None when
    unknown (another system, another device)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0]) if torch.cuda.is_available() else None
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory_for(model, name: str, device: str | torch.device = "cpu") -> None:
    """Raise `InsufficientMemoryError` when the weights of `model` (on the meta device: parameters x dtype size)
    do not fit in the memory available on `device`; nothing is allocated."""
    need = sum(p.numel() * p.element_size() for p in model.parameters())
    free = available_memory(device)
    if free is not None and need > free:
        gib = 2**30
        raise InsufficientMemoryError(f"{name}: its weights need {need / gib:.1f} GiB but {device} has "
                                      f"{free / gib:.1f} GiB available; use a smaller shape, --dtype bfloat16, "
                                      "or a machine with more memory")


def _reset_rotary(model) -> None:
    """Recompute every rotary module's inv_freq buffers from its config (as transformers' own init does)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for mod in model.modules():
        if "RotaryEmbedding" in type(mod).__name__ and hasattr(mod, "inv_freq"):
            default = mod.rope_type == "default"
            fn = mod.compute_default_rope_parameters if default else ROPE_INIT_FUNCTIONS[mod.rope_type]
            inv, mod.attention_scaling = fn(mod.config, mod.inv_freq.device)
            with torch.no_grad():
                mod.inv_freq.copy_(inv)
                if hasattr(mod, "original_inv_freq"):
                    mod.original_inv_freq.copy_(inv)


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------


def resolve_model_path(name_or_path: str) -> str:
    """`tappa-tiny` -> the shipped folder; `smollm2-135m` -> its cached conversion (made once, see `packaged`);
    any other string is returned unchanged (local path, hub id, random:...)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a name or path string, got {type(name_or_path).__name__}")
    name = str(name_or_path)
    if is_packaged_name(name):
        return str(ensure_converted(name, progress=True))
    if name == DEFAULT_MODEL:
        path = ASSETS / DEFAULT_MODEL
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"the shipped model is missing at {path}; reinstall tappa_utils")
        return str(path)
    return name


def is_random_name(name_or_path) -> bool:
    """True for 'random:<shape>' model names (random-weight shapes, see `SHAPES`)."""
    return isinstance(name_or_path, str) and name_or_path.lower().startswith(RANDOM_PREFIX)


def model_label(name: str | os.PathLike | None) -> str:
    """A model as a reader should see it: a packaged model by its title (`SmolLM2-135M-Instruct`), a hub id or a
    built-in name as is, a local folder by its last component (the build machine's paths stay off the pages).

    >>> model_label("smollm2-135m"), model_label("Qwen/Qwen2.5-0.5B"), model_label("/data/runs/my-llama/")
    ('SmolLM2-135M-Instruct', 'Qwen/Qwen2.5-0.5B', 'my-llama')
    """
    if not name:
        return "unknown model"
    if is_packaged_name(str(name)):
        return packaged(str(name)).title
    name = str(name).rstrip("/")
    path = Path(name).expanduser()
    if "/" in name and (name.startswith(("/", ".", "~")) or path.exists()):
        record = path / "tappa-packaged.json"  # a packaged model's cached conversion
        if record.is_file():
            try:
                return str(json.loads(record.read_text(encoding="utf-8"))["title"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return path.name
    return name


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "eager",
    device_map: str | None = None,
):
    """Load (model, tokenizer) through `AutoModelForCausalLM` / `AutoTokenizer`, in eval mode.

    `device_map="auto"` may be passed for models that need several GPUs (then `device` is ignored); when it is
    not passed, the environment variable `TAPPA_DEVICE_MAP` supplies it (how `make book DEVICE_MAP=auto` reaches
    every chapter). `random:<shape>` (e.g. `random:qwen2.5-0.5b`, see `SHAPES`) builds a random-weight model of
    that public architecture with the byte tokenizer (seed 0; `random:<shape>@N` draws weights with seed N), without
    any download.

    Never silently wrong: a local folder's weights are checked against its config.json before anything is built
    (`weights_mismatch`, from the safetensors headers), transformers' loading report after (nothing missing,
    unexpected or re-shaped), then every parameter for NaN/inf (`check_finite_weights`); a problem raises
    `WeightsMismatchError` or `NonFiniteError` with one line naming it.
    """
    if device_map is None:
        device_map = os.environ.get("TAPPA_DEVICE_MAP") or None
    if is_random_name(name_or_path):
        name = shape_name(name_or_path)  # fail fast on an unknown shape
        dev = "cuda" if device_map is not None and torch.cuda.is_available() else device
        return (random_model(name, dtype, seed=random_seed(name_or_path), device=dev,
                             attn_implementation=attn_implementation), byte_tokenizer())
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = resolve_model_path(name_or_path)
    torch_dtype = parse_dtype(dtype)
    kwargs = dict(dtype=torch_dtype, attn_implementation=attn_implementation, use_safetensors=True)  # no unpickling
    if device_map is not None:
        kwargs["device_map"] = device_map
    if Path(path).is_dir():
        check_weights_match(path)  # from the safetensors headers, before anything is built
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    _check_loading_info(path, info)
    if device_map is None:
        model = model.to(device)
    model.eval()
    check_finite_weights(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------------------
# weights against the config; finite weights
# ---------------------------------------------------------------------------------------------------------------

_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets), read without the data."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * 2**20:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        return header
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise WeightsMismatchError(f"{path}: cannot read its safetensors header ({e}); re-download or re-export "
                                   "the model") from e


def checkpoint_shapes(folder: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape of a model folder's safetensors weights, from the file headers only (no tensor data is
    read, so this is instant whatever the model's size); None when the folder holds no safetensors weights."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise WeightsMismatchError(f"{index}: cannot read the shard index ({e})") from e
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        for key, v in _safetensors_header(folder / name).items():
            if key != "__metadata__" and isinstance(v, dict):
                shapes[key] = tuple(int(x) for x in v.get("shape", ()))
    return shapes


def _expected_tensors(config) -> tuple[dict[str, tuple[int, ...]], dict[str, list[str]], str]:
    """What a model of `config` loads: name -> shape, the names sharing each tensor (tied), base-model prefix.

    Built on the meta device (no memory, instant); non-persistent buffers such as rotary `inv_freq` are not in the
    state dict, so they are not expected.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    names: dict[int, list[str]] = {}
    shapes = {}
    for name, t in model.state_dict(keep_vars=True).items():
        shapes[name] = tuple(t.shape)
        names.setdefault(id(t), []).append(name)
    tied = {n: group for group in names.values() for n in group}
    return shapes, tied, model.base_model_prefix


def _first(items: list[str], what: str = "tensors") -> str:
    return items[0] + (f" (and {len(items) - 1} more {what})" if len(items) > 1 else "")


def weights_mismatch(folder: str | Path) -> str | None:
    """The first way a model folder's safetensors weights differ from its config.json; None when they match.

    From the file headers only: every tensor the config's model has is present with its shape (tied tensors such
    as a tied LM head: one name present is enough), none is left over (stored rotary `inv_freq` buffers are
    accepted), and the weights hold as many decoder layers as the config declares. Folders without safetensors
    weights, unsupported families and quantised checkpoints are not checked here (None).
    """
    from transformers import AutoConfig

    found = checkpoint_shapes(folder)
    if found is None:
        return None
    config = AutoConfig.from_pretrained(folder)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES or getattr(config, "quantization_config", None):
        return None
    expected, tied, prefix = _expected_tensors(config)
    found = {(f"{prefix}.{k}" if k not in expected and f"{prefix}.{k}" in expected else k): s
             for k, s in found.items() if not k.endswith("inv_freq")}
    missing = [n for n in expected if not any(a in found for a in tied[n])]
    unexpected = [k for k in found if k not in expected]
    if len(missing) > len(expected) // 2:
        return (f"these weights are not those of the {model_type} model that config.json describes: "
                f"{len(missing)} of its {len(expected)} tensors are missing (first {missing[0]}), and the weights "
                f"hold {len(unexpected)} other tensors" + (f" (first {unexpected[0]})" if unexpected else ""))
    n_cfg = int(config.get_text_config().num_hidden_layers)
    held = sorted({int(m.group(1)) for k in found if (m := _LAYER_KEY.search(k))})
    n_held = held[-1] + 1 if held else 0
    if n_held != n_cfg:
        fate = (f"layers {n_held}..{n_cfg - 1} would run on random weights" if n_cfg > n_held
                else f"the weights' layers {n_cfg}..{n_held - 1} would be dropped")
        return f"config.json declares {n_cfg} decoder layers but the weights hold {n_held}: {fate}"
    if missing:
        return f"the weights lack {_first(missing)} that config.json declares (it would run on random weights)"
    for k, shape in expected.items():
        if k in found and found[k] != shape:
            return f"{k} has shape {list(found[k])} in the weights but {list(shape)} in config.json"
    if unexpected:
        return f"the weights hold {_first(unexpected)} that config.json's {model_type} model has no place for"
    return None


def check_weights_match(folder: str | Path) -> None:
    """Raise `WeightsMismatchError` (one line naming the first mismatch) when `weights_mismatch` finds one."""
    why = weights_mismatch(folder)
    if why:
        raise WeightsMismatchError(f"{folder}: {why}; fix config.json or re-export the model")


def _check_loading_info(path: str, info: dict[str, Any]) -> None:
    """The second check, after loading: what transformers reports as missing, unexpected or of another shape."""
    for key, what in (("missing_keys", "the weights lack"), ("mismatched_keys", "the weights' shape differs for"),
                      ("unexpected_keys", "the weights hold unused")):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in (info.get(key) or ()))
        if names:
            raise WeightsMismatchError(f"{path}: {what} {_first(names)} (config.json and weights disagree); "
                                       "fix config.json or re-export the model")


def check_finite_weights(model, chunk: int = 2**24) -> None:
    """Raise `NonFiniteError` naming the first parameter that holds a NaN or an infinity (and where in it).

    Reads every parameter once, `chunk` values at a time (extra memory: one chunk's mask); meta tensors skipped.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.device.type == "meta" or not p.is_floating_point():
                continue
            flat = p.detach().reshape(-1)
            for start in range(0, flat.numel(), chunk):
                bad = ~torch.isfinite(flat[start : start + chunk])
                if bool(bad.any()):
                    first = start + int(bad.nonzero()[0, 0])
                    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(first), p.shape))
                    n_nan, n_inf = int(torch.isnan(flat).sum()), int(torch.isinf(flat).sum())
                    raise NonFiniteError(f"parameter {name} holds {n_nan} NaN and {n_inf} infinite values (first at "
                                         f"{list(where)}); the weights are corrupt: re-download or re-export them")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'bfloat16' / 'float16' / a torch.dtype -> torch.dtype, with a clear error otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def check_supported(model) -> None:
    """Raise `UnsupportedModelError` unless the model is a Llama/Mistral/Qwen2/Qwen3 causal LM with RoPE."""
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    ok = model_type in SUPPORTED_MODEL_TYPES
    if ok:
        try:
            attn = decoder_layers(model)[0].self_attn
            ok = all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")) and hasattr(model.model, "rotary_emb")
        except (AttributeError, IndexError):
            ok = False
    if not ok:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}): tappa_utils needs separate q/k/v "
            f"projections and rotate-half RoPE; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's list of decoder layers (`model.model.layers`)."""
    return model.model.layers


def num_layers(model) -> int:
    """Number of decoder layers."""
    return len(decoder_layers(model))


def context_length(model) -> int:
    """The longest sequence the model's config declares (`max_position_embeddings`)."""
    return int(getattr(model.config, "max_position_embeddings", 0) or 0) or 2**31


def weight_bytes(model) -> int:
    """Bytes held by the model's parameters (tied tensors counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# random weights (shapes and the null)
# ---------------------------------------------------------------------------------------------------------------


def _param_seed(seed: int, purpose: str, name: str) -> int:
    return zlib.crc32(f"{purpose}:{int(seed)}:{name}".encode())


def _fill_random(module: torch.nn.Module, local: str, param: torch.Tensor, std: float, seed: int) -> None:
    """transformers' init rule for one parameter of `module`, drawn from a generator seeded with `seed`."""
    with torch.no_grad():
        if "Norm" in type(module).__name__:
            param.fill_(1.0 if local == "weight" else 0.0)
        elif local == "bias":
            param.zero_()
        else:
            gen = torch.Generator(device=param.device).manual_seed(seed)
            param.normal_(0.0, std, generator=gen)
            pad = getattr(module, "padding_idx", None)
            if isinstance(module, torch.nn.Embedding) and pad is not None:
                param[pad].zero_()


def _param_units(model) -> list[tuple[torch.nn.Module, list[tuple[str, torch.Tensor, str]]]]:
    """Leaf-level modules that own parameters, each with (local name, parameter, canonical full name)."""
    canonical = {}
    for full, p in model.named_parameters():  # tied tensors appear once, under their first name
        canonical.setdefault(id(p), full)
    units = []
    for mod in model.modules():
        own = [(local, p, canonical[id(p)]) for local, p in mod.named_parameters(recurse=False)]
        if own:
            units.append((mod, own))
    return units


def _randomize(model, seed: int, purpose: str) -> None:
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    for mod, own in _param_units(model):
        for local, p, full in own:
            _fill_random(mod, local, p, std, _param_seed(seed, purpose, full))


def _check_seed(seed) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"the null's seed must be an integer, got {seed!r}")
    return seed


def random_weight_copy(model, seed: int):
    """A second model: same architecture and config, random weights (the null baseline, seed `seed`), eval mode.

    Cost: a full second set of weights (1 x the model's memory) and one random draw per parameter. Where that does
    not fit, use `random_weights(model, seed)`, which gives bit-identical results in place.
    """
    from transformers import AutoModelForCausalLM

    seed = _check_seed(seed)
    p0 = next(model.parameters())
    with torch.device("meta"):
        null = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), dtype=p0.dtype,
                                                attn_implementation=model.config._attn_implementation)
    null = null.to_empty(device=p0.device)
    null.tie_weights()
    _randomize(null, seed, "null")
    _reset_rotary(null)
    return null.eval()


NULL_MODES = ("swap", "per_forward")


@contextmanager
def random_weights(model, seed: int, mode: str = "swap", spill_dir: str | Path | None = None) -> Iterator[Any]:
    """Inside the block, `model` computes as its random-weight null (seed `seed`); its weights are exact on exit.

    No second model, two ways (results equal `random_weight_copy(model, seed)` bit for bit either way):

    - `mode="swap"` (default): the model's own weights are written to a temporary file (in `spill_dir`, default
      the system's temporary folder), the random weights are drawn once, in place, and the weights are read back
      from the file on exit. Extra memory: one parameter's copy at a time; cost: one random draw of every parameter plus
      one write and one read of the weights (disk: the weights' size, checked before anything is changed).
    - `mode="per_forward"`: each module that owns parameters (an embedding, a projection, a norm) gets its random
      weights just before it runs and its own weights back right after; no disk, extra memory one module, but one
      random draw of every parameter per forward (slow for decoding: every generated token is a forward).

    Inference only (weights are swapped in place, so nothing may keep them for a backward pass). On exit, also
    after an exception, every weight is restored.

    Parameters
    ----------
    model : a supported causal LM
    seed : int
        Seed of the null; pass one that differs from the model's own training/creation seed.
    mode : "swap" or "per_forward"
    spill_dir : folder for the swap file (default: `tempfile.gettempdir()`)
    """
    seed = _check_seed(seed)
    if mode not in NULL_MODES:
        raise ValueError(f"mode must be one of {', '.join(NULL_MODES)}, got {mode!r}")
    if mode == "swap":
        with _swapped_to_disk(model, spill_dir):
            _randomize(model, seed, "null")
            yield model
        return
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    saved: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    handles = []

    for mod, own in _param_units(model):
        def pre(m, _args, own=own):
            with torch.no_grad():
                saved[id(m)] = [(p, p.detach().clone()) for _, p, _ in own]
                for local, p, full in own:
                    _fill_random(m, local, p, std, _param_seed(seed, "null", full))

        def post(m, _args, _out):
            _restore(saved.pop(id(m), []))

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        for entries in saved.values():
            _restore(entries)
        saved.clear()


def _raw_bytes(t: torch.Tensor):
    """A writable numpy byte view of a contiguous CPU tensor (any dtype, bfloat16 included)."""
    return t.detach().reshape(-1).view(torch.uint8).numpy()


@contextmanager
def _swapped_to_disk(model, spill_dir: str | Path | None = None) -> Iterator[None]:
    """Save every parameter's bytes to a temporary file; whatever happens in the block, read them back on exit."""
    import shutil
    import tempfile

    params = list(dict((id(p), p) for p in model.parameters()).values())  # tied tensors once
    size = sum(p.numel() * p.element_size() for p in params)
    folder = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
    if not folder.is_dir():
        raise ValueError(f"spill_dir {folder} is not a folder; give an existing folder for the null's swap file")
    free = shutil.disk_usage(folder).free
    if free < size + 2 ** 28:
        raise OSError(f"the random-weight null needs {size / 1e9:.2f} GB free in {folder} for the model's weights "
                      f"(free: {free / 1e9:.2f} GB); pass spill_dir=<a folder with room> or mode='per_forward'")
    with tempfile.TemporaryFile(dir=folder) as f:
        with torch.no_grad():
            for p in params:
                f.write(_raw_bytes(p if p.device.type == "cpu" else p.cpu().contiguous()))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            with torch.no_grad():
                for p in params:  # through a torch copy: the tensor's version counter moves, so caches keyed on
                    host = torch.empty(p.shape, dtype=p.dtype)  # it (patterns.head) see the weights came back
                    f.readinto(memoryview(_raw_bytes(host)))
                    p.copy_(host)


def _restore(entries: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for p, orig in entries:
            p.copy_(orig)
