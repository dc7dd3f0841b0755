"""Train the default model, `tappa-tiny`: a small Llama (RMSNorm, SwiGLU, RoPE, GQA) on bytes of the stdlib.

The shipped model was trained in two phases (the second resumes from the first's checkpoint):

    python -m tappa_utils train-tiny --out runs/tappa-tiny --steps 4000 --until 500 --mixture base
    python -m tappa_utils train-tiny --out runs/tappa-tiny --steps 3000 --mixture copy-heavy
    python -m tappa_utils train-tiny --out runs/tappa-tiny --export tappa_utils/assets/tappa-tiny

The data mixture rewards the mechanisms the book studies: plain code (previous-token / diagonal heads), windows
where a random segment re-occurs (copying, induction), periodic stretches (seasonal heads), always after BOS
(sinks).  Uses CUDA when present; everything else in the project runs on the CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .corpus import BOS_ID, EOS_ID, MIXTURES, PAD_ID, VOCAB_SIZE, copy_test_batch, load_corpus, sample_batch
from ..io import atomic_torch_save, atomic_write_json, atomic_write_text
from .measure import copy_test

DEFAULT_ARCH = dict(
    hidden_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    intermediate_size=384, max_position_embeddings=4096, rope_theta=10000.0,
)


def make_config(**overrides):
    """The LlamaConfig of tappa-tiny (byte vocabulary, GQA 4/2, head dim 32)."""
    from transformers import LlamaConfig

    arch = {**DEFAULT_ARCH, **overrides}
    theta = arch.pop("rope_theta")
    return LlamaConfig(
        vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": theta}, **arch,
    )


def lr_at(step: int, peak: float, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warm-up then cosine decay to `floor * peak` at `total`; constant floor afterwards."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def evaluate(model, corpus, device, n: int = 16, seq_len: int = 512, seed: int = 1234) -> dict:
    """Held-out loss (nats/byte) on fixed windows, and the copy-test ratio (second / first occurrence loss)."""
    model.eval()
    rng = np.random.default_rng(seed)
    x = np.empty((n, seq_len), dtype=np.int64)
    x[:, 0] = BOS_ID
    for b in range(n):
        s = int(rng.integers(0, len(corpus.heldout) - seq_len))
        x[b, 1:] = corpus.heldout[s : s + seq_len - 1]
    ids = torch.from_numpy(x).to(device)
    held = model(ids, labels=ids).loss.item()
    cx, first, second = copy_test_batch(rng, corpus.heldout, n)
    copy = copy_test(model, torch.from_numpy(cx), first, second)
    model.train()
    return {"heldout_loss": held, **copy}


def export(model, out: Path, ckpt_dir: Path) -> None:
    """Write a Hugging Face folder (config, safetensors, tokenizer, training log, corpus manifest) atomically."""
    from .tokenizer import build_tokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    build_tokenizer().save_pretrained(tmp)
    for f in ("training_log.jsonl", "corpus_manifest.json", "train_args.json"):
        if (ckpt_dir / f).exists():
            shutil.copy(ckpt_dir / f, tmp / f)
    if out.exists():
        card = out / "MODEL_CARD.md"
        if card.exists():
            shutil.copy(card, tmp / "MODEL_CARD.md")
        shutil.rmtree(out)
    os.replace(tmp, out)


def main(argv=None) -> None:
    """Train (resuming from `--out/ckpt.pt` when present) or, with `--export`, write the Hugging Face folder."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/tappa-tiny"), help="checkpoint folder (resumed if present)")
    ap.add_argument("--steps", type=int, default=6000, help="total optimizer steps (schedule length)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--mixture", choices=sorted(MIXTURES), default="base",
                    help="data mixture of this phase (logged with every record; see tappa_utils.tiny.corpus)")
    ap.add_argument("--export", type=Path, default=None, help="export the checkpoint as a HF folder and exit")
    ap.add_argument("--until", type=int, default=None,
                    help="end this phase after this step (checkpointed); the schedule still runs to --steps")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (after a checkpoint) after this long")
    args = ap.parse_args(argv)

    from transformers import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "ckpt.pt"
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(make_config()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(args.seed)
    step = 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        step = ck["step"]
        print(f"resumed from step {step}")
    if args.export is not None:
        export(model.cpu(), args.export, args.out)
        print(f"exported step {step} to {args.export}")
        return

    corpus = load_corpus()
    atomic_write_json(args.out / "corpus_manifest.json", corpus.manifest)
    phases_path = args.out / "train_args.json"
    old = json.loads(phases_path.read_text()) if phases_path.exists() else {}
    phases = old.get("phases") or ([{"start_step": 0, **{k: v for k, v in old.items() if k != "arch"}}] if old else [])
    phases.append({"start_step": step, **{k: str(v) for k, v in vars(args).items()}})
    atomic_write_json(phases_path, {"arch": DEFAULT_ARCH, "phases": phases})
    log_path = args.out / "training_log.jsonl"
    if log_path.exists():  # drop records logged after the checkpoint we resumed from
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))
    log = open(log_path, "a")
    t0 = time.time()
    model.train()
    tokens_since, t_since = 0, time.time()
    last = args.steps if args.until is None else min(args.until, args.steps)
    while step < last:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.lr, args.warmup, args.steps)
        ids = torch.from_numpy(sample_batch(rng, corpus.train, args.batch, args.seq_len, MIXTURES[args.mixture])).to(device)
        loss = model(ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_since += ids.numel()
        rec = {"step": step, "loss": round(loss.item(), 4), "lr": opt.param_groups[0]["lr"], "mixture": args.mixture}
        if step % args.eval_every == 0 or step == last:
            rec |= {k: round(v, 4) for k, v in evaluate(model, corpus, device).items()}
            rec["tokens_per_s"] = round(tokens_since / (time.time() - t_since))
            rec["tokens_seen"] = step * args.batch * args.seq_len
            tokens_since, t_since = 0, time.time()
            print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        out_of_time = args.max_minutes is not None and time.time() - t0 > 60 * args.max_minutes
        if step % args.ckpt_every == 0 or step == last or out_of_time:
            atomic_torch_save(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                                          "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()})
        if out_of_time:
            break


if __name__ == "__main__":
    main()
