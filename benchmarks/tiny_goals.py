"""The default model's goals (issue 13) measured on a model folder: context beyond 512 tokens, retrieval at 1024
with the full cache (kv-eval's task), sinks outside layer 0, diagonal heads, copying of random ordinary tokens.

Usage: .venv/bin/python benchmarks/tiny_goals.py tappa-tiny [--windows 4]     (prints a JSON object)
"""
import argparse
import json

import numpy as np
import torch

from tappa_utils import load_model
from tappa_utils.data import load_text, token_windows
from tappa_utils.metrics import MetricConfig, analyze_heads


@torch.no_grad()
def position_loss(model, ids):
    logits = model(ids).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return nll


@torch.no_grad()
def retrieval_full(model, tok, seq_len, samples=32, seed=0):
    from tappa_utils.kv.evaluate import KVEvalConfig, _text_tokens, make_samples, score_sample
    cfg = KVEvalConfig(seq_len=seq_len, samples=samples, seed=seed, distance=3 * seq_len // 4)
    toks = _text_tokens(tok, None)
    acc = [score_sample(model, c, t)["accuracy"] for c, t in make_samples(toks, tok.bos_token_id, cfg, "retrieval")]
    return float(np.mean(acc)), cfg.distance


@torch.no_grad()
def copy_ordinary(model, tok, n=16, seg=64, seed=0):
    rng = np.random.default_rng(seed)
    toks = np.asarray(tok(load_text(), add_special_tokens=False, verbose=False)["input_ids"])
    r = []
    for _ in range(n):
        s = rng.choice(toks, size=seg)  # ordinary tokens drawn at random from the text (no order to predict)
        ids = torch.as_tensor(np.concatenate([[tok.bos_token_id], s, s]))[None]
        nll = position_loss(model, ids)[0]
        r.append(float(nll[seg:].mean() / nll[1:seg].mean()))
    return float(np.mean(r))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--windows", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model(a.model)
    text = load_text()
    out = {}
    ids = token_windows(tok, text, seq_len=512, num_windows=a.windows)
    out["heldout_loss_512"] = float(position_loss(model, ids).mean())
    heads = analyze_heads(model, ids, MetricConfig())
    out["sink_heads_outside_L0_ge_0.3"] = int(((heads.layer > 0) & (heads.sink_mass >= 0.3)).sum())
    out["max_sink_outside_L0"] = float(heads[heads.layer > 0].sink_mass.max())
    out["diag_heads_ge_0.3"] = int((heads.diag_mass >= 0.3).sum())
    out["labels"] = heads.pattern.value_counts().to_dict()
    ids2 = token_windows(tok, text, seq_len=1024, num_windows=2)
    nll = position_loss(model, ids2)
    out["loss_0_512"], out["loss_512_1024"] = float(nll[:, :511].mean()), float(nll[:, 511:].mean())
    out["retrieval_full_1024"], out["retrieval_distance"] = retrieval_full(model, tok, 1024)
    out["retrieval_full_512"], _ = retrieval_full(model, tok, 512)
    out["copy_ratio_ordinary64"] = copy_ordinary(model, tok)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
