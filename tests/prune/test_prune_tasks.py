"""prune.tasks: seeded prompts, exact teacher-forced greedy scoring (equal to generating), bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tappa_utils.long_tasks import DEPTHS, make_suite
from tappa_utils.prune import tasks as T


def test_prompts_are_seeded_and_answers_recoverable(default_model):
    _, tok = default_model
    a, b = T.fact_prompts(40, seed=3), T.fact_prompts(40, seed=3)
    assert a == b and a != T.fact_prompts(40, seed=4)
    sums = [p for p in a if "plus" in p.question]
    assert sums and all(int(p.answer) == sum(int(x) for x in p.prefix.split(" plus ")[0:1] + [p.prefix.split()[2]])
                        for p in sums)
    keys = T.passkey_prompts(tok, 5, n_tokens=300, seed=0)
    assert keys == T.passkey_prompts(tok, 5, n_tokens=300, seed=0) and keys != T.passkey_prompts(tok, 5, 300, seed=1)
    assert all(f"the pass key for today is {p.answer}." in p.question and len(p.answer) == 5
               and p.prefix == T.PASSKEY_PREFIX for p in keys)
    # the KV comparison's needle_passkey samples, one per depth, the question after the context
    suite = make_suite(["needle_passkey"], tok, [300], 5, 0)
    assert [p.question for p in keys] == [s.prompt for s in suite] and [s.depth for s in suite] == list(DEPTHS)


def test_teacher_forced_greedy_equals_generation(default_model):
    """Correct (1) exactly when greedy decoding from the prompt writes the answer's tokens first."""
    model, tok = default_model
    sets = T.task_sets(tok, ("facts", "passkey"), n=4, seed=0, passkey_tokens=300)
    for ts in sets.values():
        got = T.task_correct(model, ts, batch_size=3)
        for i in range(len(ts.prompts)):
            ids, n = T.encode_prompt(tok, ts.prompts[i])
            assert ids[:n] + ts.targets[i] == ids and ts.ids[i, : len(ids) - 1].tolist() == ids[:-1]
            x = torch.tensor([ids[:n]])
            out = model.generate(x, max_new_tokens=len(ts.targets[i]), do_sample=False, pad_token_id=0)[0, n:]
            assert got[i] == int(out.tolist() == ts.targets[i])
        # the model made to write every answer scores 1: plant the answer as the argmax by forcing the targets
        forced = T.TaskSet(ts.prompts, ts.ids, ts.checks, [[int(t) for t in _greedy(model, ts, i)]
                                                           for i in range(len(ts.prompts))])
        assert T.task_correct(model, forced).tolist() == [1] * len(ts.prompts)


def _greedy(model, ts, i):
    with torch.no_grad():
        logits = model(ts.ids[i : i + 1]).logits[0]
    return logits[ts.checks[i]].argmax(-1)


def test_removed_layers_change_answers_and_model_restored(default_model):
    model, tok = default_model
    ts = T.task_sets(tok, ("passkey",), n=3, seed=1, passkey_tokens=300)["passkey"]
    before = T.task_correct(model, ts)
    T.task_correct(model, ts, removed=[0, 1, 2])
    assert np.array_equal(T.task_correct(model, ts), before)


def test_bad_input():
    with pytest.raises(ValueError, match="task families"):
        T.task_sets(None, ("trivia",))
    with pytest.raises(ValueError, match="prompts per family"):
        T.task_sets(None, ("facts",), n=0)
