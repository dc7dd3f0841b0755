"""Write a small random-weight Qwen2 model folder: the "other family" of the CI's papermill matrix.

    python .ci/random_model.py runs/random-qwen2 [--seed 0]

Architecture of the Qwen2 family (q/k/v biases, RoPE base 1e6, grouped-query attention), 4 layers, width 128,
4 query / 2 KV heads of dimension 32; the byte-level tokenizer of the shipped `tappa-tiny` (copied), so every
chapter's text pipeline runs unchanged. The weights are random (q/k biases included): on it the chapters' pattern
measurements are null measurements, a check that the code runs on another family, not a result.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tappa_utils.models import ASSETS, DEFAULT_MODEL

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def random_qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    """A random Qwen2ForCausalLM with tappa-tiny's vocabulary and special tokens."""
    tiny = json.loads((ASSETS / DEFAULT_MODEL / "config.json").read_text())
    config = Qwen2Config(
        vocab_size=tiny["vocab_size"], bos_token_id=tiny["bos_token_id"], eos_token_id=tiny["eos_token_id"],
        pad_token_id=tiny["pad_token_id"], hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # the family's q/k biases, zero at init, made random like the weights
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.5)
            layer.self_attn.k_proj.bias.normal_(0, 0.5)
    return model


def write(out: Path, seed: int = 0) -> Path:
    """Save the model (safetensors) and tappa-tiny's tokenizer into `out`; returns `out`."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    random_qwen2(seed).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(ASSETS / DEFAULT_MODEL / name, out / name)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: `python .ci/random_model.py OUT [--seed N]`."""
    parser = argparse.ArgumentParser(prog="random_model.py", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (created; files in it are replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    print(write(args.out, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
