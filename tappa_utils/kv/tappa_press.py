"""`TAPPAPress`: per-layer KV budgets from q-similarity (TAPPA, Section 6), with real eviction, as a kvpress press.

Design. A budget needs every layer's preference, but layers run in order, so layer l cannot be evicted when it
finishes. During the prefill each attention layer's forward hook records, from the observation window (the last
`window` queries), the layer's q-similarity, its preference and the per-token scores. The cache stays full during the
forward, so the prefill output is that of the full model (as with any kvpress press: compression only affects what
later tokens see). The LAST layer's hook then turns the preferences into budgets and gathers each layer's kept keys
and values, so the cache tensors really shrink, to different lengths per layer, still inside the same forward. Since
everything happens in `forward_hook`, the press also works inside kvpress wrappers that call it (ComposedPress,
PrefillDecodingPress); wrappers that call `compress` or `score` instead get a clear error, never a silent no-op
(KeyRerotationPress already when built: `refuse_key_rerotation`).

Layers of different lengths need per-layer attention masks: `attention_patch` (installed on import, as kvpress
installs its own) fits transformers' single mask to each layer, so decoding, `model.generate` and kvpress's
pipeline (one or several questions) work on eager and sdpa. Positions continue from the original length.

Faithfulness to the official code (MIRALab-USTC/LLM-TAPPA, KVCache/): q-similarity of the post-RoPE window queries
(all pairs, cosine), the CAKE preference (`preference.cake_preference`), the CAKE token score
(`CAKEScorePress`, gamma 200, pooling 5) and `allocation="reference"` (`budgets.reference_budgets`). Deliberate
deviations: (1) the reference skips compression when `seq_len <= cache_size + window`; we always apply the
requested ratio, as every kvpress press does; (2) the protected window shrinks to `total // L` tokens per layer when
the budget cannot hold it (recorded in `protected_window`); (3) with a batch, q-similarity and the CAKE preference
are averaged over the sequences (the reference reads sequence 0 / sums), budgets are shared by the batch and tokens
chosen per sequence.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from kvpress import BasePress, KeyRerotationPress, ScorerPress
from kvpress.presses.base_press import is_prefilling
from kvpress.utils import get_prerope_query_states
from transformers.models.llama.modeling_llama import rotate_half

from ..models import check_supported
from .attention_patch import patch_attention_functions
from .budgets import allocate_budgets, reference_budgets
from .cake_score_press import CAKEScorePress, cake_token_scores, window_attention
from .preference import cake_preference, qsim_all_pairs, qsim_consecutive

logger = logging.getLogger(__name__)
patch_attention_functions()

ALLOCATIONS = ("reference", "proportional")


@dataclass
class TAPPAPress(BasePress):
    """TAPPA: per-layer KV budgets from the predictability of the queries, `P_l = 1 - qsim_l`.

    Layers whose window queries are similar (predictable, periodic attention) need fewer tokens. Paper: "Why Attention
    Patterns Exist" (Yang et al., ICLR 2026, https://arxiv.org/abs/2601.21709), Section 6.

    Parameters
    ----------
    compression_ratio : float, default=0.0
        Fraction of the cache removed, over all layers together (kvpress convention); any value in [0, 1).
    token_budget : int, optional
        Average kept tokens per layer (the reference's `max_capacity_prompts`); overrides `compression_ratio`.
    window : int, default=32
        Observation window: the last queries that give q-similarity, preference and token scores; these tokens
        are always kept (fewer when the budget cannot hold them, see `protected_window`).
    allocation : str, default="reference"
        "reference": budgets as the official code (`budgets.reference_budgets`: window + truncated proportional
        share of the rest, capped, redistributed); "proportional": the whole budget split in proportion with the
        window as a floor (`budgets.allocate_budgets`).
    rope : str, default="post"
        Queries for q-similarity after ("post", as the reference) or before ("pre") RoPE.
    qsim : str, default="all_pairs"
        "all_pairs" (as the reference) or "consecutive" query similarity.
    alpha : float, default=math.inf
        inf: pure TAPPA; finite: CAKE's preference plus `alpha * (1 - qsim)` (the paper's combined score).
    tau1, tau2 : float, default=1.0
        CAKE's temperatures (finite alpha only).
    scorer : ScorerPress, optional
        Ranks tokens inside a layer; default `CAKEScorePress(window_size=window)` (the official score); any
        kvpress ScorerPress is accepted.
    n_sink : int, default=0
        First tokens always kept (inside the budget).

    Notes
    -----
    After a prefill: `budgets` (kept tokens per layer), `layer_qsim`, `layer_preference`, `kept_indices` (per layer,
    (B, H_kv, budget), sorted; None when nothing was evicted), `seq_len`, `total_budget`, `protected_window`.

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
    """

    compression_ratio: float = 0.0
    token_budget: int | None = None
    window: int = 32
    allocation: str = "reference"
    rope: str = "post"
    qsim: str = "all_pairs"
    alpha: float = math.inf
    tau1: float = 1.0
    tau2: float = 1.0
    scorer: ScorerPress | None = None
    n_sink: int = 0
    budgets: list = field(default_factory=list, init=False, repr=False)
    layer_qsim: list = field(default_factory=list, init=False, repr=False)
    layer_preference: list = field(default_factory=list, init=False, repr=False)
    kept_indices: list = field(default_factory=list, init=False, repr=False)
    seq_len: int = field(default=0, init=False, repr=False)
    total_budget: int = field(default=0, init=False, repr=False)
    protected_window: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.compression_ratio, (int, float)) or not 0 <= self.compression_ratio < 1:
            raise ValueError(f"compression_ratio must be in [0, 1), got {self.compression_ratio!r}")
        if self.token_budget is not None and (not isinstance(self.token_budget, int) or self.token_budget < 1):
            raise ValueError("token_budget must be a positive integer (tokens per layer) or None, "
                             f"got {self.token_budget!r}")
        if not isinstance(self.window, int) or self.window < 2:
            raise ValueError(f"window must be an integer >= 2 (q-similarity needs 2 queries), got {self.window!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
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
            self.scorer = CAKEScorePress(window_size=self.window)
        if not isinstance(self.scorer, ScorerPress):
            raise TypeError("scorer must be a kvpress ScorerPress (e.g. SnapKVPress()), "
                            f"got {type(self.scorer).__name__}")
        self._records: dict = {}

    # ---- one method per job: subclasses override these ---------------------------------------------------------
    def preference(self, qsim: float, attn: torch.Tensor) -> float:
        """A layer's preference from its q-similarity and window attention (B, H, W, T): more tokens when larger."""
        if self.alpha == math.inf:
            return 1.0 - qsim
        return cake_preference(attn, self.tau1, self.tau2) + self.alpha * (1.0 - qsim)

    def total_kept(self, seq_len: int, n_layers: int) -> int:
        """Kept tokens summed over layers for a context of `seq_len` tokens (at least one per layer)."""
        if self.token_budget is not None:
            total = min(self.token_budget, seq_len) * n_layers
        else:
            total = int(round(seq_len * n_layers * (1 - self.compression_ratio)))
        return max(total, n_layers)

    def allocate(self, preferences: list[float], total: int, seq_len: int, window: int, floor: int) -> list[int]:
        """Per-layer budgets summing to `total` (reference: up to the reference's own clamping)."""
        if self.allocation == "reference":
            return reference_budgets(preferences, total, seq_len, window)
        return allocate_budgets(preferences, total, cap=seq_len, floor=floor)

    # ---- per-layer statistics (prefill) -----------------------------------------------------------------------
    def _window_queries(self, module, hidden_states, position_embeddings, w: int) -> torch.Tensor:
        q = get_prerope_query_states(module, hidden_states[:, -w:])
        if self.rope == "pre":
            return q
        cos, sin = position_embeddings
        cos, sin = cos[:, -w:].unsqueeze(1), sin[:, -w:].unsqueeze(1)
        return q * cos + rotate_half(q) * sin

    def _stats_window(self, t: int) -> int:
        return min(self.window, t - 1)

    def _protected(self, t: int, n_layers: int) -> tuple[int, int]:
        """(protected window, protected sinks) per layer for a context of t tokens."""
        per_layer = self.total_kept(t, n_layers) // n_layers
        w = max(1, min(self._stats_window(t), per_layer))
        return w, min(self.n_sink, max(per_layer - w, 0))

    def _token_scores(self, module, hidden_states, keys, values, output, kwargs, attn, w_protected) -> torch.Tensor:
        """(B, H_kv, T) scores of every key; the protected window's scores are not used."""
        t = keys.shape[2]
        sc = self.scorer
        if type(sc) is CAKEScorePress and sc.window_size == self.window:  # reuse the window attention
            s = cake_token_scores(attn, keys.shape[1], t - w_protected, sc.gamma, sc.kernel_size)
            return torch.nn.functional.pad(s.float(), (0, w_protected))
        return sc.score(module, hidden_states, keys, values, output[1], kwargs).float()

    @staticmethod
    def _check_unpadded(mask) -> None:
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
            return
        allowed = mask if mask.dtype == torch.bool else mask == 0
        q, k = allowed.shape[-2:]
        causal = torch.ones(q, k, dtype=torch.bool, device=mask.device).tril(k - q)
        if not bool((allowed == causal).all()):
            raise ValueError("TAPPAPress does not support padded batches (the attention mask holds padding); "
                             "compress sequences of equal length, or one at a time")

    @torch.no_grad()
    def forward_hook(self, module, input, kwargs, output):
        """Record the layer's statistics during prefill; at the last layer, allocate and evict every layer."""
        hidden_states = kwargs["hidden_states"]
        q_len = hidden_states.shape[1]
        if not is_prefilling(kwargs["cache_position"], q_len):
            return output
        idx = module.layer_idx
        n_layers = module.config.num_hidden_layers
        if idx == 0:
            self._records = {}
            self._check_unpadded(kwargs.get("attention_mask"))
        cache = kwargs["past_key_values"]
        keys, values = cache.layers[idx].keys, cache.layers[idx].values
        t = keys.shape[2]
        if t != q_len:
            raise ValueError(f"TAPPAPress must see the full cache of layer {idx} ({q_len} tokens, found {t}): "
                             "another press pruned it first; TAPPAPress must be the only token-pruning press")
        rec = {"cache": cache, "t": t}
        if t >= 3:
            w = self._stats_window(t)
            w_protected, _ = self._protected(t, n_layers)
            q = self._window_queries(module, hidden_states, kwargs["position_embeddings"], w)
            sim = qsim_all_pairs(q) if self.qsim == "all_pairs" else qsim_consecutive(q)
            rec["qsim"] = float(sim.mean())
            attn = window_attention(module, hidden_states, keys, w, kwargs["position_embeddings"])
            rec["preference"] = max(self.preference(rec["qsim"], attn), 0.0)
            rec["scores"] = self._token_scores(module, hidden_states, keys, values, output, kwargs, attn, w_protected)
        self._records[idx] = rec
        if idx == n_layers - 1:
            self._evict(n_layers)
        return output

    # ---- budgets and eviction (at the last layer) -------------------------------------------------------------
    def _evict(self, n_layers: int) -> None:
        records, self._records = self._records, {}
        if sorted(records) != list(range(n_layers)):
            raise ValueError(f"TAPPAPress saw layers {sorted(records)} of {n_layers}: it needs every layer's "
                             "statistics before evicting")
        t = records[0]["t"]
        self.seq_len = t
        self.layer_qsim = [records[i].get("qsim", float("nan")) for i in range(n_layers)]
        self.layer_preference = [records[i].get("preference", float("nan")) for i in range(n_layers)]
        total = self.total_kept(t, n_layers)
        self.kept_indices = [None] * n_layers
        if t < 3 or total >= t * n_layers:
            self.budgets, self.total_budget, self.protected_window = [t] * n_layers, t * n_layers, t
            return
        w, n_sink = self._protected(t, n_layers)
        self.protected_window = w
        self.budgets = self.allocate(self.layer_preference, total, t, w, floor=w + n_sink)
        self.total_budget = sum(self.budgets)
        for i, budget in enumerate(self.budgets):
            layer = records[i]["cache"].layers[i]
            if layer.keys.shape[2] != t:
                raise ValueError(f"layer {i} holds {layer.keys.shape[2]} tokens, not the {t} TAPPAPress scored: "
                                 "another press pruned it after TAPPAPress; TAPPAPress must be the only "
                                 "token-pruning press")
            if budget >= t:
                continue
            scores = records[i]["scores"].clone()
            scores[..., t - w:] = math.inf
            if n_sink:
                scores[..., :n_sink] = 1e30 * torch.arange(n_sink, 0, -1, device=scores.device)  # earliest first
            kept = scores.topk(budget, dim=-1).indices.sort(dim=-1).values
            gather = kept.unsqueeze(-1).expand(-1, -1, -1, layer.keys.shape[-1])
            layer.keys = layer.keys.gather(2, gather).contiguous()
            layer.values = layer.values.gather(2, gather).contiguous()
            self.kept_indices[i] = kept
        logger.debug("Compressed Context Length per layer: "
                     f"{[records[i]['cache'].get_seq_length(i) for i in range(n_layers)]}")

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        """Not available: budgets need every layer first (eviction happens in the last layer's `forward_hook`)."""
        raise NotImplementedError(f"{type(self).__name__} evicts at the last layer of the prefill and cannot compress "
                                  "one layer alone; use it directly, in ComposedPress or as PrefillDecodingPress's "
                                  "prefilling_press")

    def score(self, *args, **kwargs):
        """Not available: TAPPAPress is not a ScorerPress (its per-token scores are only the ranking inside a layer)."""
        raise NotImplementedError(f"{type(self).__name__} is not a ScorerPress; wrappers that need `score` take its "
                                  "token scorer instead, e.g. CAKEScorePress() or press.scorer")

    @contextmanager
    def __call__(self, model) -> Generator:
        """kvpress hooks (one forward hook per attention layer), always removed; state reset on exit."""
        check_supported(model)
        try:
            with super().__call__(model):
                yield
        finally:
            self._records = {}


def refuse_key_rerotation() -> None:
    """Make `KeyRerotationPress(TAPPAPress(...))` (or of a subclass) raise a one-line ValueError saying why and what
    to use, instead of kvpress's bare AssertionError (it asserts a ScorerPress). Installed on import; idempotent."""
    original = KeyRerotationPress.__post_init__
    if getattr(original, "refuses_tappa", False):
        return

    def __post_init__(self):
        if isinstance(self.press, TAPPAPress):
            raise ValueError(
                f"KeyRerotationPress cannot wrap {type(self.press).__name__}: it scores and prunes one layer at a "
                "time and re-rotates the kept keys to positions 0..n-1, while TAPPAPress sets every layer's budget "
                "after the last layer and keeps a different number of tokens per layer (decoding continues at the "
                "original positions); use the press alone, or for uniform budgets with re-rotation "
                "KeyRerotationPress(CAKEScorePress(compression_ratio=...))")
        original(self)

    __post_init__.refuses_tappa = True
    KeyRerotationPress.__post_init__ = __post_init__


refuse_key_rerotation()
