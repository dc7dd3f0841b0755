"""One head's pre-RoPE queries and keys in float64 (`HeadData`, `capture_head`, `qk_capture`) and small helpers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import theory
from ..capture import _rope_fn, attention_from_qk, capture, resolve_layers
from ..rope import channel_frequencies, rope_attention_scaling

# ---------------------------------------------------------------------------------------------------------------
# one head's data
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class HeadData:
    """One head over a batch of windows: q, k pre-RoPE (B, T, d) float64 (k is the head's KV head), the model's
    logits and probabilities (B, T, T), theta (d/2,) and `scale` (so that logits = scale * q^T R(t-j) k)."""

    layer: int
    head: int
    q: np.ndarray
    k: np.ndarray
    logits: np.ndarray | None
    probs: np.ndarray | None
    theta: np.ndarray
    scale: float

    def relative_logits(self, b: int = 0) -> np.ndarray:
        """(T, T) logits recomputed from q, k and theta (upper triangle included, unmasked)."""
        T = self.q.shape[1]
        n = np.arange(T)[:, None] - np.arange(T)[None, :]
        return self.scale * theory.relative_logit(self.q[b][:, None, :], self.k[b][None, :, :], n, self.theta)


def _check_head(model, layer: int, head: int) -> None:
    H = model.config.num_attention_heads
    if not isinstance(head, (int, np.integer)) or not 0 <= int(head) < H:
        raise IndexError(f"head {head!r} is out of range: the model has {H} query heads (0..{H - 1})")


def capture_head(model, input_ids: torch.Tensor, layer: int, head: int, probs: bool = True) -> HeadData:
    """Run the model on `input_ids` (B, T) and return `HeadData` for (layer, head).

    One capture serves every head: the first call records the pre-RoPE q/k of every layer in one forward and keeps
    them (see `qk_capture`); later calls on the same model, weights and ids only slice them, so a loop over all the
    heads of a model costs one forward, not one per head.
    """
    layer = resolve_layers(model, int(layer))[0]
    _check_head(model, layer, head)
    cap = qk_capture(model, input_ids)
    rec = cap[layer]
    kv = head // rec.kv_group
    s = rec.scaling * rope_attention_scaling(model) ** 2
    q, k = rec.q_pre[:, head : head + 1], rec.k_pre[:, kv : kv + 1]
    logits = probs_ = None
    if probs:
        cos, sin = cap.position_embeddings
        q_post, k_post = rec.rope_fn(q, k, cos, sin)
        lg, pr = attention_from_qk(q_post, k_post, rec.scaling, rec.sliding_window)
        logits, probs_ = lg[:, 0].double().cpu().numpy(), pr[:, 0].double().cpu().numpy()
    return HeadData(layer=layer, head=int(head), q=q[:, 0].double().cpu().numpy(), k=k[:, 0].double().cpu().numpy(),
                    logits=logits, probs=probs_, theta=channel_frequencies(model), scale=float(s))


@dataclass
class _QKLayer:
    q_pre: torch.Tensor  # (B, H, T, D)
    k_pre: torch.Tensor  # (B, H_kv, T, D)
    scaling: float
    kv_group: int
    sliding_window: int | None
    rope_fn: object


@dataclass
class QKCapture:
    """Pre-RoPE q/k of every layer of one forward, the rotary cos/sin, and what identifies that forward."""

    layers: dict[int, _QKLayer]
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    key: tuple

    def __getitem__(self, layer: int) -> _QKLayer:
        return self.layers[layer]


_LAST: dict[str, object] = {}


def _weights_key(model) -> tuple:
    """Identity and in-place version of every parameter and buffer (changes whenever a weight or inv_freq does), and
    the forward hooks in place: `models.random_weights` swaps weights only while a module runs, from hooks, so
    inside it the versions alone would still match the model's own capture."""
    hooks = tuple((id(m), tuple(m._forward_pre_hooks), tuple(m._forward_hooks)) for m in model.modules()
                  if m._forward_pre_hooks or m._forward_hooks)
    return (id(model), tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers())), hooks)


def qk_capture(model, input_ids: torch.Tensor) -> QKCapture:
    """Pre-RoPE q/k of every layer for `input_ids`, from one forward; the last result is kept and reused while the
    model object, its weights (in-place changes included: interventions, swapped null weights) and the ids are the
    same. Memory kept: q and k of every layer, 4 x B x T x (H + H_kv) x D bytes in float32 (`clear_qk_capture`)."""
    import weakref

    if not torch.is_tensor(input_ids) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a (batch, T) tensor of token ids")
    key = _weights_key(model)
    last = _LAST.get("cap")
    ref = _LAST.get("model")
    if (last is not None and ref is not None and ref() is model and last.key == key
            and _LAST["ids"].shape == input_ids.shape and torch.equal(_LAST["ids"], input_ids.cpu())):
        return last
    clear_qk_capture()
    dev = next(model.parameters()).device
    out: dict[int, _QKLayer] = {}
    pos: dict[str, tuple] = {}


    with torch.no_grad(), capture(model, None, what=("q_pre", "k_pre")) as cap:
        hook = model.model.rotary_emb.register_forward_hook(lambda _m, _a, o: pos.setdefault("cs", o))
        try:
            model.model(input_ids=input_ids.to(dev), use_cache=False)
        finally:
            hook.remove()
    for layer in cap.layers():
        rec = cap[layer]
        attn = model.model.layers[layer].self_attn
        out[layer] = _QKLayer(rec.q_pre.float(), rec.k_pre.float(), rec.scaling, rec.kv_group, rec.sliding_window,
                              _rope_fn(attn))
    cos, sin = pos["cs"]
    result = QKCapture(out, (cos.float(), sin.float()), key)
    _LAST.update(cap=result, model=weakref.ref(model), ids=input_ids.detach().cpu().clone())
    return result


def clear_qk_capture() -> None:
    """Forget the kept `qk_capture` result (frees its memory)."""
    _LAST.clear()


def continuity(x: np.ndarray, skip: int = 0) -> float:
    """Mean relative step `|x_{t+1} - x_t| / mean_t |x_t|` over t >= skip (x: (..., T, d)); 0 = constant."""
    x = np.asarray(x, dtype=np.float64)[..., skip:, :]
    if x.shape[-2] < 2:
        raise ValueError("need at least two positions after skip to measure continuity")
    step = np.linalg.norm(np.diff(x, axis=-2), axis=-1).mean()
    return float(step / np.linalg.norm(x, axis=-1).mean())


def head_masses(model, input_ids: torch.Tensor, skip: int = 16, max_offset: int = 8, layers=None):
    """Per (layer, head): `sink_mass`, `column_mass`, `fixed_key_mass` (their max), `diag_offset` and `diag_mass`
    (offsets 1..max_offset), means over the windows, from one forward (`qk_capture`); the same definitions as
    `metrics.analyze_heads`' columns at a fraction of its cost (no predictability or q-similarity), so a measure
    repeated on many random-weight draws stays cheap."""
    import pandas as pd

    from ..metric_defs import _diag_from_profile, column_mass, distance_profile, sink_mass

    cap = qk_capture(model, input_ids)
    rows = []
    for layer in resolve_layers(model, layers):
        rec = cap[layer]
        cos, sin = cap.position_embeddings
        q_post, k_post = rec.rope_fn(rec.q_pre, rec.k_pre, cos, sin)
        _, pr = attention_from_qk(q_post, k_post, rec.scaling, rec.sliding_window)
        sm, cm = sink_mass(pr, skip).mean(0), column_mass(pr.mean(0), skip)  # best key of the windows together
        off, dm = _diag_from_profile(distance_profile(pr, skip, max_offset).mean(0), max_offset)
        for h in range(pr.shape[1]):
            rows.append({"layer": int(layer), "head": h, "sink_mass": float(sm[h]), "column_mass": float(cm[h]),
                         "fixed_key_mass": float(max(sm[h], cm[h])), "diag_offset": int(off[h]),
                         "diag_mass": float(dm[h])})
    return pd.DataFrame(rows)
