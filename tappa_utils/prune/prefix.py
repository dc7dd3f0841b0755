"""Pruned forwards that start where the pruning starts.

A model without decoder layers S computes exactly what the full model computes up to layer min(S). So for fixed
token ids, the full model's input to a few layers is computed once (`PrefixStates`), and every pruned variant runs
from the deepest stored layer at or before its first removed layer (`pruned_logits`): with the layers in front
removed too and the stored hidden states given as `inputs_embeds`. Removal orders usually start deep in the model,
so most of each evaluation's forward is skipped. The numbers equal a full pruned forward (the tests compare them).

    prefix = PrefixStates(model, ids, batch_size=4, layers=[18, 20])
    for x, logits in pruned_logits(model, [20, 22], ids, batch_size=4, prefix=prefix):
        ...
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..models import decoder_layers
from .removal import layers_removed


class PrefixStates:
    """The full model's input hidden states of `layers` (decoder layer indices) for `ids`, batch by batch.

    Memory: len(layers) x N x T x hidden x the model's element size; layers beyond `max_bytes` (deepest kept first)
    are not stored, and forwards that would start there start at an earlier stored layer or at the embedding.
    """

    def __init__(self, model, ids: torch.Tensor, batch_size: int, layers: Iterable[int], max_bytes: int = 2 ** 30):
        self.ids, self.batch_size = ids, batch_size
        n = len(decoder_layers(model))
        p0 = next(model.parameters())
        per_layer = ids.numel() * model.config.hidden_size * p0.element_size()
        wanted = sorted({int(x) for x in layers if 0 < int(x) < n}, reverse=True)
        self.layers = sorted(wanted[: max(0, max_bytes // max(1, per_layer))])
        self.states: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        if not self.layers:
            return
        mods = decoder_layers(model)

        def keep(layer):
            def hook(_mod, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                self.states[layer].append(h.detach().clone())
            return hook

        handles = [mods[layer].register_forward_pre_hook(keep(layer), with_kwargs=True) for layer in self.layers]
        deepest = max(self.layers)
        try:  # the layers after the deepest stored one are not needed: leave them out of these forwards
            with torch.no_grad(), layers_removed(model, range(deepest + 1, n)) as body:
                for i in range(0, ids.shape[0], batch_size):
                    body.model(input_ids=ids[i : i + batch_size].to(p0.device), use_cache=False)
        finally:
            for h in handles:
                h.remove()

    def start(self, removed: Iterable[int]) -> int:
        """The deepest stored layer at or before the first removed layer (0: start at the embedding)."""
        first = min(removed, default=0)
        return max((layer for layer in self.layers if layer <= first), default=0)


def pruned_logits(model, removed: Iterable[int], ids: torch.Tensor, batch_size: int,
                  prefix: PrefixStates | None = None,
                  positions: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(token ids, logits) of each batch of `ids` for `model` without decoder layers `removed`, computed from the
    prefix's stored states when it has some for these ids (the model is restored after each batch).

    `positions` (1-D indices): logits at those positions only, (B, len(positions), V): the output projection, the
    largest single matrix of a model with a 128k vocabulary, then runs on those rows alone (`logits_to_keep`)."""
    removed = sorted(int(x) for x in removed)
    device = next(model.parameters()).device
    start = prefix.start(removed) if prefix is not None and prefix.ids is ids else 0
    if start + len([r for r in removed if r >= start]) >= len(decoder_layers(model)):
        start = 0  # the stored states would leave no layer to run: start at the embedding
    keep = {} if positions is None else {"logits_to_keep": torch.as_tensor(positions, device=device)}
    with torch.no_grad(), layers_removed(model, sorted(set(range(start)) | set(removed))) as pruned:
        for b, i in enumerate(range(0, ids.shape[0], batch_size)):
            x = ids[i : i + batch_size].to(device)
            if start:
                yield x, pruned(inputs_embeds=prefix.states[start][b], use_cache=False, **keep).logits
            else:
                yield x, pruned(x, use_cache=False, **keep).logits
