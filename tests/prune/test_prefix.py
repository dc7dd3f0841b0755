"""Pruned forwards started from stored prefix states equal full pruned forwards."""
from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from tappa_utils.prune import evaluate as E
from tappa_utils.prune.prefix import PrefixStates, pruned_logits
from tappa_utils.prune.removal import layers_removed


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_pruned_logits_from_the_prefix_equal_a_full_pruned_forward(family):
    model = make_tiny_model(family, layers=6).eval()
    ids = torch.randint(3, 300, (5, 24))
    before = [p.detach().clone() for p in model.parameters()]
    prefix = PrefixStates(model, ids, batch_size=2, layers=[2, 4])
    assert prefix.layers == [2, 4] and [len(v) for v in prefix.states.values()] == [3, 3]  # 3 batches of <= 2
    for removed in ([4], [4, 5], [2, 5], [3], [1, 4], [5]):
        assert prefix.start(removed) == max([0] + [s for s in (2, 4) if s <= min(removed)])
        with torch.no_grad(), layers_removed(model, removed) as pruned:
            want = torch.cat([pruned(ids[i : i + 2]).logits for i in range(0, 5, 2)])
        got = torch.cat([logits for _, logits in pruned_logits(model, removed, ids, 2, prefix)])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        pos = torch.tensor([0, 5, 6, 17])  # logits at some positions only: the same rows
        part = torch.cat([logits for _, logits in pruned_logits(model, removed, ids, 2, prefix, positions=pos)])
        torch.testing.assert_close(part, want[:, pos], rtol=0, atol=1e-5)
    assert len(model.model.layers) == 6 and all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_prefix_respects_its_memory_cap_and_other_ids_start_at_the_embedding():
    model = make_tiny_model("llama", layers=6).eval()
    ids = torch.randint(3, 300, (2, 16))
    per_layer = ids.numel() * model.config.hidden_size * 4
    prefix = PrefixStates(model, ids, batch_size=2, layers=[1, 3, 5], max_bytes=2 * per_layer)
    assert prefix.layers == [3, 5]  # the deepest ones that fit
    other = ids.clone()  # not the prefix's ids: computed from the embedding
    got = torch.cat([lg for _, lg in pruned_logits(model, [5], other, 2, prefix)])
    with torch.no_grad(), layers_removed(model, [5]) as pruned:
        torch.testing.assert_close(got, pruned(other).logits, rtol=0, atol=1e-5)
    # stored states that would leave no layer: the forward starts at the embedding
    got = torch.cat([lg for _, lg in pruned_logits(model, [3, 4, 5], ids, 2, prefix)])
    with torch.no_grad(), layers_removed(model, [3, 4, 5]) as pruned:
        torch.testing.assert_close(got, pruned(ids).logits, rtol=0, atol=1e-5)


def test_calibration_loss_with_prefix_equals_the_plain_pruned_loss():
    model = make_tiny_model("qwen2", layers=5).eval()
    ids = torch.randint(3, 300, (3, 20))
    prefix = PrefixStates(model, ids, batch_size=2, layers=[3])
    with layers_removed(model, [3, 4]) as pruned:
        plain = E.calibration_loss(pruned, ids, 2)
    assert abs(E.calibration_loss(model, ids, 2, (3, 4), prefix) - plain) < 1e-6
