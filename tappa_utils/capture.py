"""Capture queries, keys, logits and attention probabilities of every layer and head during a forward pass.

    with capture(model, layers=[0, 3], what=("q_pre", "q_post", "probs")) as cap:
        model(input_ids)
    cap[3].q_post            # (batch, heads, T, head_dim)

Hooks read the model's own projections (bias included), q_norm/k_norm where the model has them, and the model's
own rotary cos/sin, so every RoPE type transformers supports is honoured. Nothing the model computes is changed.
With `reducer=fn`, `fn(record)` runs as soon as a layer is done and only its return value is kept: the layer's
tensors are dropped, so at most one layer's attention is alive at a time (streaming mode).

Never silently wrong: inside the block, a forward whose `input_ids` are not integer token ids of the model's
vocabulary, or whose `attention_mask` holds padding (captured q/k/logits would mix padded positions in), is refused
with a `ValueError` before it runs; a NaN or infinity in a layer's queries, keys, logits or probabilities raises
`NonFiniteError` naming the layer and head.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .models import NonFiniteError, check_supported, decoder_layers

WHAT = ("q_pre", "k_pre", "q_post", "k_post", "logits", "probs")


@dataclass
class LayerRecord:
    """What one layer computed. q: (B, H, T, D); k: (B, H_kv, T, D); logits/probs: (B, H, T, T).

    Logits are the scaled scores before the mask (masked entries are -inf); query head h reads KV head
    h // (H / H_kv). Captured logits are computed lazily, on first access of `rec.logits` (from the post-RoPE q/k
    kept for that purpose), so a capture that asks for them costs nothing extra until they are read.
    """

    layer: int
    q_pre: torch.Tensor | None = None
    k_pre: torch.Tensor | None = None
    q_post: torch.Tensor | None = None
    k_post: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    scaling: float = 1.0
    kv_group: int = 1
    sliding_window: int | None = None
    _logits: torch.Tensor | None = field(default=None, repr=False)
    _logits_fn: Callable[[], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def logits(self) -> torch.Tensor | None:
        """Masked logits (B, H, T, T), computed on first access when captured lazily."""
        if self._logits is None and self._logits_fn is not None:
            self._logits, self._logits_fn = self._logits_fn(), None
        return self._logits

    @logits.setter
    def logits(self, value: torch.Tensor | None) -> None:
        self._logits, self._logits_fn = value, None


@dataclass
class Capture:
    """Records by layer index (or the reducer's results in streaming mode)."""

    records: dict[int, Any] = field(default_factory=dict)

    def __getitem__(self, layer: int) -> Any:
        return self.records[layer]

    def __contains__(self, layer: int) -> bool:
        return layer in self.records

    def layers(self) -> list[int]:
        return sorted(self.records)


def resolve_layers(model, layers: Iterable[int] | int | None) -> list[int]:
    """Validate layer indices (negative ones count from the end); None means all layers."""
    n = len(decoder_layers(model))
    if layers is None:
        return list(range(n))
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    out = []
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer indices must be integers, got {layer!r}")
        if not -n <= layer < n:
            raise IndexError(f"layer {layer} is out of range: the model has {n} layers (0..{n - 1})")
        out.append(layer % n)
    return sorted(set(out))


def _rope_fn(attn) -> Callable:
    """The `apply_rotary_pos_emb` of the attention module's own modeling file."""
    return sys.modules[type(attn).__module__].apply_rotary_pos_emb


def _sliding_window(attn) -> int | None:
    if hasattr(attn, "sliding_window"):
        return attn.sliding_window
    return getattr(attn.config, "sliding_window", None) if attn.config.model_type == "mistral" else None


def causal_mask(T: int, device=None, sliding_window: int | None = None, offset: int = 0) -> torch.Tensor:
    """Boolean (T, T + offset) mask: query t (absolute position offset + t) sees key j iff j <= t
    (and t - j < window)."""
    t = torch.arange(T, device=device)[:, None] + offset
    j = torch.arange(T + offset, device=device)[None, :]
    keep = j <= t
    if sliding_window is not None:
        keep &= (t - j) < sliding_window
    return keep


def attention_from_qk(q_post: torch.Tensor, k_post: torch.Tensor, scaling: float, sliding_window: int | None = None,
                      dtype: torch.dtype = torch.float32,
                      probs: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masked logits and softmax probabilities (None if `probs=False`) from post-RoPE q (B,H,T,D) and k (B,H_kv,T,D).

    GQA aware: query head h reads KV head h // (H / H_kv).
    """
    check_qk(q_post, k_post)
    group = q_post.shape[1] // k_post.shape[1]
    B, H, T, D = q_post.shape
    # grouped matmul: (B, H_kv, group*T, D) @ (B, H_kv, D, T) avoids materialising the repeated keys
    qg = q_post.to(dtype).reshape(B, k_post.shape[1], group * T, D)
    logits = torch.matmul(qg, k_post.to(dtype).transpose(-1, -2)).reshape(B, H, T, T)
    logits.mul_(scaling)
    keep = causal_mask(T, q_post.device, sliding_window)
    logits.masked_fill_(~keep, float("-inf"))
    return logits, (torch.softmax(logits, dim=-1) if probs else None)


def check_qk(q: torch.Tensor, k: torch.Tensor, q_name: str = "q_post", k_name: str = "k_post") -> None:
    """ValueError naming the argument unless q is (B, H, T, D) and k (B, H_kv, T, D) with H a multiple of H_kv."""
    for name, t in ((q_name, q), (k_name, k)):
        if not torch.is_tensor(t) or t.dim() != 4 or not t.is_floating_point():
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{name} must be a floating-point tensor of shape (batch, heads, T, head_dim), "
                             f"got {shape}")
    (B, H, T, D), (Bk, Hk, Tk, Dk) = q.shape, k.shape
    if (B, T, D) != (Bk, Tk, Dk):
        raise ValueError(f"{q_name} {tuple(q.shape)} and {k_name} {tuple(k.shape)} must agree in batch, T and head_dim")
    if Hk == 0 or H % Hk:
        raise ValueError(f"{q_name} has {H} heads, not a multiple of the {Hk} KV heads of {k_name}")


def check_input_ids(input_ids, vocab_size: int, name: str = "input_ids") -> None:
    """ValueError naming `name` unless it is a (batch, T) integer tensor of token ids in 0..vocab_size - 1."""
    if not torch.is_tensor(input_ids):
        raise ValueError(f"{name} must be a tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must hold integer token ids (torch.long), got {input_ids.dtype}; "
                         "pass the tokenizer's ids (e.g. tokenizer(text, return_tensors='pt').input_ids)")
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(f"{name} must have shape (batch, seq_len) with at least one token, "
                         f"got {tuple(input_ids.shape)}")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds token id {bad}, outside the model's vocabulary (0..{vocab_size - 1}); "
                         "use the model's own tokenizer")


def check_no_padding(attention_mask, name: str = "attention_mask") -> None:
    """ValueError unless `attention_mask` is None, all ones (2-D), or the plain causal mask (4-D): no padding.

    Captured q/k/logits are those of every position, padded ones included, and sdpa never returns the model's own
    probabilities: a padded batch would be analysed wrongly, so it is refused.
    """
    if attention_mask is None:
        return
    if not torch.is_tensor(attention_mask):
        raise ValueError(f"{name} must be a tensor or None, got {type(attention_mask).__name__}")
    if attention_mask.dim() == 2:
        padded = (attention_mask == 0).sum(-1)
        if bool(padded.any()):
            row = int(padded.nonzero()[0, 0])
            raise ValueError(f"{name} holds padding (row {row}: {int(padded[row])} padded positions): capture and "
                             "analyze_heads need unpadded sequences; capture each sequence alone or batch sequences "
                             "of equal length")
        return
    if attention_mask.dim() == 4:
        allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        q, k = allowed.shape[-2:]
        causal = torch.ones(q, k, dtype=torch.bool, device=allowed.device).tril(k - q)
        if bool((allowed == causal).all()):
            return
    raise ValueError(f"{name} of shape {tuple(attention_mask.shape)} is not supported: capture needs unpadded causal "
                     "attention (pass no mask, or a 2-D mask of ones)")


def _check_finite(t: torch.Tensor, layer: int, what: str, head_kind: str = "head", bad: torch.Tensor | None = None):
    """NonFiniteError naming the layer, the heads and the first token where (B, H, T, X) `t` is not finite (or where
    the boolean `bad`, of the same shape, is set)."""
    bad = ~torch.isfinite(t) if bad is None else bad
    if not bool(bad.any()):
        return
    heads = bad.any(-1).any(-1).any(0).nonzero().flatten().tolist()
    token = int(bad.any(-1).any(0).any(0).nonzero()[0, 0])
    shown = ", ".join(map(str, heads[:8])) + (" ..." if len(heads) > 8 else "")
    raise NonFiniteError(f"layer {layer}: the {what} of {head_kind}{'s' if len(heads) > 1 else ''} {shown} hold NaN "
                         f"or infinity (first at token {token}); check the model's weights "
                         "(models.check_finite_weights) and its dtype")


@contextmanager
def capture(
    model,
    layers: Iterable[int] | int | None = None,
    what: Iterable[str] = ("q_pre", "k_pre", "q_post", "k_post"),
    reducer: Callable[[LayerRecord], Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[Capture]:
    """Record `what` (a subset of WHAT) for `layers` during forwards run inside the block; hooks always removed.

    Use one full-sequence forward without a past cache. Batches without padding are supported: a forward whose
    `attention_mask` holds padding, or whose `input_ids` are not token ids of the model's vocabulary, raises
    `ValueError` before it runs. A NaN or infinity in what is recorded raises `models.NonFiniteError` naming
    the layer and head. `dtype` is the precision in which logits/probabilities are computed (float32 by default).
    """
    check_supported(model)
    what = tuple(what)
    bad = [w for w in what if w not in WHAT]
    if bad:
        raise ValueError(f"unknown capture fields {bad}; choose from {WHAT}")
    layer_ids = resolve_layers(model, layers)
    cap = Capture()
    handles = []
    mods = decoder_layers(model)
    vocab = model.get_input_embeddings().num_embeddings

    def check_inputs(_mod, args, kwargs):  # on the decoder (model.model): before the embedding runs
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            check_input_ids(ids, vocab)
        check_no_padding(kwargs.get("attention_mask", args[1] if len(args) > 1 else None))

    handles.append(model.model.register_forward_pre_hook(check_inputs, with_kwargs=True))
    for idx in layer_ids:
        attn = mods[idx].self_attn
        state: dict[str, Any] = {}
        q_src = attn.q_norm if getattr(attn, "q_norm", None) is not None else attn.q_proj
        k_src = attn.k_norm if getattr(attn, "k_norm", None) is not None else attn.k_proj

        def grab(name, state=state):
            def hook(_mod, _inp, out):
                state[name] = out.detach()
            return hook

        def pre_hook(_mod, args, kwargs, state=state, idx=idx):
            state.clear()
            state["pos"] = kwargs.get("position_embeddings")
            past = kwargs.get("past_key_values")
            if past is not None and past.get_seq_length(idx) > 0:
                state["past"] = True

        def post_hook(mod, _args, _kwargs, out, idx=idx, state=state):
            if state.get("past"):
                raise RuntimeError("capture needs one full-sequence forward without a pre-filled cache")
            # eager attention returns its probabilities: reuse them instead of a second softmax (sdpa: None)
            if isinstance(out, tuple) and len(out) > 1 and torch.is_tensor(out[1]):
                state["probs"] = out[1].detach()
            rec = _build_record(mod, idx, state, what, dtype)
            state.clear()
            cap.records[idx] = reducer(rec) if reducer is not None else rec

        handles += [
            q_src.register_forward_hook(grab("q")),
            k_src.register_forward_hook(grab("k")),
            attn.register_forward_pre_hook(pre_hook, with_kwargs=True),
            attn.register_forward_hook(post_hook, with_kwargs=True),
        ]
    try:
        yield cap
    finally:
        for h in handles:
            h.remove()


def _build_record(attn, idx: int, state: dict, what: tuple[str, ...], dtype: torch.dtype) -> LayerRecord:
    d = attn.head_dim
    q, k = state["q"], state["k"]
    B, T = q.shape[0], q.shape[1]
    q_pre = q.reshape(B, T, -1, d).transpose(1, 2)
    k_pre = k.reshape(B, T, -1, d).transpose(1, 2)
    _check_finite(q_pre, idx, "queries")
    _check_finite(k_pre, idx, "keys", "KV head")
    rec = LayerRecord(layer=idx, scaling=float(attn.scaling), kv_group=q_pre.shape[1] // k_pre.shape[1],
                      sliding_window=_sliding_window(attn))
    if "q_pre" in what:
        rec.q_pre = q_pre
    if "k_pre" in what:
        rec.k_pre = k_pre
    need_post = any(w in what for w in ("q_post", "k_post", "logits", "probs"))
    if need_post:
        cos, sin = state["pos"]
        q_post, k_post = _rope_fn(attn)(q_pre, k_pre, cos, sin)
        if "q_post" in what:
            rec.q_post = q_post
        if "k_post" in what:
            rec.k_post = k_post
        own = state.get("probs")
        if own is not None and (own.dtype != dtype or own.shape[-2:] != (T, T)):
            own = None
        if "probs" in what:
            rec.probs = own if own is not None else attention_from_qk(q_post, k_post, rec.scaling,
                                                                     rec.sliding_window, dtype)[1]
            _check_finite(rec.probs, idx, "attention probabilities")
        if "logits" in what:
            scaling, window = rec.scaling, rec.sliding_window

            def logits_fn() -> torch.Tensor:
                logits = attention_from_qk(q_post, k_post, scaling, window, dtype, probs=False)[0]
                _check_finite(logits, idx, "logits", bad=torch.isnan(logits) | torch.isposinf(logits))  # -inf: masked
                return logits

            rec._logits_fn = logits_fn
    return rec
