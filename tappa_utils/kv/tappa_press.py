"""`TAPPAPress`: per-layer KV budgets from q-similarity (TAPPA, Section 6), with real eviction, as a kvpress press.

Design (lazy eviction after the forward, option (b)). A budget needs every layer's q-similarity, but layers run in
order, so layer 0 cannot be evicted when it finishes. During the prefill forward a hook on each attention layer
records, from the observation window (the last `window` queries), the layer's q-similarity, optionally CAKE's
preference, and the scorer's per-token scores (kvpress `ScorerPress.score`, SnapKV by default). The cache stays full
during the forward, so the prefill output is that of the full model (as with any kvpress press: compression only
affects what later tokens see). A forward hook on the decoder stack (`model.model`) then fires once, right after
the last layer, still inside the same `model(...)` call: it turns preferences into budgets that sum to the requested
total (capped at the sequence length, excess redistributed), and gathers each layer's kept keys/values, so the
cache tensors really shrink, to different lengths per layer. This costs one (B, H_kv, T) score tensor per layer
until the end of the forward, and no second pass over the model. A pre-pass (option (a)) would need a second
forward over the first layers.

Inside `with press(model):` attention masks are rebuilt per layer (see `decoding.per_layer_masks`), so decoding
with eager or sdpa works inside the block; outside it use `tappa_utils.kv.decoding.continue_forward`. Positions must
continue from the original length. Batch size 1 only (a clear error otherwise).

kvpress's `kv-press-text-generation` pipeline feeds the question and the answer tokens after leaving the press's
context, with one mask for all layers, which fails on per-layer lengths (PyramidKV fails there too). TAPPAPress
therefore derives from kvpress's `PrefillDecodingPress` (with no inner presses): the pipeline then also enters the
press around decoding, where only the per-layer masks act. Consequence: one question per pipeline call.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generator, Optional

import torch
from kvpress import ScorerPress, SnapKVPress
from kvpress.presses.base_press import is_prefilling
from kvpress.presses.prefill_decoding_press import PrefillDecodingPress
from kvpress.utils import get_prerope_query_states
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

from ..models import check_supported, decoder_layers
from .budgets import allocate_budgets
from .decoding import _mask_pre_hook
from .preference import cake_preference, qsim_all_pairs, qsim_consecutive


@dataclass
class TAPPAPress(PrefillDecodingPress):
    """TAPPAPress: per-layer KV budgets from q-similarity, `P_l = 1 - qsim_l` (TAPPA, Section 6, arXiv 2601.21709).

    Layers whose window queries are self-similar (predictable attention) keep fewer tokens. Inside a layer tokens are
    ranked by `scorer`. Budgets count every kept token, window and sinks included. Design notes: module docstring.

    Parameters
    ----------
    compression_ratio : float, default 0.0
        Fraction of the cache removed over all layers, in [0, 1) (as in kvpress).
    token_budget : int, optional
        Average kept tokens per layer; overrides `compression_ratio`.
    window : int, default 32
        Observation window: the last `window` queries give q-similarity and the scorer's scores; always kept.
    rope : {"post", "pre"}, default "post"
        q-similarity of the queries after RoPE (the reference code) or before.
    qsim : {"all_pairs", "consecutive"}, default "all_pairs"
        Mean cosine over all pairs of window queries (the reference code) or over consecutive ones.
    alpha : float, default math.inf
        `math.inf`: pure TAPPA preference; finite: CAKE's preference plus `alpha * (1 - qsim_l)`.
    tau1, tau2 : float, default 1.0
        CAKE's temperatures of the entropy and variance terms (used when `alpha` is finite).
    scorer : kvpress ScorerPress, optional
        Ranks tokens inside a layer; default `SnapKVPress(window_size=window)`.
    n_sink : int, default 0
        First tokens always kept.

    Attributes
    ----------
    budgets, layer_qsim, layer_preference, kept_indices, seq_len
        Set by each prefill: kept tokens, q-similarity and preference per layer, the kept positions per layer
        ((B, H_kv, budget), sorted) and the context length.

    Examples
    --------
    >>> from tappa_utils import TAPPAPress, load_model
    >>> from tappa_utils.data import load_text, token_windows
    >>> from tappa_utils.kv.decoding import cache_lengths, prefill
    >>> model, tok = load_model("tappa-tiny")
    >>> ids = token_windows(tok, load_text(), seq_len=256, num_windows=1)
    >>> press = TAPPAPress(compression_ratio=0.5)
    >>> cache, logits = prefill(model, ids, press)
    >>> sum(cache_lengths(cache)) == 6 * 256 // 2, cache_lengths(cache) == press.budgets  # 6 layers, half kept
    (True, True)
    >>> TAPPAPress(compression_ratio=1.5)
    Traceback (most recent call last):
    ...
    ValueError: compression_ratio must be in [0, 1), got 1.5
    """

    prefilling_press: None = field(default=None, init=False, repr=False)
    decoding_press: None = field(default=None, init=False, repr=False)
    compression_ratio: float = 0.0
    token_budget: Optional[int] = None
    window: int = 32
    rope: str = "post"
    qsim: str = "all_pairs"
    alpha: float = math.inf
    tau1: float = 1.0
    tau2: float = 1.0
    scorer: Optional[ScorerPress] = None
    n_sink: int = 0
    budgets: list = field(default_factory=list, init=False, repr=False)
    layer_qsim: list = field(default_factory=list, init=False, repr=False)
    layer_preference: list = field(default_factory=list, init=False, repr=False)
    kept_indices: list = field(default_factory=list, init=False, repr=False)
    seq_len: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.compression_ratio, (int, float)) or not 0 <= self.compression_ratio < 1:
            raise ValueError(f"compression_ratio must be in [0, 1), got {self.compression_ratio!r}")
        if self.token_budget is not None and (not isinstance(self.token_budget, int) or self.token_budget < 1):
            raise ValueError(f"token_budget must be a positive integer (tokens per layer) or None, got {self.token_budget!r}")
        if not isinstance(self.window, int) or self.window < 2:
            raise ValueError(f"window must be an integer >= 2 (q-similarity needs 2 queries), got {self.window!r}")
        if self.rope not in ("pre", "post"):
            raise ValueError(f"rope must be 'pre' or 'post', got {self.rope!r}")
        if self.qsim not in ("all_pairs", "consecutive"):
            raise ValueError(f"qsim must be 'all_pairs' or 'consecutive', got {self.qsim!r}")
        if not (self.alpha == math.inf or (isinstance(self.alpha, (int, float)) and 0 <= self.alpha < math.inf)):
            raise ValueError(f"alpha must be >= 0 or math.inf, got {self.alpha!r}")
        if self.tau1 <= 0 or self.tau2 <= 0:
            raise ValueError(f"tau1 and tau2 must be > 0, got {self.tau1}, {self.tau2}")
        if not isinstance(self.n_sink, int) or self.n_sink < 0:
            raise ValueError(f"n_sink must be an integer >= 0, got {self.n_sink!r}")
        if self.scorer is None:
            self.scorer = SnapKVPress(window_size=self.window)
        if not isinstance(self.scorer, ScorerPress):
            raise TypeError(f"scorer must be a kvpress ScorerPress (e.g. SnapKVPress()), got {type(self.scorer).__name__}")
        self._pending: dict = {}

    # ---- per-layer statistics (prefill only) -------------------------------------------------------------------
    def _window_queries(self, module, hidden_states, position_embeddings, pre: bool) -> torch.Tensor:
        q = get_prerope_query_states(module, hidden_states[:, -self.window:])
        if pre:
            return q
        cos, sin = position_embeddings
        cos, sin = cos[:, -self.window:].unsqueeze(1), sin[:, -self.window:].unsqueeze(1)
        return q * cos + rotate_half(q) * sin

    def _window_attention(self, module, q_post: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        groups = q_post.shape[1] // keys.shape[1]
        k = repeat_kv(keys, groups)
        logits = (q_post @ k.transpose(-1, -2)).float() * module.scaling
        t = keys.shape[2]
        w = q_post.shape[2]
        future = torch.triu(torch.ones(w, w, dtype=torch.bool, device=keys.device), diagonal=1)
        logits[..., t - w:] = logits[..., t - w:].masked_fill(future, float("-inf"))
        return logits.softmax(-1)

    @torch.no_grad()
    def forward_hook(self, module, input, kwargs, output):
        """Record the layer's q-similarity, preference and token scores during prefill (no eviction here)."""
        hidden_states = kwargs["hidden_states"]
        q_len = hidden_states.shape[1]
        if not is_prefilling(kwargs["cache_position"], q_len):
            return output
        if hidden_states.shape[0] != 1:
            raise ValueError(f"TAPPAPress supports batch size 1, got {hidden_states.shape[0]}; "
                             "compress one sequence at a time")
        cache = kwargs["past_key_values"]
        layer = cache.layers[module.layer_idx]
        keys, values = layer.keys, layer.values
        t = keys.shape[2]
        rec = {"cache": cache, "t": t}
        if t > self.window:
            q = self._window_queries(module, hidden_states, kwargs["position_embeddings"], pre=self.rope == "pre")
            sim = qsim_all_pairs(q) if self.qsim == "all_pairs" else qsim_consecutive(q)
            rec["qsim"] = float(sim.mean())
            pref = 1.0 - rec["qsim"]
            if self.alpha != math.inf:
                qp = q if self.rope == "post" else self._window_queries(module, hidden_states,
                                                                         kwargs["position_embeddings"], pre=False)
                attn = self._window_attention(module, qp, keys)
                pref = cake_preference(attn, self.tau1, self.tau2) + self.alpha * pref
            rec["preference"] = max(pref, 0.0)
            rec["scores"] = self.scorer.score(module, hidden_states, keys, values, output[1], kwargs).detach()
        self._pending[module.layer_idx] = rec
        return output

    # ---- budgets and eviction (after the last layer) ----------------------------------------------------------
    def total_budget(self, seq_len: int, n_layers: int) -> int:
        """Kept tokens summed over layers for a context of `seq_len` tokens."""
        if self.token_budget is not None:
            return min(self.token_budget, seq_len) * n_layers
        return int(round(seq_len * n_layers * (1 - self.compression_ratio)))

    def _evict(self) -> None:
        pending, self._pending = self._pending, {}
        idx = sorted(pending)
        t = pending[idx[0]]["t"]
        self.seq_len = t
        self.layer_qsim = [pending[i].get("qsim", float("nan")) for i in idx]
        self.layer_preference = [pending[i].get("preference", float("nan")) for i in idx]
        floor = min(t, self.window + self.n_sink)
        total = self.total_budget(t, len(idx))
        if t <= self.window + self.n_sink or total >= t * len(idx):
            self.budgets = [t] * len(idx)
            self.kept_indices = [None] * len(idx)
            return
        if total < floor * len(idx):
            raise ValueError(f"budget too small: {total} tokens over {len(idx)} layers cannot keep the window "
                             f"({self.window}) and sinks ({self.n_sink}) in every layer; lower compression_ratio "
                             f"or the window")
        self.budgets = allocate_budgets(self.layer_preference, total, cap=t, floor=floor)
        self.kept_indices = []
        for i, budget in zip(idx, self.budgets):
            rec = pending[i]
            layer = rec["cache"].layers[i]
            scores = rec["scores"].float().clone()
            scores[..., t - self.window:] = math.inf
            if self.n_sink:
                scores[..., : self.n_sink] = math.inf
            kept = scores.topk(budget, dim=-1).indices.sort(dim=-1).values
            gather = kept.unsqueeze(-1).expand(-1, -1, -1, layer.keys.shape[-1])
            layer.keys = layer.keys.gather(2, gather).contiguous()
            layer.values = layer.values.gather(2, gather).contiguous()
            self.kept_indices.append(kept)

    def _model_hook(self, module, args, kwargs, output):
        if self._pending:
            self._evict()
        return output

    def _model_pre_hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is not None and ids.shape[0] != 1:
            raise ValueError(f"TAPPAPress supports batch size 1, got {ids.shape[0]}; compress one sequence at a time")
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.all()):
            raise ValueError("TAPPAPress does not support padding (attention_mask with zeros); pass one unpadded sequence")
        self._pending = {}
        return None

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        """Not used: TAPPAPress evicts after the forward (see the module docstring)."""
        raise NotImplementedError("TAPPAPress evicts after the whole forward; use it as `with press(model): ...`")

    @contextmanager
    def __call__(self, model) -> Generator:
        """Hooks: statistics per attention layer, eviction after the decoder stack, per-layer masks; always removed."""
        check_supported(model)
        base = model.model.language_model if hasattr(model.model, "language_model") else model.model
        handles = []
        try:
            handles.append(base.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True))
            handles.append(base.register_forward_hook(self._model_hook, with_kwargs=True))
            for layer in decoder_layers(model):
                handles.append(layer.self_attn.register_forward_hook(self.forward_hook, with_kwargs=True))
                handles.append(layer.self_attn.register_forward_pre_hook(_mask_pre_hook, with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()
            self._pending = {}
