"""The one registry of KV-cache methods: what `kv-eval`, its report, its figures and chapter 07 compare.

Each method is a `KVMethod`: its name, a factory `(ratio, window, cake_alpha) -> press` (None: nothing evicted),
its colour in the figures, whether the random-weight null runs it, and one line saying what it is. `METHODS`
(name -> KVMethod, in the order of the tables and figures) is read by `make_press`, `KVEvalConfig`'s default, the
command's help, the report's `palette` and `null_methods`, and chapter 07 (`methods = None`: every method here).
Adding a method is one `KVMethod(...)` entry below; its press lives in its own module. Presses are imported when
a factory runs (kvpress is heavy to import).
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Factory = Callable[[float, int, float], Any]  # (compression ratio, window, cake_alpha) -> press, or None


@dataclass(frozen=True)
class KVMethod:
    """One compared method: `factory(ratio, window, cake_alpha)` builds its press (None: the full cache);
    `colour` ("#rrggbb") draws it; `runs_on_null`: also run on the random-weight null; `keeps_window`: its press
    always keeps the last `window` tokens of every layer (the conformance tests check it); `head_masks`: its press
    keeps the whole cache and masks the evicted entries per head instead (kvpress's AdaKV: the cache is as long as the
    full one, and the attention modules hold `masked_key_indices`; needs sdpa, as `kv-eval` runs); `own_prefill`: its
    press scores after the prefill (KVzip's context reconstruction), so it is never replayed on the shared prefill but
    runs one of its own (`needs_own_prefill`)."""

    name: str
    factory: Factory
    colour: str
    runs_on_null: bool = False
    description: str = ""
    keeps_window: bool = False
    head_masks: bool = False
    own_prefill: bool = False

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"method name must be lower-case letters, digits and _, got {self.name!r}")
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", self.colour):
            raise ValueError(f"colour of {self.name!r} must be '#rrggbb', got {self.colour!r}")


def press_class(path: str) -> type:
    """The class at `path`, "module:Class", imported now; a module starting with "." is in `tappa_utils.kv`."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module, __package__), name)


def _registry(*methods: KVMethod) -> dict[str, KVMethod]:
    out: dict[str, KVMethod] = {}
    for m in methods:
        if m.name in out:
            raise ValueError(f"method {m.name!r} is registered twice")
        out[m.name] = m
    return out


_TAPPA = ".tappa_press:TAPPAPress"


def _kvzip(ratio: float):
    """kvpress's KVzipPress (its tokenizer is loaded from `model.config.name_or_path` when it runs); its warning that
    it costs extra prefills is said once in the registry's description instead of at every construction."""
    import logging

    logging.getLogger("kvpress.presses.kvzip_press").setLevel(logging.ERROR)
    return press_class("kvpress:KVzipPress")(compression_ratio=ratio)


def needs_own_prefill(press) -> bool:
    """True for a press that compresses after the prefill from more forwards (kvpress's KVzip and its subclasses):
    replaying the prefill's records cannot give its cache."""
    from kvpress import KVzipPress

    return isinstance(press, KVzipPress)

METHODS: dict[str, KVMethod] = _registry(
    KVMethod("full", lambda r, w, a: None, "#000000", True, "the full cache, nothing evicted (the reference)"),
    KVMethod("tappa", lambda r, w, a: press_class(_TAPPA)(compression_ratio=r, window=w), "#1f3a93", True,
             "TAPPA: budgets from q-similarity, the official budget rule (allocation='reference')", True),
    KVMethod("tappa_proportional",
             lambda r, w, a: press_class(_TAPPA)(compression_ratio=r, window=w, allocation="proportional"),
             "#e67e22", False, "TAPPA with the whole budget split in proportion to the preferences", True),
    KVMethod("uniform_cake", lambda r, w, a: press_class(".baselines:UniformCAKEPress")(compression_ratio=r, window=w),
             "#7f8c8d", True, "uniform budgets with TAPPA's own scorer: the control for TAPPA's budgets", True),
    KVMethod("tappa_cake", lambda r, w, a: press_class(_TAPPA)(compression_ratio=r, window=w, alpha=a), "#27ae60",
             False, "CAKE's preference + cake_alpha * TAPPA's preference", True),
    KVMethod("cake", lambda r, w, a: press_class(".cake_press:CAKEPress")(compression_ratio=r, window=w), "#641e16",
             False, "CAKE's preference alone (entropy x variance of the window attention)", True),
    KVMethod("snapkv", lambda r, w, a: press_class("kvpress:SnapKVPress")(compression_ratio=r, window_size=w),
             "#d62728", False, "kvpress's SnapKV: uniform budgets, window-attention scores", True),
    KVMethod("pyramidkv",
             lambda r, w, a: press_class(".baselines:PyramidKVPress")(compression_ratio=r, window_size=w),
             "#9467bd", False, "PyramidKV with its authors' pyramid (see `baselines`)", True),
    KVMethod("pyramidkv_kvpress",
             lambda r, w, a: press_class("kvpress:PyramidKVPress")(compression_ratio=r, window_size=w),
             "#e377c2", False, "kvpress's PyramidKV (SnapKV's uniform budget at short contexts)", True),
    KVMethod("streamingllm", lambda r, w, a: press_class("kvpress:StreamingLLMPress")(compression_ratio=r, n_sink=4),
             "#bcbd22", False, "kvpress's StreamingLLM: 4 sink tokens and the most recent ones"),
    KVMethod("expected_attention",
             lambda r, w, a: press_class("kvpress:ExpectedAttentionPress")(compression_ratio=r), "#8c564b", True,
             "kvpress's Expected Attention: scores from the expected future queries"),
    KVMethod("adakv_snapkv",
             lambda r, w, a: press_class("kvpress:AdaKVPress")(press_class("kvpress:SnapKVPress")(
                 compression_ratio=r, window_size=w)), "#f5b7b1", False,
             "kvpress's AdaKV around SnapKV: head-wise budgets from SnapKV's scores pooled over a layer's heads",
             head_masks=True),
    KVMethod("adakv_expected_attention",
             lambda r, w, a: press_class("kvpress:AdaKVPress")(press_class("kvpress:ExpectedAttentionPress")(
                 compression_ratio=r)), "#2ca02c", False,
             "kvpress's AdaKV around Expected Attention: head-wise budgets from its scores", head_masks=True),
    KVMethod("knorm", lambda r, w, a: press_class("kvpress:KnormPress")(compression_ratio=r), "#17becf", False,
             "kvpress's Knorm: keeps the keys of smallest norm"),
    KVMethod("tova", lambda r, w, a: press_class("kvpress:TOVAPress")(compression_ratio=r), "#4b0082", False,
             "kvpress's TOVA: keeps the keys the last query attends to most (head-averaged)"),
    KVMethod("keydiff", lambda r, w, a: press_class("kvpress:KeyDiffPress")(compression_ratio=r), "#ff00ff", False,
             "kvpress's KeyDiff: keeps the keys least similar to the mean key"),
    KVMethod("kvzip", lambda r, w, a: _kvzip(r), "#00a0a0", False,
             "kvpress's KVzip: scores from re-reading the context (2-3 extra prefills), head-wise budgets over layers",
             head_masks=True, own_prefill=True),
)


def method_names(methods: Iterable[str] | None = None) -> tuple[str, ...]:
    """`methods` checked against the registry (ValueError naming the unknown ones); None: every registered one."""
    if methods is None:
        return tuple(METHODS)
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    return methods


def null_methods() -> tuple[str, ...]:
    """The methods the random-weight null runs (`runs_on_null`), in registry order."""
    return tuple(m.name for m in METHODS.values() if m.runs_on_null)


def palette() -> dict[str, str]:
    """Every method's colour ("#rrggbb"), "full" included (black)."""
    return {m.name: m.colour for m in METHODS.values()}


def make_press(method: str, keep: float, window: int = 32, cake_alpha: float = 1.0):
    """The press for `method` keeping a fraction `keep` of the cache (None for the full cache, or when keep >= 1)."""
    (method,) = method_names([method])
    ratio = 1.0 - keep
    return None if ratio <= 0 else METHODS[method].factory(ratio, window, cake_alpha)


def describe() -> str:
    """One line per registered method, its name and description (the command's help)."""
    width = max(map(len, METHODS))
    return "\n".join(f"  {m.name:<{width}}  {m.description}" for m in METHODS.values())
