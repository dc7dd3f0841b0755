"""Layer pruning scores: ShortGPT's block influence (BI), TAPPA's q-similarity and the two removal orders.

    ids = calibration_ids(tokenizer, seq_len=512, n_chunks=8, stride=256, seed=0)   # training split, never eval text
    scores = layer_scores(model, ids)                 # per layer: BI and q-similarity (pre-RoPE, all pairs)
    order = tappa_order(scores.bi, scores.qsim, beta=0.2)   # remove order[:k] first
    small = remove_layers(model, order[:2])           # `tappa_utils.prune.removal`: a consistent copy

ShortGPT: `BI_l = mean over tokens of 1 - cos(h_in, h_out)` of decoder layer l, lowest BI removed first.
TAPPA: `BI'_l = minmax(BI)_l + beta * (1 - minmax(qsim)_l)`, lowest removed first, so layers whose queries are
self-similar (predictable attention) go earlier.  q-similarity as in the reference pruning code: queries of
`q_proj` (before RoPE, bias included; after q_norm for Qwen3), mean cosine over all pairs of distinct tokens of a
chunk, averaged over heads, then over chunks.  Post-RoPE and consecutive-token variants are options.

Block input/output are read with hooks on the decoder layers, not from `output_hidden_states`, whose last entry
has the final norm applied (ShortGPT's code compares against that normed state for the last layer).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import numpy as np
import torch

from ..capture import capture
from ..io import atomic_write_json
from ..metrics import q_similarity_consecutive, q_similarity_window
from ..models import decoder_layers

QSIM_ROPE = ("pre", "post")
QSIM_MODES = ("all_pairs", "consecutive")


def _check_int(name: str, v, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


# ----------------------------------------------------------------------------------------------- calibration data
def calibration_text(n_bytes: int = 200_000, seed: int = 0, text_file: str | Path | None = None,
                     model: str | None = None) -> str:
    """Calibration text: the contents of `text_file`; else, for a model whose default text is English
    (`data.default_text_kind`), the English calibration split; else a seeded random stretch of `n_bytes` of
    tappa-tiny's training split. Neither built-in calibration text overlaps its held-out evaluation text.
    """
    from ..data import default_text_kind, english_text, load_text

    if text_file is not None:
        return load_text(text_file=text_file)
    _check_int("n_bytes", n_bytes, 1)
    if default_text_kind(model) == "english":
        return english_text("calibration")
    from ..tiny.corpus import load_corpus

    train = load_corpus().train
    n = min(n_bytes, len(train))
    start = int(np.random.default_rng(seed).integers(0, len(train) - n + 1))
    return bytes(train[start : start + n].astype(np.uint8)).decode("utf-8", errors="replace")


def calibration_ids(tokenizer, seq_len: int = 512, n_chunks: int = 8, stride: int = 256, seed: int = 0,
                    text_file: str | Path | None = None, model: str | None = None) -> torch.Tensor:
    """(n_chunks, seq_len) ids: overlapping chunks (`stride` apart, each after BOS) of the calibration text (of
    `model`'s kind: see `calibration_text`)."""
    for name, v in (("seq_len", seq_len), ("n_chunks", n_chunks), ("stride", stride)):
        _check_int(name, v, 1)
    from ..data import token_windows

    need = 4 * ((n_chunks - 1) * stride + seq_len) + 1024  # generous: a byte or more per token
    text = calibration_text(n_bytes=need, seed=seed, text_file=text_file, model=model)
    return token_windows(tokenizer, text, seq_len, n_chunks, stride=stride)


# ------------------------------------------------------------------------------------------------------ scores
@dataclass
class LayerScores:
    """Per-layer scores from one calibration set: `bi` (block influence) and `qsim` (q-similarity), both (L,)."""

    bi: np.ndarray
    qsim: np.ndarray
    bi_kind: str = "cosine"
    qsim_rope: str = "pre"
    qsim_mode: str = "all_pairs"
    chunking: dict = field(default_factory=dict)

    def table(self):
        """A pandas DataFrame: layer, bi, qsim, bi_norm, qsim_norm."""
        import pandas as pd

        return pd.DataFrame({"layer": np.arange(len(self.bi)), "bi": self.bi, "qsim": self.qsim,
                             "bi_norm": minmax(self.bi), "qsim_norm": minmax(self.qsim)})


def _check_ids(input_ids) -> torch.Tensor:
    if (not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2
            or input_ids.dtype not in (torch.long, torch.int)):
        raise TypeError("input_ids must be an integer tensor of shape (n_chunks, seq_len)")
    if input_ids.shape[1] < 2:
        raise ValueError(f"chunks need at least 2 tokens, got seq_len={input_ids.shape[1]}")
    return input_ids


def _batches(input_ids: torch.Tensor, batch_size: int):
    _check_int("batch_size", batch_size, 1)
    for i in range(0, input_ids.shape[0], batch_size):
        yield input_ids[i : i + batch_size]


def query_similarity_of(q: torch.Tensor, mode: str = "all_pairs") -> torch.Tensor:
    """q (..., T, D) -> (...): mean cosine over all pairs of distinct tokens, or of consecutive tokens (float64).

    Both are `tappa_utils.metrics`' definitions applied to the whole chunk (window = T, skip = 0).
    """
    if mode not in QSIM_MODES:
        raise ValueError(f"unknown q-similarity mode {mode!r}; use one of {QSIM_MODES}")
    T = q.shape[-2]
    if T < 2:
        raise ValueError("q-similarity needs at least 2 tokens")
    if mode == "consecutive":
        return q_similarity_consecutive(q, skip=0)
    return q_similarity_window(q, window=T)


@torch.no_grad()
def block_influence(model, input_ids: torch.Tensor, angular: bool = False, batch_size: int = 4) -> np.ndarray:
    """(L,) ShortGPT block influence: mean over tokens (all chunks) of `1 - cos(h_in, h_out)` per decoder layer.

    `angular=True` gives `arccos(cos) / pi` instead. Tokens of all chunks weigh equally.
    """
    return _score_pass(model, input_ids, want_bi=True, want_q=False, angular=angular, batch_size=batch_size)[0]


@torch.no_grad()
def query_similarity(model, input_ids: torch.Tensor, rope: str = "pre", mode: str = "all_pairs",
                     batch_size: int = 4) -> np.ndarray:
    """(L,) q-similarity per layer: per chunk and head (`query_similarity_of`), mean over heads, then over chunks.

    rope="pre" reads the projection output (bias included, as the reference pruning code); "post" after RoPE.
    """
    return _score_pass(model, input_ids, want_bi=False, want_q=True, rope=rope, mode=mode, batch_size=batch_size)[1]


@torch.no_grad()
def query_similarity_variants(model, input_ids: torch.Tensor, batch_size: int = 4) -> dict[str, np.ndarray]:
    """{"pre/all_pairs": (L,), "pre/consecutive", "post/all_pairs", "post/consecutive"}: every `query_similarity`
    variant from one forward pass (pre- and post-RoPE queries captured together); each equals its own pass."""
    input_ids = _check_ids(input_ids)
    L = len(decoder_layers(model))
    device = next(model.parameters()).device
    names = [f"{rope}/{mode}" for rope in QSIM_ROPE for mode in QSIM_MODES]

    def reducer(rec):  # (B, 4): each variant's mean over heads
        return torch.stack([query_similarity_of(getattr(rec, f"q_{n.split('/')[0]}"), n.split("/")[1]).mean(-1)
                            for n in names], dim=-1).cpu()

    per_batch = []
    for ids in _batches(input_ids, batch_size):
        with capture(model, None, what=("q_pre", "q_post"), reducer=reducer) as cap:
            model(ids.to(device), use_cache=False)
        per_batch.append(torch.stack([cap[i] for i in range(L)], dim=1))  # (B, L, 4)
    mean = torch.cat(per_batch).mean(0).numpy()
    return {n: mean[:, j] for j, n in enumerate(names)}


@torch.no_grad()
def _score_pass(model, input_ids, want_bi=True, want_q=True, angular=False, rope="pre", mode="all_pairs",
                batch_size=4):
    """One pass over the chunks computing BI and/or q-similarity (hooks removed whatever happens)."""
    input_ids = _check_ids(input_ids)
    if rope not in QSIM_ROPE:
        raise ValueError(f"unknown rope option {rope!r}; use 'pre' (before RoPE) or 'post' (after RoPE)")
    if mode not in QSIM_MODES:
        raise ValueError(f"unknown q-similarity mode {mode!r}; use one of {QSIM_MODES}")
    layers = decoder_layers(model)
    L = len(layers)
    device = next(model.parameters()).device
    bi_sum = torch.zeros(L, dtype=torch.float64)
    n_tok = 0
    q_chunks: list[torch.Tensor] = []  # (B, L) per batch
    state: dict[int, torch.Tensor] = {}
    batch_bi = torch.zeros(L, dtype=torch.float64)

    def pre(i):
        def hook(_mod, args, kwargs):
            state[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post(i):
        def hook(_mod, _args, _kwargs, out):
            h_out = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(state.pop(i).double(), h_out.double(), dim=-1)
            val = torch.arccos(cos.clamp(-1, 1)) / math.pi if angular else 1 - cos
            batch_bi[i] += val.sum().cpu()
        return hook

    handles = []
    if want_bi:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
            handles.append(layer.register_forward_hook(post(i), with_kwargs=True))
    what = ("q_pre",) if rope == "pre" else ("q_post",)
    reducer = lambda rec: query_similarity_of(getattr(rec, what[0]), mode).mean(-1).cpu()  # (B,) mean over heads
    try:
        for ids in _batches(input_ids, batch_size):
            batch_bi.zero_()
            if want_q:
                with capture(model, None, what=what, reducer=reducer) as cap:
                    model(ids.to(device), use_cache=False)
                q_chunks.append(torch.stack([cap[i] for i in range(L)], dim=1))
            else:
                model(ids.to(device), use_cache=False)
            bi_sum += batch_bi
            n_tok += ids.numel()
    finally:
        for h in handles:
            h.remove()
        state.clear()
    bi = (bi_sum / n_tok).numpy() if want_bi else None
    qsim = torch.cat(q_chunks).mean(0).numpy() if want_q else None
    return bi, qsim


def layer_scores(model, input_ids: torch.Tensor, rope: str = "pre", mode: str = "all_pairs", angular: bool = False,
                 batch_size: int = 4, stride: int | None = None) -> LayerScores:
    """BI and q-similarity of every layer in one pass over the calibration chunks (see the module docstring)."""
    bi, qsim = _score_pass(model, input_ids, True, True, angular, rope, mode, batch_size)
    chunking = {"chunk_len": int(input_ids.shape[1]), "stride": stride, "n_chunks": int(input_ids.shape[0])}
    return LayerScores(bi, qsim, "angular" if angular else "cosine", rope, mode, chunking)


# ------------------------------------------------------------------------------------------------------ orders
def minmax(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Min-max normalisation over layers to [0, 1]; constant scores give all zeros."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores contain NaN or inf")
    span = x.max() - x.min()
    return np.zeros_like(x) if span == 0 else (x - x.min()) / span


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise TypeError(f"beta must be a number, got {type(beta).__name__}")
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    return float(beta)


def tappa_scores(bi, qsim, beta: float) -> np.ndarray:
    """`BI'_l = minmax(BI)_l + beta * (1 - minmax(qsim)_l)` (lower = removed earlier)."""
    beta = _check_beta(beta)
    bi, qsim = np.asarray(bi, dtype=np.float64), np.asarray(qsim, dtype=np.float64)
    if bi.shape != qsim.shape:
        raise ValueError(f"bi and qsim must have one value per layer each, got {bi.shape} and {qsim.shape}")
    return minmax(bi) + beta * (1.0 - minmax(qsim))


def prune_order(scores) -> list[int]:
    """Layers sorted by ascending score (removed first); ties broken by the lower layer index."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("scores must be a non-empty 1-D sequence of finite numbers")
    return [int(i) for i in np.lexsort((np.arange(s.size), s))]


def shortgpt_order(bi) -> list[int]:
    """ShortGPT's removal order: lowest block influence first."""
    return prune_order(bi)


def tappa_order(bi, qsim, beta: float) -> list[int]:
    """TAPPA's removal order at `beta`: lowest `BI'` first (beta = 0 is ShortGPT's order)."""
    return prune_order(tappa_scores(bi, qsim, beta))


def order_change_betas(bi, qsim) -> list[float]:
    """The betas > 0 at which two layers swap places in TAPPA's order (sorted): between consecutive values the
    order is constant, and below the first one it is ShortGPT's (up to ties)."""
    b, q = minmax(bi), 1.0 - minmax(qsim)
    out = set()
    for i in range(len(b)):
        for j in range(i + 1, len(b)):
            dq = q[i] - q[j]
            if dq != 0:
                beta = -(b[i] - b[j]) / dq
                if beta > 0:
                    out.add(float(beta))
    return sorted(out)


def score_record(score_type: str, model_name: str, data: str, chunking: dict, scores, order=None) -> dict:
    """A JSON-ready record with the reference code's fields: score_type, model, data, chunking, scores, prune_order."""
    vals = [float(v) for v in np.asarray(scores, dtype=np.float64)]
    return {"score_type": score_type, "model": str(model_name), "data": str(data),
            "chunking": {k: chunking.get(k) for k in ("chunk_len", "stride", "n_chunks")},
            "scores": {str(i): v for i, v in enumerate(vals)},
            "prune_order": list(order) if order is not None else prune_order(vals)}


def save_score_record(path: str | Path, record: dict) -> Path:
    """Write a score record (see `score_record`) atomically."""
    return atomic_write_json(path, record)


def load_score_record(path: str | Path) -> dict:
    """Read a score record; scores keys come back as ints."""
    rec = json.loads(Path(path).read_text())
    missing = {"score_type", "model", "data", "chunking", "scores", "prune_order"} - set(rec)
    if missing:
        raise ValueError(f"{path} is not a score record: missing fields {sorted(missing)}")
    rec["scores"] = {int(k): v for k, v in rec["scores"].items()}
    return rec
