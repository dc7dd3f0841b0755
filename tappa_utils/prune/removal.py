"""Layer removal: a pruned copy of a model that stays consistent (cache, generate, save/load), or the same in place
for the duration of a block.

    small = remove_layers(model, [4, 2])        # a deep copy without decoder layers 2 and 4
    with layers_removed(model, [4]) as pruned:  # no copy; the model is restored on exit, even on error
        ...
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ..models import decoder_layers


def _check_layers(layers, n: int) -> list[int]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise TypeError(f"layers must be a list of layer indices, got {type(layers).__name__}")
    layers = list(layers)
    for x in layers:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
            raise TypeError(f"layer indices must be integers, got {x!r} ({type(x).__name__})")
        if not 0 <= int(x) < n:
            raise IndexError(f"layer {int(x)} is out of range: the model has {n} layers (0..{n - 1})")
    layers = [int(x) for x in layers]
    dup = sorted({x for x in layers if layers.count(x) > 1})
    if dup:
        raise ValueError(f"duplicate layer indices {dup}: list each layer to remove once")
    if len(layers) >= n:
        raise ValueError(f"cannot remove all {n} layers: keep at least one")
    return sorted(layers)


def remove_layers(model, layers: Iterable[int], inplace: bool = False):
    """The model without decoder `layers` (indices of the current model), kept consistent for cache and save/load.

    Remaining attention modules get `layer_idx` 0..L'-1; `config.num_hidden_layers` and `config.layer_types` (where
    present) are updated; `config.tappa_removed_layers` accumulates the removed indices of the original model.
    A deep copy is pruned unless `inplace=True`.
    """
    mods = decoder_layers(model)
    n = len(mods)
    drop = _check_layers(layers, n)
    if not inplace:
        model = copy.deepcopy(model)
        mods = decoder_layers(model)
    keep = [i for i in range(n) if i not in drop]
    cfg = model.config
    original = list(getattr(cfg, "tappa_kept_layers", None) or range(n))
    model.model.layers = torch.nn.ModuleList([mods[i] for i in keep])
    for new_idx, layer in enumerate(model.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_idx
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    if getattr(cfg, "max_window_layers", None) is not None and getattr(cfg, "layer_types", None) is None:
        cfg.max_window_layers = min(cfg.max_window_layers, len(keep))
    cfg.tappa_kept_layers = [original[i] for i in keep]
    cfg.tappa_removed_layers = sorted(set(getattr(cfg, "tappa_removed_layers", None) or [])
                                      | {original[i] for i in drop})
    return model


_CONFIG_FIELDS = ("num_hidden_layers", "layer_types", "max_window_layers", "tappa_kept_layers", "tappa_removed_layers")


@contextmanager
def layers_removed(model, layers: Iterable[int]) -> Iterator:
    """Remove `layers` in place for the duration of the block, then restore the model exactly (no copy made).

    For large models, where `remove_layers`' deep copy would double the memory. Restored even on error.
    """
    _check_layers(layers, len(decoder_layers(model)))
    saved_layers = model.model.layers
    saved_idx = [(layer.self_attn.layer_idx if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx")
                  else None, getattr(layer, "layer_idx", None)) for layer in saved_layers]
    missing = object()
    saved_cfg = {k: getattr(model.config, k, missing) for k in _CONFIG_FIELDS}
    saved_cfg = {k: v if v is missing else copy.copy(v) for k, v in saved_cfg.items()}
    try:
        yield remove_layers(model, layers, inplace=True)
    finally:
        model.model.layers = saved_layers
        for layer, (attn_idx, idx) in zip(saved_layers, saved_idx):
            if attn_idx is not None:
                layer.self_attn.layer_idx = attn_idx
            if idx is not None:
                layer.layer_idx = idx
        for k, v in saved_cfg.items():
            if v is missing:
                if k in model.config.__dict__:
                    delattr(model.config, k)
            else:
                setattr(model.config, k, v)
