"""Loading models: `tappa-tiny` (shipped with the package) or any Hugging Face causal LM, plus the random-weight null.

Supported for capture and analysis: the Llama, Mistral, Qwen2 and Qwen3 families (separate q/k/v projections,
rotate-half RoPE). Anything else raises `UnsupportedModelError` naming the architecture and the supported ones.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

DEFAULT_MODEL = "tappa-tiny"
ASSETS = Path(__file__).parent / "assets"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class UnsupportedModelError(ValueError):
    """The model's architecture is not one that `tappa_utils` can capture."""


def resolve_model_path(name_or_path: str) -> str:
    """`tappa-tiny` -> the shipped folder; any other string is returned unchanged (local path or hub id)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a name or path string, got {type(name_or_path).__name__}")
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        path = ASSETS / DEFAULT_MODEL
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"the shipped model is missing at {path}; reinstall tappa_utils")
        return str(path)
    return name


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "eager",
    device_map: str | None = None,
):
    """Load (model, tokenizer) through `AutoModelForCausalLM` / `AutoTokenizer`, in eval mode.

    `device_map="auto"` may be passed for models that need several GPUs (then `device` is ignored).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = resolve_model_path(name_or_path)
    torch_dtype = parse_dtype(dtype)
    kwargs = dict(dtype=torch_dtype, attn_implementation=attn_implementation)
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device_map is None:
        model = model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


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


def random_weight_copy(model, seed: int = 0):
    """Same architecture and config, freshly initialised weights (the null baseline), in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = copy.deepcopy(model.config)
    null = AutoModelForCausalLM.from_config(
        cfg, dtype=next(model.parameters()).dtype, attn_implementation=model.config._attn_implementation
    )
    return null.to(next(model.parameters()).device).eval()
