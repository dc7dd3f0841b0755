"""Train the default model, `tappa-tiny`: a small Llama (RMSNorm, SwiGLU, RoPE, GQA) on bytes of the stdlib.

The shipped model was trained in two phases (the second resumes from the first's checkpoint):

    python -m tappa_utils train-tiny --out runs/tappa-tiny --steps 4000 --until 500 --mixture base
    python -m tappa_utils train-tiny --out runs/tappa-tiny --steps 3000 --mixture copy-heavy
    python -m tappa_utils train-tiny --out runs/tappa-tiny --export tappa_utils/assets/tappa-tiny

The data mixture rewards the mechanisms the book studies: plain code (previous-token / diagonal heads), windows
where a random segment re-occurs (copying, induction), periodic stretches (seasonal heads), always after BOS
(sinks).  Uses CUDA when present; everything else in the project runs on the CPU.

Every option, and every file of the run folder (`tiny.run_folder`), is checked before anything is written;
`--out` is this run's folder (resumed when it holds `ckpt.pt`; a folder holding other files is refused); `--export`
needs a trained checkpoint and replaces only a folder that is an earlier export, with its `.tappa-result` marker
(its model card is kept). Checkpoints are loaded with `weights_only=True`.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..io import MARKER, ResultDir, atomic_torch_save, atomic_write_json, atomic_write_text
from ..preflight import Parser, UsageError, check_out_dir, check_positive, one_line, run_cli, safetensors_problem
from .corpus import BOS_ID, EOS_ID, MIXTURES, PAD_ID, VOCAB_SIZE, copy_test_batch, load_corpus, sample_batch
from .measure import copy_test
from .run_folder import (
    check_export_dest,
    check_optimizer,
    check_run_dest,
    check_state,
    finite_record,
    load_checkpoint,
    read_log,
    read_train_args,
)

RUN_FILES = ("ckpt.pt", "training_log.jsonl", "corpus_manifest.json", "train_args.json")
CARD_FILES = ("MODEL_CARD.md", "model_card.json")  # written into an export by `model-card`; kept on re-export
MIN_LONG_EVAL = 16  # --long-eval: a shorter window has no room for a retrieval segment and its cue
DEFAULT_ARCH = dict(
    hidden_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    intermediate_size=384, max_position_embeddings=4096, rope_theta=10000.0,
)


def make_config(**overrides):
    """The LlamaConfig of tappa-tiny (byte vocabulary, 2 KV heads, head dim 32; the shipped v3 has 8 query heads,
    `DEFAULT_ARCH` the 4 of v1 and v2)."""
    from transformers import LlamaConfig

    arch = {**DEFAULT_ARCH, **overrides}
    theta = arch.pop("rope_theta")
    return LlamaConfig(
        vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": theta}, **arch,
    )


def param_groups(model, weight_decay: float, all_params: bool = True) -> list[dict]:
    """AdamW groups. `all_params=True` (`--decay all`, how the shipped model was trained): one group, decay on
    everything. Otherwise (`--decay matrices`): decay on the weight matrices of attention and MLP, none on norms and
    the (tied) embedding, which may then grow where the model needs large activations (the first token's, which
    attention sinks use). A checkpoint resumes with the grouping it was saved with."""
    params = dict(model.named_parameters())
    if all_params:
        return [{"params": list(params.values()), "weight_decay": weight_decay}]
    decay = [p for n, p in params.items() if p.dim() == 2 and "embed" not in n and "lm_head" not in n]
    keep = [p for n, p in params.items() if not (p.dim() == 2 and "embed" not in n and "lm_head" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def lr_at(step: int, peak: float, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warm-up then cosine decay to `floor * peak` at `total`; constant floor afterwards."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def tokens_until(phases: list[dict], step: int) -> int:
    """Tokens trained on before `step`, from the phases of train_args.json (each runs from its start step to the next
    phase's start, with its own batch and seq_len; a phase restarted at the same step replaces the earlier one)."""
    by_start = {int(p["start_step"]): p for p in phases}  # later records of one start step win
    starts = sorted(s for s in by_start if s < step)
    ends = starts[1:] + [step]
    return sum((min(e, step) - s) * int(by_start[s].get("batch", 16)) * int(by_start[s].get("seq_len", 512))
               for s, e in zip(starts, ends))


def heldout_windows(rng: np.random.Generator, corpus, n: int, seq_len: int) -> np.ndarray:
    """`n` windows of held-out bytes, each BOS followed by `seq_len - 1` bytes from a random offset: (n, seq_len)."""
    x = np.empty((n, seq_len), dtype=np.int64)
    x[:, 0] = BOS_ID
    for b in range(n):
        s = int(rng.integers(0, len(corpus.heldout) - seq_len))
        x[b, 1:] = corpus.heldout[s : s + seq_len - 1]
    return x


@torch.no_grad()
def evaluate(model, corpus, device, n: int = 16, seq_len: int = 512, seed: int = 1234) -> dict:
    """Held-out loss (nats/byte) on fixed windows, and the copy-test ratio (second / first occurrence loss)."""
    model.eval()
    rng = np.random.default_rng(seed)
    x = heldout_windows(rng, corpus, n, seq_len)
    ids = torch.from_numpy(x).to(device)
    held = model(ids, labels=ids).loss.item()
    cx, first, second = copy_test_batch(rng, corpus.heldout, n)
    copy = copy_test(model, torch.from_numpy(cx), first, second)
    sinks = sink_heads(model, ids[:4])
    model.train()
    return {"heldout_loss": held, **copy, **sinks}


@torch.no_grad()
def sink_heads(model, ids: torch.Tensor, threshold: float = 0.3) -> dict:
    """Sinks beyond layer 0 on held-out windows: how many heads put >= `threshold` of their mass on the first token
    (`metrics.sink_mass`, the model card's measure), and the largest such mass."""
    from ..metrics import MetricConfig, analyze_heads

    heads = analyze_heads(model, ids, MetricConfig())
    later = heads[heads.layer > 0].sort_values("sink_mass", ascending=False)
    top = " ".join(f"L{r.layer}H{r.head}:{r.sink_mass:.3f}" for r in later.head(3).itertuples())
    return {"sinks_beyond_l0": float((later.sink_mass >= threshold).sum()),
            "max_sink_beyond_l0": float(later.sink_mass.max()), "top_sinks": top}


@torch.no_grad()
def evaluate_long(model, corpus, device, n: int = 8, seq_len: int = 1024, seed: int = 4321) -> dict:
    """Long-context health on held-out text: loss (nats/byte) on positions [0, seq_len/2) vs [seq_len/2, seq_len),
    and top-1 accuracy of retrieving a random segment (32 bytes at 1024) planted in the first eighth of the window and
    cued at its end by the segment's first quarter (the shape of `kv-eval`'s retrieval task, at a longer distance)."""
    model.eval()
    rng = np.random.default_rng(seed)
    x = heldout_windows(rng, corpus, n, seq_len)
    ids = torch.from_numpy(x).to(device)
    logits = model(ids).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    half = seq_len // 2
    out = {"loss_first_half": nll[:, : half - 1].mean().item(), "loss_second_half": nll[:, half - 1 :].mean().item()}
    seg_len = min(32, seq_len // 4)
    cue = max(1, seg_len // 4)
    r = x.copy()
    for b in range(n):
        seg = rng.integers(33, 127, size=seg_len)
        first = int(rng.integers(1, max(2, seq_len // 8)))
        r[b, first : first + seg_len] = seg
        r[b, seq_len - seg_len :] = seg
    rid = torch.from_numpy(r).to(device)
    pred = model(rid).logits[:, seq_len - seg_len + cue - 1 : -1].argmax(-1)
    out["retrieval_acc"] = (pred == rid[:, seq_len - seg_len + cue :]).float().mean().item()
    model.train()
    return out


def export(model, out: Path, ckpt_dir: Path) -> None:
    """Write a Hugging Face folder (config, safetensors, tokenizer, training log, corpus manifest), swapped in whole.

    A previous export's model card is kept; a folder that is not an export (no marker) is refused (`UsageError`).
    """
    from .tokenizer import build_tokenizer

    with ResultDir(out, "train-tiny --export", keep=CARD_FILES, option="--export") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        build_tokenizer().save_pretrained(tmp)
        for f in RUN_FILES[1:]:
            if (ckpt_dir / f).exists():
                shutil.copy(ckpt_dir / f, tmp / f)


def build_parser() -> argparse.ArgumentParser:
    """The `train-tiny` command-line options."""
    ap = Parser(prog="python -m tappa_utils train-tiny", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/tappa-tiny"), help="checkpoint folder (resumed if present)")
    ap.add_argument("--steps", type=int, default=6000, help="total optimizer steps (schedule length)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1,
                    help="AdamW's decoupled weight decay (larger values favour attention sinks: Gu et al. 2024)")
    ap.add_argument("--decay", choices=("all", "matrices"), default="all",
                    help="what the decay applies to: every parameter (the shipped model) or the weight matrices "
                         "only (not norms and embedding); a resumed run keeps its checkpoint's choice")
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
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start a new run (no checkpoint yet) from the weights of an exported folder (fresh optimizer)")
    ap.add_argument("--schedule-from", type=int, default=0,
                    help="step at which this phase's warm-up and cosine schedule start "
                         "(a new phase on a trained model)")
    ap.add_argument("--long-eval", type=int, default=0,
                    help="also evaluate long-context loss halves and retrieval at this length (0: off)")
    ap.add_argument("--heads", type=int, default=None,
                    help=f"query heads per layer of a new run (default {DEFAULT_ARCH['num_attention_heads']}; a "
                         f"multiple of the {DEFAULT_ARCH['num_key_value_heads']} KV heads, head dim stays "
                         f"{DEFAULT_ARCH['head_dim']}); a resumed run keeps its own; with --init-from, a multiple "
                         "of that model's heads widens it (tappa_utils.tiny.widen: each head copied, same outputs)")
    return ap


def run_arch(out: Path, heads: int | None) -> dict:
    """The architecture of the run in `out`: the one recorded in its train_args.json, else the default with
    `heads` query heads. A `heads` that contradicts the recorded run is refused."""
    recorded, _ = read_train_args(out, "--out")
    arch = dict(recorded or DEFAULT_ARCH)
    if heads is not None and recorded is not None and heads != arch["num_attention_heads"]:
        raise UsageError(f"--heads {heads}: the run in {out} has {arch['num_attention_heads']} query heads; a resumed "
                         "run keeps its architecture (give a new --out)")
    if heads is not None:
        arch["num_attention_heads"] = heads
    return arch


def check_args(args) -> Path:
    """The front door of `train-tiny`: numbers, --out (a run folder) and --export; the checked --out folder."""
    for name in ("steps", "batch", "seq_len", "threads", "eval_every", "ckpt_every"):
        check_positive(getattr(args, name), f"--{name.replace('_', '-')}")
    check_positive(args.warmup, "--warmup", minimum=0)
    check_positive(args.seed, "--seed", minimum=0)
    if args.until is not None:
        check_positive(args.until, "--until")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise UsageError(f"--weight-decay must be a number >= 0, got {args.weight_decay}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UsageError(f"--max-minutes must be a positive number, got {args.max_minutes}")
    if args.heads is not None and (args.heads < 1 or args.heads % DEFAULT_ARCH["num_key_value_heads"]):
        raise UsageError(f"--heads must be a positive multiple of the {DEFAULT_ARCH['num_key_value_heads']} KV heads, "
                         f"got {args.heads}")
    if not 2 <= args.seq_len <= DEFAULT_ARCH["max_position_embeddings"]:
        raise UsageError(f"--seq-len must lie in [2, {DEFAULT_ARCH['max_position_embeddings']}] (the model's "
                         f"context), got {args.seq_len}")
    check_positive(args.schedule_from, "--schedule-from", minimum=0)
    if args.schedule_from and args.schedule_from >= args.steps:
        raise UsageError(f"--schedule-from {args.schedule_from} must be below --steps {args.steps} (the schedule runs "
                         "from --schedule-from to --steps)")
    check_positive(args.long_eval, "--long-eval", minimum=0)
    top = DEFAULT_ARCH["max_position_embeddings"]
    if args.long_eval and not MIN_LONG_EVAL <= args.long_eval <= top:
        raise UsageError(f"--long-eval must be 0 (off) or lie in [{MIN_LONG_EVAL}, {top}] (shorter windows hold no "
                         f"retrieval segment to measure), got {args.long_eval}")
    if args.init_from is not None:
        weights = Path(args.init_from) / "model.safetensors"
        if not weights.is_file():
            raise UsageError(f"--init-from {args.init_from}: no model.safetensors there (give an exported tappa-tiny "
                             "folder)")
        if why := safetensors_problem(weights):
            raise UsageError(f"--init-from {args.init_from}: {why}; export the model again")
    out = check_out_dir(args.out, command="train-tiny", legacy=RUN_FILES)
    check_run_dest(out)
    if args.export is not None:
        if not (out / "ckpt.pt").is_file():
            raise UsageError(f"--export needs a trained checkpoint: {out / 'ckpt.pt'} does not exist; train with "
                             f"--out {args.out} first")
        args.export = check_out_dir(args.export, "--export")
        check_export_dest(args.export, "train-tiny --export", CARD_FILES)
    return out


def check_schedule(args, start: int) -> None:
    """UsageError unless this phase's schedule gives a positive, finite learning rate at every step from `start`
    (its warm-up must not begin after the phase does: `lr_at` of a negative step is negative)."""
    if args.schedule_from > start:
        raise UsageError(f"--schedule-from {args.schedule_from} lies after step {start}, where this phase starts: the "
                         f"learning rate would be negative until then; give --schedule-from <= {start}")
    last = args.steps if args.until is None else min(args.until, args.steps)
    for s in {start, min(start + args.warmup, last - 1), last - 1} if start < last else ():
        lr = lr_at(s - args.schedule_from, args.lr, args.warmup, args.steps - args.schedule_from)
        if not (math.isfinite(lr) and lr > 0):
            raise UsageError(f"--lr {args.lr}, --warmup {args.warmup}, --schedule-from {args.schedule_from}: the "
                             f"learning rate at step {s} would be {lr}; give a positive schedule")


def main(argv=None) -> int:
    """Train (resuming from `--out/ckpt.pt` when present) or, with `--export`, write the Hugging Face folder."""
    return run_cli("train-tiny", lambda: _main(argv))


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    args.out = check_args(args)
    from transformers import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ckpt_path = args.out / "ckpt.pt"
    torch.manual_seed(args.seed)
    # Everything is read and checked before anything is written: a damaged run folder is refused unchanged.
    resuming = ckpt_path.exists()
    fresh_from = args.init_from if args.init_from is not None and not resuming else None
    source, option = (fresh_from, "--init-from") if fresh_from is not None else (args.out, "--out")
    _, phases = read_train_args(source, option)
    records = read_log(source, option)
    widen_from = None
    if fresh_from is not None:
        arch = run_arch(fresh_from, None)
        if args.heads is not None and args.heads != arch["num_attention_heads"]:
            widen_from = arch["num_attention_heads"]
            if args.heads % widen_from:
                raise UsageError(f"--heads {args.heads} with --init-from {args.init_from}: the model has {widen_from} "
                                 f"query heads; widening copies each one, so give a multiple of {widen_from}")
            arch = {**arch, "num_attention_heads": args.heads}
    else:
        arch = run_arch(args.out, args.heads)
    model = LlamaForCausalLM(make_config(**arch)).to(device)
    ck = load_checkpoint(ckpt_path, device) if resuming else None
    if ck is not None:
        check_state(ck, model, ckpt_path)
    one_group = len(ck["opt"]["param_groups"]) == 1 if ck is not None else args.decay == "all"
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay, one_group), lr=args.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(args.seed)
    step = 0
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            check_optimizer(opt)
            rng.bit_generator.state = ck["rng"]
            torch.set_rng_state(ck["torch_rng"])
        except (RuntimeError, ValueError, TypeError, KeyError) as e:
            raise UsageError(f"--out {ckpt_path} cannot be resumed ({one_line(e)[:200]}); delete it to start over, "
                             "or give a new --out") from e
        for g, want in zip(opt.param_groups, param_groups(model, args.weight_decay, one_group)):  # this phase's
            g["weight_decay"] = want["weight_decay"]
        step = ck["step"]
        print(f"resumed from step {step}")
    elif fresh_from is not None:
        from safetensors.torch import load_file

        try:
            state = load_file(str(fresh_from / "model.safetensors"))
        except Exception as e:  # safetensors' own error type; the header was checked up front
            raise UsageError(f"--init-from {fresh_from}: model.safetensors cannot be read ({one_line(e)[:200]})") from e
        if widen_from is not None:  # same function, more heads: each copy can then specialise
            from .widen import widen_heads

            state = widen_heads(state, widen_from, args.heads, arch["head_dim"], seed=args.seed)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shapes differ (another number of heads)
            raise UsageError(f"--init-from {args.init_from}: weights do not fit this architecture "
                             f"({one_line(e)[:200]})") from e
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise UsageError(f"--init-from {args.init_from}: weights do not match tappa-tiny ({missing}, {unexpected})")
        model.tie_weights()
        step = max((s for s, _ in records), default=0)
        widened = f", widened from {widen_from} to {args.heads} query heads" if widen_from else ""
        print(f"initialised from {args.init_from} (step {step}{widened}); optimizer state starts fresh")
    if args.export is not None:
        export(model.cpu(), args.export, args.out)
        print(f"exported step {step} to {args.export}")
        return 0
    check_schedule(args, step)

    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / MARKER).exists():
        atomic_write_json(args.out / MARKER, {"command": "train-tiny", "files": list(RUN_FILES)})
    corpus = load_corpus()
    atomic_write_json(args.out / "corpus_manifest.json", corpus.manifest)
    phases.append({"start_step": step, **{k: str(v) for k, v in vars(args).items()}})
    atomic_write_json(args.out / "train_args.json", {"arch": arch, "phases": phases})
    log_path = args.out / "training_log.jsonl"
    if records or log_path.exists():  # drop records logged after the checkpoint we resumed from
        atomic_write_text(log_path, "".join(ln + "\n" for s, ln in records if s <= step))
    log = open(log_path, "a")
    phase_start = step
    tokens_before = tokens_until(phases[:-1], step)
    t0 = time.time()
    model.train()
    tokens_since, t_since = 0, time.time()
    last = args.steps if args.until is None else min(args.until, args.steps)
    while step < last:
        for g in opt.param_groups:
            g["lr"] = lr_at(step - args.schedule_from, args.lr, args.warmup, args.steps - args.schedule_from)
        ids = torch.from_numpy(sample_batch(rng, corpus.train, args.batch, args.seq_len,
                                            MIXTURES[args.mixture])).to(device)
        loss = model(ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_since += ids.numel()
        rec = {"step": step, "loss": round(loss.item(), 4), "lr": opt.param_groups[0]["lr"], "mixture": args.mixture}
        if step % args.eval_every == 0 or step == last:
            rec |= {k: round(v, 4) if isinstance(v, float) else v for k, v in evaluate(model, corpus, device).items()}
            if args.long_eval:
                rec |= {k: round(v, 4) for k, v in evaluate_long(model, corpus, device, seq_len=args.long_eval).items()}
            rec["tokens_per_s"] = round(tokens_since / (time.time() - t_since))
            rec["tokens_seen"] = tokens_before + (step - phase_start) * args.batch * args.seq_len
            tokens_since, t_since = 0, time.time()
            print(json.dumps(finite_record(rec)), flush=True)
        log.write(json.dumps(finite_record(rec), allow_nan=False) + "\n")
        log.flush()
        out_of_time = args.max_minutes is not None and time.time() - t0 > 60 * args.max_minutes
        if step % args.ckpt_every == 0 or step == last or out_of_time:
            atomic_torch_save(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                                          "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()})
        if out_of_time:
            break
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
